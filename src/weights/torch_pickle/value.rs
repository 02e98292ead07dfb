//! Values the restricted unpickler can build, and the allow-listed globals.
//!
//! Containers live in an [`Arena`] and values refer to them by index, so copying a value (the memo
//! hands out copies) is O(1), dropping never recurses, and a container mutated after it was memoised
//! (`EMPTY_DICT`, `BINPUT`, `SETITEMS` is how every dict is pickled) is seen through every reference.

use std::collections::HashMap;
use std::rc::Rc;

use crate::weights::RawDType;

/// Index of a container in an [`Arena`].
pub(crate) type ObjId = usize;

/// One value on the unpickler's stack or in its memo.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i128),
    /// A float; its value never matters for loading tensors.
    Float,
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Tuple(ObjId),
    List(ObjId),
    Dict(ObjId),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
}

impl Value {
    /// Short human-readable kind, for error messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }

    /// The key under which a dict indexes this value, when the value is hashable by content.
    fn dict_key(&self) -> Option<DictKey> {
        match self {
            Value::None => Some(DictKey::None),
            Value::Bool(b) => Some(DictKey::Bool(*b)),
            Value::Int(i) => Some(DictKey::Int(*i)),
            Value::Str(s) => Some(DictKey::Str(s.clone())),
            Value::Bytes(b) => Some(DictKey::Bytes(b.clone())),
            _ => None,
        }
    }
}

/// Hashable form of a dict key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum DictKey {
    None,
    Bool(bool),
    Int(i128),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
}

/// An insertion-ordered dict; setting an existing (hashable) key replaces its value, as in Python.
#[derive(Debug, Default)]
pub(crate) struct Dict {
    entries: Vec<(Value, Value)>,
    index: HashMap<DictKey, usize>,
}

impl Dict {
    /// Inserts or replaces `key`.
    pub(crate) fn set(&mut self, key: Value, value: Value) {
        match key.dict_key() {
            Some(k) => match self.index.get(&k) {
                Some(&i) => {
                    if let Some(slot) = self.entries.get_mut(i) {
                        slot.1 = value;
                    }
                }
                None => {
                    self.index.insert(k, self.entries.len());
                    self.entries.push((key, value));
                }
            },
            None => self.entries.push((key, value)),
        }
    }

    /// Entries in insertion order.
    pub(crate) fn entries(&self) -> &[(Value, Value)] {
        &self.entries
    }
}

/// A container owned by the arena.
#[derive(Debug)]
pub(crate) enum Obj {
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Dict),
}

/// Owner of every container built while unpickling.
#[derive(Debug, Default)]
pub(crate) struct Arena {
    objs: Vec<Obj>,
}

impl Arena {
    /// Stores `obj` and returns its index.
    pub(crate) fn alloc(&mut self, obj: Obj) -> ObjId {
        self.objs.push(obj);
        self.objs.len() - 1
    }

    /// The container at `id`, if any.
    pub(crate) fn get(&self, id: ObjId) -> Option<&Obj> {
        self.objs.get(id)
    }

    /// The container at `id`, mutably, if any.
    pub(crate) fn get_mut(&mut self, id: ObjId) -> Option<&mut Obj> {
        self.objs.get_mut(id)
    }

    /// Items of the tuple `id` (empty if `id` is not a tuple).
    pub(crate) fn tuple(&self, id: ObjId) -> &[Value] {
        match self.objs.get(id) {
            Some(Obj::Tuple(items)) => items,
            _ => &[],
        }
    }
}

/// A global (`module.name`) on the allow-list. Everything else is rejected when it is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Global {
    /// `collections.OrderedDict`: calling it with no arguments makes an empty dict.
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`.
    RebuildTensorV2,
    /// `torch._utils._rebuild_tensor(storage, offset, size, stride)` (older files).
    RebuildTensor,
    /// `torch._utils._rebuild_parameter(tensor, requires_grad, hooks)`.
    RebuildParameter,
    /// `torch._utils._rebuild_parameter_with_state(tensor, requires_grad, hooks, state)`.
    RebuildParameterWithState,
    /// A storage class such as `torch.FloatStorage`; only ever used as a tag in a persistent id.
    Storage(RawDType),
}

impl Global {
    /// Resolves `module.name` against the allow-list.
    pub(crate) fn resolve(module: &str, name: &str) -> Option<Global> {
        let g = match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
            ("torch._utils", "_rebuild_tensor") => Global::RebuildTensor,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
            ("torch", storage) | ("torch.storage", storage) => {
                Global::Storage(storage_dtype(storage)?)
            }
            _ => return None,
        };
        Some(g)
    }

    /// The Python spelling, for error messages.
    pub(crate) fn python_name(self) -> String {
        match self {
            Global::OrderedDict => "collections.OrderedDict".into(),
            Global::RebuildTensorV2 => "torch._utils._rebuild_tensor_v2".into(),
            Global::RebuildTensor => "torch._utils._rebuild_tensor".into(),
            Global::RebuildParameter => "torch._utils._rebuild_parameter".into(),
            Global::RebuildParameterWithState => {
                "torch._utils._rebuild_parameter_with_state".into()
            }
            Global::Storage(dtype) => format!("torch storage class of dtype {dtype}"),
        }
    }
}

/// Element type of a torch storage class (`UntypedStorage` holds bytes).
fn storage_dtype(class: &str) -> Option<RawDType> {
    Some(match class {
        "FloatStorage" => RawDType::F32,
        "HalfStorage" => RawDType::F16,
        "BFloat16Storage" => RawDType::BF16,
        "DoubleStorage" => RawDType::F64,
        "LongStorage" => RawDType::I64,
        "IntStorage" => RawDType::I32,
        "ShortStorage" => RawDType::I16,
        "CharStorage" => RawDType::I8,
        "ByteStorage" | "UntypedStorage" => RawDType::U8,
        "BoolStorage" => RawDType::Bool,
        _ => return None,
    })
}

/// A storage named by a persistent id: its bytes live outside the pickle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StorageRef {
    /// Key of the storage (zip: `data/<key>`; legacy: position in the storage-key list).
    pub key: Rc<str>,
    /// Element type of the storage class in the persistent id.
    pub dtype: RawDType,
    /// Element count declared in the persistent id.
    pub numel: u64,
    /// Legacy storage view: element offset into the root storage and element count.
    pub view: Option<(u64, u64)>,
}

/// A tensor as `_rebuild_tensor_v2` describes it: a strided view of a storage (offsets in elements).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TensorRef {
    pub storage: Rc<StorageRef>,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}
