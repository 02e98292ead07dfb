//! The committed sample set `assets/samples/`: labels, files and credits agree.
//!
//! `tools/make_sample_set.py` writes the photos, `labels.csv` and `SOURCES.md` from one table; these
//! tests catch a hand edit or a partial regeneration that breaks that agreement, and a label whose
//! index and WordNet synset disagree.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// One row of `labels.csv`.
#[derive(Debug)]
struct Row {
    file: String,
    index: usize,
    class: String,
    synset: String,
}

fn samples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/samples")
}

fn rows() -> Vec<Row> {
    let text = fs::read_to_string(samples_dir().join("labels.csv")).expect("read labels.csv");
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("file,imagenet_index,imagenet_class,synset"),
        "labels.csv header"
    );
    lines
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            assert_eq!(
                fields.len(),
                4,
                "labels.csv row `{line}`: expected 4 fields"
            );
            Row {
                file: fields[0].to_string(),
                index: fields[1]
                    .parse()
                    .unwrap_or_else(|e| panic!("labels.csv row `{line}`: index: {e}")),
                class: fields[2].to_string(),
                synset: fields[3].to_string(),
            }
        })
        .collect()
}

/// Width and height from the first start-of-frame marker of a JPEG, or `None` if there is none.
fn jpeg_size(bytes: &[u8]) -> Option<(usize, usize)> {
    if bytes.get(..2)? != [0xFF, 0xD8] {
        return None;
    }
    let mut pos = 2;
    loop {
        if *bytes.get(pos)? != 0xFF {
            return None;
        }
        let marker = *bytes.get(pos + 1)?;
        if marker == 0xFF {
            pos += 1; // fill byte
            continue;
        }
        let len = usize::from(u16::from_be_bytes([
            *bytes.get(pos + 2)?,
            *bytes.get(pos + 3)?,
        ]));
        // SOF0..SOF15, except DHT (C4), JPG (C8) and DAC (CC).
        if (0xC0..=0xCF).contains(&marker) && ![0xC4, 0xC8, 0xCC].contains(&marker) {
            let h = u16::from_be_bytes([*bytes.get(pos + 5)?, *bytes.get(pos + 6)?]);
            let w = u16::from_be_bytes([*bytes.get(pos + 7)?, *bytes.get(pos + 8)?]);
            return Some((usize::from(w), usize::from(h)));
        }
        pos += 2 + len;
    }
}

#[test]
fn labels_are_well_formed_and_cover_every_photo() {
    let rows = rows();
    assert!(
        (30..=60).contains(&rows.len()),
        "{} photos, expected 30..=60",
        rows.len()
    );
    let mut listed = BTreeSet::new();
    for r in &rows {
        assert!(
            r.file.ends_with(".jpg")
                && r.file.bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || b == b'_'
                    || b == b'.'),
            "file name `{}`: expected lower_snake_case .jpg",
            r.file
        );
        assert!(listed.insert(r.file.clone()), "`{}` listed twice", r.file);
        assert!(
            r.index < 1000,
            "`{}`: index {} out of range",
            r.file,
            r.index
        );
        assert!(!r.class.is_empty(), "`{}`: empty class name", r.file);
        assert!(
            r.synset.len() == 9
                && r.synset.starts_with('n')
                && r.synset[1..].bytes().all(|b| b.is_ascii_digit()),
            "`{}`: synset `{}` is not a WordNet noun id",
            r.file,
            r.synset
        );
    }
    let on_disk: BTreeSet<String> = fs::read_dir(samples_dir())
        .expect("read assets/samples")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".jpg"))
        .collect();
    assert_eq!(on_disk, listed, "photos on disk vs rows of labels.csv");
}

/// ImageNet-1k numbers its classes in ascending synset order, so index order and synset order must
/// agree across rows; a typo in either column breaks it.
#[test]
fn index_and_synset_orders_agree() {
    let mut by_index: BTreeMap<usize, &str> = BTreeMap::new();
    let rows = rows();
    for r in &rows {
        if let Some(prev) = by_index.insert(r.index, &r.synset) {
            assert_eq!(prev, r.synset, "index {} has two synsets", r.index);
        }
    }
    let synsets: Vec<&str> = by_index.values().copied().collect();
    for pair in synsets.windows(2) {
        assert!(
            pair[0] < pair[1],
            "synsets out of index order: {} before {}",
            pair[0],
            pair[1]
        );
    }
    // Anchors from the standard class list.
    let find = |file: &str| rows.iter().find(|r| r.file == file);
    let cat = find("tabby_cat_chelsea.jpg").expect("chelsea row");
    assert_eq!((cat.index, cat.synset.as_str()), (281, "n02123045"));
    let coffee = find("espresso_cup_coffee.jpg").expect("coffee row");
    assert_eq!((coffee.index, coffee.synset.as_str()), (967, "n07920052"));
}

#[test]
fn photos_are_small_jpegs() {
    let mut total = 0;
    for r in rows() {
        let bytes = fs::read(samples_dir().join(&r.file)).expect("read photo");
        total += bytes.len();
        let (w, h) =
            jpeg_size(&bytes).unwrap_or_else(|| panic!("`{}`: no JPEG frame header", r.file));
        assert!(
            w.min(h) <= 320 && w.min(h) >= 128,
            "`{}`: {w}x{h}, short side must be 128..=320",
            r.file
        );
    }
    assert!(total < 2 << 20, "sample set is {total} bytes, budget 2 MiB");
}

#[test]
fn every_photo_is_credited() {
    let sources = fs::read_to_string(samples_dir().join("SOURCES.md")).expect("read SOURCES.md");
    for r in rows() {
        let section = sources
            .split(&format!("\n## {}\n", r.file))
            .nth(1)
            .unwrap_or_else(|| panic!("SOURCES.md has no section for `{}`", r.file));
        let section = section.split("\n## ").next().unwrap_or_default();
        for field in ["- package: ", "- path: ", "- license: ", "- edits: "] {
            assert!(
                section.contains(field),
                "`{}`: SOURCES.md lacks `{field}`",
                r.file
            );
        }
        assert!(
            section.contains(&format!("- label: {} `{}`", r.index, r.class)),
            "`{}`: SOURCES.md label differs from labels.csv",
            r.file
        );
    }
}

#[test]
fn jpeg_size_reads_the_frame_header() {
    // SOI, APP0 (length 4, two payload bytes), SOF0 with height 2, width 3.
    let jpeg = [
        0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0xAA, 0xBB, 0xFF, 0xC0, 0x00, 0x0B, 0x08, 0x00, 0x02,
        0x00, 0x03, 0x01, 0x01, 0x11, 0x00,
    ];
    assert_eq!(jpeg_size(&jpeg), Some((3, 2)));
    assert_eq!(jpeg_size(&jpeg[..10]), None, "truncated");
    assert_eq!(jpeg_size(b"\x89PNG"), None, "not a JPEG");
}
