//! File-system helpers shared by the download cache and the dataset unpacker.

use std::path::{Path, PathBuf};

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
