//! A restricted pickle virtual machine for PyTorch state dicts.
//!
//! It understands the opcodes that `torch.save` emits with pickle protocols 2 to 5 (see CPython's
//! `Lib/pickletools.py` for the opcode reference and `torch/serialization.py` for what torch writes)
//! and nothing else. Nothing is ever executed: `GLOBAL`/`STACK_GLOBAL` resolve only the names on the
//! allow-list in [`Global::resolve`], `REDUCE` only "calls" those by building plain values, and
//! persistent ids only describe storages. Any other global, opcode, stack or memo misuse, or
//! truncation is an [`Error::Format`], never a panic.

use std::collections::HashMap;
use std::rc::Rc;

use super::value::{Arena, Dict, Global, Obj, StorageRef, Value};
use crate::error::{Error, Result};

mod calls;

/// The result of running one pickle.
#[derive(Debug)]
pub(crate) struct Unpickled {
    /// Owner of every container `root` refers to.
    pub arena: Arena,
    /// The object the pickle returned.
    pub root: Value,
    /// Every storage persistent id, in the order the pickle loads them.
    pub storages: Vec<Rc<StorageRef>>,
    /// Offset just past the `STOP` opcode.
    pub end: usize,
}

/// Runs the pickle starting at `data[start..]`; `file` names the input in errors.
pub(crate) fn unpickle(data: &[u8], start: usize, file: &str) -> Result<Unpickled> {
    let mut vm = Vm {
        data,
        pos: start,
        op_pos: start,
        file,
        arena: Arena::default(),
        stack: Vec::new(),
        metastack: Vec::new(),
        memo: HashMap::new(),
        storages: Vec::new(),
    };
    let root = vm.run()?;
    Ok(Unpickled {
        arena: vm.arena,
        root,
        storages: vm.storages,
        end: vm.pos,
    })
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    op_pos: usize,
    file: &'a str,
    arena: Arena,
    stack: Vec<Value>,
    metastack: Vec<Vec<Value>>,
    memo: HashMap<u32, Value>,
    storages: Vec<Rc<StorageRef>>,
}

impl<'a> Vm<'a> {
    fn err(&self, message: impl std::fmt::Display) -> Error {
        Error::format(
            self.file,
            format!("pickle opcode at byte {}: {message}", self.op_pos),
        )
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let data: &'a [u8] = self.data;
        match self.pos.checked_add(n).and_then(|e| data.get(self.pos..e)) {
            Some(bytes) => {
                self.pos += n;
                Ok(bytes)
            }
            None => Err(self.err(format!(
                "truncated: needs {n} more byte(s), {} left",
                self.data.len().saturating_sub(self.pos)
            ))),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let bytes = self.take(N)?;
        bytes
            .try_into()
            .map_err(|_| self.err("internal: short read"))
    }

    fn u8(&mut self) -> Result<u8> {
        let [b] = self.array()?;
        Ok(b)
    }

    fn len_u32(&mut self) -> Result<usize> {
        Ok(u32::from_le_bytes(self.array()?) as usize)
    }

    fn len_u64(&mut self) -> Result<usize> {
        let n = u64::from_le_bytes(self.array()?);
        usize::try_from(n).map_err(|_| self.err(format!("length {n} does not fit in memory")))
    }

    fn line(&mut self) -> Result<String> {
        let rest = self.data.get(self.pos..).unwrap_or_default();
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return Err(self.err("truncated: unterminated line"));
        };
        let bytes = self.take(n + 1)?;
        let text = bytes.get(..n).unwrap_or_default();
        String::from_utf8(text.to_vec()).map_err(|_| self.err("line is not UTF-8"))
    }

    fn string(&mut self, n: usize) -> Result<Value> {
        match std::str::from_utf8(self.take(n)?) {
            Ok(s) => Ok(Value::Str(s.into())),
            Err(_) => Err(self.err("string is not valid UTF-8")),
        }
    }

    fn bytes(&mut self, n: usize) -> Result<Value> {
        Ok(Value::Bytes(self.take(n)?.into()))
    }

    fn long(&mut self, n: usize) -> Result<Value> {
        if n > 16 {
            return Err(self.err(format!("integer of {n} bytes is too large")));
        }
        let bytes = self.take(n)?;
        let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
        let mut buf = [if negative { 0xff } else { 0 }; 16];
        for (dst, src) in buf.iter_mut().zip(bytes) {
            *dst = *src;
        }
        Ok(Value::Int(i128::from_le_bytes(buf)))
    }

    fn pop(&mut self) -> Result<Value> {
        match self.stack.pop() {
            Some(v) => Ok(v),
            None => Err(self.err("stack underflow")),
        }
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        match self.metastack.pop() {
            Some(outer) => Ok(std::mem::replace(&mut self.stack, outer)),
            None => Err(self.err("no MARK on the stack")),
        }
    }

    fn top_mut_obj(&mut self) -> Result<&mut Obj> {
        let id = match self.stack.last() {
            Some(Value::List(id) | Value::Dict(id)) => *id,
            Some(other) => {
                let kind = other.kind();
                return Err(self.err(format!(
                    "expected a list or dict on the stack, found {kind}"
                )));
            }
            None => return Err(self.err("stack underflow")),
        };
        match self.arena.get_mut(id) {
            Some(obj) => Ok(obj),
            None => Err(Error::format(self.file, "pickle: dangling container")),
        }
    }

    fn append(&mut self, items: Vec<Value>) -> Result<()> {
        match self.top_mut_obj()? {
            Obj::List(list) => {
                list.extend(items);
                Ok(())
            }
            _ => Err(self.err("APPEND target is not a list")),
        }
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<()> {
        if !items.len().is_multiple_of(2) {
            return Err(self.err("SETITEMS with an odd number of items"));
        }
        let Obj::Dict(dict) = self.top_mut_obj()? else {
            return Err(self.err("SETITEM target is not a dict"));
        };
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            dict.set(k, v);
        }
        Ok(())
    }

    fn tuple(&mut self, items: Vec<Value>) -> Value {
        Value::Tuple(self.arena.alloc(Obj::Tuple(items)))
    }

    fn global(&mut self, module: &str, name: &str) -> Result<Value> {
        match Global::resolve(module, name) {
            Some(g) => Ok(Value::Global(g)),
            None => Err(self.err(format!(
                "global `{module}.{name}` is not allowed (only tensors, storages and \
                 OrderedDict can be loaded; nothing is executed)"
            ))),
        }
    }

    fn memo_get(&self, key: u32) -> Result<Value> {
        match self.memo.get(&key) {
            Some(v) => Ok(v.clone()),
            None => Err(self.err(format!("memo key {key} was never stored"))),
        }
    }

    fn memo_put(&mut self, key: u32) -> Result<()> {
        match self.stack.last() {
            Some(v) => {
                self.memo.insert(key, v.clone());
                Ok(())
            }
            None => Err(self.err("PUT with an empty stack")),
        }
    }

    fn run(&mut self) -> Result<Value> {
        loop {
            self.op_pos = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(self.err(format!("unsupported pickle protocol {proto}")));
                    }
                }
                0x95 => {
                    // FRAME: framing is irrelevant when the whole input is in memory.
                    self.take(8)?;
                }
                b'.' => return self.pop(),
                b'(' => self.metastack.push(std::mem::take(&mut self.stack)),
                b'0' => {
                    if self.stack.pop().is_none() {
                        self.pop_mark()?;
                    }
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let top = self.pop()?;
                    self.stack.push(top.clone());
                    self.stack.push(top);
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(self.array()?);
                    self.stack.push(Value::Int(v.into()));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v.into()));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.array()?);
                    self.stack.push(Value::Int(v.into()));
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let v = self.long(n)?;
                    self.stack.push(v);
                }
                0x8b => {
                    let n = self.len_u32()?;
                    let v = self.long(n)?;
                    self.stack.push(v);
                }
                b'G' => {
                    self.take(8)?;
                    self.stack.push(Value::Float);
                }
                b'X' | b'T' => {
                    let n = self.len_u32()?;
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                0x8c | b'U' => {
                    let n = self.u8()? as usize;
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = self.len_u64()?;
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                b'B' => {
                    let n = self.len_u32()?;
                    let v = self.bytes(n)?;
                    self.stack.push(v);
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let v = self.bytes(n)?;
                    self.stack.push(v);
                }
                0x8e => {
                    let n = self.len_u64()?;
                    let v = self.bytes(n)?;
                    self.stack.push(v);
                }
                b')' => {
                    let t = self.tuple(Vec::new());
                    self.stack.push(t);
                }
                b't' => {
                    let items = self.pop_mark()?;
                    let t = self.tuple(items);
                    self.stack.push(t);
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    if self.stack.len() < n {
                        return Err(self.err("stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    let t = self.tuple(items);
                    self.stack.push(t);
                }
                b']' => {
                    let id = self.arena.alloc(Obj::List(Vec::new()));
                    self.stack.push(Value::List(id));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    let id = self.arena.alloc(Obj::List(items));
                    self.stack.push(Value::List(id));
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b'}' => {
                    let id = self.arena.alloc(Obj::Dict(Dict::default()));
                    self.stack.push(Value::Dict(id));
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let id = self.arena.alloc(Obj::Dict(Dict::default()));
                    self.stack.push(Value::Dict(id));
                    self.set_items(items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(&module, &name)?;
                    self.stack.push(g);
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err(self.err("STACK_GLOBAL needs two strings"));
                    };
                    let g = self.global(&module, &name)?;
                    self.stack.push(g);
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = self.reduce(func, args)?;
                    self.stack.push(v);
                }
                b'b' => {
                    let _state = self.pop()?;
                    match self.stack.last() {
                        // An OrderedDict's state is its attribute dict (`_metadata` of a state
                        // dict); a Parameter's is its Python attributes. Neither holds tensors.
                        Some(Value::Dict(_) | Value::Tensor(_)) => {}
                        Some(other) => {
                            let kind = other.kind();
                            return Err(self.err(format!("BUILD on a {kind}")));
                        }
                        None => return Err(self.err("stack underflow")),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.stack.push(v);
                }
                b'h' => {
                    let key = self.u8()?;
                    let v = self.memo_get(key.into())?;
                    self.stack.push(v);
                }
                b'j' => {
                    let key = u32::from_le_bytes(self.array()?);
                    let v = self.memo_get(key)?;
                    self.stack.push(v);
                }
                b'q' => {
                    let key = self.u8()?;
                    self.memo_put(key.into())?;
                }
                b'r' => {
                    let key = u32::from_le_bytes(self.array()?);
                    self.memo_put(key)?;
                }
                0x94 => {
                    let key =
                        u32::try_from(self.memo.len()).map_err(|_| self.err("memo is full"))?;
                    self.memo_put(key)?;
                }
                other => {
                    return Err(self.err(format!(
                        "unsupported opcode 0x{other:02x} ({:?})",
                        char::from(other)
                    )))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
