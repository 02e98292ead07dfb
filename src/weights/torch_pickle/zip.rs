//! The zip container `torch.save` writes since torch 1.6.
//!
//! Layout (`torch/serialization.py` `_save`, `caffe2/serialize/inline_container.h`): every entry
//! sits under one root folder named after the file (`<root>/`): `data.pkl` (the pickle, written
//! first), `byteorder` (`little` or `big`; absent in files older than torch 2.1, which are little
//! endian), `data/<key>` (the raw bytes of storage `<key>`), `version`, `.data/serialization_id`.
//! Entries are stored uncompressed; deflated entries are accepted too.

use std::borrow::Cow;
use std::io::{Read, Seek};

use super::pickle::{unpickle, Unpickled};
use super::value::StorageRef;
use super::StorageSource;
use crate::error::{Error, Result};

/// An open torch zip archive.
pub(crate) struct TorchZip<R: Read + Seek> {
    archive: zip::ZipArchive<R>,
    root: String,
    file: String,
}

impl<R: Read + Seek> TorchZip<R> {
    /// Opens the archive and runs its `data.pkl`.
    pub(crate) fn open(reader: R, file: &str) -> Result<(Self, Unpickled)> {
        let zerr = |e: zip::result::ZipError| Error::format(file, format!("bad zip archive: {e}"));
        let archive = zip::ZipArchive::new(reader).map_err(zerr)?;
        let pickles: Vec<String> = archive
            .file_names()
            .filter_map(|n| n.ok())
            .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
            .map(|n| n.into_owned())
            .collect();
        let pickle_name = match pickles.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(Error::format(
                    file,
                    "zip archive has no `data.pkl`: not a PyTorch checkpoint",
                ))
            }
            many => {
                return Err(Error::format(
                    file,
                    format!("zip archive has several pickles: {}", many.join(", ")),
                ))
            }
        };
        let root = pickle_name
            .strip_suffix("data.pkl")
            .unwrap_or_default()
            .to_string();
        let mut zip = TorchZip {
            archive,
            root,
            file: file.to_string(),
        };
        let order_name = format!("{}byteorder", zip.root);
        if zip.archive.index_for_name(&order_name).is_some() {
            let order = zip.read_entry(&order_name, Some(16))?;
            if order.as_slice() != b"little" {
                return Err(Error::format(
                    file,
                    format!(
                        "byte order `{}` is not supported (only little-endian checkpoints)",
                        String::from_utf8_lossy(&order)
                    ),
                ));
            }
        }
        let pickle = zip.read_entry(&pickle_name, None)?;
        let unpickled = unpickle(&pickle, 0, &format!("{file} ({pickle_name})"))?;
        Ok((zip, unpickled))
    }

    /// Reads a whole entry, verifying its CRC-32; an entry larger than `limit` is an error.
    fn read_entry(&mut self, name: &str, limit: Option<u64>) -> Result<Vec<u8>> {
        let file = self.file.as_str();
        let ctx = |what: String| Error::format(file, format!("zip entry `{name}`: {what}"));
        let mut entry = self
            .archive
            .by_name(name)
            .map_err(|e| ctx(format!("{e}")))?;
        let size = entry.size();
        if let Some(limit) = limit.filter(|&l| size > l) {
            return Err(ctx(format!("{size} bytes, at most {limit} expected")));
        }
        let mut out = Vec::new();
        let cap = usize::try_from(size).map_err(|_| ctx(format!("{size} bytes is too large")))?;
        out.try_reserve_exact(cap)
            .map_err(|_| ctx(format!("cannot allocate {size} bytes")))?;
        // The zip reader stops at the declared size and checks the CRC-32 at the end.
        entry
            .read_to_end(&mut out)
            .map_err(|e| ctx(format!("{e}")))?;
        if out.len() as u64 != size {
            return Err(ctx(format!(
                "holds {} bytes, header says {size}",
                out.len()
            )));
        }
        Ok(out)
    }
}

impl<R: Read + Seek> StorageSource for TorchZip<R> {
    fn bytes(&mut self, storage: &StorageRef) -> Result<Cow<'_, [u8]>> {
        let name = format!("{}data/{}", self.root, storage.key);
        let nbytes = storage
            .numel
            .checked_mul(storage.dtype.size_in_bytes() as u64)
            .ok_or_else(|| Error::format(&self.file, format!("storage `{name}` size overflows")))?;
        let data = self.read_entry(&name, Some(nbytes))?;
        if data.len() as u64 != nbytes {
            return Err(Error::format(
                &self.file,
                format!(
                    "storage `{name}` holds {} bytes, the pickle declares {} {} element(s) = {nbytes} bytes",
                    data.len(),
                    storage.numel,
                    storage.dtype
                ),
            ));
        }
        Ok(Cow::Owned(data))
    }
}
