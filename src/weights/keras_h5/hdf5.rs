//! HDF5 container structure: byte cursor, superblock, object headers and group links.
//!
//! Follows the "HDF5 File Format Specification Version 3.0" (The HDF Group), sections II.A
//! (superblock), III.A-C (v1 B-trees, symbol table nodes, local heaps), IV.A (object headers).
//! Only what Keras files use is implemented; everything else is a typed [`Error::Format`].

use std::cell::Cell;
use std::collections::HashSet;

use crate::error::{Error, Result};

/// Value of an address whose bits are all ones ("undefined address").
const UNDEFINED: u64 = u64::MAX;
/// Upper bound on object header continuation blocks followed for one object (guards cycles).
const MAX_HEADER_BLOCKS: usize = 4096;

/// Little-endian reader over a byte slice that reports every overrun as a typed error.
#[derive(Clone)]
pub(super) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Absolute file offset of `buf[0]`, for messages.
    origin: usize,
    file: &'a str,
    /// Size of file addresses and of lengths, from the superblock.
    sizes: (usize, usize),
}

impl<'a> Cursor<'a> {
    pub(super) fn new(buf: &'a [u8], origin: usize, file: &'a str, sizes: (usize, usize)) -> Self {
        Self {
            buf,
            pos: 0,
            origin,
            file,
            sizes,
        }
    }

    pub(super) fn err(&self, message: impl std::fmt::Display) -> Error {
        Error::format(
            self.file,
            format!(
                "HDF5: {message} (at byte offset {})",
                self.origin + self.pos
            ),
        )
    }

    pub(super) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub(super) fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(self.err(format!(
                "truncated {what}: need {n} bytes, {} left",
                self.remaining()
            )));
        };
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    pub(super) fn skip(&mut self, n: usize, what: &str) -> Result<()> {
        self.take(n, what).map(|_| ())
    }

    /// Reads an `n`-byte (n <= 8) little-endian unsigned integer.
    pub(super) fn uint(&mut self, n: usize, what: &str) -> Result<u64> {
        let bytes = self.take(n, what)?;
        if n > 8 {
            return Err(self.err(format!("{what}: integer of {n} bytes is too wide")));
        }
        Ok(bytes
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    pub(super) fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    pub(super) fn u16(&mut self, what: &str) -> Result<usize> {
        self.uint(2, what).map(|v| v as usize)
    }
    pub(super) fn u32(&mut self, what: &str) -> Result<u64> {
        self.uint(4, what)
    }
    /// A file address; `None` for the undefined address.
    pub(super) fn addr(&mut self, what: &str) -> Result<Option<u64>> {
        let n = self.sizes.0;
        let v = self.uint(n, what)?;
        let undefined = if n >= 8 {
            UNDEFINED
        } else {
            (1u64 << (8 * n)) - 1
        };
        Ok((v != undefined).then_some(v))
    }
    /// A "length" field (size of lengths from the superblock).
    pub(super) fn length(&mut self, what: &str) -> Result<u64> {
        self.uint(self.sizes.1, what)
    }
    /// Checks a 4-byte signature such as `TREE`.
    pub(super) fn magic(&mut self, sig: &[u8; 4], what: &str) -> Result<()> {
        let got = self.take(4, what)?;
        if got != sig {
            self.pos -= 4;
            return Err(self.err(format!(
                "{what}: expected signature {:?}, found {:?}",
                String::from_utf8_lossy(sig),
                String::from_utf8_lossy(got)
            )));
        }
        Ok(())
    }
}

/// One header message: its type, flags and payload.
pub(super) struct Message<'a> {
    pub(super) kind: u16,
    pub(super) flags: u8,
    pub(super) data: &'a [u8],
}

/// An HDF5 file held in memory, with the superblock parameters needed to follow addresses.
pub(super) struct Hdf5<'a> {
    data: &'a [u8],
    pub(super) file: &'a str,
    /// Absolute offset that file addresses are relative to.
    base: usize,
    sizes: (usize, usize),
    /// Address of the root group's object header.
    pub(super) root: u64,
    /// Bytes of tensor data still allowed (see [`Hdf5::max_data`]).
    budget: Cell<usize>,
}

/// The 8-byte format signature, found at offset 0, 512, 1024, 2048, ...
pub(super) const SIGNATURE: &[u8; 8] = b"\x89HDF\r\n\x1a\n";

/// Offsets where the signature may sit: 0 and powers of two from 512 up to the file length.
pub(super) fn signature_offset(bytes: &[u8]) -> Option<usize> {
    std::iter::once(0)
        .chain((9..63).map(|p| 1usize << p))
        .take_while(|&o| o < bytes.len())
        .find(|&o| bytes.get(o..o + 8) == Some(SIGNATURE.as_slice()))
}

impl<'a> Hdf5<'a> {
    /// Parses the superblock (versions 0-3).
    pub(super) fn parse(data: &'a [u8], file: &'a str) -> Result<Self> {
        let Some(start) = signature_offset(data) else {
            return Err(Error::format(file, "not an HDF5 file: signature not found"));
        };
        let mut c = Cursor::new(&data[start..], start, file, (8, 8));
        c.skip(8, "signature")?;
        let version = c.u8("superblock version")?;
        let root;
        let base;
        if version <= 1 {
            c.skip(3, "superblock free-space/root/reserved versions")?;
            c.skip(1, "shared header version")?;
            let sizes = (
                c.u8("size of offsets")? as usize,
                c.u8("size of lengths")? as usize,
            );
            check_sizes(&c, sizes)?;
            c.skip(1 + 4 + 4, "superblock B-tree K values and flags")?;
            if version == 1 {
                c.skip(4, "indexed storage K")?;
            }
            c.sizes = sizes;
            base = c.addr("base address")?.unwrap_or(0);
            c.skip(3 * sizes.0, "free-space, end-of-file and driver addresses")?;
            // Root group symbol table entry: link name offset, then object header address.
            c.skip(sizes.0, "root link name offset")?;
            root = c.addr("root object header address")?;
        } else if version <= 3 {
            let sizes = (
                c.u8("size of offsets")? as usize,
                c.u8("size of lengths")? as usize,
            );
            check_sizes(&c, sizes)?;
            c.skip(1, "file consistency flags")?;
            c.sizes = sizes;
            base = c.addr("base address")?.unwrap_or(0);
            c.skip(2 * sizes.0, "extension and end-of-file addresses")?;
            root = c.addr("root object header address")?;
        } else {
            return Err(c.err(format!("unsupported superblock version {version}")));
        }
        let root = root.ok_or_else(|| c.err("root group address is undefined"))?;
        // The library constrains the base address to the superblock's own offset (a user
        // block, if any, precedes it); addresses are relative to it.
        if base != 0 && base != start as u64 {
            return Err(c.err(format!("unsupported base address {base}")));
        }
        let base = start;
        Ok(Self {
            data,
            file,
            base,
            sizes: c.sizes,
            root,
            budget: Cell::new(data.len().saturating_mul(1100).max(1 << 20)),
        })
    }

    /// A cursor over bytes already taken from this file (a message payload, a heap object).
    pub(super) fn cursor(&self, data: &'a [u8]) -> Cursor<'a> {
        Cursor::new(data, 0, self.file, self.sizes)
    }

    /// A format error about this file.
    pub(super) fn err(&self, message: impl std::fmt::Display) -> Error {
        Error::format(self.file, message.to_string())
    }

    /// Largest amount of tensor data this file can legitimately hold: deflate expands data at
    /// most about 1032:1, so nothing decodes to more than 1100 times the file (at least 1 MiB).
    pub(super) fn max_data(&self) -> usize {
        self.data.len().saturating_mul(1100).max(1 << 20)
    }

    /// Takes `n` bytes from the file's data budget, so that datasets sharing storage or listed
    /// many times cannot make a small damaged file decode to unbounded memory.
    pub(super) fn spend(&self, n: usize, what: &str) -> Result<()> {
        let left = self.budget.get().checked_sub(n).ok_or_else(|| {
            self.err(format!(
                "{what}: {n} bytes of data is more than the file can hold"
            ))
        })?;
        self.budget.set(left);
        Ok(())
    }

    pub(super) fn sizes(&self) -> (usize, usize) {
        self.sizes
    }

    /// A cursor from file address `addr` to the end of the file.
    pub(super) fn at(&self, addr: u64, what: &str) -> Result<Cursor<'a>> {
        let start = usize::try_from(addr)
            .ok()
            .and_then(|a| a.checked_add(self.base))
            .filter(|&s| s <= self.data.len());
        let Some(start) = start else {
            return Err(Error::format(
                self.file,
                format!(
                    "HDF5: {what} at address {addr} lies beyond the end of the file ({} bytes)",
                    self.data.len()
                ),
            ));
        };
        Ok(Cursor::new(
            &self.data[start..],
            start,
            self.file,
            self.sizes,
        ))
    }

    /// `len` bytes at file address `addr`.
    pub(super) fn slice(&self, addr: u64, len: u64, what: &str) -> Result<&'a [u8]> {
        let mut c = self.at(addr, what)?;
        let len =
            usize::try_from(len).map_err(|_| c.err(format!("{what}: size {len} too large")))?;
        c.take(len, what)
    }

    /// Collects every message of the object header at `addr` (versions 1 and 2), following
    /// continuation messages.
    pub(super) fn object(&self, addr: u64) -> Result<Vec<Message<'a>>> {
        let mut c = self.at(addr, "object header")?;
        let mut msgs = Vec::new();
        let mut blocks = Vec::new();
        let v2 = c.buf.get(..4) == Some(b"OHDR".as_slice());
        let mut creation_order = false;
        if v2 {
            c.skip(4, "object header signature")?;
            let version = c.u8("object header version")?;
            if version != 2 {
                return Err(c.err(format!("unsupported object header version {version}")));
            }
            let flags = c.u8("object header flags")?;
            creation_order = flags & 0x04 != 0;
            c.skip(
                usize::from(flags & 0x20 != 0) * 16 + usize::from(flags & 0x10 != 0) * 4,
                "object header times and attribute phase change",
            )?;
            let size = c.uint(1 << (flags & 3), "object header chunk size")?;
            let len = usize::try_from(size).map_err(|_| c.err("chunk size too large"))?;
            blocks.push(c.take(len, "object header chunk")?);
        } else {
            let version = c.u8("object header version")?;
            if version != 1 {
                return Err(c.err(format!("unsupported object header version {version}")));
            }
            c.skip(1 + 2 + 4, "object header message count and reference count")?;
            let size = c.u32("object header size")?;
            c.skip(4, "object header padding")?;
            blocks.push(c.take(size as usize, "object header messages")?);
        }
        let mut next = 0;
        while let Some(&block) = blocks.get(next) {
            next += 1;
            let mut m = self.cursor(block);
            let header_len = if v2 {
                4 + 2 * usize::from(creation_order)
            } else {
                8
            };
            while m.remaining() >= header_len {
                let (kind, size, flags) = if v2 {
                    let kind = m.u8("message type")?;
                    let size = m.u16("message size")?;
                    let flags = m.u8("message flags")?;
                    m.skip(2 * usize::from(creation_order), "message creation order")?;
                    (u16::from(kind), size, flags)
                } else {
                    let kind = m.u16("message type")? as u16;
                    let size = m.u16("message size")?;
                    let flags = m.u8("message flags")?;
                    m.skip(3, "message reserved bytes")?;
                    (kind, size, flags)
                };
                let data = m.take(size, "message data")?;
                if kind == 0x10 {
                    if blocks.len() >= MAX_HEADER_BLOCKS {
                        return Err(m.err("too many object header continuation blocks"));
                    }
                    let mut d = self.cursor(data);
                    let at = d.addr("continuation address")?;
                    let len = d.length("continuation length")?;
                    let at = at.ok_or_else(|| d.err("continuation address undefined"))?;
                    let mut block = self.at(at, "object header continuation")?;
                    let len = usize::try_from(len).map_err(|_| d.err("continuation too long"))?;
                    if v2 {
                        block.magic(b"OCHK", "object header continuation")?;
                        let body = block.take(len.saturating_sub(8), "continuation block")?;
                        blocks.push(body);
                    } else {
                        blocks.push(block.take(len, "continuation block")?);
                    }
                } else {
                    msgs.push(Message { kind, flags, data });
                }
            }
        }
        Ok(msgs)
    }

    /// The hard links of a group (name, object header address), from its symbol table
    /// (old-style groups) or its link messages (compact new-style groups).
    pub(super) fn links(&self, msgs: &[Message<'a>]) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for msg in msgs {
            let mut c = self.cursor(msg.data);
            match msg.kind {
                0x11 => {
                    let btree = c.addr("symbol table B-tree address")?;
                    let heap = c.addr("symbol table local heap address")?;
                    let heap = heap.ok_or_else(|| c.err("group local heap address undefined"))?;
                    let names = self.local_heap(heap)?;
                    if let Some(btree) = btree {
                        let mut seen = HashSet::new();
                        self.group_btree(btree, None, names, &mut seen, &mut out)?;
                    }
                }
                0x02 => {
                    c.skip(1, "link info version")?;
                    let flags = c.u8("link info flags")?;
                    c.skip(8 * usize::from(flags & 1), "max creation index")?;
                    if c.addr("link fractal heap address")?.is_some() {
                        return Err(c.err(
                            "group uses dense link storage (fractal heap), which this reader \
                             does not support; re-save the file with h5py's default format",
                        ));
                    }
                }
                0x06 => {
                    if let Some(link) = self.link_message(&mut c)? {
                        out.push(link);
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// A link message; `None` for soft and external links.
    fn link_message(&self, c: &mut Cursor<'a>) -> Result<Option<(String, u64)>> {
        let version = c.u8("link version")?;
        if version != 1 {
            return Err(c.err(format!("unsupported link message version {version}")));
        }
        let flags = c.u8("link flags")?;
        let kind = if flags & 0x08 != 0 {
            c.u8("link type")?
        } else {
            0
        };
        c.skip(8 * usize::from(flags & 0x04 != 0), "link creation order")?;
        c.skip(usize::from(flags & 0x10 != 0), "link name charset")?;
        let name_len = c.uint(1 << (flags & 3), "link name length")?;
        let name = c.take(name_len as usize, "link name")?;
        let name = utf8(c, name, "link name")?;
        if kind != 0 {
            return Ok(None);
        }
        let addr = c.addr("link target")?;
        Ok(Some((
            name,
            addr.ok_or_else(|| c.err("hard link to undefined address"))?,
        )))
    }

    /// The data segment of a local heap (it holds the group's link names).
    fn local_heap(&self, addr: u64) -> Result<&'a [u8]> {
        let mut c = self.at(addr, "local heap")?;
        c.magic(b"HEAP", "local heap")?;
        c.skip(4, "local heap version")?;
        let size = c.length("local heap data size")?;
        c.length("local heap free list")?;
        let data = c.addr("local heap data address")?;
        self.slice(
            data.ok_or_else(|| c.err("local heap data undefined"))?,
            size,
            "local heap data",
        )
    }

    /// Walks a group (type 0) v1 B-tree; `level` is the level the parent expects.
    fn group_btree(
        &self,
        addr: u64,
        level: Option<u8>,
        names: &'a [u8],
        seen: &mut HashSet<u64>,
        out: &mut Vec<(String, u64)>,
    ) -> Result<()> {
        let (node_level, children) = self.btree_node(addr, 0, level, seen, |c| {
            c.length("group B-tree key").map(|_| ())
        })?;
        for (_, child) in children {
            if node_level > 0 {
                self.group_btree(child, Some(node_level - 1), names, seen, out)?;
                continue;
            }
            self.first_visit(child, seen)?;
            let mut c = self.at(child, "symbol table node")?;
            c.magic(b"SNOD", "symbol table node")?;
            c.skip(2, "symbol table node version")?;
            let count = c.u16("symbol count")?;
            for _ in 0..count {
                let name_at = c.length("symbol name offset")?;
                let target = c.addr("symbol object address")?;
                c.skip(24, "symbol cache")?;
                let name = names
                    .get(usize::try_from(name_at).unwrap_or(usize::MAX)..)
                    .and_then(|s| s.split(|&b| b == 0).next())
                    .ok_or_else(|| c.err(format!("link name offset {name_at} outside the heap")))?;
                let target = target.ok_or_else(|| c.err("symbol with undefined address"))?;
                out.push((utf8(&c, name, "link name")?, target));
            }
        }
        Ok(())
    }

    /// Fails if `addr` was already visited in this walk: a well-formed tree reaches each node
    /// once, and a damaged one could otherwise repeat work exponentially.
    pub(super) fn first_visit(&self, addr: u64, seen: &mut HashSet<u64>) -> Result<()> {
        if seen.insert(addr) {
            Ok(())
        } else {
            Err(self.err(format!("B-tree reaches address {addr} twice")))
        }
    }

    /// Reads one v1 B-tree node of type `kind`; returns its level and (key, child) pairs, where
    /// `key` parses each key before its child. Levels must strictly decrease (so cycles end).
    pub(super) fn btree_node<K>(
        &self,
        addr: u64,
        kind: u8,
        expect_level: Option<u8>,
        seen: &mut HashSet<u64>,
        mut key: impl FnMut(&mut Cursor<'a>) -> Result<K>,
    ) -> Result<(u8, Vec<(K, u64)>)> {
        self.first_visit(addr, seen)?;
        let mut c = self.at(addr, "B-tree node")?;
        c.magic(b"TREE", "B-tree node")?;
        let node_kind = c.u8("B-tree node type")?;
        let level = c.u8("B-tree level")?;
        if node_kind != kind || expect_level.is_some_and(|l| l != level) {
            return Err(c.err(format!(
                "B-tree node of type {node_kind} level {level}, expected type {kind} level {expect_level:?}"
            )));
        }
        let entries = c.u16("B-tree entries used")?;
        c.skip(2 * self.sizes.0, "B-tree sibling addresses")?;
        let mut out = Vec::new();
        for _ in 0..entries {
            let k = key(&mut c)?;
            let child = c.addr("B-tree child address")?;
            out.push((
                k,
                child.ok_or_else(|| c.err("B-tree child address undefined"))?,
            ));
        }
        Ok((level, out))
    }
}

fn check_sizes(c: &Cursor, sizes: (usize, usize)) -> Result<()> {
    for s in [sizes.0, sizes.1] {
        if ![2, 4, 8].contains(&s) {
            return Err(c.err(format!("unsupported address/length size {s}")));
        }
    }
    Ok(())
}

/// Decodes UTF-8 (HDF5 names and Keras strings are ASCII or UTF-8).
pub(super) fn utf8(c: &Cursor, bytes: &[u8], what: &str) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| c.err(format!("{what} is not valid UTF-8")))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A superblock v2 (8-byte addresses) whose root object header sits at `root`, then `rest`.
    pub(crate) fn file_with(root: u64, rest: &[u8]) -> Vec<u8> {
        let mut b = SIGNATURE.to_vec();
        b.extend([2, 8, 8, 0]);
        b.extend(0u64.to_le_bytes()); // base address
        b.extend(u64::MAX.to_le_bytes()); // no superblock extension
        b.extend(0u64.to_le_bytes()); // end of file (unused)
        b.extend(root.to_le_bytes());
        b.extend([0; 4]); // checksum (not verified)
        assert_eq!(b.len(), 48);
        b.extend(rest);
        b
    }

    #[test]
    fn cursor_reads_little_endian_and_reports_truncation() {
        let mut c = Cursor::new(&[1, 2, 3], 100, "f.h5", (8, 8));
        assert_eq!(c.uint(2, "x").unwrap(), 0x0201);
        let err = c.u16("the thing").unwrap_err().to_string();
        assert!(
            err.contains("truncated the thing") && err.contains("offset 102"),
            "{err}"
        );
    }

    #[test]
    fn all_ones_address_is_undefined() {
        let ff = [0xff; 8];
        assert_eq!(Cursor::new(&ff, 0, "f", (4, 4)).addr("a").unwrap(), None);
        assert_eq!(Cursor::new(&ff, 0, "f", (8, 8)).addr("a").unwrap(), None);
        assert_eq!(
            Cursor::new(&[7, 0], 0, "f", (2, 2)).addr("a").unwrap(),
            Some(7)
        );
    }

    #[test]
    fn signature_is_searched_at_powers_of_two() {
        let mut b = vec![0u8; 2048];
        b[512..520].copy_from_slice(SIGNATURE);
        assert_eq!(signature_offset(&b), Some(512));
        b.copy_within(512..520, 100);
        b[512] = 0;
        assert_eq!(signature_offset(&b), None);
    }

    #[test]
    fn superblock_v2_gives_the_root_address() {
        let bytes = file_with(48, &[]);
        assert_eq!(Hdf5::parse(&bytes, "f").unwrap().root, 48);
        let mut bad = bytes.clone();
        bad[8] = 7;
        let err = Hdf5::parse(&bad, "f").err().unwrap().to_string();
        assert!(err.contains("superblock version 7"), "{err}");
    }

    #[test]
    fn data_budget_is_shared_by_all_datasets() {
        let bytes = file_with(48, &[]);
        let h = Hdf5::parse(&bytes, "f").unwrap();
        assert!(h.spend(1 << 19, "a").is_ok() && h.spend(1 << 19, "b").is_ok());
        let err = h.spend(1, "c").unwrap_err().to_string();
        assert!(
            err.contains("c: 1 bytes of data is more than the file can hold"),
            "{err}"
        );
    }

    #[test]
    fn cyclic_header_continuations_end_in_an_error() {
        // v1 header at 48 whose only message continues at 88, a block that continues at itself.
        let continuation = |at: u64| {
            let mut m = vec![0x10, 0, 16, 0, 0, 0, 0, 0];
            m.extend(at.to_le_bytes());
            m.extend(24u64.to_le_bytes());
            m
        };
        let mut rest = vec![1, 0, 1, 0, 1, 0, 0, 0, 24, 0, 0, 0, 0, 0, 0, 0];
        rest.extend(continuation(88));
        rest.extend(continuation(88));
        let bytes = file_with(48, &rest);
        let h = Hdf5::parse(&bytes, "f").unwrap();
        let err = h.object(48).err().unwrap().to_string();
        assert!(
            err.contains("too many object header continuation blocks"),
            "{err}"
        );
    }

    #[test]
    fn btree_levels_must_match_what_the_parent_expects() {
        let mut node = b"TREE".to_vec();
        node.extend([0, 1, 0, 0]); // group node, level 1, no entries
        node.extend([0xff; 16]);
        let bytes = file_with(48, &node);
        let h = Hdf5::parse(&bytes, "f").unwrap();
        assert!(h
            .btree_node(48, 0, Some(1), &mut HashSet::new(), |_| Ok(()))
            .is_ok());
        let err = h
            .btree_node(48, 0, Some(0), &mut HashSet::new(), |_| Ok(()))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("level 1, expected type 0 level Some(0)"),
            "{err}"
        );
        assert!(h
            .btree_node(48, 1, None, &mut HashSet::new(), |_| Ok(()))
            .is_err());
    }
}
