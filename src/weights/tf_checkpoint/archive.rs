//! Released checkpoint tarballs (`.tar.gz` / `.tgz`), read in memory without extracting.
//!
//! The official EfficientNet releases are gzip-compressed tar archives holding one directory, e.g.
//! `efficientnet-b0/{checkpoint, model.ckpt.index, model.ckpt.data-00000-of-00001}` (Lite tarballs also
//! hold `.tflite` files). Only the members a checkpoint needs are kept: `checkpoint` files, `*.index` and
//! `*.data-*`. The whole gzip stream is read, so its CRC32 trailer is checked too.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use crate::error::{Error, Result};

/// Whether `path` names a gzip-compressed tar archive.
pub(crate) fn is_archive(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    name.ends_with(".tar.gz") || name.ends_with(".tgz")
}

/// Whether an archive member is part of a checkpoint.
fn wanted(member: &str) -> bool {
    let base = member.rsplit('/').next().unwrap_or(member);
    base == "checkpoint" || base.ends_with(".index") || base.contains(".data-")
}

/// Normalises a member path: `/` separators, no leading `./` or `/`.
fn normalise(member: &str) -> String {
    member
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// Reads the checkpoint members of the archive at `path`, by normalised member path.
pub(crate) fn read_members(path: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let shown = path.display().to_string();
    let bad =
        |e: std::io::Error| Error::format(&shown, format!("not a readable .tar.gz archive: {e}"));
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let gz = flate2::read::GzDecoder::new(BufReader::new(file));
    let mut archive = tar::Archive::new(gz);
    let mut members = BTreeMap::new();
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = normalise(&entry.path().map_err(bad)?.to_string_lossy());
        if !wanted(&name) {
            continue;
        }
        let mut data = Vec::new();
        entry.read_to_end(&mut data).map_err(bad)?;
        members.insert(name, data);
    }
    // Read to the end of the gzip stream so that its CRC32 and length trailer are verified: tar stops at
    // the end-of-archive marker and would not notice a truncated or damaged tail.
    std::io::copy(&mut archive.into_inner(), &mut std::io::sink()).map_err(bad)?;
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names() {
        assert_eq!(
            normalise("./efficientnet-b0//model.ckpt.index"),
            "efficientnet-b0/model.ckpt.index"
        );
        assert_eq!(normalise("/abs/checkpoint"), "abs/checkpoint");
        assert!(wanted("efficientnet-b0/checkpoint"));
        assert!(wanted("efficientnet-b0/model.ckpt.index"));
        assert!(wanted("efficientnet-b0/model.ckpt.data-00000-of-00001"));
        assert!(!wanted("efficientnet-lite0/efficientnet-lite0-fp32.tflite"));
        assert!(!wanted("efficientnet-b0/checkpoints.txt"));
        assert!(is_archive(Path::new("a/efficientnet-b0.tar.gz")));
        assert!(is_archive(Path::new("X.TGZ")));
        assert!(!is_archive(Path::new("model.ckpt")));
    }
}
