//! Opening a weight file of any supported format: detection from its bytes (or, for TensorFlow
//! checkpoints, from its path) and reading into format-neutral [`RawTensor`]s.

use std::collections::BTreeMap;
use std::path::Path;

use super::keras_h5::{looks_like_hdf5, KerasH5};
use super::tf_checkpoint::TfCheckpoint;
use super::torch_pickle::{
    looks_like_torch_legacy, looks_like_torch_zip, TorchCheckpoint, TorchFormat,
};
use super::{RawDType, RawTensor};
use crate::error::{Error, Result};

/// A weight-file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// safetensors (timm / HF hub, candle).
    Safetensors,
    /// Keras HDF5 (`.h5`, `.weights.h5`).
    KerasH5,
    /// PyTorch checkpoint, zip container (torch >= 1.6).
    TorchZip,
    /// PyTorch checkpoint, legacy pickle stream (torch < 1.6).
    TorchLegacy,
    /// TensorFlow checkpoint (TensorBundle V2): a directory, prefix, `checkpoint`, `.index` or
    /// released `.tar.gz`.
    TfCheckpoint,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Safetensors => "safetensors",
            Format::KerasH5 => "Keras HDF5",
            Format::TorchZip => "PyTorch zip",
            Format::TorchLegacy => "PyTorch legacy pickle",
            Format::TfCheckpoint => "TensorFlow checkpoint",
        })
    }
}

/// The tensors of a weight file, by source key.
#[derive(Debug)]
pub struct TensorFile {
    pub format: Format,
    /// What was opened, for messages.
    pub file: String,
    pub tensors: BTreeMap<String, RawTensor>,
    /// Entries that hold no tensor (e.g. `epoch` in a PyTorch checkpoint), reported, never used.
    pub other_keys: Vec<String>,
}

fn looks_like_safetensors(bytes: &[u8], len: u64) -> bool {
    bytes.len() >= 9
        && bytes[8] == b'{'
        && u64::from_le_bytes([
            bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
        ]) < len
}

/// TensorFlow checkpoints are several files; they are recognised by their path.
fn is_tf_checkpoint_path(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.is_dir()
        || name == "checkpoint"
        || name.ends_with(".index")
        || name.ends_with(".tar.gz")
        || name.ends_with(".tgz")
        || name.contains(".data-")
        || (!path.exists() && Path::new(&format!("{}.index", path.display())).is_file())
}

/// Detects the format of `path` and reads every tensor.
pub fn open(path: &Path) -> Result<TensorFile> {
    let file = path.display().to_string();
    if is_tf_checkpoint_path(path) {
        let ckpt = TfCheckpoint::open(path)?;
        return Ok(TensorFile {
            format: Format::TfCheckpoint,
            file: ckpt.prefix().to_string(),
            tensors: ckpt.into_tensors(),
            other_keys: Vec::new(),
        });
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if looks_like_safetensors(&bytes, bytes.len() as u64) {
        return Ok(TensorFile {
            format: Format::Safetensors,
            tensors: read_safetensors(&bytes, &file)?,
            file,
            other_keys: Vec::new(),
        });
    }
    if looks_like_hdf5(&bytes) {
        return Ok(TensorFile {
            format: Format::KerasH5,
            tensors: KerasH5::from_bytes(&bytes, path)?.into_tensors(),
            file,
            other_keys: Vec::new(),
        });
    }
    if looks_like_torch_zip(&bytes) || looks_like_torch_legacy(&bytes) {
        let ckpt = TorchCheckpoint::from_bytes(&bytes, &file)?;
        let format = match ckpt.format() {
            TorchFormat::Zip => Format::TorchZip,
            TorchFormat::Legacy => Format::TorchLegacy,
        };
        let other_keys = ckpt.other_keys().to_vec();
        return Ok(TensorFile {
            format,
            tensors: ckpt.into_tensors(),
            file,
            other_keys,
        });
    }
    Err(Error::format(
        file,
        "not a weight file effnet recognises (supported: safetensors, PyTorch zip or legacy \
         pickle, Keras HDF5, TensorFlow checkpoint)",
    ))
}

fn read_safetensors(bytes: &[u8], file: &str) -> Result<BTreeMap<String, RawTensor>> {
    use safetensors::Dtype;
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| Error::format(file, format!("invalid safetensors: {e}")))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let dtype = match view.dtype() {
            Dtype::BOOL => RawDType::Bool,
            Dtype::U8 => RawDType::U8,
            Dtype::I8 => RawDType::I8,
            Dtype::I16 => RawDType::I16,
            Dtype::I32 => RawDType::I32,
            Dtype::I64 => RawDType::I64,
            Dtype::F16 => RawDType::F16,
            Dtype::BF16 => RawDType::BF16,
            Dtype::F32 => RawDType::F32,
            Dtype::F64 => RawDType::F64,
            other => {
                return Err(Error::UnsupportedDType {
                    file: file.to_string(),
                    tensor: name,
                    dtype: format!("{other:?}"),
                })
            }
        };
        let t = RawTensor::new(
            dtype,
            view.shape().to_vec(),
            view.data().to_vec(),
            file,
            &name,
        )?;
        out.insert(name, t);
    }
    Ok(out)
}
