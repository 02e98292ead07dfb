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
