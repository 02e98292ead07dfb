//! TensorFlow checkpoint reader against checkpoints written by TensorFlow itself
//! (tools/make_tf_checkpoint_fixtures.py).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use effnet::weights::{looks_like_tf_index, RawDType, RawTensor, TfCheckpoint};
use effnet::Error;
use serde_json::Value;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tf_checkpoint")
        .join(rel)
}

fn expected(section: &str) -> serde_json::Map<String, Value> {
    let text = fs::read_to_string(fixture("expected.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    doc[section].as_object().unwrap().clone()
}

/// Element `i` of a float tensor as f64 (exact for every supported float type).
fn float_at(t: &RawTensor, i: usize) -> f64 {
    let b = &t.data;
    match t.dtype {
        RawDType::F32 => f32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap()) as f64,
        RawDType::F64 => f64::from_le_bytes(b[8 * i..8 * i + 8].try_into().unwrap()),
        RawDType::F16 => half::f16::from_le_bytes(b[2 * i..2 * i + 2].try_into().unwrap()).to_f64(),
        RawDType::BF16 => {
            half::bf16::from_le_bytes(b[2 * i..2 * i + 2].try_into().unwrap()).to_f64()
        }
        other => panic!("not a float dtype: {other}"),
    }
}

fn int_at(t: &RawTensor, i: usize) -> i64 {
    let b = &t.data;
    match t.dtype {
        RawDType::I32 => i32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap()) as i64,
        RawDType::I64 => i64::from_le_bytes(b[8 * i..8 * i + 8].try_into().unwrap()),
        other => panic!("not an int dtype: {other}"),
    }
}

/// Compares every tensor and every element with the JSON written by the fixture script.
fn assert_matches(tensors: &BTreeMap<String, RawTensor>, want: &serde_json::Map<String, Value>) {
    let got_names: Vec<&String> = tensors.keys().collect();
    let want_names: Vec<&String> = want.keys().collect();
    assert_eq!(got_names, want_names);
    for (name, spec) in want {
        let t = &tensors[name];
        let dtype = match spec["dtype"].as_str().unwrap() {
            "float32" => RawDType::F32,
            "float16" => RawDType::F16,
            "bfloat16" => RawDType::BF16,
            "float64" => RawDType::F64,
            "int32" => RawDType::I32,
            "int64" => RawDType::I64,
            other => panic!("{other}"),
        };
        assert_eq!(t.dtype, dtype, "{name}");
        let shape: Vec<usize> = spec["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.shape, shape, "{name}");
        let values = spec["values"].as_array().unwrap();
        assert_eq!(t.elem_count(), values.len(), "{name}");
        for (i, v) in values.iter().enumerate() {
            if dtype.is_float() {
                let got = float_at(t, i);
                let want = match v {
                    Value::String(s) if s == "nan" => f64::NAN,
                    Value::String(s) if s == "inf" => f64::INFINITY,
                    Value::String(s) if s == "-inf" => f64::NEG_INFINITY,
                    other => other.as_f64().unwrap(),
                };
                let same = got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan());
                assert!(same, "{name}[{i}]: got {got:e}, expected {want:e}");
            } else {
                assert_eq!(int_at(t, i), v.as_i64().unwrap(), "{name}[{i}]");
            }
        }
    }
}

#[test]
fn format_fixture_every_value() {
    let ckpt = TfCheckpoint::open(fixture("format")).unwrap();
    assert_matches(ckpt.tensors(), &expected("format"));
    let t = &ckpt.tensors()["float32/empty"];
    assert_eq!((t.shape.clone(), t.data.len()), (vec![0, 3], 0));
    assert!(ckpt.tensors()["int64/scalar"].shape.is_empty());
    assert!(ckpt
        .tensors()
        .contains_key("names/\u{fc}nicode_\u{65e5}\u{672c}"));
}

#[test]
fn multi_shard_checkpoint() {
    assert!(fixture("sharded/model.ckpt.data-00001-of-00002").is_file());
    let ckpt = TfCheckpoint::open(fixture("sharded")).unwrap();
    assert_matches(ckpt.tensors(), &expected("sharded"));
}

#[test]
fn tf2_object_checkpoint_skips_the_object_graph() {
    // No `checkpoint` file: the directory's single `.index` is used.
    assert!(!fixture("tf2/checkpoint").exists());
    let ckpt = TfCheckpoint::open(fixture("tf2")).unwrap();
    assert!(ckpt.prefix().ends_with("ckpt"), "{}", ckpt.prefix());
    assert_matches(ckpt.tensors(), &expected("tf2"));
}

#[test]
fn every_way_of_naming_a_checkpoint() {
    let reference = TfCheckpoint::open(fixture("format")).unwrap();
    let prefix = fixture("format/model.ckpt");
    assert_eq!(Path::new(reference.prefix()), prefix);
    for path in [
        fixture("format/model.ckpt"),
        fixture("format/checkpoint"),
        fixture("format/model.ckpt.index"),
        fixture("format/model.ckpt.data-00000-of-00001"),
    ] {
        let ckpt = TfCheckpoint::open(&path).unwrap();
        assert_eq!(Path::new(ckpt.prefix()), prefix, "{}", path.display());
        assert_eq!(ckpt.tensors(), reference.tensors(), "{}", path.display());
    }
    assert_eq!(reference.clone().into_tensors(), *reference.tensors());
}

/// Unpacks `lite0.tar.gz` into a temporary directory and opens that (the archive is the only copy
/// committed).
fn unpacked_lite0() -> (tempfile::TempDir, TfCheckpoint) {
    let tmp = tempfile::tempdir().unwrap();
    let gz = flate2::read::GzDecoder::new(fs::File::open(fixture("lite0.tar.gz")).unwrap());
    tar::Archive::new(gz).unpack(tmp.path()).unwrap();
    let ckpt = TfCheckpoint::open(tmp.path().join("efficientnet-lite0")).unwrap();
    (tmp, ckpt)
}

#[test]
fn tar_gz_is_read_in_place() {
    let (_tmp, dir) = unpacked_lite0();
    let tgz = TfCheckpoint::open(fixture("lite0.tar.gz")).unwrap();
    assert!(
        tgz.prefix()
            .ends_with("lite0.tar.gz!efficientnet-lite0/model.ckpt"),
        "{}",
        tgz.prefix()
    );
    assert_eq!(dir.tensors(), tgz.tensors());

    // `.tgz` works too, and a damaged archive is an error.
    let tmp = tempfile::tempdir().unwrap();
    let bytes = fs::read(fixture("lite0.tar.gz")).unwrap();
    fs::write(tmp.path().join("x.tgz"), &bytes).unwrap();
    assert_eq!(
        TfCheckpoint::open(tmp.path().join("x.tgz"))
            .unwrap()
            .tensors(),
        dir.tensors()
    );
    for cut in [0, 10, bytes.len() / 3, bytes.len() - 30] {
        let p = tmp.path().join(format!("cut{cut}.tar.gz"));
        fs::write(&p, &bytes[..cut]).unwrap();
        assert!(TfCheckpoint::open(&p).is_err(), "cut at {cut}");
    }
}

/// Copies a fixture directory into a fresh temporary directory.
fn copy_dir(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in fs::read_dir(fixture(name)).unwrap() {
        let p = entry.unwrap().path();
        fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
    }
    tmp
}

#[test]
fn moved_checkpoint_with_absolute_state_path() {
    let tmp = copy_dir("format");
    fs::write(
        tmp.path().join("checkpoint"),
        "model_checkpoint_path: \"/training/run7/model.ckpt\"\n\
         all_model_checkpoint_paths: \"/training/run7/model.ckpt\"\n\
         all_model_checkpoint_timestamps: 1700000000.5\nlast_preserved_timestamp: 1699999999.0\n",
    )
    .unwrap();
    let ckpt = TfCheckpoint::open(tmp.path()).unwrap();
    assert_eq!(Path::new(ckpt.prefix()), tmp.path().join("model.ckpt"));

    fs::write(
        tmp.path().join("checkpoint"),
        "model_checkpoint_path: \"other\"\n",
    )
    .unwrap();
    let err = TfCheckpoint::open(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("other.index"), "{err}");
}

#[test]
fn bad_tensor_crc_is_a_checksum_error() {
    let tmp = copy_dir("format");
    let data = tmp.path().join("model.ckpt.data-00000-of-00001");
    let mut bytes = fs::read(&data).unwrap();
    bytes[0] ^= 0x01;
    fs::write(&data, &bytes).unwrap();
    match TfCheckpoint::open(tmp.path()) {
        Err(Error::Checksum { file, what, .. }) => {
            assert!(file.ends_with("model.ckpt.data-00000-of-00001"), "{file}");
            assert!(what.contains("tensor `"), "{what}");
        }
        other => panic!("expected a checksum error, got {other:?}"),
    }
}

#[test]
fn bad_block_crc_is_a_checksum_error() {
    let tmp = copy_dir("format");
    let index = tmp.path().join("model.ckpt.index");
    let mut bytes = fs::read(&index).unwrap();
    bytes[20] ^= 0x01;
    fs::write(&index, &bytes).unwrap();
    match TfCheckpoint::open(tmp.path()) {
        Err(Error::Checksum { file, what, .. }) => {
            assert!(file.ends_with("model.ckpt.index"), "{file}");
            assert!(what.contains("block"), "{what}");
        }
        other => panic!("expected a checksum error, got {other:?}"),
    }
}

#[test]
fn truncated_or_garbled_files_are_errors_not_panics() {
    let tmp = copy_dir("format");
    let reference = TfCheckpoint::open(tmp.path()).unwrap();
    for file in ["model.ckpt.index", "model.ckpt.data-00000-of-00001"] {
        let path = tmp.path().join(file);
        let good = fs::read(&path).unwrap();
        // Every 4th length and every byte (with a varying bit pattern): each write costs milliseconds
        // on slow disks; the table unit tests try every offset and pattern in memory.
        for len in (0..good.len()).step_by(4).chain(good.len() - 3..good.len()) {
            fs::write(&path, &good[..len]).unwrap();
            assert!(
                TfCheckpoint::open(tmp.path()).is_err(),
                "{file} truncated to {len}"
            );
        }
        let mut equivalent = Vec::new();
        for i in 0..good.len() {
            let flip = [0x01u8, 0x80, 0xff][i % 3];
            let mut bad = good.clone();
            bad[i] ^= flip;
            fs::write(&path, &bad).unwrap();
            match TfCheckpoint::open(tmp.path()) {
                Err(_) => {}
                // The only accepted change is one without effect: a footer block-handle varint
                // re-encoded in a longer form that has the same value (LevelDB accepts it too).
                Ok(c) => {
                    assert_eq!(
                        c.tensors(),
                        reference.tensors(),
                        "{file} byte {i} ^ {flip:#x}"
                    );
                    assert!(i >= good.len() - 48, "{file} byte {i} ^ {flip:#x} accepted");
                    equivalent.push(i);
                }
            }
        }
        assert!(equivalent.len() <= 2, "{file}: {equivalent:?}");
        fs::write(&path, &good).unwrap();
    }
    assert!(TfCheckpoint::open(tmp.path()).is_ok());
}

#[test]
fn unsupported_dtype_names_the_tensor() {
    match TfCheckpoint::open(fixture("unsupported")) {
        Err(Error::UnsupportedDType { tensor, dtype, .. }) => {
            assert_eq!(tensor, "bad/complex");
            assert!(dtype.contains("DT_COMPLEX64"), "{dtype}");
        }
        other => panic!("expected UnsupportedDType, got {other:?}"),
    }
}

#[test]
fn missing_or_ambiguous_checkpoints() {
    assert!(matches!(
        TfCheckpoint::open(fixture("no/such/model.ckpt")),
        Err(Error::Io { .. })
    ));
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        TfCheckpoint::open(empty.path()),
        Err(Error::Format { .. })
    ));
    let two = copy_dir("tf2");
    fs::copy(
        fixture("format/model.ckpt.index"),
        two.path().join("other.index"),
    )
    .unwrap();
    let err = TfCheckpoint::open(two.path()).unwrap_err().to_string();
    assert!(err.contains("2 `*.index` files"), "{err}");
    // Not an index at all.
    let junk = empty.path().join("junk.index");
    fs::write(&junk, vec![7u8; 100]).unwrap();
    assert!(matches!(
        TfCheckpoint::open(&junk),
        Err(Error::Format { .. })
    ));
}

#[test]
fn index_detection() {
    assert!(looks_like_tf_index(
        &fs::read(fixture("format/model.ckpt.index")).unwrap()
    ));
    assert!(!looks_like_tf_index(
        &fs::read(fixture("format/model.ckpt.data-00000-of-00001")).unwrap()
    ));
    assert!(!looks_like_tf_index(
        &fs::read(fixture("b0.io.safetensors")).unwrap()
    ));
}

// ----------------------------------------------------------------------------------------------------
// Model fixtures: official tensorflow/tpu variable names, EMA shadows, RMSProp slots.

/// `(repeats, kernel, expand, in, out)` of the seven EfficientNet stages (efficientnet_builder.py).
const STAGES: [(usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 32, 16),
    (2, 3, 6, 16, 24),
    (2, 5, 6, 24, 40),
    (3, 3, 6, 40, 80),
    (3, 5, 6, 80, 112),
    (4, 5, 6, 112, 192),
    (1, 3, 6, 192, 320),
];

/// efficientnet_model.py `round_filters` with divisor 8.
fn round_filters(filters: usize, width: f64) -> usize {
    let f = filters as f64 * width;
    let new = 8.max((f + 4.0) as usize / 8 * 8);
    if (new as f64) < 0.9 * f {
        new + 8
    } else {
        new
    }
}

/// An official variable: name, TF shape, trainable (BN moving statistics are not).
type Variable = (String, Vec<usize>, bool);

/// Expected official variables, the number of blocks and the number of expand-ratio-1 blocks.
fn expected_variables(
    model: &str,
    width: f64,
    depth: f64,
    lite: bool,
    classes: usize,
) -> (Vec<Variable>, usize, usize) {
    let mut vars = Vec::new();
    let mut conv = |name: String, shape: Vec<usize>| vars.push((name, shape, true));
    let stem = if lite { 32 } else { round_filters(32, width) };
    let head = if lite {
        1280
    } else {
        round_filters(1280, width)
    };
    conv(format!("{model}/stem/conv2d/kernel"), vec![3, 3, 3, stem]);
    let mut bns = vec![(format!("{model}/stem/tpu_batch_normalization"), stem)];
    let (mut prev, mut index, mut no_expand) = (stem, 0, 0);
    for (repeats, k, e, in_f, out_f) in STAGES {
        for j in 0..(depth * repeats as f64).ceil() as usize {
            let b = format!("{model}/blocks_{index}");
            let nominal_in = round_filters(if j == 0 { in_f } else { out_f }, width);
            let (inp, out, mid) = (prev, round_filters(out_f, width), prev * e);
            let se = 1.max(nominal_in / 4);
            let bn = |i: usize| match i {
                0 => format!("{b}/tpu_batch_normalization"),
                i => format!("{b}/tpu_batch_normalization_{i}"),
            };
            let mut n_bn = 0;
            if e != 1 {
                conv(format!("{b}/conv2d/kernel"), vec![1, 1, inp, mid]);
                bns.push((bn(0), mid));
                n_bn = 1;
            } else {
                no_expand += 1;
            }
            conv(
                format!("{b}/depthwise_conv2d/depthwise_kernel"),
                vec![k, k, mid, 1],
            );
            bns.push((bn(n_bn), mid));
            if !lite {
                conv(format!("{b}/se/conv2d/kernel"), vec![1, 1, mid, se]);
                conv(format!("{b}/se/conv2d/bias"), vec![se]);
                conv(format!("{b}/se/conv2d_1/kernel"), vec![1, 1, se, mid]);
                conv(format!("{b}/se/conv2d_1/bias"), vec![mid]);
            }
            let project = if e != 1 { "conv2d_1" } else { "conv2d" };
            conv(format!("{b}/{project}/kernel"), vec![1, 1, mid, out]);
            bns.push((bn(n_bn + 1), out));
            prev = out;
            index += 1;
        }
    }
    conv(
        format!("{model}/head/conv2d/kernel"),
        vec![1, 1, prev, head],
    );
    bns.push((format!("{model}/head/tpu_batch_normalization"), head));
    conv(format!("{model}/head/dense/kernel"), vec![head, classes]);
    conv(format!("{model}/head/dense/bias"), vec![classes]);
    for (scope, c) in bns {
        for (leaf, trainable) in [
            ("gamma", true),
            ("beta", true),
            ("moving_mean", false),
            ("moving_variance", false),
        ] {
            vars.push((format!("{scope}/{leaf}"), vec![c], trainable));
        }
    }
    (vars, index, no_expand)
}

fn check_model_fixture(case: &str, weights: &str, blocks: usize, expand_ratio_1: usize) {
    let io = fs::read(fixture(&format!("{case}.io.safetensors"))).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&io).unwrap();
    let meta = header.metadata().as_ref().unwrap();
    assert_eq!(meta["weights"], weights);
    assert_eq!(meta["naming"], "tf");
    let io = safetensors::SafeTensors::deserialize(&io).unwrap();
    assert_eq!(io.tensor("input").unwrap().shape(), [1, 3, 64, 64]);
    let classes: usize = meta["num_classes"].parse().unwrap();
    assert_eq!(io.tensor("logits").unwrap().shape(), [1, classes]);

    let arch = &meta["arch"];
    let lite = arch.contains("lite");
    let model = format!(
        "efficientnet-{}",
        arch.trim_start_matches("tf_efficientnet_")
    );
    let width: f64 = meta["width"].parse().unwrap();
    let depth: f64 = meta["depth"].parse().unwrap();
    let (vars, n_blocks, n_no_expand) = expected_variables(&model, width, depth, lite, classes);
    assert_eq!((n_blocks, n_no_expand), (blocks, expand_ratio_1), "{case}");

    let ckpt = TfCheckpoint::open(fixture(weights)).unwrap();
    let t = ckpt.tensors();
    let get = |name: &str| {
        t.get(name)
            .unwrap_or_else(|| panic!("{case}: `{name}` missing"))
    };
    let mut expected_count = 1;
    for (name, shape, trainable) in &vars {
        let raw = get(name);
        assert_eq!((raw.dtype, &raw.shape), (RawDType::F32, shape), "{name}");
        let ema = get(&format!("{name}/ExponentialMovingAverage"));
        assert_eq!(
            (ema.dtype, &ema.shape),
            (RawDType::F32, shape),
            "{name} EMA"
        );
        assert_ne!(ema.data, raw.data, "{name}: EMA and raw values must differ");
        expected_count += 2;
        if *trainable {
            for slot in ["RMSProp", "RMSProp_1"] {
                let s = get(&format!("{name}/{slot}"));
                assert_eq!((s.dtype, &s.shape), (RawDType::F32, shape), "{name}/{slot}");
            }
            expected_count += 2;
        }
    }
    let step = get("global_step");
    assert_eq!((step.dtype, step.shape.len()), (RawDType::I64, 0));
    assert_eq!(t.len(), expected_count, "{case}: unexpected extra tensors");
}

#[test]
fn model_fixture_b0() {
    check_model_fixture("b0", "b0", 16, 1);
}

#[test]
fn model_fixture_b1_has_two_expand_ratio_1_blocks() {
    check_model_fixture("b1", "b1", 23, 2);
}

#[test]
fn model_fixture_lite0() {
    check_model_fixture("lite0", "lite0.tar.gz", 16, 1);
    assert_eq!(
        unpacked_lite0().1.tensors(),
        TfCheckpoint::open(fixture("lite0.tar.gz"))
            .unwrap()
            .tensors()
    );
}
