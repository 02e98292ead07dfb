//! PyTorch checkpoints (`.pt`, `.pth`, `.bin`): the zip format of torch >= 1.6 and the legacy
//! pickle format before it, read without executing anything.
//!
//! A checkpoint is a Python pickle (protocol 2 to 5) of a dict — usually an `OrderedDict` state
//! dict, sometimes nested as `{"state_dict": ..., "epoch": 3}` — whose tensors are pickled as calls
//! to `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`. Storages are *not* in
//! the pickle: a persistent id `('storage', torch.FloatStorage, key, location, numel)` names them,
//! and the container holds their bytes:
//! - zip (`torch.save` since 1.6): `<root>/data.pkl` plus one entry `<root>/data/<key>` per storage
//!   (see the `zip` module);
//! - legacy (`_use_new_zipfile_serialization=False`, and every file written before torch 1.6, e.g.
//!   the published EfficientNet-Lite0 port): several pickles back to back followed by the raw
//!   storages (see the `legacy` module).
//!
//! Primary source: `torch/serialization.py` (`_save`, `_legacy_save`, `_load`, `_legacy_load`) and
//! `torch/_utils.py` (`_rebuild_tensor_v2`, `_rebuild_parameter`) of PyTorch 2.5; pickle opcodes
//! from CPython's `Lib/pickletools.py`.
//!
//! Safety: the unpickler is a restricted VM. It resolves only an allow-list of globals
//! (`collections.OrderedDict`, `torch._utils._rebuild_tensor{,_v2}`, `_rebuild_parameter{,_with_state}`
//! and the `torch.*Storage` classes); anything else (`os.system`, `builtins.eval`, model classes of
//! a pickled `nn.Module`, ...) is an [`Error::Format`] naming the global. Malformed or truncated
//! input is an error, never a panic.
//!
//! Tensors are materialised exactly as torch describes them (storage offset, sizes and strides, so
//! transposed or sliced views and tensors sharing a storage come back right) into dense row-major
//! little-endian [`RawTensor`]s. Nested dicts are flattened with `.`-joined keys; entries that are
//! not tensors (`epoch`, `arch`, ...) are listed by [`TorchCheckpoint::other_keys`].
//!
//! Not supported (each is a clear [`Error::Format`]): big-endian files, the tar format of
//! torch < 0.4, pickled `nn.Module` objects (save a `state_dict` instead), and pickles using
//! protocol 0/1 text opcodes.

mod legacy;
mod pickle;
mod value;
mod view;
mod zip;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use self::pickle::Unpickled;
use self::value::{Arena, Obj, StorageRef, TensorRef, Value};
use crate::error::{Error, Result};
use crate::weights::RawTensor;

/// Which container a checkpoint used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TorchFormat {
    /// The zip archive of `torch.save` since torch 1.6.
    Zip,
    /// The legacy pickle stream (torch < 1.6 or `_use_new_zipfile_serialization=False`).
    Legacy,
}

/// Tensors of a PyTorch checkpoint, flattened: nested dicts join keys with '.'.
#[derive(Debug, Clone)]
pub struct TorchCheckpoint {
    path: PathBuf,
    format: TorchFormat,
    tensors: BTreeMap<String, RawTensor>,
    other_keys: Vec<String>,
}

impl TorchCheckpoint {
    /// Reads a zip or legacy PyTorch checkpoint from `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let io = |e| Error::io(path, e);
        let mut file = File::open(path).map_err(io)?;
        let mut head = Vec::with_capacity(HEAD_LEN);
        (&mut file)
            .take(HEAD_LEN as u64)
            .read_to_end(&mut head)
            .map_err(io)?;
        file.rewind().map_err(io)?;
        if head.starts_with(ZIP_MAGIC) {
            Self::from_zip(BufReader::new(file), path, &name)
        } else if looks_like_torch_legacy(&head) {
            let bytes = std::fs::read(path).map_err(io)?;
            Self::from_legacy(&bytes, path, &name)
        } else {
            Err(unknown_format(&name))
        }
    }

    /// Reads a checkpoint held in memory; `name` stands for the file in error messages.
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<Self> {
        if bytes.starts_with(ZIP_MAGIC) {
            Self::from_zip(Cursor::new(bytes), Path::new(name), name)
        } else if looks_like_torch_legacy(bytes) {
            Self::from_legacy(bytes, Path::new(name), name)
        } else {
            Err(unknown_format(name))
        }
    }

    fn from_zip<R: Read + Seek>(reader: R, path: &Path, name: &str) -> Result<Self> {
        let (mut source, unpickled) = zip::TorchZip::open(reader, name)?;
        Self::build(unpickled, &mut source, path, name, TorchFormat::Zip)
    }

    fn from_legacy(bytes: &[u8], path: &Path, name: &str) -> Result<Self> {
        let (mut source, unpickled) = legacy::parse(bytes, name)?;
        Self::build(unpickled, &mut source, path, name, TorchFormat::Legacy)
    }

    fn build(
        unpickled: Unpickled,
        source: &mut dyn StorageSource,
        path: &Path,
        name: &str,
        format: TorchFormat,
    ) -> Result<Self> {
        let mut flat = Flattened::default();
        flat.visit(&unpickled.arena, &unpickled.root, "", 0, name)?;
        let tensors = materialize_all(flat.tensors, source, name)?;
        Ok(Self {
            path: path.to_path_buf(),
            format,
            tensors,
            other_keys: flat.other_keys,
        })
    }

    /// The path the checkpoint was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All tensors, by flattened key.
    pub fn tensors(&self) -> &BTreeMap<String, RawTensor> {
        &self.tensors
    }

    /// Consumes the checkpoint, returning its tensors.
    pub fn into_tensors(self) -> BTreeMap<String, RawTensor> {
        self.tensors
    }

    /// Keys whose values are not tensors (e.g. `epoch`, `arch`), so a strict loader can report them.
    pub fn other_keys(&self) -> &[String] {
        &self.other_keys
    }

    /// The container format the file used.
    pub fn format(&self) -> TorchFormat {
        self.format
    }
}

/// Local-file-header signature that starts every zip archive.
const ZIP_MAGIC: &[u8] = b"PK\x03\x04";
/// Bytes [`TorchCheckpoint::open`] sniffs before choosing a reader.
const HEAD_LEN: usize = 64;

fn unknown_format(name: &str) -> Error {
    Error::format(
        name,
        "not a PyTorch checkpoint: neither a zip archive nor a legacy pickle stream \
         (tar-format files from torch < 0.4 are not supported)",
    )
}

/// Whether `bytes` (the start of a file) look like a torch >= 1.6 zip checkpoint: a zip archive
/// whose first entry is `<root>/data.pkl`, which `torch.save` always writes first (so an `.npz` or
/// other zip is not mistaken for one). [`TorchCheckpoint::open`] itself accepts any zip archive
/// holding exactly one `data.pkl`.
pub fn looks_like_torch_zip(bytes: &[u8]) -> bool {
    let name_len = bytes
        .get(26..28)
        .and_then(|b| <[u8; 2]>::try_from(b).ok())
        .map(|b| usize::from(u16::from_le_bytes(b)));
    match name_len {
        Some(n) if bytes.starts_with(ZIP_MAGIC) => bytes
            .get(30..30 + n)
            .is_some_and(|name| name == b"data.pkl" || name.ends_with(b"/data.pkl")),
        _ => false,
    }
}

/// Whether `bytes` (the start of a file) look like a legacy torch checkpoint: a pickle of the
/// legacy magic number (any protocol from 2, optionally framed).
pub fn looks_like_torch_legacy(bytes: &[u8]) -> bool {
    let magic = legacy::MAGIC.to_le_bytes();
    let Some(magic) = magic.get(..10) else {
        return false;
    };
    let rest = match bytes {
        [0x80, 2..=5, 0x95, rest @ ..] => rest.get(8..).unwrap_or_default(),
        [0x80, 2..=5, rest @ ..] => rest,
        _ => return false,
    };
    matches!(rest, [0x8a, 10, tail @ ..] if tail.starts_with(magic))
}

/// Where storage bytes come from: a zip entry or a range of a legacy file.
pub(crate) trait StorageSource {
    /// The bytes of the root storage `storage.key` (views are applied by the caller).
    fn bytes(&mut self, storage: &StorageRef) -> Result<Cow<'_, [u8]>>;
}

/// Maximum nesting of dicts inside the checkpoint.
const MAX_DEPTH: usize = 32;
/// Maximum number of values visited while flattening (guards against shared-subtree blow-up).
const MAX_VISITS: usize = 10_000_000;

#[derive(Default)]
struct Flattened {
    tensors: Vec<(String, Rc<TensorRef>)>,
    other_keys: Vec<String>,
    visits: usize,
}

impl Flattened {
    fn visit(
        &mut self,
        arena: &Arena,
        v: &Value,
        prefix: &str,
        depth: usize,
        file: &str,
    ) -> Result<()> {
        self.visits += 1;
        if depth > MAX_DEPTH || self.visits > MAX_VISITS {
            return Err(Error::format(
                file,
                format!("checkpoint nests too deeply or is too large at `{prefix}`"),
            ));
        }
        let dict = match v {
            Value::Dict(id) => match arena.get(*id) {
                Some(Obj::Dict(d)) => d,
                _ => return Err(Error::format(file, "dangling dict in the pickle")),
            },
            Value::Tensor(t) if depth > 0 => {
                self.tensors.push((prefix.to_string(), t.clone()));
                return Ok(());
            }
            _ if depth > 0 => {
                self.other_keys.push(prefix.to_string());
                return Ok(());
            }
            other => {
                return Err(Error::format(
                    file,
                    format!(
                        "the checkpoint holds a {}, expected a dict of tensors",
                        other.kind()
                    ),
                ))
            }
        };
        if dict.entries().is_empty() && depth > 0 {
            self.other_keys.push(prefix.to_string());
        }
        for (k, v) in dict.entries() {
            let key = match k {
                Value::Str(s) => s.to_string(),
                Value::Int(i) => i.to_string(),
                other => {
                    return Err(Error::format(
                        file,
                        format!("dict key of kind {} under `{prefix}`", other.kind()),
                    ))
                }
            };
            let name = if prefix.is_empty() {
                key
            } else {
                format!("{prefix}.{key}")
            };
            self.visit(arena, v, &name, depth + 1, file)?;
        }
        Ok(())
    }
}

/// Materialises every tensor, loading each storage once (tensors grouped by storage key).
fn materialize_all(
    mut tensors: Vec<(String, Rc<TensorRef>)>,
    source: &mut dyn StorageSource,
    file: &str,
) -> Result<BTreeMap<String, RawTensor>> {
    tensors.sort_by(|a, b| a.1.storage.key.cmp(&b.1.storage.key));
    let mut out = BTreeMap::new();
    let mut rest = tensors.as_slice();
    while let Some((_, first)) = rest.first() {
        let key = first.storage.key.clone();
        let n = rest
            .iter()
            .position(|(_, t)| t.storage.key != key)
            .unwrap_or(rest.len());
        let (group, tail) = rest.split_at(n);
        rest = tail;
        let bytes = source.bytes(&first.storage)?;
        for (name, t) in group {
            let region = storage_view(&bytes, &t.storage, file, name)?;
            let raw = view::materialize(t, region, file, name)?;
            if out.insert(name.clone(), raw).is_some() {
                return Err(Error::format(
                    file,
                    format!("duplicate tensor key `{name}`"),
                ));
            }
        }
    }
    Ok(out)
}

/// The part of a root storage a (legacy) storage view covers; the whole storage otherwise.
fn storage_view<'b>(bytes: &'b [u8], s: &StorageRef, file: &str, name: &str) -> Result<&'b [u8]> {
    let Some((offset, size)) = s.view else {
        return Ok(bytes);
    };
    let es = s.dtype.size_in_bytes() as u64;
    offset
        .checked_mul(es)
        .zip(offset.checked_add(size).and_then(|e| e.checked_mul(es)))
        .and_then(|(a, b)| Some((usize::try_from(a).ok()?, usize::try_from(b).ok()?)))
        .and_then(|(a, b)| bytes.get(a..b))
        .ok_or_else(|| {
            Error::format(
                file,
                format!(
                    "tensor `{name}`: storage view at element {offset} of {size} elements \
                     exceeds storage `{}` of {} bytes",
                    s.key,
                    bytes.len()
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flatten(pickle: &[u8]) -> Result<Flattened> {
        let u = pickle::unpickle(pickle, 0, "t.pkl")?;
        let mut flat = Flattened::default();
        flat.visit(&u.arena, &u.root, "", 0, "t.pkl")?;
        Ok(flat)
    }

    /// `{k: {k: ... {} ...}}` nested `depth` times, protocol 2.
    fn nested(depth: usize) -> Vec<u8> {
        let mut p = vec![0x80, 2];
        for _ in 0..depth {
            p.extend_from_slice(b"}X\x01\x00\x00\x00k");
        }
        p.push(b'}');
        p.extend(std::iter::repeat_n(b's', depth));
        p.push(b'.');
        p
    }

    #[test]
    fn flattening_joins_keys_and_lists_non_tensors() {
        // {'a': {1: 2.0, 'e': {}}, 'b': [ ]}
        let p = b"\x80\x02}(X\x01\x00\x00\x00a}(K\x01G@\x00\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00e}uX\x01\x00\x00\x00b]u.";
        let flat = flatten(p).unwrap();
        assert!(flat.tensors.is_empty());
        assert_eq!(flat.other_keys, ["a.1", "a.e", "b"]);
        assert!(flatten(&nested(MAX_DEPTH)).is_ok());
        let deep = flatten(&nested(MAX_DEPTH + 1)).err().unwrap().to_string();
        assert!(deep.contains("nests too deeply"), "{deep}");
        let top = flatten(b"\x80\x02]."); // a list, not a dict
        assert!(top.err().unwrap().to_string().contains("holds a list"));
        let key = flatten(b"\x80\x02}K\x01K\x01\x86K\x02s."); // tuple key
        assert!(key
            .err()
            .unwrap()
            .to_string()
            .contains("dict key of kind tuple"));
    }

    #[test]
    fn legacy_sniffing_accepts_framed_protocols() {
        let magic = legacy::MAGIC.to_le_bytes();
        let mut p2 = vec![0x80, 2, 0x8a, 10];
        p2.extend_from_slice(&magic[..10]);
        assert!(looks_like_torch_legacy(&p2));
        let mut p4 = vec![0x80, 4, 0x95];
        p4.extend_from_slice(&[14, 0, 0, 0, 0, 0, 0, 0, 0x8a, 10]);
        p4.extend_from_slice(&magic[..10]);
        assert!(looks_like_torch_legacy(&p4));
        p4[12] ^= 1;
        assert!(!looks_like_torch_legacy(&p4));
        assert!(!looks_like_torch_legacy(&p2[..8]));
    }
}
