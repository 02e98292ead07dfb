//! Hand-written decoding of the protobuf messages a TensorBundle index holds.
//!
//! Only the wire format is needed: varints (wire type 0), 64-bit fixed (1), length-delimited (2) and
//! 32-bit fixed (5). Messages (tensorflow/core/protobuf/tensor_bundle.proto, tensor_shape.proto,
//! versions.proto):
//!
//! ```text
//! BundleHeaderProto { int32 num_shards = 1; Endianness endianness = 2; VersionDef version = 3; }
//! VersionDef        { int32 producer = 1; int32 min_consumer = 2; repeated int32 bad_consumers = 3; }
//! BundleEntryProto  { DataType dtype = 1; TensorShapeProto shape = 2; int32 shard_id = 3;
//!                     int64 offset = 4; int64 size = 5; fixed32 crc32c = 6;
//!                     repeated TensorSliceProto slices = 7; }
//! TensorShapeProto  { repeated Dim dim = 2 { int64 size = 1; string name = 2; }; bool unknown_rank = 3; }
//! ```
//!
//! proto3 omits zero-valued scalar fields, so every field defaults to 0 (or empty) when absent. Unknown
//! fields are skipped, as protobuf requires.

/// A decoding failure; the caller adds the file and entry to the message.
pub(crate) type DecodeResult<T> = std::result::Result<T, String>;

/// Reads a base-128 varint (at most 10 bytes) from `buf` at `*pos`, advancing `*pos`.
pub(crate) fn read_varint64(buf: &[u8], pos: &mut usize) -> DecodeResult<u64> {
    let mut value = 0u64;
    for i in 0..10 {
        let byte = *buf
            .get(*pos)
            .ok_or_else(|| format!("varint runs past the end at byte {}", *pos))?;
        *pos += 1;
        let bits = u64::from(byte & 0x7f);
        if i == 9 && byte > 1 {
            return Err("varint overflows 64 bits".to_string());
        }
        value |= bits << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint longer than 10 bytes".to_string())
}

/// Reads a varint that must fit in 32 bits (LevelDB's `varint32`).
pub(crate) fn read_varint32(buf: &[u8], pos: &mut usize) -> DecodeResult<u32> {
    let start = *pos;
    let v = read_varint64(buf, pos)?;
    u32::try_from(v).map_err(|_| format!("varint32 at byte {start} is too large ({v})"))
}

/// Reads a little-endian `u32` at `pos`.
pub(crate) fn read_fixed32(buf: &[u8], pos: usize) -> DecodeResult<u32> {
    let bytes = pos
        .checked_add(4)
        .and_then(|end| buf.get(pos..end))
        .ok_or_else(|| {
            format!(
                "fixed32 at byte {pos} runs past the end ({} bytes)",
                buf.len()
            )
        })?;
    let mut b = [0u8; 4];
    b.copy_from_slice(bytes);
    Ok(u32::from_le_bytes(b))
}

/// One field of a protobuf message.
enum Value<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// Iterates over the `(field number, value)` pairs of a serialized message.
fn for_each_field<'a>(
    buf: &'a [u8],
    mut f: impl FnMut(u64, Value<'a>) -> DecodeResult<()>,
) -> DecodeResult<()> {
    let mut pos = 0;
    while pos < buf.len() {
        let tag = read_varint64(buf, &mut pos)?;
        let field = tag >> 3;
        if field == 0 {
            return Err(format!("field number 0 at byte {pos}"));
        }
        let value = match tag & 7 {
            0 => Value::Varint(read_varint64(buf, &mut pos)?),
            1 => {
                take(buf, &mut pos, 8)?;
                Value::Fixed64
            }
            2 => {
                let len = read_varint64(buf, &mut pos)?;
                let len = usize::try_from(len).map_err(|_| format!("length {len} too large"))?;
                Value::Bytes(take(buf, &mut pos, len)?)
            }
            5 => {
                let v = read_fixed32(buf, pos)?;
                pos += 4;
                Value::Fixed32(v)
            }
            w => return Err(format!("unsupported wire type {w} for field {field}")),
        };
        f(field, value)?;
    }
    Ok(())
}

fn take<'a>(buf: &'a [u8], pos: &mut usize, len: usize) -> DecodeResult<&'a [u8]> {
    let end = pos
        .checked_add(len)
        .filter(|&e| e <= buf.len())
        .ok_or_else(|| {
            format!(
                "field of {len} bytes at byte {} runs past the end ({} bytes)",
                *pos,
                buf.len()
            )
        })?;
    let out = &buf[*pos..end];
    *pos = end;
    Ok(out)
}

fn expect_varint(field: u64, v: Value<'_>) -> DecodeResult<u64> {
    match v {
        Value::Varint(x) => Ok(x),
        _ => Err(format!("field {field} should be a varint")),
    }
}

/// proto3 `int32`/enum: a varint holding the sign-extended 64-bit value.
fn as_i32(field: u64, x: u64) -> DecodeResult<i32> {
    i32::try_from(x as i64).map_err(|_| format!("field {field} value {x} is not an int32"))
}

/// `VersionDef`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct VersionDef {
    pub producer: i32,
    pub min_consumer: i32,
    pub bad_consumers: Vec<i32>,
}

/// `BundleHeaderProto`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BundleHeader {
    pub num_shards: i32,
    /// 0 = little-endian, 1 = big-endian.
    pub endianness: i32,
    pub version: VersionDef,
}

impl BundleHeader {
    /// Decodes a serialized `BundleHeaderProto`.
    pub fn decode(buf: &[u8]) -> DecodeResult<Self> {
        let mut h = BundleHeader::default();
        for_each_field(buf, |field, v| {
            match field {
                1 => h.num_shards = as_i32(field, expect_varint(field, v)?)?,
                2 => h.endianness = as_i32(field, expect_varint(field, v)?)?,
                3 => match v {
                    Value::Bytes(b) => h.version = decode_version(b)?,
                    _ => return Err("field 3 (version) should be a message".to_string()),
                },
                _ => {}
            }
            Ok(())
        })?;
        Ok(h)
    }
}

fn decode_version(buf: &[u8]) -> DecodeResult<VersionDef> {
    let mut v = VersionDef::default();
    for_each_field(buf, |field, value| {
        match (field, value) {
            (1, Value::Varint(x)) => v.producer = as_i32(field, x)?,
            (2, Value::Varint(x)) => v.min_consumer = as_i32(field, x)?,
            (3, Value::Varint(x)) => v.bad_consumers.push(as_i32(field, x)?),
            // Packed encoding of the repeated field.
            (3, Value::Bytes(b)) => {
                let mut pos = 0;
                while pos < b.len() {
                    v.bad_consumers
                        .push(as_i32(field, read_varint64(b, &mut pos)?)?);
                }
            }
            (1..=3, _) => return Err(format!("VersionDef field {field} has the wrong wire type")),
            _ => {}
        }
        Ok(())
    })?;
    Ok(v)
}

/// `BundleEntryProto` (the `slices` are only counted: sliced entries are rejected by the caller).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BundleEntry {
    pub dtype: i32,
    /// Dimension sizes, outermost first; `None` if the shape has `unknown_rank` set.
    pub shape: Option<Vec<i64>>,
    pub shard_id: i32,
    pub offset: i64,
    pub size: i64,
    /// Masked CRC32C of the tensor bytes.
    pub crc32c: u32,
    pub num_slices: usize,
}

impl BundleEntry {
    /// Decodes a serialized `BundleEntryProto`.
    pub fn decode(buf: &[u8]) -> DecodeResult<Self> {
        let mut e = BundleEntry {
            shape: Some(Vec::new()),
            ..Default::default()
        };
        for_each_field(buf, |field, v| {
            match field {
                1 => e.dtype = as_i32(field, expect_varint(field, v)?)?,
                2 => match v {
                    Value::Bytes(b) => e.shape = decode_shape(b)?,
                    _ => return Err("field 2 (shape) should be a message".to_string()),
                },
                3 => e.shard_id = as_i32(field, expect_varint(field, v)?)?,
                4 => e.offset = expect_varint(field, v)? as i64,
                5 => e.size = expect_varint(field, v)? as i64,
                6 => match v {
                    Value::Fixed32(c) => e.crc32c = c,
                    _ => return Err("field 6 (crc32c) should be a fixed32".to_string()),
                },
                7 => e.num_slices += 1,
                _ => {}
            }
            Ok(())
        })?;
        Ok(e)
    }
}

fn decode_shape(buf: &[u8]) -> DecodeResult<Option<Vec<i64>>> {
    let mut dims = Vec::new();
    let mut unknown_rank = false;
    for_each_field(buf, |field, v| {
        match (field, v) {
            (2, Value::Bytes(b)) => {
                let mut size = 0i64;
                for_each_field(b, |f, dv| {
                    if f == 1 {
                        size = expect_varint(f, dv)? as i64;
                    }
                    Ok(())
                })?;
                dims.push(size);
            }
            (3, Value::Varint(x)) => unknown_rank = x != 0,
            (2 | 3, _) => {
                return Err(format!(
                    "TensorShapeProto field {field} has the wrong wire type"
                ))
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok((!unknown_rank).then_some(dims))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        let cases: &[(&[u8], u64)] = &[
            (&[0x00], 0),
            (&[0x01], 1),
            (&[0x7f], 127),
            (&[0x80, 0x01], 128),
            (&[0xac, 0x02], 300),
            (&[0xff, 0xff, 0xff, 0xff, 0x0f], u64::from(u32::MAX)),
            (
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
                u64::MAX,
            ),
        ];
        for (bytes, want) in cases {
            let mut pos = 0;
            assert_eq!(read_varint64(bytes, &mut pos), Ok(*want), "{bytes:?}");
            assert_eq!(pos, bytes.len());
        }
        // Truncated, overlong and overflowing varints are errors.
        for bad in [
            &[0x80u8][..],
            &[0xff, 0xff],
            &[0xff; 11],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
        ] {
            assert!(read_varint64(bad, &mut 0).is_err(), "{bad:?}");
        }
        assert_eq!(
            read_varint32(&[0xff, 0xff, 0xff, 0xff, 0x0f], &mut 0),
            Ok(u32::MAX)
        );
        assert!(read_varint32(&[0x80, 0x80, 0x80, 0x80, 0x10], &mut 0).is_err());
    }

    #[test]
    fn fixed32_bounds() {
        assert_eq!(read_fixed32(&[1, 2, 3, 4, 5], 1), Ok(0x0504_0302));
        assert!(read_fixed32(&[1, 2, 3, 4], 1).is_err());
        assert!(read_fixed32(&[], usize::MAX).is_err());
    }

    #[test]
    fn entry_defaults_and_fields() {
        // dtype 1, shape [2, 0, 3] (the 0 dim is an empty Dim message), shard 1, offset 8, size 24,
        // crc 0x11223344, an unknown varint field 15.
        let bytes = [
            0x08, 0x01, 0x12, 0x0a, 0x12, 0x02, 0x08, 0x02, 0x12, 0x00, 0x12, 0x02, 0x08, 0x03,
            0x18, 0x01, 0x20, 0x08, 0x28, 0x18, 0x35, 0x44, 0x33, 0x22, 0x11, 0x78, 0x05,
        ];
        let e = BundleEntry::decode(&bytes).unwrap();
        assert_eq!(e.dtype, 1);
        assert_eq!(e.shape, Some(vec![2, 0, 3]));
        assert_eq!((e.shard_id, e.offset, e.size), (1, 8, 24));
        assert_eq!(e.crc32c, 0x1122_3344);
        assert_eq!(e.num_slices, 0);
        // An empty message is a scalar of dtype 0 at offset 0.
        let e = BundleEntry::decode(&[]).unwrap();
        assert_eq!(e.shape, Some(vec![]));
        assert_eq!((e.dtype, e.offset, e.size, e.crc32c), (0, 0, 0, 0));
        // unknown_rank and slices are reported.
        let e = BundleEntry::decode(&[0x12, 0x02, 0x18, 0x01, 0x3a, 0x00]).unwrap();
        assert_eq!(e.shape, None);
        assert_eq!(e.num_slices, 1);
    }

    #[test]
    fn entry_errors() {
        // Length past the end, wrong wire type for crc, group wire type, field 0.
        for bad in [
            &[0x12u8, 0x05, 0x00][..],
            &[0x30, 0x01],
            &[0x0b],
            &[0x00, 0x00],
        ] {
            assert!(BundleEntry::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn header() {
        // num_shards 2, endianness absent (LITTLE), version { producer 1, bad_consumers packed [3, 4] }.
        let bytes = [0x08, 0x02, 0x1a, 0x06, 0x08, 0x01, 0x1a, 0x02, 0x03, 0x04];
        let h = BundleHeader::decode(&bytes).unwrap();
        assert_eq!(h.num_shards, 2);
        assert_eq!(h.endianness, 0);
        assert_eq!(
            h.version,
            VersionDef {
                producer: 1,
                min_consumer: 0,
                bad_consumers: vec![3, 4]
            }
        );
        // Negative int32 values are 10-byte sign-extended varints.
        let neg = [
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        assert_eq!(BundleHeader::decode(&neg).unwrap().num_shards, -1);
    }
}
