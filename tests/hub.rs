//! Download and cache against a local HTTP server on 127.0.0.1 that serves hub-style and plain URLs and
//! a PyPI wheel, plus a corrupted file and a connection dropped mid-transfer.
#![cfg(feature = "download")]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use effnet::weights::hub::Downloader;
use effnet::weights::manifest::Manifest;
use effnet::Error;
use sha2::{Digest, Sha256};

fn sha256(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn wheel(inner: &str, data: &[u8]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut z = zip::ZipWriter::new(&mut buf);
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file(inner, opts).unwrap();
    z.write_all(data).unwrap();
    z.finish().unwrap();
    buf.into_inner()
}

struct Server {
    port: u16,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

/// Serves `routes` (path → body); `/drop/…` announces the full length and closes halfway.
fn serve(routes: HashMap<String, Vec<u8>>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(Mutex::new(HashMap::new()));
    let h = hits.clone();
    std::thread::spawn(move || {
        // Bounded: the test makes a few dozen requests at most.
        for stream in listener.incoming().take(200) {
            let Ok(mut s) = stream else { continue };
            let mut line = String::new();
            let mut r = BufReader::new(s.try_clone().unwrap());
            if r.read_line(&mut line).is_err() {
                continue;
            }
            loop {
                let mut hdr = String::new();
                if r.read_line(&mut hdr).is_err() || hdr.trim().is_empty() {
                    break;
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            *h.lock().unwrap().entry(path.clone()).or_insert(0) += 1;
            match routes.get(&path) {
                Some(body) => {
                    let send = if path.starts_with("/drop/") {
                        &body[..body.len() / 2]
                    } else {
                        &body[..]
                    };
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(send);
                }
                None => {
                    let _ = write!(
                        s,
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                }
            }
        }
    });
    Server { port, hits }
}

fn manifest(port: u16, good: &[u8], wheel_inner: &str) -> Manifest {
    let base = format!("http://127.0.0.1:{port}");
    let entry = |id: &str, source: String, checksum: String| {
        format!(
            "[[weights]]\nid = \"{id}\"\narch = \"tf_efficientnet_b0\"\ndescription = \"test\"\nsource = {source}\n\
             format = \"safetensors\"\nnaming = \"timm\"\nchecksum = {checksum}\npadding = \"same\"\nbn_eps = 0.001\n\
             input_size = 224\ncrop_pct = 0.875\ninterpolation = \"bicubic\"\nmean = [0.5, 0.5, 0.5]\n\
             std = [0.5, 0.5, 0.5]\nnum_classes = 1000\nbackground = false\naccuracy_source = \"none\"\n\
             license = \"test\"\nparams = 1\n"
        )
    };
    let sum = format!(
        "{{ kind = \"sha256\", value = \"{}\", note = \"test\" }}",
        sha256(good)
    );
    let text = [
        "default = \"hub.ok\"\n".to_string(),
        entry("hub.ok", "{ kind = \"hf\", repo = \"timm/test\", file = \"model.safetensors\", revision = \"main\" }".into(), sum.clone()),
        entry("plain.ok", format!("{{ kind = \"url\", url = \"{base}/plain/model.safetensors\" }}"), sum.clone()),
        entry("plain.corrupt", format!("{{ kind = \"url\", url = \"{base}/corrupt/model.safetensors\" }}"), sum.clone()),
        entry("plain.dropped", format!("{{ kind = \"url\", url = \"{base}/drop/model.safetensors\" }}"), "{ kind = \"none\", note = \"t\" }".into()),
        entry("plain.missing", format!("{{ kind = \"url\", url = \"{base}/nothing/model.safetensors\" }}"), "{ kind = \"none\", note = \"t\" }".into()),
        entry("pypi.ok", format!("{{ kind = \"pypi\", package = \"fakepkg\", version = \"1.0\", path = \"{wheel_inner}\" }}"), sum),
    ]
    .concat();
    Manifest::parse(&text).unwrap()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                v.extend(files_in(&p));
            } else {
                v.push(p.display().to_string());
            }
        }
    }
    v
}

#[test]
fn downloads_verify_and_cache_atomically() {
    let good = std::fs::read(common::fixture("timm/b0_w01.weights.safetensors")).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    let inner = "fakepkg/models/model.safetensors";
    let whl = wheel(inner, &good);
    let server = serve(HashMap::from([
        (
            "/timm/test/resolve/main/model.safetensors".to_string(),
            good.clone(),
        ),
        ("/plain/model.safetensors".to_string(), good.clone()),
        ("/corrupt/model.safetensors".to_string(), bad),
        ("/drop/model.safetensors".to_string(), good.clone()),
        (
            "/wheels/fakepkg-1.0-py3-none-any.whl".to_string(),
            whl.clone(),
        ),
    ]));
    // The PyPI JSON names the wheel's URL on the first server, so it comes from a second one.
    let json = serde_json::json!({"files": [
        {"filename": "fakepkg-1.0.tar.gz", "url": "http://127.0.0.1:1/unused", "hashes": {"sha256": "00"}},
        {
            "filename": "fakepkg-1.0-py3-none-any.whl",
            "url": format!("http://127.0.0.1:{}/wheels/fakepkg-1.0-py3-none-any.whl", server.port),
            "hashes": {"sha256": sha256(&whl)},
        },
    ]});
    let pypi = serve(HashMap::from([(
        "/simple/fakepkg/".to_string(),
        json.to_string().into_bytes(),
    )]));
    let m = manifest(server.port, &good, inner);
    let cache = tempfile::tempdir().unwrap();
    let dl = Downloader::from_env()
        .with_offline(false)
        .with_cache_dir(cache.path())
        .with_hf_endpoint(format!("http://127.0.0.1:{}", server.port))
        .with_pypi_endpoint(format!("http://127.0.0.1:{}", pypi.port));

    // Concurrent fetches of one entry (parallel tests, several processes) each succeed.
    let parallel = tempfile::tempdir().unwrap();
    let pdl = dl.clone().with_cache_dir(parallel.path());
    let ws = m.get("pypi.ok").unwrap().clone();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (pdl, ws) = (pdl.clone(), ws.clone());
            std::thread::spawn(move || {
                pdl.fetch(&ws, &mut |_, _| {})
                    .map(|p| std::fs::read(p).unwrap())
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap().unwrap(), good);
    }

    // Hub-style, plain and PyPI sources download, verify and land in the cache.
    let mut seen = Vec::new();
    for id in ["hub.ok", "plain.ok", "pypi.ok"] {
        let mut last = (0, None);
        let p = dl
            .fetch(m.get(id).unwrap(), &mut |got, total| last = (got, total))
            .unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), good, "{id}");
        assert_eq!(p, dl.cache_path(m.get(id).unwrap()));
        seen.push(last);
    }
    assert_eq!(
        seen[0],
        (good.len() as u64, Some(good.len() as u64)),
        "progress reported"
    );

    // A second fetch is served from the cache: no new request.
    let before = server.hits.lock().unwrap().clone();
    dl.fetch(m.get("plain.ok").unwrap(), &mut |_, _| {})
        .unwrap();
    assert_eq!(*server.hits.lock().unwrap(), before);

    // Offline: cached entries work, others fail without touching the network.
    let offline = dl.clone().with_offline(true);
    offline
        .fetch(m.get("hub.ok").unwrap(), &mut |_, _| {})
        .unwrap();
    assert!(matches!(
        offline.fetch(m.get("plain.corrupt").unwrap(), &mut |_, _| {}),
        Err(Error::Download { .. })
    ));
    assert_eq!(*server.hits.lock().unwrap(), before);

    // Corrupted file: checksum error, nothing that looks complete is left.
    let e = dl.fetch(m.get("plain.corrupt").unwrap(), &mut |_, _| {});
    assert!(matches!(e, Err(Error::Checksum { .. })), "{e:?}");
    assert!(!dl.cache_path(m.get("plain.corrupt").unwrap()).exists());

    // Dropped connection: download error, no partial file kept.
    let e = dl.fetch(m.get("plain.dropped").unwrap(), &mut |_, _| {});
    assert!(matches!(e, Err(Error::Download { .. })), "{e:?}");
    assert!(!dl.cache_path(m.get("plain.dropped").unwrap()).exists());

    // HTTP 404: download error naming the URL.
    match dl.fetch(m.get("plain.missing").unwrap(), &mut |_, _| {}) {
        Err(Error::Download { url, .. }) => assert!(url.ends_with("/nothing/model.safetensors")),
        other => panic!("{other:?}"),
    }

    // Only the three good files remain, no temporaries.
    let mut left = files_in(cache.path());
    left.sort();
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(left.iter().all(|f| !f.contains(".partial")), "{left:?}");
}

fn jpeg(w: u32, h: u32, shade: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([shade, (x * 7) as u8, (y * 5) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

fn zip_of(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut z = zip::ZipWriter::new(&mut buf);
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in entries {
        if name.ends_with('/') {
            z.add_directory(*name, opts).unwrap();
        } else {
            z.start_file(*name, opts).unwrap();
            z.write_all(data).unwrap();
        }
    }
    z.finish().unwrap();
    buf.into_inner()
}

fn tar_of(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut t = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        t.append_data(&mut h, name, &data[..]).unwrap();
    }
    t.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    g.write_all(data).unwrap();
    g.finish().unwrap()
}

const CIFAR_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// `n` CIFAR-10 binary records: label `(seed + i) % 10`, then R, G and B planes of 1024 bytes.
fn cifar_batch(seed: u8, n: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push((seed as usize + i) as u8 % 10);
        // A hash of (plane, pixel, record, batch): the R, G and B planes all differ.
        v.extend((0..3072u32).map(|p| {
            ((p + 4099 * i as u32 + 65537 * seed as u32).wrapping_mul(2_654_435_761) >> 24) as u8
        }));
    }
    v
}

fn cifar_archive(with_test: bool) -> Vec<u8> {
    let mut entries = vec![(
        "cifar-10-batches-bin/batches.meta.txt".to_string(),
        format!("{}\n\n", CIFAR_CLASSES.join("\n")).into_bytes(),
    )];
    for b in 1..=5u8 {
        entries.push((
            format!("cifar-10-batches-bin/data_batch_{b}.bin"),
            cifar_batch(b, 2),
        ));
    }
    if with_test {
        entries.push((
            "cifar-10-batches-bin/test_batch.bin".into(),
            cifar_batch(0, 3),
        ));
    }
    let refs: Vec<(&str, Vec<u8>)> = entries
        .iter()
        .map(|(n, d)| (n.as_str(), d.clone()))
        .collect();
    gzip(&tar_of(&refs))
}

#[test]
fn public_datasets_download_unpack_into_class_folders() {
    use effnet::data::{ImageList, Interpolation, Preprocess, PublicDataset};
    use effnet::weights::manifest::{Checksum, Source};

    let pets = zip_of(&[
        ("PetImages/", vec![]),
        ("PetImages/Cat/", vec![]),
        ("PetImages/Cat/0.jpg", jpeg(20, 16, 10)),
        ("PetImages/Cat/1.jpg", b"not a jpeg at all".to_vec()),
        ("PetImages/Cat/666.jpg", vec![]),
        ("PetImages/Dog/0.jpg", jpeg(16, 20, 200)),
        ("PetImages/Dog/1.jpg", jpeg(30, 24, 150)),
        ("PetImages/Dog/Thumbs.db", b"thumbs".to_vec()),
        ("readme[1].txt", b"readme".to_vec()),
        ("CDLA-Permissive-2.0.pdf", b"%PDF".to_vec()),
    ]);
    let dogs = tar_of(&[
        (
            "Images/n02085620-Chihuahua/n02085620_1.jpg",
            jpeg(24, 24, 40),
        ),
        (
            "Images/n02085782-Japanese_spaniel/n02085782_2.jpg",
            jpeg(24, 24, 80),
        ),
        (
            "Images/n02085782-Japanese_spaniel/n02085782_3.jpg",
            jpeg(24, 24, 90),
        ),
    ]);
    let cifar = cifar_archive(true);
    let cifar_no_test = cifar_archive(false);
    let evil = zip_of(&[("PetImages/Cat/../../../evil.jpg", jpeg(8, 8, 1))]);
    let server = serve(HashMap::from([
        ("/ds/kagglecatsanddogs_5340.zip".to_string(), pets.clone()),
        ("/ds/images.tar".to_string(), dogs.clone()),
        ("/ds/cifar-10-binary.tar.gz".to_string(), cifar.clone()),
        (
            "/bad/cifar-10-binary.tar.gz".to_string(),
            cifar_no_test.clone(),
        ),
        ("/evil/kagglecatsanddogs_5340.zip".to_string(), evil.clone()),
    ]));
    let local = |name: &str, dir: &str, file: &str, bytes: &[u8]| {
        PublicDataset::by_name(name).unwrap().with_source(
            Source::Url {
                url: format!("http://127.0.0.1:{}/{dir}/{file}", server.port),
            },
            Checksum::Sha256 {
                value: sha256(bytes),
                note: "test".into(),
            },
        )
    };
    let cache = tempfile::tempdir().unwrap();
    let dl = Downloader::from_env()
        .with_offline(false)
        .with_cache_dir(cache.path());

    // Cats vs Dogs: PetImages/{Cat,Dog}; the corrupt and empty JPEGs are kept and reported by the
    // loader, Thumbs.db and the files outside PetImages are not images of the set.
    let cats = local("cats_vs_dogs", "ds", "kagglecatsanddogs_5340.zip", &pets);
    let ready = cats.prepare(&dl, &mut |_, _| {}).unwrap();
    assert_eq!(ready.test, None);
    let list = ImageList::class_folders(&ready.train).unwrap();
    assert_eq!(list.classes, ["Cat", "Dog"]);
    assert_eq!(list.class_counts(), [3, 2]);
    let pre = Preprocess::imagenet(16, 1.0, Interpolation::Bilinear);
    let (mut ok, mut failed) = (0, Vec::new());
    for b in list.batches(&pre, 4).unwrap() {
        let b = b.unwrap();
        ok += b.images.dim(0).unwrap();
        failed.extend(b.failed.into_iter().map(|(p, _)| p));
    }
    failed.sort();
    assert_eq!(ok, 3);
    assert_eq!(
        failed,
        [
            ready.train.join("Cat/1.jpg"),
            ready.train.join("Cat/666.jpg")
        ]
    );
    assert_eq!(
        std::fs::read(ready.train.join("Dog/1.jpg")).unwrap(),
        jpeg(30, 24, 150)
    );

    // Stanford Dogs: Images/<synset>-<breed>.
    let sd = local("stanford_dogs", "ds", "images.tar", &dogs);
    let ready = sd.prepare(&dl, &mut |_, _| {}).unwrap();
    let list = ImageList::class_folders(&ready.train).unwrap();
    assert_eq!(
        list.classes,
        ["n02085620-Chihuahua", "n02085782-Japanese_spaniel"]
    );
    assert_eq!(list.class_counts(), [1, 2]);

    // CIFAR-10: every record becomes a PNG in its class folder, pixels exactly the record's planes.
    let c10 = local("cifar10", "ds", "cifar-10-binary.tar.gz", &cifar);
    let ready = c10.prepare(&dl, &mut |_, _| {}).unwrap();
    let train = ImageList::class_folders(&ready.train).unwrap();
    let test = ImageList::class_folders(ready.test.as_ref().unwrap()).unwrap();
    assert_eq!(train.classes, CIFAR_CLASSES);
    assert_eq!(test.classes, CIFAR_CLASSES);
    assert_eq!((train.len(), test.len()), (10, 3));
    let rec = cifar_batch(3, 2);
    let rec = &rec[3073..]; // data_batch_3, record 1: label (3 + 1) % 10 = deer
    assert_eq!(rec[0], 4);
    let png = image::open(ready.train.join("deer/data_batch_3_00001.png"))
        .unwrap()
        .to_rgb8();
    assert_eq!(png.dimensions(), (32, 32));
    for (x, y, px) in png.enumerate_pixels() {
        let p = (y * 32 + x) as usize;
        assert_eq!(
            px.0,
            [rec[1 + p], rec[1025 + p], rec[2049 + p]],
            "({x}, {y})"
        );
    }

    // Archives are deleted once unpacked; nothing temporary is left.
    let left = files_in(cache.path());
    assert!(
        left.iter().all(|f| !f.contains(".partial")
            && !f.ends_with(".zip")
            && !f.ends_with(".tar")
            && !f.ends_with(".gz")),
        "{left:?}"
    );

    // Prepared datasets are used as they are, offline too, with no request.
    let before = server.hits.lock().unwrap().clone();
    let offline = dl.clone().with_offline(true);
    for ds in [&cats, &sd, &c10] {
        ds.prepare(&offline, &mut |_, _| {}).unwrap();
    }
    assert_eq!(*server.hits.lock().unwrap(), before);

    // A checksum mismatch, a malformed archive and an entry escaping its folder are errors that
    // leave nothing behind that looks ready.
    let fresh = tempfile::tempdir().unwrap();
    let dl = dl.with_cache_dir(fresh.path());
    let wrong_sum = c10.clone().with_source(
        c10.source.clone(),
        Checksum::Sha256 {
            value: sha256(b"something else"),
            note: "test".into(),
        },
    );
    let e = wrong_sum.prepare(&dl, &mut |_, _| {});
    assert!(matches!(e, Err(Error::Checksum { .. })), "{e:?}");
    let no_test = local("cifar10", "bad", "cifar-10-binary.tar.gz", &cifar_no_test);
    match no_test.prepare(&dl, &mut |_, _| {}) {
        Err(Error::Format { message, .. }) => {
            assert!(message.contains("test_batch.bin"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    let escaping = local("cats_vs_dogs", "evil", "kagglecatsanddogs_5340.zip", &evil);
    match escaping.prepare(&dl, &mut |_, _| {}) {
        Err(Error::Format { message, .. }) => assert!(message.contains("escapes"), "{message}"),
        other => panic!("{other:?}"),
    }
    let left = files_in(fresh.path());
    assert!(
        left.iter()
            .all(|f| !f.contains("/images/") && !f.contains(".partial")),
        "{left:?}"
    );
    assert!(!fresh.path().join("datasets/cats_vs_dogs/images").exists());
    assert!(!fresh.path().join("../evil.jpg").exists());

    // Unknown names list the known ones.
    match PublicDataset::by_name("imagenet") {
        Err(Error::InvalidInput(m)) => {
            assert!(m.contains("cats_vs_dogs, cifar10, stanford_dogs"), "{m}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn hub_datasets_come_from_their_parquet_files() {
    use effnet::data::{HubDataset, ImageList};

    // Written by the `datasets` library (tools/make_hf_parquet_fixture.py): cat = red, dog = blue,
    // green = 10 x row index within the split.
    let train = std::fs::read(common::fixture("data/hf_parquet/train.parquet")).unwrap();
    let test = std::fs::read(common::fixture("data/hf_parquet/test.parquet")).unwrap();
    // The listing (on the hub API server) names the files on a second server.
    let zstd = std::fs::read(common::fixture("data/hf_parquet/zstd.parquet")).unwrap();
    let files = serve(HashMap::from([
        ("/files/train-0.parquet".to_string(), train),
        ("/files/test-0.parquet".to_string(), test),
        ("/files/zstd-0.parquet".to_string(), zstd),
    ]));
    let base = format!("http://127.0.0.1:{}", files.port);
    let listing = serde_json::json!({
        "default": {
            "train": [format!("{base}/files/train-0.parquet")],
            "test": [format!("{base}/files/test-0.parquet")],
        },
        "other": {"train": []},
    });
    let zstd_listing =
        serde_json::json!({"default": {"train": [format!("{base}/files/zstd-0.parquet")]}});
    let api = serve(HashMap::from([
        (
            "/api/datasets/someone/pets/parquet".to_string(),
            listing.to_string().into_bytes(),
        ),
        (
            "/api/datasets/someone/zstd/parquet".to_string(),
            zstd_listing.to_string().into_bytes(),
        ),
    ]));
    let cache = tempfile::tempdir().unwrap();
    let dl = Downloader::from_env()
        .with_offline(false)
        .with_cache_dir(cache.path())
        .with_hf_endpoint(format!("http://127.0.0.1:{}", api.port));

    let ds = HubDataset::new("someone/pets");
    let ready = ds.prepare(&dl, &mut |_, _| {}).unwrap();
    let train = ImageList::class_folders(&ready.train).unwrap();
    let test = ImageList::class_folders(ready.test.as_ref().unwrap()).unwrap();
    assert_eq!(train.classes, ["cat", "dog"]);
    assert_eq!(train.class_counts(), [2, 3]);
    assert_eq!(test.class_counts(), [1, 1]);
    for (list, labels) in [(&train, vec![0, 1, 1, 0, 1]), (&test, vec![1, 0])] {
        for s in &list.samples {
            let stem = s.path.file_stem().unwrap().to_str().unwrap();
            let row: usize = stem.parse().unwrap();
            assert_eq!(s.label, labels[row], "{}", s.path.display());
            assert_eq!(s.path.extension().unwrap(), "png");
            let img = image::open(&s.path).unwrap().to_rgb8();
            let want = if s.label == 0 {
                [200, row as u8 * 10, 0]
            } else {
                [0, row as u8 * 10, 200]
            };
            assert_eq!(img.dimensions(), (8, 6));
            assert!(img.pixels().all(|p| p.0 == want), "{}", s.path.display());
        }
    }
    // The Parquet downloads are gone, the unpacked copy is used offline without a request.
    assert!(files_in(cache.path())
        .iter()
        .all(|f| !f.ends_with(".parquet")));
    let before = (
        files.hits.lock().unwrap().clone(),
        api.hits.lock().unwrap().clone(),
    );
    ds.prepare(&dl.clone().with_offline(true), &mut |_, _| {})
        .unwrap();
    assert_eq!(
        before,
        (
            files.hits.lock().unwrap().clone(),
            api.hits.lock().unwrap().clone()
        )
    );

    // An unknown config or repository is an error that leaves nothing behind.
    let fresh = tempfile::tempdir().unwrap();
    let dl = dl.with_cache_dir(fresh.path());
    match HubDataset::new("someone/pets")
        .with_config("nope")
        .prepare(&dl, &mut |_, _| {})
    {
        Err(Error::InvalidInput(m)) => assert!(m.contains("no config `nope`"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        HubDataset::new("someone/absent").prepare(&dl, &mut |_, _| {}),
        Err(Error::Download { .. })
    ));
    // A codec effnet does not read (zstd) is a typed error naming the file, not a panic.
    match HubDataset::new("someone/zstd").prepare(&dl, &mut |_, _| {}) {
        Err(Error::Format { file, message }) => {
            assert!(file.ends_with("0000.parquet"), "{file}: {message}")
        }
        other => panic!("{other:?}"),
    }
    // Nothing looks unpacked: no images folder, no temporaries (the verified download may stay).
    let left = files_in(fresh.path());
    assert!(
        left.iter()
            .all(|f| !f.contains("/images/") && !f.contains(".partial")),
        "{left:?}"
    );
    assert!(!fresh
        .path()
        .join("datasets/hf/someone--zstd/images")
        .exists());
}
