//! Labelled image lists for evaluation and fine-tuning, and a batch loader over them.
//!
//! Layouts ([`ImageList`] constructors):
//! - [`ImageList::imagenet_folders`]: ImageNet val (or train) sorted into synset folders,
//!   `root/n01440764/ILSVRC2012_val_00000293.JPEG`; label = the synset's standard index.
//! - [`ImageList::ground_truth_file`]: a flat folder plus a text file with one `file,label` or
//!   `file label` line per image. The label is a standard index (0..=999) or a synset id; a header
//!   line is allowed first, `#` starts a comment. This reads Caffe's `val.txt`
//!   (`ILSVRC2012_val_00000001.JPEG 65`), plain CSVs, and Kaggle's `LOC_val_solution.csv` (the first
//!   word of the label field is used; a name without extension also matches `name.JPEG`). The devkit's
//!   `ILSVRC2012_validation_ground_truth.txt` is **not** accepted: it holds 1-based `ILSVRC2012_ID`s,
//!   whose order (from the devkit's `meta.mat`) is not the standard class order, and reading them as
//!   indices would silently score ~0.1%. Lines with a single field are rejected with that hint.
//! - [`ImageList::imagenet_v2`]: ImageNetV2 (`root/0/` … `root/999/`). The folder name **parsed as
//!   an integer** is the label. torchvision's `ImageFolder` sorts the names as strings (`0, 1, 10,
//!   100, …`), which gives folder `100` label 2 (modestyachts/ImageNetV2 issue #10).
//! - [`ImageList::class_folders`]: any class-per-subfolder dataset (`PetImages/Cat`, `PetImages/Dog`):
//!   classes are the subfolder names sorted by code point (Python's `sorted`), labels their positions.
//!
//! Everywhere, directory entries are sorted (never `read_dir` order), hidden entries (name starting
//! with `.`) are skipped, subfolders of a class are walked recursively, and only files with an image
//! extension (`jpg jpeg png webp gif bmp`, any case) are taken, so `Thumbs.db` and the like are
//! ignored. [`ImageList::split`] makes a deterministic, seeded, per-class (stratified) train/val split.
//! [`ImageList::batches`] decodes and transforms in parallel; a file that fails to decode is reported
//! in [`Batch::failed`] with its error, and the batch goes on without it.

use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::image::DecodeOptions;
use super::labels::{imagenet_classes, synset_to_index, NUM_IMAGENET_CLASSES};
use super::transforms::Preprocess;
use crate::error::{Error, Result};

/// File extensions treated as images (compared case-insensitively).
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "bmp"];

/// Deepest folder nesting walked below a class folder (guards against symlink loops).
const MAX_DEPTH: usize = 16;

/// One labelled image.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sample {
    /// Path of the image file.
    pub path: PathBuf,
    /// Class index into [`ImageList::classes`].
    pub label: usize,
}

/// A list of labelled images and the names of their classes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageList {
    /// The images, in a deterministic order.
    pub samples: Vec<Sample>,
    /// Class names by label (the 1000 synset ids for the ImageNet layouts).
    pub classes: Vec<String>,
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Non-hidden entries of `dir` sorted by name, split into (sub-directories, files). Symlinks are
/// followed.
fn list_dir(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let meta = fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
        entries.push((entry.file_name(), path, meta.is_dir()));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let (dirs, files): (Vec<_>, Vec<_>) = entries.into_iter().partition(|e| e.2);
    Ok((
        dirs.into_iter().map(|e| e.1).collect(),
        files.into_iter().map(|e| e.1).collect(),
    ))
}

/// All image files below `dir`, sorted by path.
fn images_below(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(Error::format(
            dir.display().to_string(),
            format!("folders nested more than {MAX_DEPTH} deep (a symlink loop?)"),
        ));
    }
    let (dirs, files) = list_dir(dir)?;
    out.extend(files.into_iter().filter(|f| is_image(f)));
    for d in dirs {
        images_below(&d, depth + 1, out)?;
    }
    Ok(())
}

fn dir_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn imagenet_class_names() -> Vec<String> {
    imagenet_classes()
        .iter()
        .map(|c| c.synset.to_string())
        .collect()
}

fn is_number(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// `n` followed by eight digits, the shape of a WordNet noun synset id.
fn looks_like_synset(text: &str) -> bool {
    text.len() == 9 && text.strip_prefix('n').is_some_and(is_number)
}

/// A label written as a standard index or a synset id.
fn parse_label(text: &str) -> Option<usize> {
    if is_number(text) {
        text.parse::<usize>()
            .ok()
            .filter(|&i| i < NUM_IMAGENET_CLASSES)
    } else {
        synset_to_index(text)
    }
}

impl ImageList {
    /// A list from explicit samples; errors if a label is not below `classes.len()`.
    pub fn new(samples: Vec<Sample>, classes: Vec<String>) -> Result<Self> {
        if let Some(s) = samples.iter().find(|s| s.label >= classes.len()) {
            return Err(Error::InvalidInput(format!(
                "{}: label {} but only {} classes",
                s.path.display(),
                s.label,
                classes.len()
            )));
        }
        Ok(ImageList { samples, classes })
    }

    /// Builds a list from labelled class folders: `label_of(folder name)` gives the label or an
    /// error message.
    fn from_folders(
        root: &Path,
        classes: Vec<String>,
        label_of: impl Fn(&str) -> std::result::Result<usize, String>,
    ) -> Result<Self> {
        let (dirs, _) = list_dir(root)?;
        let mut samples = Vec::new();
        for dir in dirs {
            let label = label_of(&dir_name(&dir))
                .map_err(|m| Error::format(dir.display().to_string(), m))?;
            let mut files = Vec::new();
            images_below(&dir, 0, &mut files)?;
            files.sort();
            samples.extend(files.into_iter().map(|path| Sample { path, label }));
        }
        Self::new(samples, classes)
    }

    /// ImageNet in synset folders (`root/n01440764/*.JPEG`); folders that are not one of the 1000
    /// synsets are an error. Labels are standard indices; `classes` are the 1000 synset ids.
    pub fn imagenet_folders(root: impl AsRef<Path>) -> Result<Self> {
        Self::from_folders(root.as_ref(), imagenet_class_names(), |name| {
            synset_to_index(name)
                .ok_or_else(|| format!("folder `{name}` is not an ImageNet-1k synset id"))
        })
    }

    /// ImageNetV2 (`root/0/` … `root/999/`): label = folder name parsed as an integer.
    pub fn imagenet_v2(root: impl AsRef<Path>) -> Result<Self> {
        Self::from_folders(root.as_ref(), imagenet_class_names(), |name| {
            if is_number(name) {
                if let Some(i) = name
                    .parse::<usize>()
                    .ok()
                    .filter(|&i| i < NUM_IMAGENET_CLASSES)
                {
                    return Ok(i);
                }
            }
            Err(format!(
                "folder `{name}` is not a class index 0..=999 (synset-named folders: use imagenet_folders)"
            ))
        })
    }

    /// A class-per-subfolder dataset: classes are the sorted subfolder names.
    pub fn class_folders(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        let (dirs, _) = list_dir(root)?;
        let classes: Vec<String> = dirs.iter().map(|d| dir_name(d)).collect();
        let mut sorted = classes.clone();
        sorted.sort();
        Self::from_folders(root, sorted.clone(), |name| {
            sorted
                .binary_search_by(|c| c.as_str().cmp(name))
                .map_err(|_| format!("folder `{name}` disappeared while listing"))
        })
    }

    /// Images in `images_dir` labelled by `ground_truth` (format in the module docs).
    pub fn ground_truth_file(
        images_dir: impl AsRef<Path>,
        ground_truth: impl AsRef<Path>,
    ) -> Result<Self> {
        let (dir, gt) = (images_dir.as_ref(), ground_truth.as_ref());
        let text = fs::read_to_string(gt).map_err(|e| Error::io(gt, e))?;
        let file = gt.display().to_string();
        let mut samples = Vec::new();
        let mut seen_data = false;
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, rest) = match line.split_once(',') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => line.split_once(char::is_whitespace).unwrap_or((line, "")),
            };
            // The label is the second field; further fields (class name, synset) are ignored.
            let label_text = rest
                .split(|c: char| c == ',' || c.is_whitespace())
                .next()
                .unwrap_or("");
            if label_text.is_empty() {
                return Err(Error::format(
                    &file,
                    format!(
                        "line {}: `{line}` has no label; the devkit's ILSVRC2012_validation_ground_truth.txt \
                         (ILSVRC2012_IDs, not standard indices) must first be converted to `file,label`",
                        n + 1
                    ),
                ));
            }
            let Some(label) = parse_label(label_text) else {
                // Only a first line whose label is a word (not a number or a synset id) is a header.
                if !seen_data && !is_number(label_text) && !looks_like_synset(label_text) {
                    seen_data = true;
                    continue;
                }
                return Err(Error::format(
                    &file,
                    format!(
                        "line {}: label `{label_text}` is neither an index 0..=999 nor an ImageNet synset id",
                        n + 1
                    ),
                ));
            };
            seen_data = true;
            let mut path = dir.join(name);
            if !path.is_file() && path.extension().is_none() {
                path = dir.join(format!("{name}.JPEG"));
            }
            if !path.is_file() {
                return Err(Error::format(
                    &file,
                    format!(
                        "line {}: image `{name}` not found in {}",
                        n + 1,
                        dir.display()
                    ),
                ));
            }
            samples.push(Sample { path, label });
        }
        Self::new(samples, imagenet_class_names())
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Number of images per class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for s in &self.samples {
            if let Some(c) = counts.get_mut(s.label) {
                *c += 1;
            }
        }
        counts
    }

    /// Deterministic stratified split into `(train, val)`: in each class, `round(n * val_fraction)`
    /// images chosen by a shuffle seeded with `seed` go to `val`. Both keep the list's order and
    /// classes. The same list, fraction and seed give the same split on every platform.
    pub fn split(&self, val_fraction: f64, seed: u64) -> Result<(ImageList, ImageList)> {
        if !(0.0..=1.0).contains(&val_fraction) {
            return Err(Error::InvalidInput(format!(
                "val_fraction {val_fraction} is not in [0, 1]"
            )));
        }
        let mut by_class = vec![Vec::new(); self.classes.len()];
        for (i, s) in self.samples.iter().enumerate() {
            if let Some(v) = by_class.get_mut(s.label) {
                v.push(i);
            }
        }
        let mut is_val = vec![false; self.samples.len()];
        for (class, members) in by_class.iter_mut().enumerate() {
            let mut rng = SplitMix64(seed ^ (class as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            for i in (1..members.len()).rev() {
                let j = (rng.next() % (i as u64 + 1)) as usize;
                members.swap(i, j);
            }
            let n_val = (members.len() as f64 * val_fraction).round() as usize;
            for &m in members.iter().take(n_val) {
                is_val[m] = true;
            }
        }
        let pick = |want: bool| ImageList {
            samples: self
                .samples
                .iter()
                .zip(&is_val)
                .filter(|(_, &v)| v == want)
                .map(|(s, _)| s.clone())
                .collect(),
            classes: self.classes.clone(),
        };
        Ok((pick(false), pick(true)))
    }

    /// Iterates over the list in batches of `batch_size`, decoded and transformed in parallel.
    pub fn batches(&self, preprocess: &Preprocess, batch_size: usize) -> Result<Batches<'_>> {
        preprocess.validate()?;
        if batch_size == 0 {
            return Err(Error::InvalidInput("batch_size must be at least 1".into()));
        }
        Ok(Batches {
            list: self,
            preprocess: *preprocess,
            batch_size,
            next: 0,
            options: DecodeOptions::default(),
        })
    }
}

/// Sebastiano Vigna's SplitMix64: small, seedable, identical on every platform.
#[derive(Debug)]
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// One batch of decoded, transformed images.
#[derive(Debug)]
pub struct Batch {
    /// `[n, 3, H, W]` `f32` on the CPU, for the images that decoded.
    pub images: Tensor,
    /// Labels of those images.
    pub labels: Vec<usize>,
    /// Paths of those images.
    pub paths: Vec<PathBuf>,
    /// Images of this batch that could not be read or decoded, with the reason.
    pub failed: Vec<(PathBuf, Error)>,
}

impl Batch {
    /// The labels as a `u32` tensor `[n]` on the CPU.
    pub fn label_tensor(&self) -> Result<Tensor> {
        let v: Vec<u32> = self.labels.iter().map(|&l| l as u32).collect();
        Ok(Tensor::from_vec(v, self.labels.len(), &Device::Cpu)?)
    }
}

/// Iterator over the batches of an [`ImageList`] (see [`ImageList::batches`]).
pub struct Batches<'a> {
    list: &'a ImageList,
    preprocess: Preprocess,
    batch_size: usize,
    next: usize,
    options: DecodeOptions,
}

impl Batches<'_> {
    /// Uses other decode options (e.g. no EXIF orientation, as timm's loader).
    pub fn with_decode_options(mut self, options: DecodeOptions) -> Self {
        self.options = options;
        self
    }
}

impl Iterator for Batches<'_> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        let chunk = self.list.samples.get(self.next..)?;
        if chunk.is_empty() {
            return None;
        }
        let chunk = &chunk[..chunk.len().min(self.batch_size)];
        self.next += chunk.len();
        let paths: Vec<&Path> = chunk.iter().map(|s| s.path.as_path()).collect();
        let (h, w) = self.preprocess.size;
        let mut data = Vec::with_capacity(chunk.len() * 3 * h * w);
        let mut batch_labels = Vec::new();
        let mut batch_paths = Vec::new();
        let mut failed = Vec::new();
        for (sample, r) in chunk
            .iter()
            .zip(self.preprocess.apply_each(&paths, self.options))
        {
            match r {
                Ok(v) => {
                    data.extend_from_slice(&v);
                    batch_labels.push(sample.label);
                    batch_paths.push(sample.path.clone());
                }
                Err(e) => failed.push((sample.path.clone(), e)),
            }
        }
        let images = Tensor::from_vec(data, (batch_labels.len(), 3, h, w), &Device::Cpu);
        Some(images.map_err(Error::from).map(|images| Batch {
            images,
            labels: batch_labels,
            paths: batch_paths,
            failed,
        }))
    }
}
