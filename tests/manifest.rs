//! The built-in weight-set catalogue is complete and consistent with the models it names.

use effnet::config::{Counts, ModelConfig, Padding};
use effnet::weights::manifest::{Checksum, FileFormat, Manifest, NamingKind, Source};
use effnet::Error;

#[test]
fn every_entry_is_consistent() {
    let m = Manifest::builtin().unwrap();
    assert!(m.weights.len() >= 150, "{} entries", m.weights.len());
    m.get(&m.default).unwrap();
    let mut ids = std::collections::HashSet::new();
    for w in &m.weights {
        let id = &w.id;
        assert!(ids.insert(id.clone()), "duplicate id {id}");
        assert_eq!(
            id.split('.').next(),
            Some(w.arch.as_str()),
            "{id}: id is arch.tag"
        );
        // The architecture exists and its parameter count is the one recorded (timm's count).
        let cfg = w.config().unwrap_or_else(|e| panic!("{id}: {e}"));
        let with_background = ModelConfig::from_name(&w.arch)
            .unwrap()
            .with_num_classes(w.num_classes);
        let params = Counts::of(&with_background.resolve().unwrap(), 224, 224).params;
        assert_eq!(params, w.params, "{id}: parameter count");
        assert_eq!(
            cfg.num_classes(),
            1000,
            "{id}: ImageNet-1k classes after dropping background"
        );
        // Numerics: the tf_ prefix means TF "SAME" padding and eps 1e-3.
        let tf_arch = w.arch.starts_with("tf_");
        assert_eq!(w.padding == Padding::Same, tf_arch, "{id}: padding");
        if tf_arch {
            assert_eq!(w.bn_eps, 1e-3, "{id}: eps");
        } else if w.bn_eps != 1e-5 {
            // Only torchvision's TF-ported B5-B7 run symmetric padding with eps 1e-3.
            assert!(
                id.starts_with("efficientnet_b") && id.contains(".tv_") && w.bn_eps == 1e-3,
                "{id}"
            );
        }
        // Preprocessing is complete and sane.
        assert!(w.input_size >= 96 && w.input_size <= 800, "{id}");
        assert!(
            w.crop_pct > 0.8 && w.crop_pct <= 1.0,
            "{id}: crop {}",
            w.crop_pct
        );
        if let Some(r) = w.resize_size {
            assert!(r >= w.input_size, "{id}");
        }
        assert!(
            w.std.iter().all(|s| *s > 0.1) && w.mean.iter().all(|m| (0.0..1.0).contains(m)),
            "{id}"
        );
        let p = w.preprocess();
        p.validate().unwrap();
        let (sh, _) = p.scale_size();
        assert!(sh >= w.input_size, "{id}: resize {sh} below crop");
        // AdvProp weights need [-1, 1] inputs.
        if id.contains("_ap") {
            assert_eq!(w.mean, [0.5; 3], "{id}");
        }
        // Background class only for TF-slim.
        assert_eq!(w.background, w.naming == NamingKind::Tfslim, "{id}");
        assert_eq!(
            w.num_classes,
            if w.background { 1001 } else { 1000 },
            "{id}"
        );
        // Format and naming agree.
        let ok = matches!(
            (w.format, w.naming),
            (FileFormat::Safetensors, NamingKind::Timm)
                | (
                    FileFormat::TorchPickle,
                    NamingKind::Torchvision | NamingKind::Lukemelas | NamingKind::Hf
                )
                | (FileFormat::KerasH5, NamingKind::Keras)
                | (
                    FileFormat::TfCheckpoint,
                    NamingKind::Tf | NamingKind::Tfslim
                )
        );
        assert!(ok, "{id}: {:?} with {:?}", w.format, w.naming);
        match &w.source {
            Source::Hf {
                repo,
                file,
                revision,
            } => assert!(repo.contains('/') && !file.is_empty() && !revision.is_empty()),
            Source::Url { url } => assert!(url.starts_with("https://"), "{id}"),
            Source::Pypi {
                package,
                version,
                path,
            } => {
                assert!(!package.is_empty() && !version.is_empty() && path.ends_with(".pth"))
            }
        }
        let hex = |v: &str, n: usize| v.len() == n && v.chars().all(|c| c.is_ascii_hexdigit());
        match &w.checksum {
            Checksum::Sha256 { value, .. } => assert!(hex(value, 64), "{id}"),
            Checksum::Sha256Prefix { value, .. } => assert!(hex(value, 8), "{id}"),
            Checksum::Md5 { value, .. } => assert!(hex(value, 32), "{id}"),
            Checksum::None { note } => assert!(!note.is_empty(), "{id}: say why there is none"),
        }
        // Reported accuracy, where known, with its source.
        if let Some(t) = w.top1 {
            assert!(t > 40.0 && t < 90.0, "{id}");
            assert!(!w.accuracy_source.is_empty());
            if let Some(v2) = w.imagenet_v2_top1 {
                assert!(v2 < t && v2 > t - 15.0, "{id}: ImageNetV2 {v2} vs {t}");
            }
            if let Some(t5) = w.top5 {
                assert!(t5 > t, "{id}");
            }
        }
        assert!(!w.license.is_empty());
    }
}

#[test]
fn the_catalogue_covers_the_public_sources() {
    let m = Manifest::builtin().unwrap();
    let has = |id: &str| m.get(id).is_ok();
    for id in [
        "tf_efficientnet_b0.tpu_baseline",
        "tf_efficientnet_b7.tpu_aa",
        "tf_efficientnet_b8.tpu_ap",
        "tf_efficientnet_b7.tpu_ns",
        "tf_efficientnet_l2.tpu_ns_475",
        "tf_efficientnet_lite4.tpu",
        "tf_efficientnet_b0.ns_jft_in1k",
        "efficientnet_b0.ra_in1k",
        "mobilenetv2_100.ra_in1k",
        "efficientnet_b7.tv_imagenet1k_v1",
        "mobilenetv2_100.tv_imagenet1k_v2",
        "tf_efficientnet_b0.keras",
        "tf_mobilenetv2_100.keras_224",
        "tf_mobilenetv2_035.slim_96",
        "tf_efficientnet_b0.lukemelas",
        "tf_efficientnet_b0.hf_google",
        "tf_efficientnet_lite0.pypi_mli",
    ] {
        assert!(has(id), "{id}");
    }
    assert!(matches!(
        m.get("tf_efficientnet_b0.nope"),
        Err(Error::UnknownModel { .. })
    ));
    // Keras publishes MD5 hashes; torch.hub files carry a SHA-256 prefix.
    let k = m.get("tf_efficientnet_b0.keras").unwrap();
    assert_eq!(
        k.checksum,
        Checksum::Md5 {
            value: "902e53a9f72be733fc0bcb005b3ebbac".into(),
            note: "keras.applications.efficientnet WEIGHTS_HASHES".into()
        }
    );
    let tv = m.get("efficientnet_b5.tv_imagenet1k_v1").unwrap();
    assert_eq!(
        (tv.padding, tv.bn_eps, tv.resize_size),
        (Padding::Symmetric, 1e-3, Some(456))
    );
    assert_eq!(tv.preprocess().scale_size(), (456, 456));
    let b1 = m.get("efficientnet_b1.tv_imagenet1k_v2").unwrap();
    assert_eq!(
        b1.preprocess().scale_size(),
        (255, 255),
        "exact torchvision resize"
    );
}

#[test]
fn bad_manifests_are_typed_errors() {
    for bad in [
        "default = 'x'\n[[weights]]\nid = 'x'",
        "default = 'x'\nweights = []\nextra = 1",
        "not toml at all [",
    ] {
        assert!(
            matches!(Manifest::parse(bad), Err(Error::Format { .. })),
            "{bad}"
        );
    }
}

#[test]
fn readme_lists_every_weight_set() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for w in Manifest::builtin().unwrap().weights {
        assert!(
            readme.contains(&format!("| `{}` |", w.id)),
            "README lacks {}; run tools/make_manifest.py",
            w.id
        );
    }
}
