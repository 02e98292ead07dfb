//! What the allow-listed globals "do" when a pickle calls them, and storage persistent ids.
//!
//! Nothing runs: `REDUCE` on an allowed global builds a plain [`Value`] from its arguments, as
//! `torch/_utils.py` (`_rebuild_tensor_v2`, `_rebuild_parameter`) and `torch/serialization.py`
//! (`persistent_load`) would, after checking every argument's kind.

use std::rc::Rc;

use super::Vm;
use crate::error::Result;
use crate::weights::torch_pickle::value::{Dict, Global, Obj, StorageRef, TensorRef, Value};

impl Vm<'_> {
    fn tuple_items(&self, v: &Value, what: &str) -> Result<Vec<Value>> {
        match v {
            Value::Tuple(id) => Ok(self.arena.tuple(*id).to_vec()),
            other => Err(self.err(format!("{what} must be a tuple, found {}", other.kind()))),
        }
    }

    fn usize_of(&self, v: &Value, what: &str) -> Result<usize> {
        match v {
            Value::Int(i) => usize::try_from(*i)
                .map_err(|_| self.err(format!("{what} {i} is negative or too large"))),
            other => Err(self.err(format!("{what} must be an int, found {}", other.kind()))),
        }
    }

    fn usizes(&self, v: &Value, what: &str) -> Result<Vec<usize>> {
        let items = self.tuple_items(v, what)?;
        items.iter().map(|i| self.usize_of(i, what)).collect()
    }

    pub(super) fn reduce(&mut self, func: Value, args: Value) -> Result<Value> {
        let Value::Global(func) = func else {
            return Err(self.err(format!("REDUCE on a {}, not a global", func.kind())));
        };
        let args = self.tuple_items(&args, "REDUCE arguments")?;
        let name = func.python_name();
        match (func, args.as_slice()) {
            (Global::OrderedDict, []) => {
                let id = self.arena.alloc(Obj::Dict(Dict::default()));
                Ok(Value::Dict(id))
            }
            (Global::RebuildTensorV2, [storage, offset, size, stride, _, _])
            | (Global::RebuildTensorV2, [storage, offset, size, stride, _, _, _])
            | (Global::RebuildTensor, [storage, offset, size, stride]) => {
                let Value::Storage(storage) = storage else {
                    return Err(self.err(format!("{name}: first argument is not a storage")));
                };
                let shape = self.usizes(size, "tensor size")?;
                let stride = self.usizes(stride, "tensor stride")?;
                if shape.len() != stride.len() {
                    return Err(self.err(format!(
                        "{name}: size {shape:?} and stride {stride:?} differ in rank"
                    )));
                }
                Ok(Value::Tensor(Rc::new(TensorRef {
                    storage: storage.clone(),
                    offset: self.usize_of(offset, "storage offset")?,
                    shape,
                    stride,
                })))
            }
            (Global::RebuildParameter, [t @ Value::Tensor(_), _, _])
            | (Global::RebuildParameterWithState, [t @ Value::Tensor(_), _, _, _]) => Ok(t.clone()),
            (_, args) => Err(self.err(format!(
                "cannot call {name} with {} argument(s) of kinds [{}]",
                args.len(),
                args.iter().map(Value::kind).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// `('storage', storage_class, key, location, numel[, view_metadata])`, as written by
    /// `torch.serialization` (`view_metadata` only in the legacy format).
    pub(super) fn persistent_load(&mut self, pid: Value) -> Result<Value> {
        let items = self.tuple_items(&pid, "persistent id")?;
        let (tag, rest) = match items.split_first() {
            Some((Value::Str(tag), rest)) => (tag.clone(), rest),
            _ => return Err(self.err("persistent id does not start with a string")),
        };
        if &*tag != "storage" {
            return Err(self.err(format!(
                "persistent id of type `{tag}` is not supported (only tensor storages; \
                 checkpoints of whole modules cannot be loaded, save a state_dict instead)"
            )));
        }
        let (class, key, numel, view) = match rest {
            [class, key, _location, numel] => (class, key, numel, None),
            [class, key, _location, numel, view] => (class, key, numel, Some(view)),
            _ => return Err(self.err("storage persistent id has the wrong length")),
        };
        let Value::Global(Global::Storage(dtype)) = class else {
            return Err(self.err(format!(
                "storage persistent id names a {} instead of a storage class",
                class.kind()
            )));
        };
        let key: Rc<str> = match key {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string().into(),
            other => return Err(self.err(format!("storage key is a {}", other.kind()))),
        };
        let numel = self.usize_of(numel, "storage size")? as u64;
        let view = match view {
            None | Some(Value::None) => None,
            Some(v) => match self.tuple_items(v, "storage view")?.as_slice() {
                [_view_key, offset, size] => Some((
                    self.usize_of(offset, "view offset")? as u64,
                    self.usize_of(size, "view size")? as u64,
                )),
                _ => return Err(self.err("storage view metadata must have 3 items")),
            },
        };
        let storage = Rc::new(StorageRef {
            key,
            dtype: *dtype,
            numel,
            view,
        });
        self.storages.push(storage.clone());
        Ok(Value::Storage(storage))
    }
}
