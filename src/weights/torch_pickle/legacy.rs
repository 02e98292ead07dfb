//! The legacy (pre-1.6, `_use_new_zipfile_serialization=False`) PyTorch format.
//!
//! `torch/serialization.py` `_legacy_save` writes, back to back:
//! 1. a pickle of the magic number `0x1950a86a20f9469cfc6c`,
//! 2. a pickle of the protocol version `1001`,
//! 3. a pickle of `sys_info` (`{'protocol_version', 'little_endian', 'type_sizes'}`),
//! 4. the main pickle, whose persistent ids name storages by key (optionally with a storage view
//!    `(view_key, offset, size)` in files from torch < 0.4),
//! 5. a pickle of the list of storage keys,
//!
//! then, for every key in that list's order, the storage: a little-endian `u64` element count
//! followed by that many elements of the storage's dtype (the dtype of the first persistent id that
//! names the key, as torch saves the first occurrence).

use std::borrow::Cow;
use std::collections::HashMap;
use std::rc::Rc;

use super::pickle::{unpickle, Unpickled};
use super::value::{Obj, StorageRef, Value};
use super::StorageSource;
use crate::error::{Error, Result};

/// The magic number of the legacy format.
pub(crate) const MAGIC: i128 = 0x1950a86a20f9469cfc6c;
/// The only legacy protocol version torch has written.
const PROTOCOL_VERSION: i128 = 1001;

/// Storage bytes of a legacy file, located by key.
pub(crate) struct LegacyStorages<'a> {
    data: &'a [u8],
    ranges: HashMap<Rc<str>, (usize, usize)>,
    file: String,
}

/// Parses the whole file: header pickles, main pickle, key list and storage table.
pub(crate) fn parse<'a>(data: &'a [u8], file: &str) -> Result<(LegacyStorages<'a>, Unpickled)> {
    let fail = |message: String| Error::format(file, message);
    let magic = unpickle(data, 0, file)?;
    if !matches!(magic.root, Value::Int(MAGIC)) {
        return Err(fail(
            "not a legacy PyTorch file (bad magic number); tar-format files from torch < 0.4 \
             are not supported"
                .into(),
        ));
    }
    let proto = unpickle(data, magic.end, file)?;
    if !matches!(proto.root, Value::Int(PROTOCOL_VERSION)) {
        return Err(fail(format!(
            "legacy protocol version {:?} is not supported (expected {PROTOCOL_VERSION})",
            proto.root
        )));
    }
    let sys = unpickle(data, proto.end, file)?;
    if let Value::Dict(id) = sys.root {
        if let Some(Obj::Dict(d)) = sys.arena.get(id) {
            let little = d.entries().iter().find_map(|(k, v)| match (k, v) {
                (Value::Str(k), Value::Bool(b)) if &**k == "little_endian" => Some(*b),
                _ => None,
            });
            if little == Some(false) {
                return Err(fail(
                    "big-endian checkpoints are not supported (sys_info little_endian=False)"
                        .into(),
                ));
            }
        }
    } else {
        return Err(fail(format!(
            "legacy sys_info is a {}, expected a dict",
            sys.root.kind()
        )));
    }
    let main = unpickle(data, sys.end, file)?;
    let keys = unpickle(data, main.end, file)?;
    let key_values = match keys.root {
        Value::List(id) => match keys.arena.get(id) {
            Some(Obj::List(items)) => items.clone(),
            _ => Vec::new(),
        },
        ref other => {
            return Err(fail(format!(
                "legacy storage-key list is a {}, expected a list",
                other.kind()
            )))
        }
    };

    // Element size and declared element count per key, from the first persistent id naming it.
    let mut declared: HashMap<&str, (usize, u64)> = HashMap::new();
    for s in &main.storages {
        declared
            .entry(&s.key)
            .or_insert((s.dtype.size_in_bytes(), s.numel));
    }
    let mut ranges = HashMap::new();
    let mut pos = keys.end;
    for key in key_values {
        let key: Rc<str> = match key {
            Value::Str(s) => s,
            Value::Int(i) => i.to_string().into(),
            other => return Err(fail(format!("legacy storage key is a {}", other.kind()))),
        };
        let Some(&(es, numel)) = declared.get(&*key) else {
            return Err(fail(format!(
                "storage `{key}` is listed but no tensor refers to it"
            )));
        };
        let header = data
            .get(pos..pos.saturating_add(8))
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .ok_or_else(|| fail(format!("truncated at byte {pos}: storage `{key}` header")))?;
        let count = u64::from_le_bytes(header);
        if count != numel {
            return Err(fail(format!(
                "storage `{key}` holds {count} element(s), its persistent id declares {numel}"
            )));
        }
        let start = pos + 8;
        let end = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(es))
            .and_then(|n| start.checked_add(n))
            .filter(|&end| end <= data.len())
            .ok_or_else(|| {
                fail(format!(
                    "truncated: storage `{key}` declares {count} element(s) of {es} byte(s) at byte \
                     {start}, the file has {} bytes",
                    data.len()
                ))
            })?;
        if ranges.insert(key.clone(), (start, end)).is_some() {
            return Err(fail(format!("storage `{key}` is listed twice")));
        }
        pos = end;
    }
    if pos != data.len() {
        return Err(fail(format!(
            "{} unexpected trailing byte(s) after the last storage",
            data.len() - pos
        )));
    }
    let storages = LegacyStorages {
        data,
        ranges,
        file: file.to_string(),
    };
    Ok((storages, main))
}

impl StorageSource for LegacyStorages<'_> {
    fn bytes(&mut self, storage: &StorageRef) -> Result<Cow<'_, [u8]>> {
        self.ranges
            .get(&storage.key)
            .and_then(|&(start, end)| self.data.get(start..end))
            .map(Cow::Borrowed)
            .ok_or_else(|| {
                Error::format(
                    &self.file,
                    format!(
                        "storage `{}` is not in the file's storage-key list",
                        storage.key
                    ),
                )
            })
    }
}
