//! TensorFlow V2 checkpoints (TensorBundle), read natively without TensorFlow.
//!
//! This is the format of the official tensorflow/tpu EfficientNet and EfficientNet-Lite releases and of
//! everything `tf.compat.v1.train.Saver` or `tf.train.Checkpoint` writes. A checkpoint `<prefix>` is:
//!
//! - `<prefix>.index`: a LevelDB-format SSTable mapping tensor names to serialized `BundleEntryProto`s;
//!   its first key is `""` and holds a `BundleHeaderProto` (shard count, byte order, format version);
//! - `<prefix>.data-00000-of-0000N` … : the raw tensor bytes, each tensor located by shard, offset and
//!   size, with a masked CRC32C;
//! - usually a text file `checkpoint` beside them whose `model_checkpoint_path: "…"` names the prefix.
//!
//! Primary sources: tensorflow/core/util/tensor_bundle/tensor_bundle.{h,cc} and naming.cc,
//! tensorflow/core/protobuf/tensor_bundle.proto, tensorflow/core/lib/io/{format.cc, block.cc,
//! table_format.txt} (equal to LevelDB's table format without filter blocks), crc32c.h for the checksum
//! masking. Every block CRC and every tensor CRC is verified.
//!
//! Supported element types: `DT_FLOAT`, `DT_HALF`, `DT_BFLOAT16`, `DT_DOUBLE`, `DT_INT32`, `DT_INT64`;
//! any other is [`Error::UnsupportedDType`]. Partitioned (sliced) variables and big-endian bundles are
//! [`Error::Format`]. The one DT_STRING entry of TF2 object-based checkpoints,
//! `_CHECKPOINTABLE_OBJECT_GRAPH`, is metadata and is skipped.
//!
//! Official EfficientNet checkpoints hold, for every model variable, the trained value, an
//! `…/ExponentialMovingAverage` shadow (the one to evaluate with) and `…/RMSProp`, `…/RMSProp_1`
//! optimizer slots, plus `global_step`; this reader returns all of them unchanged.

mod archive;
mod bundle;
mod crc;
mod proto;
mod table;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::weights::RawTensor;

/// A TensorFlow V2 checkpoint read into memory.
#[derive(Debug, Clone)]
pub struct TfCheckpoint {
    prefix: String,
    tensors: BTreeMap<String, RawTensor>,
}

impl TfCheckpoint {
    /// Reads a checkpoint and verifies all its checksums.
    ///
    /// Accepts: a directory (resolved through its `checkpoint` text file, or its single `*.index`), a
    /// prefix (`dir/model.ckpt`), the `checkpoint` file, the `.index` file, a `.data-*` shard, or a
    /// released `.tar.gz`/`.tgz` archive (read directly, without extracting to disk).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if archive::is_archive(path) {
            return Self::open_archive(path);
        }
        let prefix = if path.is_dir() {
            resolve_dir(path)?
        } else if path.file_name().is_some_and(|n| n == "checkpoint") && path.is_file() {
            let dir = path.parent().unwrap_or(Path::new(""));
            resolve_checkpoint_file(path, dir)?
        } else {
            strip_file_suffix(&path.to_string_lossy())
        };
        let index_path = bundle::index_path(&prefix);
        let index = std::fs::read(&index_path).map_err(|e| Error::io(&index_path, e))?;
        let index_name = index_path.display().to_string();
        let tensors =
            bundle::read_bundle(&index, &index_name, &prefix, &mut bundle::FileShards::new())?;
        Ok(Self { prefix, tensors })
    }

    fn open_archive(path: &Path) -> Result<Self> {
        let shown = path.display().to_string();
        let members = archive::read_members(path)?;
        let inner = resolve_in_archive(&members, &shown)?;
        let index_member = format!("{inner}.index");
        let index = members.get(&index_member).ok_or_else(|| {
            Error::format(
                &shown,
                format!("the archive has no member `{index_member}`"),
            )
        })?;
        let index_name = format!("{shown}!{index_member}");
        let mut shards = bundle::MemShards {
            archive: &shown,
            files: &members,
        };
        let tensors = bundle::read_bundle(index, &index_name, &inner, &mut shards)?;
        Ok(Self {
            prefix: format!("{shown}!{inner}"),
            tensors,
        })
    }

    /// The checkpoint prefix that was resolved (`dir/model.ckpt`, or `archive.tar.gz!member/prefix`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Every tensor, by name (the header entry and the TF2 object graph are not tensors).
    pub fn tensors(&self) -> &BTreeMap<String, RawTensor> {
        &self.tensors
    }

    /// Takes the tensors out.
    pub fn into_tensors(self) -> BTreeMap<String, RawTensor> {
        self.tensors
    }
}

/// True if `bytes` ends with a LevelDB/TensorBundle table footer magic (for format detection).
pub fn looks_like_tf_index(bytes: &[u8]) -> bool {
    table::has_table_magic(bytes)
}

/// `x.index` → `x`, `x.data-00000-of-00001` → `x`, anything else unchanged.
fn strip_file_suffix(path: &str) -> String {
    if let Some(p) = path.strip_suffix(".index") {
        return p.to_string();
    }
    if let Some(pos) = path.rfind(".data-") {
        let tail = &path.as_bytes()[pos + 6..];
        let is_shard = tail.len() == 14
            && tail[5..9] == *b"-of-"
            && tail[..5].iter().chain(&tail[9..]).all(u8::is_ascii_digit);
        if is_shard {
            return path[..pos].to_string();
        }
    }
    path.to_string()
}

/// Resolves a directory: its `checkpoint` file if any, else its single `*.index`.
fn resolve_dir(dir: &Path) -> Result<String> {
    let state = dir.join("checkpoint");
    if state.is_file() {
        return resolve_checkpoint_file(&state, dir);
    }
    let mut indexes = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let p = entry.map_err(|e| Error::io(dir, e))?.path();
        if p.extension().is_some_and(|e| e == "index") && p.is_file() {
            indexes.push(p);
        }
    }
    indexes.sort();
    match indexes.as_slice() {
        [one] => Ok(strip_file_suffix(&one.to_string_lossy())),
        [] => Err(Error::format(
            dir.display().to_string(),
            "no `checkpoint` file and no `*.index` file: not a TensorFlow checkpoint directory",
        )),
        many => Err(Error::format(
            dir.display().to_string(),
            format!(
                "no `checkpoint` file and {} `*.index` files ({}); pass the prefix of the one to read",
                many.len(),
                many.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

/// Resolves the prefix named by the `checkpoint` file at `state` (in directory `dir`).
///
/// A relative path is taken relative to `dir`. An absolute path that does not exist (a checkpoint moved
/// from the machine it was written on) falls back to its file name inside `dir`.
fn resolve_checkpoint_file(state: &Path, dir: &Path) -> Result<String> {
    let text = std::fs::read(state).map_err(|e| Error::io(state, e))?;
    let named =
        model_checkpoint_path(&text).map_err(|m| Error::format(state.display().to_string(), m))?;
    let named_path = PathBuf::from(&named);
    let mut candidates = vec![dir.join(&named_path)];
    if let Some(base) = named_path.file_name() {
        candidates.push(dir.join(base));
    }
    for c in &candidates {
        let c = c.to_string_lossy().into_owned();
        if bundle::index_path(&c).is_file() {
            return Ok(c);
        }
    }
    Err(Error::format(
        state.display().to_string(),
        format!(
            "names checkpoint `{named}`, but {} does not exist",
            candidates
                .iter()
                .map(|c| bundle::index_path(&c.to_string_lossy())
                    .display()
                    .to_string())
                .collect::<Vec<_>>()
                .join(" nor ")
        ),
    ))
}

/// Resolves the prefix (a member path without suffix) inside an archive's members.
fn resolve_in_archive(members: &BTreeMap<String, Vec<u8>>, shown: &str) -> Result<String> {
    let fmt = |m: String| Error::format(shown, m);
    let states: Vec<&String> = members
        .keys()
        .filter(|k| k.rsplit('/').next() == Some("checkpoint"))
        .collect();
    if let [state] = states.as_slice() {
        let dir = state.rsplit_once('/').map_or("", |(d, _)| d);
        let named = model_checkpoint_path(&members[*state])
            .map_err(|m| fmt(format!("member `{state}`: {m}")))?;
        let join = |p: &str| {
            if dir.is_empty() {
                p.to_string()
            } else {
                format!("{dir}/{p}")
            }
        };
        let relative = join(named.trim_start_matches("./"));
        let base = join(named.rsplit(['/', '\\']).next().unwrap_or(&named));
        return [relative, base]
            .into_iter()
            .find(|c| members.contains_key(&format!("{c}.index")))
            .ok_or_else(|| {
                fmt(format!(
                    "member `{state}` names checkpoint `{named}`, which the archive does not hold"
                ))
            });
    }
    let indexes: Vec<&String> = members.keys().filter(|k| k.ends_with(".index")).collect();
    match indexes.as_slice() {
        [one] => Ok(strip_file_suffix(one)),
        [] => Err(fmt("the archive holds no TensorFlow checkpoint (`*.index` member)".to_string())),
        many => Err(fmt(format!(
            "the archive holds {} `checkpoint` files and {} `*.index` members ({}); extract it and pass one prefix",
            states.len(),
            many.len(),
            many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// The `model_checkpoint_path` of a `CheckpointState` text proto (the `checkpoint` file).
fn model_checkpoint_path(text: &[u8]) -> std::result::Result<String, String> {
    for line in text.split(|&b| b == b'\n') {
        let line = line.trim_ascii();
        let Some(rest) = line.strip_prefix(b"model_checkpoint_path") else {
            continue;
        };
        let Some(rest) = rest.trim_ascii_start().strip_prefix(b":") else {
            continue;
        };
        let bytes = unquote(rest.trim_ascii()).ok_or_else(|| {
            format!(
                "cannot parse the quoted string in `{}`",
                line.escape_ascii()
            )
        })?;
        return String::from_utf8(bytes)
            .map_err(|_| "model_checkpoint_path is not UTF-8".to_string());
    }
    Err("no `model_checkpoint_path:` line: not a TensorFlow `checkpoint` state file".to_string())
}

/// Decodes a text-format string literal (`"…"` or `'…'` with C escapes, octal and hex included).
fn unquote(s: &[u8]) -> Option<Vec<u8>> {
    let (&quote, rest) = s.split_first()?;
    if quote != b'"' && quote != b'\'' {
        return None;
    }
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        let c = *rest.get(i)?;
        i += 1;
        if c == quote {
            return (i == rest.len()).then_some(out);
        }
        if c != b'\\' {
            out.push(c);
            continue;
        }
        let e = *rest.get(i)?;
        i += 1;
        let simple = match e {
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'\\' | b'"' | b'\'' | b'?' => Some(e),
            _ => None,
        };
        if let Some(b) = simple {
            out.push(b);
            continue;
        }
        let (radix, max_digits, start) = match e {
            b'0'..=b'7' => (8, 3, i - 1),
            b'x' | b'X' => (16, 2, i),
            _ => return None,
        };
        let digits = rest[start..]
            .iter()
            .take(max_digits)
            .take_while(|&&d| char::from(d).is_digit(radix))
            .count();
        let text = std::str::from_utf8(&rest[start..start + digits]).ok()?;
        out.push(u8::try_from(u32::from_str_radix(text, radix).ok()?).ok()?);
        i = start + digits;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes() {
        assert_eq!(strip_file_suffix("d/model.ckpt.index"), "d/model.ckpt");
        assert_eq!(
            strip_file_suffix("d/model.ckpt.data-00001-of-00002"),
            "d/model.ckpt"
        );
        assert_eq!(strip_file_suffix("d/model.ckpt"), "d/model.ckpt");
        assert_eq!(strip_file_suffix("d/model.data-x"), "d/model.data-x");
        assert_eq!(
            strip_file_suffix("d/m.data-0000a-of-00002"),
            "d/m.data-0000a-of-00002"
        );
    }

    #[test]
    fn checkpoint_state_text() {
        let text = b"model_checkpoint_path: \"model.ckpt-1000\"\nall_model_checkpoint_paths: \"model.ckpt-1000\"\n";
        assert_eq!(model_checkpoint_path(text).unwrap(), "model.ckpt-1000");
        let text = b"all_model_checkpoint_paths: \"a\"\n  model_checkpoint_path :  '/tmp/x/m\\303\\274.ckpt'\r\n";
        assert_eq!(model_checkpoint_path(text).unwrap(), "/tmp/x/m\u{fc}.ckpt");
        assert_eq!(unquote(b"\"a\\\"b\\x41\\n\"").unwrap(), b"a\"bA\n");
        for bad in [
            &b"model_checkpoint_path: unquoted"[..],
            b"model_checkpoint_path: \"open",
            b"x: \"y\"",
            b"",
        ] {
            assert!(
                model_checkpoint_path(bad).is_err(),
                "{}",
                bad.escape_ascii()
            );
        }
        assert!(unquote(b"\"\\400\"").is_none());
        assert!(unquote(b"\"a\" trailing").is_none());
    }

    #[test]
    fn detection() {
        let mut bytes = vec![0u8; 40];
        bytes.extend_from_slice(&table::TABLE_MAGIC.to_le_bytes());
        assert!(looks_like_tf_index(&bytes));
        assert!(!looks_like_tf_index(&bytes[1..]));
        bytes[47] ^= 1;
        assert!(!looks_like_tf_index(&bytes));
        assert!(!looks_like_tf_index(b"PK\x03\x04"));
    }
}
