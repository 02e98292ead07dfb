//! TensorBundle semantics on top of the index table: header checks, entries, shards and tensor data.
//!
//! (tensorflow/core/util/tensor_bundle/tensor_bundle.{h,cc}, naming.cc.) The first key is the empty string
//! and holds a `BundleHeaderProto`; every other key is a tensor name whose value is a `BundleEntryProto`
//! locating `size` bytes at `offset` in data file `<prefix>.data-<shard_id:05>-of-<num_shards:05>`, with
//! a masked CRC32C of those bytes. Numeric tensors are raw row-major in the header's byte order.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use super::crc;
use super::proto::{BundleEntry, BundleHeader};
use super::table::read_table;
use crate::error::{Error, Result};
use crate::weights::{RawDType, RawTensor};

/// `kTensorBundleVersion`: the consumer version this reader implements.
const BUNDLE_VERSION: i32 = 1;
/// The TF2 object-graph entry: a serialized `TrackableObjectGraph` (DT_STRING), metadata rather than a
/// weight, skipped so that `tf.train.Checkpoint` files can be read.
pub(crate) const OBJECT_GRAPH_KEY: &str = "_CHECKPOINTABLE_OBJECT_GRAPH";
const DT_STRING: i32 = 7;

/// Name of data shard `shard` of `num_shards` for `prefix` (naming.cc `DataFilename`).
pub(crate) fn data_file_name(prefix: &str, shard: usize, num_shards: usize) -> String {
    format!("{prefix}.data-{shard:05}-of-{num_shards:05}")
}

/// Where the bytes of the data shards come from.
pub(crate) trait ShardSource {
    /// Reads `len` bytes at `offset` of the data file called `name`, failing if they are not all there.
    fn read(&mut self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>>;

    /// How the data file `name` is shown in messages.
    fn display(&self, name: &str) -> String {
        name.to_string()
    }
}

/// Data shards as files on disk, opened on first use.
pub(crate) struct FileShards {
    open: BTreeMap<String, (File, u64)>,
}

impl FileShards {
    pub(crate) fn new() -> Self {
        Self {
            open: BTreeMap::new(),
        }
    }
}

impl ShardSource for FileShards {
    fn read(&mut self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        if !self.open.contains_key(name) {
            let file = File::open(name).map_err(|e| Error::io(name, e))?;
            let size = file.metadata().map_err(|e| Error::io(name, e))?.len();
            self.open.insert(name.to_string(), (file, size));
        }
        let Some((file, size)) = self.open.get_mut(name) else {
            return Err(Error::format(name, "data file could not be kept open"));
        };
        check_range(name, offset, len, *size)?;
        let mut buf = vec![0u8; len];
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_exact(&mut buf))
            .map_err(|e| Error::io(name, e))?;
        Ok(buf)
    }
}

/// Data shards held in memory (members of an archive), by member name.
pub(crate) struct MemShards<'a> {
    /// The archive, shown before member names in messages.
    pub(crate) archive: &'a str,
    pub(crate) files: &'a BTreeMap<String, Vec<u8>>,
}

impl ShardSource for MemShards<'_> {
    fn read(&mut self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let shown = self.display(name);
        let data = self
            .files
            .get(name)
            .ok_or_else(|| Error::format(&shown, "data file is missing from the archive"))?;
        check_range(&shown, offset, len, data.len() as u64)?;
        // check_range guarantees offset + len <= data.len().
        let start = offset as usize;
        Ok(data[start..start + len].to_vec())
    }

    fn display(&self, name: &str) -> String {
        format!("{}!{name}", self.archive)
    }
}

fn check_range(name: &str, offset: u64, len: usize, size: u64) -> Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::format(
            name,
            format!("{len} bytes at offset {offset} lie past the end of the {size}-byte data file"),
        )),
    }
}

/// TF `DataType` enum names (types.proto), for messages.
fn dtype_name(code: i32) -> String {
    const NAMES: [&str; 24] = [
        "DT_INVALID",
        "DT_FLOAT",
        "DT_DOUBLE",
        "DT_INT32",
        "DT_UINT8",
        "DT_INT16",
        "DT_INT8",
        "DT_STRING",
        "DT_COMPLEX64",
        "DT_INT64",
        "DT_BOOL",
        "DT_QINT8",
        "DT_QUINT8",
        "DT_QINT32",
        "DT_BFLOAT16",
        "DT_QINT16",
        "DT_QUINT16",
        "DT_UINT16",
        "DT_COMPLEX128",
        "DT_HALF",
        "DT_RESOURCE",
        "DT_VARIANT",
        "DT_UINT32",
        "DT_UINT64",
    ];
    let name = usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i))
        .map_or("unknown DataType", |n| n);
    format!("{name} ({code})")
}

fn raw_dtype(code: i32) -> Option<RawDType> {
    Some(match code {
        1 => RawDType::F32,
        2 => RawDType::F64,
        3 => RawDType::I32,
        9 => RawDType::I64,
        14 => RawDType::BF16,
        19 => RawDType::F16,
        _ => return None,
    })
}

/// Reads every tensor of the bundle whose index bytes are `index` and whose data files are named from
/// `prefix` (a path or an archive member name), from `shards`. `index_name` names the index in messages.
pub(crate) fn read_bundle(
    index: &[u8],
    index_name: &str,
    prefix: &str,
    shards: &mut dyn ShardSource,
) -> Result<BTreeMap<String, RawTensor>> {
    let fmt = |message: String| Error::format(index_name, message);
    let entries = read_table(index, index_name)?;
    let mut entries = entries.into_iter();
    let header = match entries.next() {
        Some((key, value)) if key.is_empty() => {
            BundleHeader::decode(&value).map_err(|e| fmt(format!("bad BundleHeaderProto: {e}")))?
        }
        _ => {
            return Err(fmt(
                "the first key is not the empty header key: not a TensorBundle index".to_string(),
            ))
        }
    };
    check_header(&header).map_err(fmt)?;
    let num_shards = usize::try_from(header.num_shards).unwrap_or(0);

    let mut decoded = Vec::new();
    for (key, value) in entries {
        let shown = key.escape_ascii().to_string();
        let entry = BundleEntry::decode(&value)
            .map_err(|e| fmt(format!("tensor `{shown}`: bad BundleEntryProto: {e}")))?;
        if entry.num_slices > 0 {
            return Err(fmt(format!(
                "tensor `{shown}` is a partitioned (sliced) variable with {} slice(s); \
                 checkpoints of partitioned variables are not supported",
                entry.num_slices
            )));
        }
        decoded.push((key, shown, entry));
    }

    let mut tensors = BTreeMap::new();
    for (key, shown, entry) in decoded {
        let name = String::from_utf8(key)
            .map_err(|_| fmt(format!("tensor name `{shown}` is not valid UTF-8")))?;
        if name == OBJECT_GRAPH_KEY && entry.dtype == DT_STRING {
            continue;
        }
        let tensor = read_tensor(&name, &entry, index_name, prefix, num_shards, shards)?;
        tensors.insert(name, tensor);
    }
    Ok(tensors)
}

fn check_header(h: &BundleHeader) -> std::result::Result<(), String> {
    if h.endianness != 0 {
        return Err(format!(
            "the bundle is big-endian (endianness {}); only little-endian checkpoints are supported",
            h.endianness
        ));
    }
    if h.num_shards < 0 {
        return Err(format!("negative shard count {}", h.num_shards));
    }
    let v = &h.version;
    if v.min_consumer > BUNDLE_VERSION {
        return Err(format!(
            "the bundle needs reader version {} or newer; this reader implements version {BUNDLE_VERSION}",
            v.min_consumer
        ));
    }
    if v.bad_consumers.contains(&BUNDLE_VERSION) {
        return Err(format!(
            "the bundle excludes reader version {BUNDLE_VERSION} (bad_consumers {:?})",
            v.bad_consumers
        ));
    }
    Ok(())
}

fn read_tensor(
    name: &str,
    entry: &BundleEntry,
    index_name: &str,
    prefix: &str,
    num_shards: usize,
    shards: &mut dyn ShardSource,
) -> Result<RawTensor> {
    let fmt = |message: String| Error::format(index_name, format!("tensor `{name}`: {message}"));
    let dtype = raw_dtype(entry.dtype).ok_or_else(|| Error::UnsupportedDType {
        file: index_name.to_string(),
        tensor: name.to_string(),
        dtype: dtype_name(entry.dtype),
    })?;
    let dims = entry
        .shape
        .as_ref()
        .ok_or_else(|| fmt("shape has unknown rank".to_string()))?;
    let shape = dims
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| fmt(format!("shape {dims:?} has a negative dimension")))
        })
        .collect::<Result<Vec<usize>>>()?;
    let nbytes = shape
        .iter()
        .try_fold(dtype.size_in_bytes(), |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| fmt(format!("shape {shape:?} is too large")))?;
    if u64::try_from(entry.size).ok() != Some(nbytes as u64) {
        return Err(fmt(format!(
            "entry size {} bytes does not match dtype {dtype} and shape {shape:?} ({nbytes} bytes)",
            entry.size
        )));
    }
    let shard = usize::try_from(entry.shard_id)
        .ok()
        .filter(|&s| s < num_shards)
        .ok_or_else(|| {
            fmt(format!(
                "shard id {} is not below the header's shard count {num_shards}",
                entry.shard_id
            ))
        })?;
    let offset = u64::try_from(entry.offset)
        .map_err(|_| fmt(format!("negative offset {}", entry.offset)))?;
    let data_name = data_file_name(prefix, shard, num_shards);
    let data = shards.read(&data_name, offset, nbytes)?;
    let file = shards.display(&data_name);
    let actual = crc::value(&data);
    let expected = crc::unmask(entry.crc32c);
    if actual != expected {
        return Err(Error::Checksum {
            file,
            what: format!("tensor `{name}` ({nbytes} bytes at offset {offset})"),
            expected: format!("crc32c {expected:#010x}"),
            actual: format!("crc32c {actual:#010x}"),
        });
    }
    RawTensor::new(dtype, shape, data, &file, name)
}

/// Path of the `.index` file of `prefix`.
pub(crate) fn index_path(prefix: &str) -> PathBuf {
    PathBuf::from(format!("{prefix}.index"))
}

#[cfg(test)]
mod tests {
    use super::super::table::testutil::build_table;
    use super::*;

    /// Serializes a minimal BundleEntryProto.
    fn entry(
        dtype: u8,
        dims: &[u8],
        shard: u8,
        offset: u8,
        size: u8,
        crc: u32,
        slices: bool,
    ) -> Vec<u8> {
        let mut shape = Vec::new();
        for &d in dims {
            shape.extend_from_slice(&[0x12, 0x02, 0x08, d]);
        }
        let mut out = vec![0x08, dtype, 0x12, shape.len() as u8];
        out.extend_from_slice(&shape);
        out.extend_from_slice(&[0x18, shard, 0x20, offset, 0x28, size, 0x35]);
        out.extend_from_slice(&crc.to_le_bytes());
        if slices {
            out.extend_from_slice(&[0x3a, 0x00]);
        }
        out
    }

    fn bundle(
        header: &[u8],
        tensors: &[(&[u8], Vec<u8>)],
        data: &[u8],
    ) -> Result<BTreeMap<String, RawTensor>> {
        let mut entries = vec![(Vec::new(), header.to_vec())];
        entries.extend(tensors.iter().map(|(k, v)| (k.to_vec(), v.clone())));
        let table = build_table(&entries, 3, 2, false);
        let files = BTreeMap::from([("p.data-00000-of-00001".to_string(), data.to_vec())]);
        let mut shards = MemShards {
            archive: "a.tgz",
            files: &files,
        };
        read_bundle(&table, "a.tgz!p.index", "p", &mut shards)
    }

    const HEADER: &[u8] = &[0x08, 0x01, 0x1a, 0x02, 0x08, 0x01];

    #[test]
    fn reads_tensors_and_checks_crc() {
        let data: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let c = crc::mask(crc::value(&data));
        let t = bundle(HEADER, &[(b"w", entry(1, &[2], 0, 0, 8, c, false))], &data).unwrap();
        assert_eq!(t["w"].dtype, RawDType::F32);
        assert_eq!(t["w"].shape, vec![2]);
        assert_eq!(t["w"].data, data);
        let bad = bundle(
            HEADER,
            &[(b"w", entry(1, &[2], 0, 0, 8, c ^ 1, false))],
            &data,
        );
        assert!(
            matches!(bad, Err(Error::Checksum { ref what, .. }) if what.contains("`w`")),
            "{bad:?}"
        );
    }

    #[test]
    fn header_checks() {
        let ok: Vec<u8> = Vec::new();
        // Big-endian, min_consumer 2, bad_consumers [1], negative shard count.
        for header in [
            &[0x08, 0x01, 0x10, 0x01][..],
            &[0x08, 0x01, 0x1a, 0x02, 0x10, 0x02],
            &[0x08, 0x01, 0x1a, 0x02, 0x18, 0x01],
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
        ] {
            assert!(
                matches!(bundle(header, &[], &ok), Err(Error::Format { .. })),
                "{header:?}"
            );
        }
        // An empty header (all defaults) with no tensors is a valid, empty bundle.
        assert!(bundle(&[], &[], &ok).unwrap().is_empty());
    }

    #[test]
    fn entry_errors() {
        let data = [0u8; 16];
        let c = crc::mask(crc::value(&data[..8]));
        let cases: [(&[u8], Vec<u8>, &str); 6] = [
            (b"s", entry(1, &[2], 0, 0, 8, c, true), "partitioned"),
            (b"sz", entry(1, &[3], 0, 0, 8, c, false), "does not match"),
            (b"sh", entry(1, &[2], 1, 0, 8, c, false), "shard id"),
            (b"off", entry(1, &[2], 0, 12, 8, c, false), "past the end"),
            (b"\xff", entry(1, &[2], 0, 0, 8, c, false), "UTF-8"),
            (
                b"big",
                entry(1, &[0x7f], 0, 0, 8, c, false),
                "does not match",
            ),
        ];
        for (key, value, needle) in cases {
            let err = bundle(HEADER, &[(key, value)], &data)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err}");
        }
        let err = bundle(HEADER, &[(b"c", entry(8, &[1], 0, 0, 8, c, false))], &data).unwrap_err();
        assert!(
            matches!(&err, Error::UnsupportedDType { tensor, dtype, .. } if tensor == "c" && dtype == "DT_COMPLEX64 (8)"),
            "{err:?}"
        );
    }

    #[test]
    fn dtypes() {
        for (code, dtype) in [
            (1, RawDType::F32),
            (2, RawDType::F64),
            (3, RawDType::I32),
            (9, RawDType::I64),
            (14, RawDType::BF16),
            (19, RawDType::F16),
        ] {
            assert_eq!(raw_dtype(code), Some(dtype));
        }
        for code in [0, 4, 5, 6, 7, 8, 10, 101, -1] {
            assert_eq!(raw_dtype(code), None);
        }
        assert_eq!(dtype_name(19), "DT_HALF (19)");
        assert_eq!(dtype_name(-3), "unknown DataType (-3)");
        assert_eq!(dtype_name(101), "unknown DataType (101)");
    }

    #[test]
    fn data_names() {
        assert_eq!(
            data_file_name("d/model.ckpt", 1, 2),
            "d/model.ckpt.data-00001-of-00002"
        );
    }
}
