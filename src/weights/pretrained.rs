//! Pretrained networks by weight-set id: the manifest entry decides architecture, numerics and
//! preprocessing, so none of them can be picked wrong.

use std::path::Path;

use super::load::{load_network, LoadOptions, LoadReport};
use super::manifest::{Manifest, WeightSet};
use crate::error::{Error, Result};
use crate::models::Network;

/// A network loaded from a weight set, with the entry it came from (for its preprocessing, labels and
/// reported accuracy) and what the loader did.
#[derive(Debug, Clone)]
pub struct Pretrained {
    pub network: Network,
    pub weight_set: WeightSet,
    pub report: LoadReport,
}

/// Loads the file of weight set `ws` from `path` (e.g. a manual download): architecture, padding, BN
/// eps and class count come from the entry; the file's naming must be the one the entry names.
pub fn load_weight_set(ws: &WeightSet, path: &Path, opts: &LoadOptions) -> Result<Pretrained> {
    let opts = LoadOptions {
        keep_background: false,
        ..opts.clone()
    };
    let (network, report) = load_network(path, &ws.config()?, &opts)?;
    if !ws.naming.matches(&report.naming) {
        return Err(Error::format(
            path.display().to_string(),
            format!(
                "weight set `{}` is published with {:?} names, but this file has {} names",
                ws.id, ws.naming, report.naming
            ),
        ));
    }
    Ok(Pretrained {
        network,
        weight_set: ws.clone(),
        report,
    })
}

/// Downloads (or finds in the cache) weight set `id` of the built-in manifest and loads it.
///
/// ```no_run
/// # fn main() -> effnet::Result<()> {
/// let p = effnet::weights::from_pretrained("tf_efficientnet_b0.aa_in1k", &candle_core::Device::Cpu)?;
/// let preprocess = p.weight_set.preprocess(); // 224 px, crop 0.875, bicubic, ImageNet mean/std
/// # Ok(()) }
/// ```
#[cfg(feature = "download")]
pub fn from_pretrained(id: &str, device: &candle_core::Device) -> Result<Pretrained> {
    let manifest = Manifest::builtin()?;
    let ws = manifest.get(id)?;
    let path = super::hub::Downloader::from_env().fetch(ws, &mut |_, _| {})?;
    let opts = LoadOptions {
        device: device.clone(),
        ..LoadOptions::default()
    };
    load_weight_set(ws, &path, &opts)
}

/// Looks up `id` in the built-in manifest (for offline use with [`load_weight_set`]).
pub fn weight_set(id: &str) -> Result<WeightSet> {
    Ok(Manifest::builtin()?.get(id)?.clone())
}
