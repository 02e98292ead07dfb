//! The immutable string→string table (LevelDB SSTable format) of a TensorBundle `.index` file.
//!
//! Layout (tensorflow/core/lib/io/table_format.txt, format.cc, block.cc; LevelDB `doc/table_format.md`):
//!
//! ```text
//! [data block 1] ... [data block N] [metaindex block] [index block] [footer: 48 bytes]
//! ```
//!
//! - Footer: metaindex `BlockHandle`, index `BlockHandle` (each `varint64 offset, varint64 size`), zero
//!   padding to 40 bytes, then the magic `0xdb4775248b80fb57` as a little-endian `u64`.
//! - Each block is followed by a 5-byte trailer: a compression type byte (0 none, 1 Snappy) and the masked
//!   CRC32C of the block contents followed by that type byte.
//! - Block contents: entries `varint32 shared, varint32 non_shared, varint32 value_len, key delta, value`
//!   (the key is `previous_key[..shared] + delta`), then `num_restarts` fixed32 offsets of entries whose
//!   `shared` is 0, then fixed32 `num_restarts`.
//! - The index block maps a separator key (≥ the last key of a data block) to that block's handle. The
//!   metaindex block is empty (TensorBundle tables have no filter blocks); it is read only to verify it.
//!
//! Every offset, length and count read from the file is checked before use.

use std::borrow::Cow;

use super::crc;
use super::proto::{read_fixed32, read_varint32, read_varint64};
use crate::error::{Error, Result};

/// `kTableMagicNumber`, stored as a little-endian `u64` in the last 8 bytes.
pub(crate) const TABLE_MAGIC: u64 = 0xdb47_7524_8b80_fb57;
/// `Footer::kEncodedLength`: two handles of at most 20 bytes each, padded to 40, plus the magic.
pub(crate) const FOOTER_LEN: usize = 48;
/// Compression type byte and masked CRC32C after every block.
const TRAILER_LEN: usize = 5;
/// A Snappy stream expands at most ~21x (64-byte copies from 3-byte tags); reject larger claims before
/// allocating.
const MAX_SNAPPY_RATIO: usize = 24;

/// One key/value pair of the table.
pub(crate) type Entry = (Vec<u8>, Vec<u8>);

/// Whether `bytes` ends with the table magic.
pub(crate) fn has_table_magic(bytes: &[u8]) -> bool {
    bytes.len() >= FOOTER_LEN && bytes[bytes.len() - 8..] == TABLE_MAGIC.to_le_bytes()
}

/// Position and length of a block in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BlockHandle {
    offset: u64,
    size: u64,
}

impl BlockHandle {
    fn decode(buf: &[u8], pos: &mut usize) -> std::result::Result<Self, String> {
        let offset = read_varint64(buf, pos)?;
        let size = read_varint64(buf, pos)?;
        Ok(Self { offset, size })
    }
}

/// Reads every entry of the table in `bytes`, in key order, verifying every block checksum.
pub(crate) fn read_table(bytes: &[u8], file: &str) -> Result<Vec<Entry>> {
    let fmt = |message: String| Error::format(file, message);
    if !has_table_magic(bytes) {
        return Err(fmt(format!(
            "not a TensorFlow checkpoint index: {} bytes, {}",
            bytes.len(),
            if bytes.len() < FOOTER_LEN {
                "too short for the 48-byte table footer".to_string()
            } else {
                "the table magic number 0xdb4775248b80fb57 is missing at the end".to_string()
            }
        )));
    }
    let footer_start = bytes.len() - FOOTER_LEN;
    let handles = &bytes[footer_start..bytes.len() - 8];
    let mut pos = 0;
    let meta = BlockHandle::decode(handles, &mut pos)
        .map_err(|e| fmt(format!("table footer: metaindex handle: {e}")))?;
    let index = BlockHandle::decode(handles, &mut pos)
        .map_err(|e| fmt(format!("table footer: index handle: {e}")))?;
    if handles[pos..].iter().any(|&b| b != 0) {
        return Err(fmt(format!(
            "table footer: padding after the block handles is not zero (bytes {}..{})",
            footer_start + pos,
            footer_start + handles.len()
        )));
    }
    let blocks = &bytes[..footer_start];

    let meta_block = read_block(blocks, meta, file, "metaindex block")?;
    parse_block(&meta_block, file, "metaindex block")?;
    let index_block = read_block(blocks, index, file, "index block")?;
    let index_entries = parse_block(&index_block, file, "index block")?;

    let mut out: Vec<Entry> = Vec::new();
    for (i, (separator, value)) in index_entries.iter().enumerate() {
        let what = format!("data block {i}");
        let mut pos = 0;
        let handle = BlockHandle::decode(value, &mut pos)
            .ok()
            .filter(|_| pos == value.len())
            .ok_or_else(|| fmt(format!("index block entry {i} is not a block handle")))?;
        let contents = read_block(blocks, handle, file, &what)?;
        let entries = parse_block(&contents, file, &what)?;
        if let Some((last, _)) = entries.last() {
            if last > separator {
                return Err(fmt(format!(
                    "{what}: last key {:?} sorts after its index key {:?}",
                    last.escape_ascii().to_string(),
                    separator.escape_ascii().to_string()
                )));
            }
        }
        for entry in entries {
            if let Some((prev, _)) = out.last() {
                if entry.0 <= *prev {
                    return Err(fmt(format!(
                        "{what}: key {:?} is not after the previous key {:?} (keys must be sorted and unique)",
                        entry.0.escape_ascii().to_string(),
                        prev.escape_ascii().to_string()
                    )));
                }
            }
            out.push(entry);
        }
    }
    Ok(out)
}

/// Returns the contents of the block at `handle`, checked against its trailer CRC and decompressed.
fn read_block<'a>(
    blocks: &'a [u8],
    handle: BlockHandle,
    file: &str,
    what: &str,
) -> Result<Cow<'a, [u8]>> {
    let range = usize::try_from(handle.offset)
        .ok()
        .zip(usize::try_from(handle.size).ok())
        .and_then(|(start, size)| {
            let end = start.checked_add(size)?;
            (end.checked_add(TRAILER_LEN)? <= blocks.len()).then_some((start, end))
        });
    let Some((start, end)) = range else {
        return Err(Error::format(
            file,
            format!(
                "{what} at offset {} of {} bytes (+{TRAILER_LEN}-byte trailer) lies outside the {} bytes before the footer",
                handle.offset,
                handle.size,
                blocks.len()
            ),
        ));
    };
    let contents = &blocks[start..end];
    let kind = blocks[end];
    let stored = read_fixed32(blocks, end + 1).map_err(|e| Error::format(file, e))?;
    let actual = crc::extend(crc::value(contents), &[kind]);
    let expected = crc::unmask(stored);
    if actual != expected {
        return Err(Error::Checksum {
            file: file.to_string(),
            what: format!("{what} at offset {start}"),
            expected: format!("crc32c {expected:#010x}"),
            actual: format!("crc32c {actual:#010x}"),
        });
    }
    match kind {
        0 => Ok(Cow::Borrowed(contents)),
        1 => {
            let fail = |e: String| {
                Error::format(file, format!("{what}: bad Snappy-compressed block: {e}"))
            };
            let len = snap::raw::decompress_len(contents).map_err(|e| fail(e.to_string()))?;
            if len > contents.len().saturating_mul(MAX_SNAPPY_RATIO) {
                return Err(fail(format!(
                    "claims {len} bytes from {} compressed bytes",
                    contents.len()
                )));
            }
            let out = snap::raw::Decoder::new()
                .decompress_vec(contents)
                .map_err(|e| fail(e.to_string()))?;
            Ok(Cow::Owned(out))
        }
        other => Err(Error::format(
            file,
            format!("{what}: unknown block compression type {other} (0 = none and 1 = Snappy are known)"),
        )),
    }
}

/// Decodes the entries of one block, checking the restart array.
fn parse_block(data: &[u8], file: &str, what: &str) -> Result<Vec<Entry>> {
    let fmt = |message: String| Error::format(file, format!("{what}: {message}"));
    let n = data.len();
    if n < 4 {
        return Err(fmt(format!("{n} bytes is too short for a block")));
    }
    let num_restarts = read_fixed32(data, n - 4).map_err(fmt)? as usize;
    let restarts_start = num_restarts
        .checked_mul(4)
        .and_then(|len| (n - 4).checked_sub(len))
        .filter(|_| num_restarts > 0)
        .ok_or_else(|| {
            fmt(format!(
                "{num_restarts} restart points do not fit in {n} bytes"
            ))
        })?;
    let entries_region = &data[..restarts_start];

    let mut entries: Vec<Entry> = Vec::new();
    let mut restart_starts = Vec::new();
    let mut pos = 0;
    while pos < entries_region.len() {
        let start = pos;
        let at = |e: String| fmt(format!("entry at byte {start}: {e}"));
        let shared = read_varint32(entries_region, &mut pos).map_err(at)? as usize;
        let non_shared = read_varint32(entries_region, &mut pos).map_err(at)? as usize;
        let value_len = read_varint32(entries_region, &mut pos).map_err(at)? as usize;
        let prev: &[u8] = entries.last().map_or(&[], |(k, _)| k);
        if shared > prev.len() {
            return Err(at(format!(
                "shares {shared} key bytes but the previous key has {}",
                prev.len()
            )));
        }
        let key_end = pos + non_shared;
        let value_end = key_end.checked_add(value_len);
        let Some(value_end) = value_end.filter(|&e| e <= entries_region.len()) else {
            return Err(at(format!(
                "key delta of {non_shared} and value of {value_len} bytes run past the entries ({} bytes)",
                entries_region.len()
            )));
        };
        let mut key = Vec::with_capacity(shared + non_shared);
        key.extend_from_slice(&prev[..shared]);
        key.extend_from_slice(&entries_region[pos..key_end]);
        let value = entries_region[key_end..value_end].to_vec();
        if shared == 0 {
            restart_starts.push(start);
        }
        entries.push((key, value));
        pos = value_end;
    }

    let mut last = None;
    for i in 0..num_restarts {
        let r = read_fixed32(data, restarts_start + 4 * i).map_err(fmt)? as usize;
        let valid = if entries.is_empty() {
            r == 0
        } else {
            restart_starts.binary_search(&r).is_ok()
        };
        if !valid || last.is_some_and(|l| r <= l) {
            return Err(fmt(format!(
                "restart point {i} (offset {r}) is not the start of an unshared entry"
            )));
        }
        last = Some(r);
    }
    Ok(entries)
}

/// Test-only table writer: the inverse of [`read_table`], for synthetic indexes.
#[cfg(test)]
pub(crate) mod testutil {
    use super::super::crc;

    fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// Block contents for sorted `entries`, with a restart every `restart_interval` entries.
    pub(crate) fn build_block(entries: &[(Vec<u8>, Vec<u8>)], restart_interval: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut restarts = vec![];
        let mut prev: &[u8] = &[];
        for (i, (k, v)) in entries.iter().enumerate() {
            let shared = if i % restart_interval == 0 {
                restarts.push(out.len() as u32);
                0
            } else {
                prev.iter().zip(k).take_while(|(a, b)| a == b).count()
            };
            put_varint(&mut out, shared as u64);
            put_varint(&mut out, (k.len() - shared) as u64);
            put_varint(&mut out, v.len() as u64);
            out.extend_from_slice(&k[shared..]);
            out.extend_from_slice(v);
            prev = k;
        }
        if restarts.is_empty() {
            restarts.push(0);
        }
        for r in &restarts {
            out.extend_from_slice(&r.to_le_bytes());
        }
        out.extend_from_slice(&(restarts.len() as u32).to_le_bytes());
        out
    }

    fn push_block(file: &mut Vec<u8>, contents: &[u8], snappy: bool) -> Vec<u8> {
        let (body, kind) = if snappy {
            (
                snap::raw::Encoder::new().compress_vec(contents).unwrap(),
                1u8,
            )
        } else {
            (contents.to_vec(), 0u8)
        };
        let mut handle = Vec::new();
        put_varint(&mut handle, file.len() as u64);
        put_varint(&mut handle, body.len() as u64);
        file.extend_from_slice(&body);
        file.push(kind);
        let c = crc::mask(crc::extend(crc::value(&body), &[kind]));
        file.extend_from_slice(&c.to_le_bytes());
        handle
    }

    /// A whole table: sorted `entries` split into data blocks of `per_block` entries.
    pub(crate) fn build_table(
        entries: &[(Vec<u8>, Vec<u8>)],
        per_block: usize,
        restart_interval: usize,
        snappy: bool,
    ) -> Vec<u8> {
        let mut file = Vec::new();
        let mut index = Vec::new();
        for chunk in entries.chunks(per_block.max(1)) {
            let handle = push_block(&mut file, &build_block(chunk, restart_interval), snappy);
            index.push((chunk[chunk.len() - 1].0.clone(), handle));
        }
        let meta = push_block(&mut file, &build_block(&[], restart_interval), snappy);
        let idx = push_block(&mut file, &build_block(&index, 1), snappy);
        let mut footer = Vec::new();
        footer.extend_from_slice(&meta);
        footer.extend_from_slice(&idx);
        footer.resize(40, 0);
        footer.extend_from_slice(&super::TABLE_MAGIC.to_le_bytes());
        file.extend_from_slice(&footer);
        file
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::{build_block, build_table};
    use super::*;

    fn sample(n: usize) -> Vec<Entry> {
        (0..n)
            .map(|i| {
                let key = format!("efficientnet-b0/blocks_{i:03}/tpu_batch_normalization/gamma");
                (key.into_bytes(), vec![i as u8; i % 7])
            })
            .collect()
    }

    #[test]
    fn block_with_prefix_compression_and_restarts() {
        let entries = sample(40);
        let block = build_block(&entries, 16);
        // 40 entries, restarts at 0, 16, 32.
        assert_eq!(
            u32::from_le_bytes(block[block.len() - 4..].try_into().unwrap()),
            3
        );
        assert_eq!(parse_block(&block, "f", "b").unwrap(), entries);
        // Keys really are delta-encoded: the block is much smaller than the keys.
        let key_bytes: usize = entries.iter().map(|(k, _)| k.len()).sum();
        assert!(
            block.len() < key_bytes * 3 / 4,
            "{} vs {key_bytes}",
            block.len()
        );
        // An empty block has one restart at 0.
        assert!(parse_block(&build_block(&[], 16), "f", "b")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn block_errors() {
        let entries = sample(20);
        let good = build_block(&entries, 16);
        // Zero restarts, or more than fit.
        let mut b = good.clone();
        let n = b.len();
        b[n - 4..].copy_from_slice(&0u32.to_le_bytes());
        assert!(parse_block(&b, "f", "b").is_err());
        b[n - 4..].copy_from_slice(&1000u32.to_le_bytes());
        assert!(parse_block(&b, "f", "b").is_err());
        // A restart offset that is not an entry start.
        let mut b = good.clone();
        b[n - 8..n - 4].copy_from_slice(&3u32.to_le_bytes());
        assert!(parse_block(&b, "f", "b").is_err());
        // First entry claims to share bytes with a non-existent previous key.
        let mut b = good.clone();
        b[0] = 5;
        assert!(parse_block(&b, "f", "b").is_err());
        assert!(parse_block(&[1, 0], "f", "b").is_err());
    }

    #[test]
    fn multi_block_table_round_trip() {
        let entries = sample(100);
        for (per_block, interval) in [(1, 1), (7, 3), (16, 16), (100, 16)] {
            let table = build_table(&entries, per_block, interval, false);
            assert!(has_table_magic(&table));
            assert_eq!(read_table(&table, "t").unwrap(), entries);
        }
    }

    #[test]
    fn snappy_blocks() {
        let entries = sample(50);
        let table = build_table(&entries, 10, 16, true);
        assert_eq!(read_table(&table, "t").unwrap(), entries);
    }

    #[test]
    fn corrupted_tables_are_errors() {
        let entries = sample(30);
        let table = build_table(&entries, 8, 4, false);
        // Every single-byte change is detected (blocks by CRC, footer by magic/padding/handles).
        for i in 0..table.len() {
            let mut t = table.clone();
            t[i] ^= 0x41;
            assert!(read_table(&t, "t").is_err(), "flip at {i} not detected");
        }
        for len in 0..table.len() {
            assert!(
                read_table(&table[..len], "t").is_err(),
                "truncation to {len}"
            );
        }
        // A block CRC mismatch is reported as a checksum error naming the block.
        let mut t = table.clone();
        t[3] ^= 1;
        match read_table(&t, "t.index") {
            Err(Error::Checksum { file, what, .. }) => {
                assert_eq!(file, "t.index");
                assert!(what.contains("data block 0"), "{what}");
            }
            other => panic!("expected a checksum error, got {other:?}"),
        }
    }

    #[test]
    fn unsorted_keys_are_rejected() {
        let mut entries = sample(10);
        entries.swap(2, 3);
        let table = build_table(&entries, 4, 16, false);
        assert!(read_table(&table, "t").is_err());
    }
}
