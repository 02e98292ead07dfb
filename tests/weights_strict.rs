//! Strict loading through the canonical layer list: timm safetensors with detection, every error kind,
//! and the canonical list agreeing with the tensors the model really asks for.

mod common;

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use common::{assert_close, fixture, formula_tensor, Fixture};
use effnet::config::ModelConfig;
use effnet::weights::{canonical, load_network, load_weights, LoadOptions, Naming};
use effnet::Error;

fn b0_w01() -> ModelConfig {
    match ModelConfig::from_name("tf_efficientnet_b0").unwrap() {
        ModelConfig::EfficientNet(c) => {
            ModelConfig::EfficientNet(c.with_width_coefficient(0.1).with_num_classes(10))
        }
        _ => unreachable!(),
    }
}

#[test]
fn timm_safetensors_load_strictly_with_detection() {
    let path = fixture("timm/b0_w01.weights.safetensors");
    let (net, report) = load_network(&path, &b0_w01(), &LoadOptions::default()).unwrap();
    assert_eq!(report.naming, Naming::Timm);
    assert_eq!(report.prefix, "");
    assert_eq!(
        report.skipped.get("PyTorch batch-norm bookkeeping"),
        Some(&report.skipped.values().sum::<usize>())
    );
    let fx = Fixture::load(&fixture("timm/tf_efficientnet_b0_w01.safetensors"));
    let x = formula_tensor("input", &[2, 3, 64, 64]);
    let logits = net.forward_t(&x, false).unwrap();
    assert_close(&logits, fx.tensor("logits"), 1e-4, "logits");
}

/// Writes `tensors` as safetensors in a temp dir and returns the path.
fn write(tensors: &HashMap<String, Tensor>, name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("effnet-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    candle_core::safetensors::save(tensors, &p).unwrap();
    p
}

fn timm_tensors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("timm/b0_w01.weights.safetensors"), &Device::Cpu)
        .unwrap()
}

#[test]
fn strict_errors_name_file_tensor_and_shapes() {
    let spec = b0_w01().resolve().unwrap();
    let opts = LoadOptions::default();

    let mut extra = timm_tensors();
    extra.insert(
        "blocks.9.9.mystery".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    let p = write(&extra, "extra.safetensors");
    match load_weights(&p, &spec, &opts) {
        Err(Error::UnusedTensors { file, names }) => {
            assert!(file.ends_with("extra.safetensors"));
            assert_eq!(names, vec!["blocks.9.9.mystery".to_string()]);
        }
        other => panic!("{other:?}"),
    }

    let mut missing = timm_tensors();
    missing.remove("blocks.1.0.bn2.running_var");
    let p = write(&missing, "missing.safetensors");
    match load_weights(&p, &spec, &opts) {
        Err(Error::MissingTensor {
            canonical,
            source_key,
            ..
        }) => {
            assert_eq!(canonical, "blocks.1.0.bn2.running_var");
            assert_eq!(source_key, "blocks.1.0.bn2.running_var");
        }
        other => panic!("{other:?}"),
    }

    let mut wrong = timm_tensors();
    let w = wrong["blocks.2.0.conv_dw.weight"].clone();
    wrong.insert(
        "blocks.2.0.conv_dw.weight".into(),
        w.narrow(0, 0, 8).unwrap(),
    );
    let p = write(&wrong, "shape.safetensors");
    match load_weights(&p, &spec, &opts) {
        Err(e @ Error::ShapeMismatch { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("shape.safetensors") && msg.contains("blocks.2.0.conv_dw.weight"));
            assert!(
                msg.contains("[8, 1, 5, 5]") && msg.contains(&format!("{:?}", w.dims())),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }

    let mut ints = timm_tensors();
    ints.insert(
        "bn1.weight".into(),
        Tensor::zeros(8, DType::I64, &Device::Cpu).unwrap(),
    );
    let p = write(&ints, "dtype.safetensors");
    assert!(matches!(
        load_weights(&p, &spec, &opts),
        Err(Error::UnsupportedDType { .. })
    ));

    let p = write(
        &HashMap::from([("x".to_string(), w)]),
        "unknown.safetensors",
    );
    assert!(matches!(
        load_weights(&p, &spec, &opts),
        Err(Error::Format { .. })
    ));
    let p = std::env::temp_dir().join("effnet-not-a-weight-file.bin");
    std::fs::write(&p, b"hello world, not weights").unwrap();
    assert!(matches!(
        load_weights(&p, &spec, &opts),
        Err(Error::Format { .. })
    ));
    assert!(matches!(
        load_weights(fixture("timm/does-not-exist"), &spec, &opts),
        Err(Error::Io { .. })
    ));
}

#[test]
fn classifier_with_other_class_count_is_an_error_unless_dropped_on_request() {
    let spec = match b0_w01() {
        ModelConfig::EfficientNet(c) => c.with_num_classes(3).resolve().unwrap(),
        _ => unreachable!(),
    };
    let path = fixture("timm/b0_w01.weights.safetensors");
    let strict = load_weights(&path, &spec, &LoadOptions::default());
    assert!(
        matches!(strict, Err(Error::ShapeMismatch { ref canonical, .. }) if canonical == "classifier.weight")
    );
    let opts = LoadOptions {
        drop_mismatched_classifier: true,
        ..Default::default()
    };
    let w = load_weights(&path, &spec, &opts).unwrap();
    assert!(w.report.dropped_classifier);
    assert!(!w.tensors.contains_key("classifier.weight"));
    // A trainable VarMap gets a fresh 3-class classifier when the model is built from it.
    let vm = w.into_varmap().unwrap();
    let net = effnet::Network::new(
        &spec,
        VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
    )
    .unwrap();
    assert_eq!(net.num_classes(), 3);
}

#[test]
fn prefixed_state_dicts_are_detected() {
    let t: HashMap<String, Tensor> = timm_tensors()
        .into_iter()
        .map(|(k, v)| (format!("module.{k}"), v))
        .collect();
    let p = write(&t, "prefixed.safetensors");
    let w = load_weights(&p, &b0_w01().resolve().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(w.report.prefix, "module.");
}

/// Records the name and shape of every tensor the model asks for.
struct Recorder(Mutex<Vec<(String, Vec<usize>)>>);

impl SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0
            .lock()
            .unwrap()
            .push((name.to_string(), s.dims().to_vec()));
        Tensor::ones(s, dtype, dev)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("{name}")
    }
    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

struct Shared(std::sync::Arc<Recorder>);
impl SimpleBackend for Shared {
    fn get(
        &self,
        s: Shape,
        n: &str,
        h: Init,
        d: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0.get(s, n, h, d, dev)
    }
    fn get_unchecked(&self, n: &str, d: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.get_unchecked(n, d, dev)
    }
    fn contains_tensor(&self, n: &str) -> bool {
        self.0.contains_tensor(n)
    }
}

#[test]
fn canonical_layer_list_is_exactly_what_models_request() {
    for name in [
        "b1",
        "tf_efficientnet_lite3",
        "mobilenetv2_140",
        "efficientnet_b4",
    ] {
        let cfg = ModelConfig::from_name(name).unwrap();
        let spec = cfg.resolve().unwrap();
        let rec = std::sync::Arc::new(Recorder(Mutex::new(Vec::new())));
        let vb = VarBuilder::from_backend(Box::new(Shared(rec.clone())), DType::F32, Device::Cpu);
        effnet::Network::new(&spec, vb).unwrap();
        let mut requested = rec.0.lock().unwrap().clone();
        let mut listed: Vec<(String, Vec<usize>)> = canonical::layers(&spec)
            .iter()
            .flat_map(|l| l.tensors())
            .map(|t| (t.name, t.shape))
            .collect();
        requested.sort();
        listed.sort();
        assert_eq!(requested, listed, "{name}");
    }
}
