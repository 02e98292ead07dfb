//! HDF5 values: datatypes, dataspaces, attributes, dataset storage (compact, contiguous,
//! chunked with deflate/shuffle/fletcher32) and variable-length strings in global heaps.
//!
//! Spec sections IV.A.2.b (dataspace), IV.A.2.d (datatype), IV.A.2.i (layout), IV.A.2.l
//! (filter pipeline), IV.A.2.m (attribute), III.E (global heap).

use std::collections::HashSet;

use super::hdf5::{utf8, Cursor, Hdf5, Message};
use crate::error::{Error, Result};
use crate::weights::raw::{RawDType, RawTensor};

/// Most ranks HDF5 allows.
const MAX_RANK: usize = 32;

/// The element types Keras files contain (anything else is kept as `Other` for messages).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Dtype {
    Int { size: usize, signed: bool, be: bool },
    Float { raw: RawDType, be: bool },
    FixedStr { size: usize },
    VarStr,
    Other { class: u8, size: usize },
}

impl Dtype {
    pub(super) fn parse(c: &mut Cursor) -> Result<(Self, usize)> {
        let class_version = c.u8("datatype class")?;
        let bits = c.take(3, "datatype bit fields")?;
        let b0 = bits[0];
        let size = c.u32("datatype size")? as usize;
        let class = class_version & 0x0f;
        let dtype = match class {
            0 => {
                c.skip(4, "integer properties")?;
                let be = b0 & 1 != 0;
                Dtype::Int {
                    size,
                    signed: b0 & 0x08 != 0,
                    be,
                }
            }
            1 => {
                c.skip(4, "float bit offset and precision")?;
                c.skip(1, "float exponent location")?;
                let exponent = c.u8("float exponent size")?;
                c.skip(6, "float mantissa and bias")?;
                let raw = match (size, exponent) {
                    (2, 5) => Some(RawDType::F16),
                    (2, 8) => Some(RawDType::BF16),
                    (4, 8) => Some(RawDType::F32),
                    (8, 11) => Some(RawDType::F64),
                    _ => None,
                };
                match raw {
                    // Bit 6 set with bit 0 is VAX order, which nothing here reads.
                    Some(raw) if b0 & 0x40 == 0 => Dtype::Float {
                        raw,
                        be: b0 & 1 != 0,
                    },
                    _ => Dtype::Other { class, size },
                }
            }
            3 => Dtype::FixedStr { size },
            // Variable-length; the base type that follows is not needed for strings.
            9 if b0 & 0x0f == 1 => Dtype::VarStr,
            _ => Dtype::Other { class, size },
        };
        Ok((dtype, size))
    }

    fn raw(self) -> Option<(RawDType, bool)> {
        match self {
            Dtype::Float { raw, be } => Some((raw, be)),
            Dtype::Int { size, signed, be } => {
                let raw = match (size, signed) {
                    (1, false) => RawDType::U8,
                    (1, true) => RawDType::I8,
                    (2, true) => RawDType::I16,
                    (4, true) => RawDType::I32,
                    (8, true) => RawDType::I64,
                    _ => return None,
                };
                Some((raw, be))
            }
            _ => None,
        }
    }
}

/// Parses a dataspace message into the shape (`[]` for a scalar, `[0]` for a null space).
fn dataspace(c: &mut Cursor) -> Result<Vec<usize>> {
    let version = c.u8("dataspace version")?;
    let rank = c.u8("dataspace rank")? as usize;
    c.skip(1, "dataspace flags")?;
    match version {
        1 => c.skip(5, "dataspace reserved bytes")?,
        2 => {
            if c.u8("dataspace type")? == 2 {
                return Ok(vec![0]);
            }
        }
        v => return Err(c.err(format!("unsupported dataspace version {v}"))),
    }
    if rank > MAX_RANK {
        return Err(c.err(format!("dataspace rank {rank} exceeds {MAX_RANK}")));
    }
    (0..rank)
        .map(|_| {
            let d = c.length("dataspace dimension")?;
            usize::try_from(d).map_err(|_| c.err(format!("dimension {d} too large")))
        })
        .collect()
}

/// Number of bytes of `shape` elements of `size` bytes, checked for overflow.
fn byte_len(c: &Cursor, shape: &[usize], size: usize) -> Result<usize> {
    shape
        .iter()
        .try_fold(size, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| c.err(format!("shape {shape:?} overflows")))
}

/// The first message of `kind`, refusing shared (committed) messages.
fn find<'a, 'm>(h: &Hdf5<'a>, msgs: &'m [Message<'a>], kind: u16) -> Result<Option<&'m [u8]>> {
    match msgs.iter().find(|m| m.kind == kind) {
        Some(m) if m.flags & 0x02 != 0 => Err(h.err(format!(
            "HDF5: shared header message of type {kind:#x} is not supported"
        ))),
        Some(m) => Ok(Some(m.data)),
        None => Ok(None),
    }
}

/// An attribute's type, shape and raw element bytes.
pub(super) struct Attribute<'a> {
    dtype: Dtype,
    size: usize,
    shape: Vec<usize>,
    data: &'a [u8],
}

/// Finds attribute `name` among an object's header messages.
pub(super) fn attribute<'a>(
    h: &Hdf5<'a>,
    msgs: &[Message<'a>],
    name: &str,
) -> Result<Option<Attribute<'a>>> {
    for msg in msgs.iter().filter(|m| m.kind == 0x0c) {
        let mut c = h.cursor(msg.data);
        let version = c.u8("attribute version")?;
        let flags = c.u8("attribute flags")?;
        let name_len = c.u16("attribute name size")?;
        let type_len = c.u16("attribute datatype size")?;
        let space_len = c.u16("attribute dataspace size")?;
        let pad = |n: usize| if version == 1 { n.div_ceil(8) * 8 } else { n };
        match version {
            1 | 2 => {}
            3 => c.skip(1, "attribute name encoding")?,
            v => return Err(c.err(format!("unsupported attribute message version {v}"))),
        }
        let raw_name = c.take(pad(name_len), "attribute name")?;
        let raw_name = raw_name.get(..name_len).unwrap_or(raw_name);
        if raw_name.split(|&b| b == 0).next() != Some(name.as_bytes()) {
            continue;
        }
        if version > 1 && flags & 0x03 != 0 {
            return Err(c.err(format!(
                "attribute `{name}` uses a shared datatype or dataspace"
            )));
        }
        let (dtype, size) = Dtype::parse(&mut h.cursor(c.take(pad(type_len), "attribute type")?))?;
        let shape = dataspace(&mut h.cursor(c.take(pad(space_len), "attribute space")?))?;
        let len = byte_len(&c, &shape, size)?;
        let data = c.take(len, "attribute data")?;
        return Ok(Some(Attribute {
            dtype,
            size,
            shape,
            data,
        }));
    }
    Ok(None)
}

impl Attribute<'_> {
    /// The attribute as a list of strings (fixed- or variable-length). A zero-element numeric
    /// array (what Keras writes for a layer without weights) is an empty list.
    pub(super) fn strings(&self, h: &Hdf5, name: &str) -> Result<Vec<String>> {
        let c = h.cursor(self.data);
        let chunks = self.data.chunks_exact(self.size.max(1));
        match self.dtype {
            Dtype::FixedStr { .. } => chunks
                .map(|s| {
                    let s = s.split(|&b| b == 0).next().unwrap_or(s);
                    utf8(&c, s.trim_ascii_end(), name)
                })
                .collect(),
            Dtype::VarStr => chunks.map(|e| global_heap_string(h, e, name)).collect(),
            _ if self.shape.contains(&0) => Ok(Vec::new()),
            other => Err(c.err(format!(
                "attribute `{name}` holds {other:?}, expected strings"
            ))),
        }
    }
}

/// Resolves one variable-length string element (length, heap collection address, index).
fn global_heap_string(h: &Hdf5, element: &[u8], what: &str) -> Result<String> {
    let mut e = h.cursor(element);
    let len = e.u32("string length")?;
    let collection = e.addr("global heap address")?;
    let index = e.u32("global heap index")?;
    let Some(collection) = collection.filter(|_| len > 0) else {
        return Ok(String::new());
    };
    let mut c = h.at(collection, "global heap collection")?;
    c.magic(b"GCOL", "global heap collection")?;
    c.skip(4, "global heap version")?;
    let size = c.length("global heap collection size")?;
    let header = 8 + h.sizes().1;
    let body = usize::try_from(size)
        .unwrap_or(usize::MAX)
        .saturating_sub(header);
    let mut objs = h.cursor(c.take(body, "global heap collection")?);
    while objs.remaining() >= 8 + h.sizes().1 {
        let i = objs.u16("global heap object index")?;
        objs.skip(6, "global heap object reference count")?;
        let size = objs.length("global heap object size")?;
        if i == 0 {
            break;
        }
        let data = objs.take(size as usize, "global heap object")?;
        if i as u64 == index {
            let bytes = data
                .get(..len as usize)
                .ok_or_else(|| objs.err(format!("{what}: string longer than its heap object")))?;
            return utf8(&objs, bytes, what);
        }
        objs.skip((8 - size as usize % 8) % 8, "global heap object padding")?;
    }
    Err(c.err(format!("{what}: global heap object {index} not found")))
}

/// Reads the dataset whose header messages are `msgs` into a row-major little-endian tensor.
pub(super) fn dataset(h: &Hdf5, msgs: &[Message], name: &str) -> Result<RawTensor> {
    let missing = |what: &str| h.err(format!("dataset `{name}` has no {what} message"));
    let mut space = h.cursor(find(h, msgs, 0x01)?.ok_or_else(|| missing("dataspace"))?);
    let shape = dataspace(&mut space)?;
    let mut t = h.cursor(find(h, msgs, 0x03)?.ok_or_else(|| missing("datatype"))?);
    let (dtype, size) = Dtype::parse(&mut t)?;
    let Some((raw, be)) = dtype.raw() else {
        return Err(Error::UnsupportedDType {
            file: h.file.to_string(),
            tensor: name.to_string(),
            dtype: format!("HDF5 {dtype:?}"),
        });
    };
    let mut c = h.cursor(find(h, msgs, 0x08)?.ok_or_else(|| missing("layout"))?);
    let len = byte_len(&c, &shape, size)?;
    h.spend(len, &format!("dataset `{name}`"))?;
    let version = c.u8("layout version")?;
    if !(3..=4).contains(&version) {
        return Err(c.err(format!(
            "dataset `{name}`: unsupported layout message version {version}"
        )));
    }
    let mut data = match c.u8("layout class")? {
        0 => {
            let n = c.u16("compact data size")?;
            c.take(n, "compact data")?.to_vec()
        }
        1 => {
            let addr = c.addr("contiguous data address")?;
            let n = c.length("contiguous data size")?;
            match addr {
                Some(addr) => h.slice(addr, n, "contiguous data")?.to_vec(),
                // Never written: HDF5 returns the fill value, zero by default.
                None => vec![0; len],
            }
        }
        2 if version == 3 => {
            let rank = c.u8("chunk rank")? as usize;
            let btree = c.addr("chunk B-tree address")?;
            let dims = (0..rank)
                .map(|_| c.u32("chunk dimension").map(|d| d as usize))
                .collect::<Result<Vec<_>>>()?;
            let filters = find(h, msgs, 0x0b)?
                .map(|d| filters(&mut h.cursor(d)))
                .transpose()?;
            let mut out = vec![0; len];
            if let Some(btree) = btree {
                let chunked = Chunked {
                    h,
                    shape: &shape,
                    chunk: &dims,
                    size,
                    filters: filters.unwrap_or_default(),
                };
                chunked.read(btree, None, &mut HashSet::new(), &mut out, name)?;
            }
            out
        }
        class => {
            return Err(c.err(format!(
            "dataset `{name}`: layout class {class} in layout version {version} is not supported"
        )))
        }
    };
    if be {
        data.chunks_exact_mut(size).for_each(|e| e.reverse());
    }
    RawTensor::new(raw, shape, data, h.file, name)
}

/// Filter ids and client data of a filter pipeline message, in application order.
fn filters(c: &mut Cursor) -> Result<Vec<(u16, Vec<u32>)>> {
    let version = c.u8("filter pipeline version")?;
    let count = c.u8("filter count")?;
    if version == 1 {
        c.skip(6, "filter pipeline reserved bytes")?;
    }
    (0..count)
        .map(|_| {
            let id = c.u16("filter id")? as u16;
            let name_len = if version == 1 || id >= 256 {
                c.u16("filter name length")?
            } else {
                0
            };
            c.skip(2, "filter flags")?;
            let values = c.u16("filter client data count")?;
            let name_len = if version == 1 {
                name_len.div_ceil(8) * 8
            } else {
                name_len
            };
            c.skip(name_len, "filter name")?;
            let data = (0..values)
                .map(|_| c.u32("filter client data").map(|v| v as u32))
                .collect::<Result<_>>()?;
            if version == 1 && values % 2 == 1 {
                c.skip(4, "filter client data padding")?;
            }
            Ok((id, data))
        })
        .collect()
}

/// A chunked dataset being assembled from its chunk B-tree.
struct Chunked<'h, 'a> {
    h: &'h Hdf5<'a>,
    shape: &'h [usize],
    /// Chunk dimensions; the last entry is the element size.
    chunk: &'h [usize],
    size: usize,
    filters: Vec<(u16, Vec<u32>)>,
}

impl Chunked<'_, '_> {
    fn read(
        &self,
        addr: u64,
        level: Option<u8>,
        seen: &mut HashSet<u64>,
        out: &mut [u8],
        name: &str,
    ) -> Result<()> {
        let rank = self.shape.len();
        if self.chunk.len() != rank + 1
            || self.chunk.last() != Some(&self.size)
            || self.chunk.contains(&0)
        {
            let msg = format!(
                "dataset `{name}`: chunk dims {:?} do not fit shape {:?}",
                self.chunk, self.shape
            );
            return Err(self.h.err(msg));
        }
        let (node_level, entries) = self.h.btree_node(addr, 1, level, seen, |c| {
            let stored = c.u32("chunk size")?;
            let mask = c.u32("chunk filter mask")?;
            let offsets = (0..=rank)
                .map(|_| c.uint(8, "chunk offset"))
                .collect::<Result<Vec<_>>>()?;
            Ok((stored, mask, offsets))
        })?;
        for ((stored, mask, offsets), child) in entries {
            if node_level > 0 {
                self.read(child, Some(node_level - 1), seen, out, name)?;
                continue;
            }
            self.h.first_visit(child, seen)?;
            let mut bytes = self.h.slice(child, stored, "chunk")?.to_vec();
            let expected = self.chunk.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            let expected = expected
                .filter(|&n| n <= self.h.max_data())
                .ok_or_else(|| self.h.err(format!("dataset `{name}`: chunk too large")))?;
            for (i, (id, data)) in self.filters.iter().enumerate().rev() {
                if mask.checked_shr(i as u32).unwrap_or(0) & 1 == 0 {
                    bytes = self.unfilter(*id, data, bytes, expected, name)?;
                }
            }
            if bytes.len() != expected {
                let msg = format!(
                    "dataset `{name}`: chunk holds {} bytes, expected {expected}",
                    bytes.len()
                );
                return Err(self.h.err(msg));
            }
            self.place(&bytes, &offsets, out, name)?;
        }
        Ok(())
    }

    fn unfilter(
        &self,
        id: u16,
        data: &[u32],
        bytes: Vec<u8>,
        limit: usize,
        name: &str,
    ) -> Result<Vec<u8>> {
        match id {
            1 => miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(&bytes, limit).map_err(|e| {
                self.h.err(format!("dataset `{name}`: deflate chunk is corrupt ({e:?})"))
            }),
            2 => {
                let n = data.first().map_or(self.size, |&s| s as usize).max(1);
                let count = bytes.len() / n;
                let mut out = bytes.clone();
                for (i, e) in out[..count * n].chunks_exact_mut(n).enumerate() {
                    for (j, b) in e.iter_mut().enumerate() {
                        *b = bytes[j * count + i];
                    }
                }
                Ok(out)
            }
            3 => Ok(bytes[..bytes.len().saturating_sub(4)].to_vec()),
            other => Err(self.h.err(format!("dataset `{name}`: HDF5 filter {other} is not supported (only deflate, shuffle, fletcher32)"),
            )),
        }
    }

    /// Copies one decoded chunk at element `offsets` into `out`, clipping at the dataset edge.
    fn place(&self, chunk: &[u8], offsets: &[u64], out: &mut [u8], name: &str) -> Result<()> {
        let rank = self.shape.len();
        let err = || {
            self.h.err(format!(
                "dataset `{name}`: chunk offset {offsets:?} outside shape {:?}",
                self.shape
            ))
        };
        let origin: Vec<usize> = offsets[..rank]
            .iter()
            .map(|&o| usize::try_from(o).unwrap_or(usize::MAX))
            .collect();
        if origin.iter().zip(self.shape).any(|(&o, &d)| o >= d) {
            return Err(err());
        }
        let (Some(&last_chunk), Some(&last_dim), Some(&last_origin)) = (
            self.chunk.get(rank.wrapping_sub(1)),
            self.shape.last(),
            origin.last(),
        ) else {
            // A scalar cannot be chunked; an empty chunk has nothing to place.
            return Err(err());
        };
        let run = last_chunk.min(last_dim - last_origin) * self.size;
        let mut index = vec![0usize; rank];
        'rows: loop {
            let mut src = 0;
            let mut dst = 0;
            let mut inside = true;
            for d in 0..rank {
                src = src * self.chunk[d] + index[d];
                let at = origin[d] + index[d];
                inside &= at < self.shape[d];
                dst = dst * self.shape[d] + at.min(self.shape[d] - 1);
            }
            if inside {
                let (src, dst) = (src * self.size, dst * self.size);
                out.get_mut(dst..dst + run)
                    .zip(chunk.get(src..src + run))
                    .map(|(o, i)| o.copy_from_slice(i))
                    .ok_or_else(err)?;
            }
            // Advance every index but the last (the run covers it).
            for d in (0..rank - 1).rev() {
                index[d] += 1;
                if index[d] < self.chunk[d] {
                    continue 'rows;
                }
                index[d] = 0;
            }
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::hdf5::tests::file_with;
    use super::*;

    fn dtype(bytes: &[u8]) -> Dtype {
        Dtype::parse(&mut Cursor::new(bytes, 0, "f", (8, 8)))
            .unwrap()
            .0
    }

    fn float(size: u8, exponent: u8, big_endian: bool) -> Vec<u8> {
        let mut b = vec![0x11, 0x20 | u8::from(big_endian), 0x3f, 0, size, 0, 0, 0];
        b.extend([0, 0, size * 8, 0, 0, exponent, 0, 0, 0, 0, 0, 0]);
        b
    }

    #[test]
    fn datatypes_map_to_raw_dtypes() {
        assert_eq!(
            dtype(&float(4, 8, false)),
            Dtype::Float {
                raw: RawDType::F32,
                be: false
            }
        );
        assert_eq!(
            dtype(&float(4, 8, true)),
            Dtype::Float {
                raw: RawDType::F32,
                be: true
            }
        );
        assert_eq!(
            dtype(&float(2, 5, false)).raw(),
            Some((RawDType::F16, false))
        );
        assert_eq!(
            dtype(&float(2, 8, false)).raw(),
            Some((RawDType::BF16, false))
        );
        assert_eq!(
            dtype(&float(8, 11, false)).raw(),
            Some((RawDType::F64, false))
        );
        assert_eq!(
            dtype(&float(4, 7, false)),
            Dtype::Other { class: 1, size: 4 }
        );
        let i64 = [0x10, 0x08, 0, 0, 8, 0, 0, 0, 0, 0, 64, 0];
        assert_eq!(dtype(&i64).raw(), Some((RawDType::I64, false)));
        let u32 = [0x10, 0x00, 0, 0, 4, 0, 0, 0, 0, 0, 32, 0];
        assert_eq!(dtype(&u32).raw(), None);
        assert_eq!(
            dtype(&[0x13, 0, 0, 0, 12, 0, 0, 0]),
            Dtype::FixedStr { size: 12 }
        );
        assert_eq!(dtype(&[0x19, 0x01, 0, 0, 16, 0, 0, 0]), Dtype::VarStr);
    }

    #[test]
    fn dataspaces_give_shapes() {
        let space = |b: &[u8]| dataspace(&mut Cursor::new(b, 0, "f", (8, 8)));
        let mut v1 = vec![1, 2, 0, 0, 0, 0, 0, 0];
        v1.extend(3u64.to_le_bytes());
        v1.extend(4u64.to_le_bytes());
        assert_eq!(space(&v1).unwrap(), [3, 4]);
        assert_eq!(
            space(&[1, 0, 0, 0, 0, 0, 0, 0]).unwrap(),
            Vec::<usize>::new()
        );
        assert_eq!(space(&[2, 0, 0, 2]).unwrap(), [0]);
        assert!(space(&[2, 33, 0, 1]).is_err());
        assert!(space(&v1[..20]).is_err());
    }

    #[test]
    fn shuffle_is_undone_and_edge_chunks_are_clipped() {
        let bytes = file_with(48, &[]);
        let h = Hdf5::parse(&bytes, "f").unwrap();
        // 3x3 dataset of u16 in 2x2 chunks.
        let chunked = Chunked {
            h: &h,
            shape: &[3, 3],
            chunk: &[2, 2, 2],
            size: 2,
            filters: Vec::new(),
        };
        let shuffled = vec![1, 3, 5, 7, 2, 4, 6, 8];
        let plain = chunked.unfilter(2, &[2], shuffled, 8, "t").unwrap();
        assert_eq!(plain, [1, 2, 3, 4, 5, 6, 7, 8]);
        let mut out = vec![0u8; 18];
        chunked.place(&plain, &[0, 0, 0], &mut out, "t").unwrap();
        chunked.place(&plain, &[2, 2, 0], &mut out, "t").unwrap();
        chunked.place(&plain, &[0, 2, 0], &mut out, "t").unwrap();
        assert_eq!(out, [1, 2, 3, 4, 1, 2, 5, 6, 7, 8, 5, 6, 0, 0, 0, 0, 1, 2]);
        assert!(chunked.place(&plain, &[3, 0, 0], &mut out, "t").is_err());
        assert!(chunked.unfilter(32000, &[], vec![], 8, "t").is_err());
    }
}
