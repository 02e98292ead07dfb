//! File-system helpers shared by the download cache and the dataset unpacker.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A temporary name next to `dest` (hidden, ending in `.partial`), unique per process and call:
/// concurrent writers of the same destination each fill their own, and a complete one is renamed into
/// place, so nothing at `dest` is ever half-written.
pub(crate) fn temp_sibling(dest: &Path) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = dest
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    dest.with_file_name(format!(".{name}.{}-{n}.partial", std::process::id()))
}

/// Renames the folder `tmp` (filled by `result`'s work) to `dest` when `result` is `Ok`, and removes it
/// otherwise. A `dest` another process completed first is kept: it is as good as ours.
pub(crate) fn publish_dir(tmp: &Path, dest: &Path, result: Result<()>) -> Result<()> {
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(tmp);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(tmp, dest) {
        let _ = std::fs::remove_dir_all(tmp);
        if !dest.is_dir() {
            return Err(Error::io(dest, e));
        }
    }
    Ok(())
}
