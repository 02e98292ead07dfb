//! `effnet::data` against timm 1.0.15 / torchvision 0.20.1 / Pillow 13.0.0 (fixtures from
//! `tools/make_preprocess_fixtures.py`), and the dataset layouts on temporary folders.
//!
//! Tolerances, and why:
//! - Resize + crop from a lossless source: the 8-bit crop may differ from PIL's by at most 1 level
//!   on at most 0.1% of the values. Pillow's resampler is integer arithmetic on weights computed in
//!   `f64`; `effnet` performs the same operations in the same order, so in practice the result is
//!   bit-identical (checked separately by `crops_are_bit_identical_to_pil`), and the tolerance only
//!   leaves room for a platform whose libm/compiler rounds a weight differently.
//! - Normalised floats from a lossless source: |Δ| ≤ 1e-6 per value (the same f32 operations as
//!   `ToTensor` + `Normalize`), channel sums within 1e-6 relative (summation order differs).
//! - JPEG and lossy WebP decoding: zune-jpeg / image-webp versus libjpeg-turbo / libwebp use different
//!   IDCTs, chroma upsampling and YUV conversion rounding, so decoded pixels differ by a few levels;
//!   the bounds below (max and mean |Δ|) are the measured values with a small margin.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use effnet::data::{
    load_rgb, DecodeOptions, ImageList, Interpolation, Preprocess, Resize, RgbImage,
};
use effnet::Error;
use serde_json::Value;

fn manifest() -> Value {
    let text = fs::read_to_string(common::fixture("data/manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn fixture_image(rel: &str) -> RgbImage {
    load_rgb(common::fixture(&format!("data/{rel}"))).unwrap()
}

fn f32s(v: &Value) -> [f32; 3] {
    let a: Vec<f32> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    [a[0], a[1], a[2]]
}

fn preprocess(cfg: &Value) -> Preprocess {
    let p = &cfg["preprocess"];
    let size = p["size"].as_array().unwrap();
    let interp = Interpolation::from_name(p["interpolation"].as_str().unwrap()).unwrap();
    let resize = match p["resize"].as_str().unwrap() {
        "short_side" => Resize::ShortSide,
        "exact" => Resize::Exact,
        other => panic!("resize mode {other}"),
    };
    Preprocess::imagenet(0, p["crop_pct"].as_f64().unwrap(), interp)
        .with_size(
            size[0].as_u64().unwrap() as usize,
            size[1].as_u64().unwrap() as usize,
        )
        .with_mean_std(f32s(&p["mean"]), f32s(&p["std"]))
        .with_resize(resize)
}

fn fnv1a64(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// (max |Δ|, number of differing values, mean |Δ|) over all channel values.
fn diff(a: &RgbImage, b: &RgbImage) -> (u8, usize, f64) {
    assert_eq!(a.dimensions(), b.dimensions());
    let (mut max, mut n, mut sum) = (0u8, 0usize, 0u64);
    for (x, y) in a.as_raw().iter().zip(b.as_raw()) {
        let d = x.abs_diff(*y);
        max = max.max(d);
        n += usize::from(d > 0);
        sum += u64::from(d);
    }
    (max, n, sum as f64 / a.as_raw().len() as f64)
}

fn subsample(img: &RgbImage, stride: u32) -> RgbImage {
    RgbImage::from_fn(
        img.width().div_ceil(stride),
        img.height().div_ceil(stride),
        |x, y| *img.get_pixel(x * stride, y * stride),
    )
}

struct Case<'a> {
    name: String,
    case: &'a Value,
    pre: Preprocess,
    img: RgbImage,
}

fn for_each_case(m: &Value, mut f: impl FnMut(Case<'_>)) {
    for case in m["cases"].as_array().unwrap() {
        let config = case["config"].as_str().unwrap();
        let source = case["source"].as_str().unwrap();
        f(Case {
            name: format!("{source} / {config}"),
            case,
            pre: preprocess(&m["configs"][config]),
            img: fixture_image(source),
        });
    }
}

#[test]
fn geometry_matches_timm() {
    let m = manifest();
    for_each_case(&m, |c| {
        let g = c
            .pre
            .geometry(c.img.height() as usize, c.img.width() as usize)
            .unwrap();
        let want = c.case["resized"].as_array().unwrap();
        let want = (
            want[0].as_u64().unwrap() as usize,
            want[1].as_u64().unwrap() as usize,
        );
        assert_eq!(g.resized, want, "{}", c.name);
    });
}

#[test]
fn crops_match_timm() {
    let m = manifest();
    let (mut lossless_worst, mut jpeg_worst) = ((0u8, 0.0f64), (0u8, 0.0f64));
    for_each_case(&m, |c| {
        let crop = c.pre.resize_crop(&c.img).unwrap();
        let stride = c.case["sample_stride"].as_u64().unwrap() as u32;
        let expected = fixture_image(c.case["crop"].as_str().unwrap());
        let (max, n, mean) = diff(&subsample(&crop, stride), &expected);
        let frac = n as f64 / expected.as_raw().len() as f64;
        if c.case["lossless_source"].as_bool().unwrap() {
            assert!(
                max <= 1 && frac < 1e-3,
                "{}: max {max}, {n} values differ",
                c.name
            );
            lossless_worst = (lossless_worst.0.max(max), lossless_worst.1.max(frac));
        } else {
            // JPEG source: decoder differences (see the module docs), then resampled.
            assert!(
                max <= 5 && mean < 0.5,
                "{}: max {max}, mean {mean:.3}",
                c.name
            );
            jpeg_worst = (jpeg_worst.0.max(max), jpeg_worst.1.max(mean));
        }
    });
    println!(
        "lossless sources: worst max |diff| {} levels, {:.4}% of values differ; \
         JPEG sources: worst max {} levels, worst mean {:.3}",
        lossless_worst.0,
        lossless_worst.1 * 100.0,
        jpeg_worst.0,
        jpeg_worst.1
    );
}

#[test]
fn crops_are_bit_identical_to_pil() {
    let m = manifest();
    let mut checked = 0;
    for_each_case(&m, |c| {
        if !c.case["lossless_source"].as_bool().unwrap() {
            return;
        }
        let crop = c.pre.resize_crop(&c.img).unwrap();
        assert_eq!(
            fnv1a64(crop.as_raw()),
            c.case["fnv1a64"].as_str().unwrap(),
            "{}: the crop is no longer bit-identical to Pillow's",
            c.name
        );
        checked += 1;
    });
    assert!(checked >= 30, "{checked}");
}

#[test]
fn normalised_tensors_match_timm() {
    let m = manifest();
    for_each_case(&m, |c| {
        let t = c.pre.apply(&c.img).unwrap();
        let (h, w) = c.pre.size;
        assert_eq!(t.dims(), &[3, h, w], "{}", c.name);
        let v = t.to_vec3::<f32>().unwrap();
        let lossless = c.case["lossless_source"].as_bool().unwrap();
        let tol = if lossless { 1e-6 } else { 5.0 / 255.0 / 0.225 };
        for s in c.case["values"].as_array().unwrap() {
            let idx: Vec<usize> = s.as_array().unwrap()[..3]
                .iter()
                .map(|x| x.as_u64().unwrap() as usize)
                .collect();
            let want = s[3].as_f64().unwrap() as f32;
            let got = v[idx[0]][idx[1]][idx[2]];
            assert!(
                (got - want).abs() <= tol,
                "{}: {idx:?} {got} vs {want}",
                c.name
            );
        }
        if lossless {
            for (ch, want) in c.case["channel_sums"]
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
            {
                let want = want.as_f64().unwrap();
                let got: f64 = v[ch].iter().flatten().map(|&x| f64::from(x)).sum();
                assert!(
                    (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                    "{}: {got} vs {want}",
                    c.name
                );
            }
        }
    });
}

#[test]
fn decoding_matches_pil() {
    let m = manifest();
    for t in m["decode"].as_array().unwrap() {
        let file = t["file"].as_str().unwrap();
        let got = fixture_image(file);
        let want = fixture_image(t["expected"].as_str().unwrap());
        assert_eq!(
            got.dimensions(),
            want.dimensions(),
            "{file} (EXIF orientation?)"
        );
        let (max, n, mean) = diff(&got, &want);
        if t["exact"].as_bool().unwrap() {
            assert_eq!(n, 0, "{file}: {n} values differ, max {max}");
        } else {
            assert!(max <= 6 && mean <= 0.5, "{file}: max {max}, mean {mean:.3}");
        }
        println!("{file}: max {max}, mean {mean:.3}");
    }
}

#[test]
fn orientation_can_be_ignored() {
    let path = common::fixture("data/src/exif6.jpg");
    let upright = load_rgb(&path).unwrap();
    let raw = effnet::data::load_rgb_with(
        &path,
        DecodeOptions {
            apply_orientation: false,
        },
    )
    .unwrap();
    assert_eq!(upright.dimensions(), (raw.height(), raw.width()));
}

#[test]
fn batch_keeps_order_and_reports_bad_files() {
    let pre = Preprocess::imagenet(32, 0.875, Interpolation::Bicubic);
    let a = common::fixture("data/src/chelsea.png");
    let b = common::fixture("data/src/camera.png");
    let batch = pre.apply_batch(&[&a, &b, &a]).unwrap();
    assert_eq!(batch.dims(), &[3, 3, 32, 32]);
    let single = pre.apply_path(&b).unwrap();
    let diff = (batch.get(1).unwrap() - &single).unwrap().abs().unwrap();
    assert_eq!(diff.max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    let same = (batch.get(0).unwrap() - batch.get(2).unwrap())
        .unwrap()
        .abs()
        .unwrap();
    assert_eq!(same.max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);

    let bad = common::fixture("data/manifest.json");
    match pre.apply_batch(&[&a, &bad]) {
        Err(Error::Format { file, .. }) => assert!(file.ends_with("manifest.json"), "{file}"),
        other => panic!("expected a format error, got {other:?}"),
    }
}

// ---- dataset layouts -------------------------------------------------------------------------

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("data_tests")
        .join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn put_image(path: &Path, shade: u8) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    RgbImage::from_pixel(6, 4, image::Rgb([shade, 0, 255 - shade]))
        .save(path)
        .unwrap();
}

#[test]
fn imagenet_v2_labels_are_parsed_integers() {
    let root = scratch("v2");
    for (i, folder) in ["0", "1", "10", "100", "2", "999"].iter().enumerate() {
        put_image(&root.join(folder).join(format!("{i:040x}.jpeg")), i as u8);
    }
    put_image(&root.join(".hidden/x.jpeg"), 0);
    fs::write(root.join("100/.DS_Store"), b"junk").unwrap();
    let list = ImageList::imagenet_v2(&root).unwrap();
    let got: Vec<(String, usize)> = list
        .samples
        .iter()
        .map(|s| {
            (
                s.path
                    .parent()
                    .unwrap()
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
                s.label,
            )
        })
        .collect();
    // Sorted as names, labelled as numbers: folder "100" is class 100, not 3 (string order).
    let want = [
        ("0", 0),
        ("1", 1),
        ("10", 10),
        ("100", 100),
        ("2", 2),
        ("999", 999),
    ];
    let want: Vec<(String, usize)> = want.iter().map(|(f, l)| (f.to_string(), *l)).collect();
    assert_eq!(got, want);
    assert_eq!(list.classes.len(), 1000);
    assert_eq!(list.classes[100], "n01860187"); // black swan

    put_image(&root.join("n01440764/a.jpeg"), 0);
    let err = ImageList::imagenet_v2(&root).unwrap_err();
    assert!(err.to_string().contains("n01440764"), "{err}");
    fs::remove_dir_all(root.join("n01440764")).unwrap();
    put_image(&root.join("1000/a.jpeg"), 0);
    assert!(matches!(
        ImageList::imagenet_v2(&root),
        Err(Error::Format { .. })
    ));
}

#[test]
fn imagenet_synset_folders() {
    let root = scratch("synsets");
    put_image(&root.join("n15075141/ILSVRC2012_val_00000002.JPEG"), 1);
    put_image(&root.join("n01440764/ILSVRC2012_val_00000293.JPEG"), 2);
    put_image(&root.join("n01440764/ILSVRC2012_val_00000236.JPEG"), 3);
    fs::write(root.join("LOC_synset_mapping.txt"), b"n01440764 tench").unwrap();
    let list = ImageList::imagenet_folders(&root).unwrap();
    let got: Vec<(String, usize)> = list
        .samples
        .iter()
        .map(|s| {
            (
                s.path.file_name().unwrap().to_string_lossy().into_owned(),
                s.label,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("ILSVRC2012_val_00000236.JPEG".to_string(), 0),
            ("ILSVRC2012_val_00000293.JPEG".to_string(), 0),
            ("ILSVRC2012_val_00000002.JPEG".to_string(), 999),
        ]
    );
    put_image(&root.join("cats/x.png"), 0);
    let err = ImageList::imagenet_folders(&root).unwrap_err();
    assert!(
        matches!(err, Error::Format { .. }) && err.to_string().contains("cats"),
        "{err}"
    );
}

#[test]
fn ground_truth_files() {
    let root = scratch("flat");
    for i in 1..=3 {
        put_image(&root.join(format!("ILSVRC2012_val_{i:08}.JPEG")), i as u8);
    }
    let csv = root.join("gt.csv");
    fs::write(
        &csv,
        "file,label\nILSVRC2012_val_00000001.JPEG,65\n# comment\nILSVRC2012_val_00000002.JPEG, n15075141\n",
    )
    .unwrap();
    let list = ImageList::ground_truth_file(&root, &csv).unwrap();
    assert_eq!(
        list.samples.iter().map(|s| s.label).collect::<Vec<_>>(),
        vec![65, 999]
    );

    // Caffe's val.txt and Kaggle's LOC_val_solution.csv (name without extension, boxes after the synset).
    let caffe = root.join("val.txt");
    fs::write(&caffe, "ILSVRC2012_val_00000003.JPEG 0\n").unwrap();
    assert_eq!(
        ImageList::ground_truth_file(&root, &caffe).unwrap().samples[0].label,
        0
    );
    let kaggle = root.join("LOC_val_solution.csv");
    fs::write(
        &kaggle,
        "ImageId,PredictionString\nILSVRC2012_val_00000001,n01443537 1 2 3 4\n",
    )
    .unwrap();
    assert_eq!(
        ImageList::ground_truth_file(&root, &kaggle)
            .unwrap()
            .samples[0]
            .label,
        1
    );

    // The devkit's 1-based ILSVRC2012_IDs are refused with a hint, not misread.
    let devkit = root.join("ILSVRC2012_validation_ground_truth.txt");
    fs::write(&devkit, "490\n361\n171\n").unwrap();
    let err = ImageList::ground_truth_file(&root, &devkit).unwrap_err();
    assert!(err.to_string().contains("devkit"), "{err}");
    for bad in [
        "a.JPEG,1\n",
        "ILSVRC2012_val_00000001.JPEG,1000\n",
        "x,1\nILSVRC2012_val_00000001.JPEG,cat\n",
    ] {
        fs::write(&csv, bad).unwrap();
        assert!(
            matches!(
                ImageList::ground_truth_file(&root, &csv),
                Err(Error::Format { .. })
            ),
            "{bad}"
        );
    }
}

#[test]
fn class_folders_split_and_batches() {
    let root = scratch("pets");
    for i in 0..10 {
        put_image(&root.join(format!("Dog/{i}.jpg")), 200);
        put_image(&root.join(format!("Cat/{i}.png")), 10);
    }
    fs::write(root.join("Cat/Thumbs.db"), b"not an image").unwrap();
    fs::write(root.join("Dog/666.jpg"), b"corrupt: not a jpeg").unwrap();
    put_image(&root.join("Cat/sub/deeper.bmp"), 10);
    let list = ImageList::class_folders(&root).unwrap();
    assert_eq!(list.classes, vec!["Cat", "Dog"]);
    assert_eq!(list.class_counts(), vec![11, 11]);
    assert!(list
        .samples
        .windows(2)
        .all(|w| (w[0].label, &w[0].path) < (w[1].label, &w[1].path)));

    let (train, val) = list.split(0.2, 7).unwrap();
    assert_eq!(
        (train.class_counts(), val.class_counts()),
        (vec![9, 9], vec![2, 2])
    );
    assert_eq!(
        list.split(0.2, 7).unwrap(),
        (train.clone(), val.clone()),
        "same seed, same split"
    );
    let mut all: Vec<_> = train.samples.iter().chain(&val.samples).cloned().collect();
    all.sort_by(|a, b| (a.label, &a.path).cmp(&(b.label, &b.path)));
    assert_eq!(all, list.samples);
    let others: Vec<_> = (0..8).map(|s| list.split(0.2, s).unwrap().1).collect();
    assert!(
        others.iter().any(|v| *v != val),
        "the seed changes the split"
    );
    assert!(list.split(1.5, 0).is_err());

    let pre = Preprocess::imagenet(8, 1.0, Interpolation::Bilinear);
    let mut seen = 0;
    let mut failed = Vec::new();
    for batch in list.batches(&pre, 5).unwrap() {
        let batch = batch.unwrap();
        assert_eq!(batch.images.dims()[0], batch.labels.len());
        assert_eq!(batch.label_tensor().unwrap().dims(), &[batch.labels.len()]);
        seen += batch.labels.len();
        failed.extend(batch.failed);
    }
    assert_eq!(seen, 21);
    assert_eq!(failed.len(), 1);
    assert!(failed[0].0.ends_with("Dog/666.jpg"));
    assert!(
        matches!(failed[0].1, Error::Format { .. }),
        "{:?}",
        failed[0].1
    );
    assert!(list.batches(&pre, 0).is_err());
}

#[test]
fn damaged_files_give_errors_not_panics() {
    let m = manifest();
    for t in m["decode"].as_array().unwrap() {
        let file = t["file"].as_str().unwrap();
        let bytes = fs::read(common::fixture(&format!("data/{file}"))).unwrap();
        let opts = DecodeOptions::default();
        for cut in (0..bytes.len()).step_by(bytes.len() / 23 + 1) {
            if let Err(e) = effnet::data::decode_rgb(&bytes[..cut], file, opts) {
                assert!(
                    matches!(e, Error::Format { .. }),
                    "{file} cut at {cut}: {e:?}"
                );
            }
        }
        // Deterministic byte corruption past the signature; decoding may succeed or fail, not panic.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..40 {
            let mut damaged = bytes.clone();
            for _ in 0..4 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let i = 8 + (state as usize) % (damaged.len() - 8);
                damaged[i] ^= (state >> 56) as u8 | 1;
            }
            let _ = effnet::data::decode_rgb(&damaged, file, opts);
        }
    }
}
