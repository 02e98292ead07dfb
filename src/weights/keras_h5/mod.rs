//! Keras weights in HDF5 (`.h5`) files, read by a small built-in HDF5 reader.
//!
//! # The Keras layouts
//!
//! The keras-applications files (`efficientnetb0.h5`, `mobilenet_v2_weights_tf_dim_ordering_tf_kernels_
//! 0.35_224.h5`, ...) use the legacy layout written by `save_weights_to_hdf5_group` in Keras 2
//! (`keras/saving/legacy/hdf5_format.py`, also `tf_keras`) and Keras 3
//! (`keras/src/legacy/saving/legacy_h5_format.py`):
//!
//! - the weights group is the root for `save_weights('x.h5')` files and `/model_weights` for full
//!   models saved with `model.save('x.h5')` (which also hold `model_config` and optimizer state);
//! - its attribute `layer_names` lists every layer in model order; each layer has a group of the
//!   same name whose attribute `weight_names` lists that layer's weights in order, each weight
//!   being the dataset at that (slash-separated) path inside the layer group, e.g.
//!   `stem_conv/stem_conv/kernel:0`. Keras 2 names end in `:0`; Keras 3 writes `stem_conv/kernel`;
//! - an attribute too large for an object header is split into `layer_names0`, `layer_names1`, ...;
//!   a layer without weights stores an empty float array; newer writers add a
//!   `top_level_model_weights` group, which is read as one more layer when it holds weights.
//!
//! Keras 3's own `model.save_weights('x.weights.h5')` (`keras/src/saving/saving_lib.py`,
//! `H5IOStore`) instead stores each object's variables as datasets `0`, `1`, ... of a `vars`
//! group at the object's path (`layers/conv2d/vars/0`), with the layer's name as the `vars`
//! group's `name` attribute (Keras 3.x). Weights are then named by their path
//! (`layers/conv2d/vars/0`); layers come in the file's (name-sorted) order.
//!
//! Tensors keep Keras layouts: conv kernels HWIO, depthwise kernels `[kh, kw, C, 1]`, dense
//! kernels `[in, out]`; transposing them is the name map's job.
//!
//! # The HDF5 subset
//!
//! Primary source: "HDF5 File Format Specification Version 3.0", The HDF Group. h5py's default
//! (`libver='earliest'`), which every Keras version uses, writes superblock version 0, version 1
//! object headers and symbol-table groups (a v1 B-tree of symbol nodes naming entries in a local
//! heap). The reader handles those, plus superblock v2/v3, version 2 object headers and
//! compact link messages of newer files; attributes holding fixed- or variable-length
//! (global heap) string arrays; integer and IEEE float datasets (either byte order) stored
//! compact, contiguous, or chunked under a v1 B-tree with deflate, shuffle and fletcher32
//! filters. Dense link storage (fractal heaps, used by `libver='latest'` for groups of more than
//! eight links), version 4 chunk indexes and other filters are reported as unsupported.
//! Checksums of version 2 metadata are not verified; every offset and size is bounds-checked,
//! so a damaged file gives an [`Error::Format`], never a panic or an unbounded allocation.
//!
//! Why not a crate: `hdf5-metno` binds the C library (a system dependency for every user).
//! The pure-Rust `hdf5-pure` 0.47 read every Keras file tested correctly, but it is about
//! 105k lines with MSRV 1.89 and, on fixtures truncated or garbled at many offsets, aborted
//! the process (stack overflow, a 2^58-byte allocation), which a loader of downloaded files
//! cannot accept. `rust-hdf5` 0.7.9 reads only the first element of a string-array attribute
//! (`layer_names`). Inflate comes from `miniz_oxide` (pure Rust, no further dependencies).

mod data;
mod hdf5;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use self::hdf5::{Hdf5, Message};
use crate::error::{Error, Result};
use crate::weights::raw::RawTensor;

/// Deepest group nesting followed in the Keras 3 layout (guards against cyclic links).
const MAX_DEPTH: usize = 64;

/// Which Keras layout a file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KerasH5Layout {
    /// Legacy full model (`model.save('x.h5')`): weights under `/model_weights`.
    FullModel,
    /// Legacy weights-only file (`save_weights('x.h5')`, the keras-applications files).
    WeightsOnly,
    /// Keras 3 `save_weights('x.weights.h5')`: `layers/<name>/vars/<i>`.
    Keras3,
}

/// One layer's weights, in the order Keras stores them.
#[derive(Debug, Clone, PartialEq)]
pub struct KerasLayer {
    /// Layer name (`stem_conv`); for the Keras 3 layout the `vars` group's `name` attribute, or
    /// the object path when the file has none.
    pub name: String,
    /// `(weight name as stored, tensor)`, e.g. `("stem_conv/kernel:0", ..)`; for the Keras 3
    /// layout the dataset path, e.g. `("layers/conv2d/vars/0", ..)`.
    pub weights: Vec<(String, RawTensor)>,
}

/// Weights of a Keras model saved in HDF5 (legacy `model.save('x.h5')` / `save_weights('x.h5')`
/// layout with `layer_names`/`weight_names` attributes, as keras-applications publishes them,
/// or the Keras 3 `.weights.h5` layout).
#[derive(Debug, Clone)]
pub struct KerasH5 {
    path: PathBuf,
    layout: KerasH5Layout,
    layers: Vec<KerasLayer>,
}

/// Whether `bytes` start an HDF5 file: the signature `\x89HDF\r\n\x1a\n` at offset 0, 512,
/// 1024, 2048, ... (HDF5 allows a user block before the superblock).
pub fn looks_like_hdf5(bytes: &[u8]) -> bool {
    hdf5::signature_offset(bytes).is_some()
}

impl KerasH5 {
    /// Reads every layer and weight of the Keras HDF5 file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses a Keras HDF5 file already in memory; `path` is only used in messages.
    pub fn from_bytes(bytes: &[u8], path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = path.display().to_string();
        let h = Hdf5::parse(bytes, &file)?;
        let root = h.object(h.root)?;
        let (layout, layers) = if data::attribute(&h, &root, "layer_names")?.is_some()
            || data::attribute(&h, &root, "layer_names0")?.is_some()
        {
            (KerasH5Layout::WeightsOnly, legacy(&h, &root)?)
        } else if let Some(group) = lookup(&h, &root, "model_weights")? {
            (KerasH5Layout::FullModel, legacy(&h, &group)?)
        } else if lookup(&h, &root, "layers")?.is_some() || lookup(&h, &root, "vars")?.is_some() {
            let mut layers = Vec::new();
            keras3(&h, &root, "", &mut HashSet::new(), &mut layers)?;
            (KerasH5Layout::Keras3, layers)
        } else {
            return Err(Error::format(
                file,
                "not a Keras weight file: no `layer_names` attribute at `/` or `/model_weights`, \
                 and no Keras 3 `layers`/`vars` group",
            ));
        };
        let mut seen = HashSet::new();
        for (name, _) in layers.iter().flat_map(|l| &l.weights) {
            if !seen.insert(name) {
                return Err(Error::format(
                    file,
                    format!("weight `{name}` is stored twice"),
                ));
            }
        }
        Ok(Self {
            path,
            layout,
            layers,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Which Keras layout the file uses.
    pub fn layout(&self) -> KerasH5Layout {
        self.layout
    }

    /// (layer name, [(weight name as stored e.g. "stem_conv/kernel:0", tensor)]) in file order,
    /// including layers without weights (legacy layouts list every layer).
    pub fn layers(&self) -> &[KerasLayer] {
        &self.layers
    }

    /// Flat map "layer/weight:0"-style names → tensors (the names a name map will use).
    pub fn tensors(&self) -> BTreeMap<String, RawTensor> {
        self.layers
            .iter()
            .flat_map(|l| l.weights.iter().cloned())
            .collect()
    }

    /// Like [`KerasH5::tensors`], without copying the data.
    pub fn into_tensors(self) -> BTreeMap<String, RawTensor> {
        self.layers.into_iter().flat_map(|l| l.weights).collect()
    }
}

/// Follows a slash-separated path of hard links from a group; `None` if a link is missing.
fn lookup<'a>(h: &Hdf5<'a>, group: &[Message<'a>], path: &str) -> Result<Option<Vec<Message<'a>>>> {
    let mut current: Option<Vec<Message<'a>>> = None;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let links = h.links(current.as_deref().unwrap_or(group))?;
        let Some((_, addr)) = links.into_iter().find(|(n, _)| n == part) else {
            return Ok(None);
        };
        current = Some(h.object(addr)?);
    }
    Ok(current)
}

/// A Keras string-list attribute, joined from `name0`, `name1`, ... when Keras split it.
fn string_list(h: &Hdf5, msgs: &[Message], name: &str) -> Result<Option<Vec<String>>> {
    if let Some(attr) = data::attribute(h, msgs, name)? {
        return attr.strings(h, name).map(Some);
    }
    let mut out: Option<Vec<String>> = None;
    for i in 0.. {
        let part = format!("{name}{i}");
        let Some(attr) = data::attribute(h, msgs, &part)? else {
            break;
        };
        out.get_or_insert_with(Vec::new)
            .extend(attr.strings(h, &part)?);
    }
    Ok(out)
}

/// Reads the legacy layout from the group holding `layer_names`.
fn legacy(h: &Hdf5, group: &[Message]) -> Result<Vec<KerasLayer>> {
    let names = string_list(h, group, "layer_names")?
        .ok_or_else(|| h.err("the weights group has no `layer_names` attribute"))?;
    let links: BTreeMap<String, u64> = h.links(group)?.into_iter().collect();
    let extra = ["top_level_model_weights".to_string()];
    let mut layers = Vec::new();
    for (i, name) in names.iter().chain(&extra).enumerate() {
        let top_level = i == names.len();
        let Some(&addr) = links.get(name) else {
            if top_level {
                break;
            }
            return Err(h.err(format!(
                "layer `{name}` is listed in `layer_names` but has no group"
            )));
        };
        let msgs = h.object(addr)?;
        let weight_names = match string_list(h, &msgs, "weight_names")? {
            Some(w) => w,
            None if top_level => Vec::new(),
            None => return Err(h.err(format!("layer `{name}` has no `weight_names` attribute"))),
        };
        let mut weights = Vec::new();
        for w in weight_names {
            let Some(obj) = lookup(h, &msgs, &w)? else {
                return Err(h.err(format!(
                    "layer `{name}`: weight `{w}` is listed but not stored"
                )));
            };
            weights.push((w.clone(), data::dataset(h, &obj, &w)?));
        }
        if !top_level || !weights.is_empty() {
            layers.push(KerasLayer {
                name: name.clone(),
                weights,
            });
        }
    }
    Ok(layers)
}

/// Walks the Keras 3 layout, collecting every `vars` group under `prefix`. `seen` holds the
/// groups already walked (a damaged file could link one group from many places).
fn keras3(
    h: &Hdf5,
    group: &[Message],
    prefix: &str,
    seen: &mut HashSet<u64>,
    out: &mut Vec<KerasLayer>,
) -> Result<()> {
    for (name, addr) in h.links(group)? {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let msgs = h.object(addr)?;
        if !msgs.iter().any(|m| matches!(m.kind, 0x02 | 0x06 | 0x11)) {
            return Err(h.err(format!("dataset `{path}` is outside a `vars` group")));
        }
        if !seen.insert(addr) || path.split('/').count() > MAX_DEPTH {
            return Err(h.err(format!("group `{path}` is linked twice or nested too deep")));
        }
        if name != "vars" {
            keras3(h, &msgs, &path, seen, out)?;
            continue;
        }
        let mut vars = Vec::new();
        for (n, a) in h.links(&msgs)? {
            let i = n
                .parse::<usize>()
                .map_err(|_| h.err(format!("`{path}/{n}`: variables must be named 0, 1, ...")))?;
            vars.push((i, a));
        }
        vars.sort_unstable();
        let mut weights = Vec::new();
        for (i, a) in vars {
            let name = format!("{path}/{i}");
            weights.push((name.clone(), data::dataset(h, &h.object(a)?, &name)?));
        }
        let label = data::attribute(h, &msgs, "name")?
            .map(|a| a.strings(h, "name"))
            .transpose()?;
        let name = match label {
            Some(n) if n.len() == 1 => n.concat(),
            _ => prefix.to_string(),
        };
        out.push(KerasLayer { name, weights });
    }
    Ok(())
}
