//! Keras HDF5 reader against fixtures written by Keras 2 (tf-keras), Keras 3 and h5py.
//!
//! Fixtures: `tools/make_keras_h5_fixtures.py`. Run: `cargo test --test keras_h5`.

use std::path::{Path, PathBuf};

use effnet::weights::{looks_like_hdf5, KerasH5, KerasH5Layout, RawDType};
use effnet::Error;
use safetensors::{Dtype, SafeTensors};

const FORMAT_FIXTURES: [&str; 6] = [
    "small_full.h5",
    "small_weights.h5",
    "small_fixed_chunked.h5",
    "small_latest.h5",
    "small_k3_full.h5",
    "small_k3.weights.h5",
];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keras_h5")
        .join(name)
}

fn raw_dtype(d: Dtype) -> RawDType {
    match d {
        Dtype::F32 => RawDType::F32,
        Dtype::I64 => RawDType::I64,
        other => panic!("unexpected dtype {other:?} in an expected file"),
    }
}

#[test]
fn every_element_of_every_layout_matches_keras() {
    for name in FORMAT_FIXTURES {
        let expected_bytes =
            std::fs::read(fixture(&format!("{name}.expected.safetensors"))).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&expected_bytes).unwrap();
        let meta = meta.metadata().clone().unwrap();
        let expected = SafeTensors::deserialize(&expected_bytes).unwrap();

        let file = KerasH5::open(fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(file.clone().into_tensors(), file.tensors(), "{name}");
        let layout = match meta["layout"].as_str() {
            "FullModel" => KerasH5Layout::FullModel,
            "WeightsOnly" => KerasH5Layout::WeightsOnly,
            "Keras3" => KerasH5Layout::Keras3,
            other => panic!("{other}"),
        };
        assert_eq!(file.layout(), layout, "{name}");

        // Layer order and per-layer weight order.
        let layers: Vec<(String, Vec<String>)> = serde_json::from_str(&meta["layers"]).unwrap();
        let got: Vec<(String, Vec<String>)> = file
            .layers()
            .iter()
            .map(|l| {
                (
                    l.name.clone(),
                    l.weights.iter().map(|(n, _)| n.clone()).collect(),
                )
            })
            .collect();
        assert_eq!(got, layers, "{name}: layers");

        // Every tensor, every element, bit for bit.
        let tensors = file.tensors();
        let mut names: Vec<String> = expected.names().into_iter().map(str::to_string).collect();
        names.sort();
        assert_eq!(
            tensors.keys().cloned().collect::<Vec<_>>(),
            names,
            "{name}: tensor names"
        );
        for (key, t) in &tensors {
            let e = expected.tensor(key).unwrap();
            assert_eq!(t.dtype, raw_dtype(e.dtype()), "{name}: {key} dtype");
            assert_eq!(t.shape, e.shape(), "{name}: {key} shape");
            assert_eq!(t.data, e.data(), "{name}: {key} data");
        }
    }
}

#[test]
fn legacy_names_are_the_keras_2_ones() {
    let file = KerasH5::open(fixture("small_weights.h5")).unwrap();
    let names: Vec<&str> = file.layers().iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "image",
            "normalization",
            "conv",
            "bn",
            "dwconv",
            "pool",
            "dense"
        ]
    );
    let t = file.tensors();
    assert_eq!(t["dwconv/depthwise_kernel:0"].shape, [3, 3, 4, 1]);
    assert_eq!(t["conv/kernel:0"].shape, [3, 3, 3, 4]);
    assert_eq!(t["dense/kernel:0"].shape, [4, 5]);
    let count = &t["normalization/count:0"];
    assert_eq!(
        (count.dtype, count.shape.as_slice()),
        (RawDType::I64, &[][..])
    );
    assert_eq!(count.data, 123456789012i64.to_le_bytes());
}

#[test]
fn keras3_weights_file_names_layers_by_their_name_attribute() {
    let file = KerasH5::open(fixture("small_k3.weights.h5")).unwrap();
    let conv = file.layers().iter().find(|l| l.name == "conv").unwrap();
    let names: Vec<&str> = conv.weights.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["layers/conv2d/vars/0", "layers/conv2d/vars/1"]);
    assert_eq!(conv.weights[0].1.shape, [3, 3, 3, 4]);
}

#[test]
fn model_fixtures_have_the_keras_applications_names() {
    for (case, tensors, first, last) in [
        ("keras_b0", 314, "stem_conv/kernel:0", "predictions/bias:0"),
        ("keras_mnv2", 262, "Conv1/kernel:0", "predictions/bias:0"),
    ] {
        let io = std::fs::read(fixture(&format!("{case}.io.safetensors"))).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&io).unwrap();
        let weights = meta.metadata().as_ref().unwrap()["weights"].clone();
        let file = KerasH5::open(fixture(&weights)).unwrap();
        assert_eq!(file.layout(), KerasH5Layout::WeightsOnly);
        let t = file.tensors();
        assert_eq!(t.len(), tensors, "{case}");
        assert!(t.contains_key(first) && t.contains_key(last), "{case}");
        assert_eq!(t["predictions/kernel:0"].shape[1], 10, "{case}");
        let with_weights: Vec<&str> = file
            .layers()
            .iter()
            .filter(|l| !l.weights.is_empty())
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(with_weights.last(), Some(&"predictions"), "{case}");
    }
    let b0 = KerasH5::open(fixture("keras_b0.h5")).unwrap().tensors();
    for key in [
        "block1a_dwconv/depthwise_kernel:0",
        "block2a_expand_conv/kernel:0",
        "top_conv/kernel:0",
    ] {
        assert!(b0.contains_key(key), "{key}");
    }
    let f32s = |key: &str| -> Vec<f32> {
        b0[key]
            .data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    assert_eq!(f32s("normalization/mean:0"), [0.485, 0.456, 0.406]);
    assert_eq!(f32s("normalization/variance:0"), [0.229, 0.224, 0.225]);
}

#[test]
fn hdf5_signature_is_found_at_0_and_512() {
    let plain = std::fs::read(fixture("small_weights.h5")).unwrap();
    let user_block = std::fs::read(fixture("small_fixed_chunked.h5")).unwrap();
    assert!(looks_like_hdf5(&plain));
    assert!(&user_block[..8] != b"\x89HDF\r\n\x1a\n" && looks_like_hdf5(&user_block));
    assert!(!looks_like_hdf5(b"PK\x03\x04 a zip, not HDF5"));
    assert!(!looks_like_hdf5(&plain[1..]));
}

#[test]
fn non_keras_and_unsupported_files_are_typed_errors() {
    let message = |name: &str| match KerasH5::open(fixture(name)) {
        Err(Error::Format { file, message }) => {
            assert!(file.ends_with(name), "{file}");
            message
        }
        other => panic!("{name}: expected a format error, got {other:?}"),
    };
    assert!(message("plain.h5").contains("not a Keras weight file"));
    assert!(message("dense_links.h5").contains("dense link storage"));
    assert!(message("keras_b0.io.safetensors").contains("signature not found"));
    assert!(matches!(
        KerasH5::open(fixture("missing.h5")),
        Err(Error::Io { .. })
    ));
}

/// Truncates and garbles every fixture at many offsets: each attempt must return (Ok or a
/// typed error), never panic, and damage must be detected often. `FUZZ_STEP=1` tries every
/// offset (about 100 s).
#[test]
fn damaged_files_never_panic() {
    for name in FORMAT_FIXTURES {
        let bytes = std::fs::read(fixture(name)).unwrap();
        let (mut ok, mut errors) = (0usize, 0usize);
        let mut tally = |r: effnet::Result<KerasH5>| match r {
            Ok(_) => ok += 1,
            Err(Error::Format { .. } | Error::UnsupportedDType { .. }) => errors += 1,
            Err(other) => panic!("{name}: unexpected error kind {other}"),
        };
        for offset in
            (0..bytes.len()).step_by(std::env::var("FUZZ_STEP").map_or(11, |s| s.parse().unwrap()))
        {
            tally(KerasH5::from_bytes(&bytes[..offset], name));
            let end = (offset + 8).min(bytes.len());
            for damage in 0..4 {
                let mut b = bytes.clone();
                let span = &mut b[offset..end];
                match damage {
                    0 => span.iter_mut().for_each(|x| *x ^= 0xff),
                    1 => span.fill(0xff),
                    2 => span.fill(0x00),
                    _ => span[0] = span[0].wrapping_add(1),
                }
                tally(KerasH5::from_bytes(&b, name));
            }
        }
        assert!(
            errors > ok / 4,
            "{name}: only {errors} errors for {ok} successes"
        );
    }
}
