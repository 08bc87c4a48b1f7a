//! Data sets: the embedded subset, IDX folders, and the verified downloader against a local
//! HTTP server on 127.0.0.1.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use flowmatch::data::download::{
    RemoteDataset, RemoteFile, ensure_dataset, fetch_verified, sha256_hex,
};
use flowmatch::data::{DataOptions, DataSource, ImageSet, Split};

use common::{idx_bytes, temp_dir};

fn tiny_idx_files(n: usize) -> Vec<(&'static str, Vec<u8>)> {
    let images: Vec<u8> = (0..n * 784).map(|i| (i % 256) as u8).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    vec![
        (
            "train-images-idx3-ubyte",
            idx_bytes(&[n as u32, 28, 28], &images),
        ),
        ("train-labels-idx1-ubyte", idx_bytes(&[n as u32], &labels)),
        (
            "t10k-images-idx3-ubyte",
            idx_bytes(&[2, 28, 28], &images[..2 * 784]),
        ),
        ("t10k-labels-idx1-ubyte", idx_bytes(&[2], &labels[..2])),
    ]
}

#[test]
fn embedded_subset_loads_both_splits() {
    let download = DataOptions::default();
    let train = ImageSet::load(&DataSource::Embedded, Split::Train, &download).unwrap();
    let test = ImageSet::load(&DataSource::Embedded, Split::Test, &download).unwrap();
    assert_eq!((train.len(), test.len()), (8000, 2000));
    assert_eq!((train.height, train.width), (28, 28));
    let values = train.values(0, train.len());
    assert!(values.iter().all(|p| (-1.0..=1.0).contains(p)));
    assert_eq!(values.iter().cloned().fold(f32::MIN, f32::max), 1.0);
    assert_eq!(values.iter().cloned().fold(f32::MAX, f32::min), -1.0);
    assert_eq!(train.classes.len(), 10);
    let zeros = train.labels().iter().filter(|&&l| l == 0).count();
    assert_eq!(zeros, 792);
}

#[test]
fn folder_of_raw_idx_files_loads_and_errors_name_the_file() {
    let dir = temp_dir("idxdir");
    for (name, bytes) in tiny_idx_files(5) {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let set = ImageSet::load(
        &DataSource::Dir(dir.clone()),
        Split::Train,
        &DataOptions::default(),
    )
    .unwrap();
    assert_eq!(set.len(), 5);
    assert_eq!(set.labels(), vec![0, 1, 2, 3, 4]);

    // Truncated images: the error names the file and the problem.
    let images = dir.join("train-images-idx3-ubyte");
    let bytes = std::fs::read(&images).unwrap();
    std::fs::write(&images, &bytes[..bytes.len() - 100]).unwrap();
    let err = load_error(&dir);
    assert!(
        err.contains("train-images-idx3-ubyte") && err.contains("truncated"),
        "{err}"
    );

    // Labels that do not match the images.
    std::fs::write(&images, &bytes).unwrap();
    std::fs::write(
        dir.join("train-labels-idx1-ubyte"),
        idx_bytes(&[4], &[0; 4]),
    )
    .unwrap();
    let err = load_error(&dir);
    assert!(err.contains("labels"), "{err}");

    // A missing file.
    std::fs::remove_file(dir.join("train-labels-idx1-ubyte")).unwrap();
    let err = load_error(&dir);
    assert!(
        err.contains("missing IDX file") && err.contains("train-labels-idx1-ubyte"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The error of loading the training split from `dir`.
fn load_error(dir: &Path) -> String {
    let source = DataSource::Dir(dir.to_path_buf());
    ImageSet::load(&source, Split::Train, &DataOptions::default())
        .unwrap_err()
        .to_string()
}

/// Serves `routes` (path -> status, body) on 127.0.0.1 and counts requests; stops after
/// `max_requests` connections.
fn serve(routes: Vec<(String, u16, Vec<u8>)>, max_requests: usize) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max_requests) {
            let mut stream = stream.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap() == 0 || header == "\r\n" {
                    break;
                }
            }
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .to_string();
            let (status, body) = routes
                .iter()
                .find(|(p, _, _)| *p == path)
                .map(|(_, s, b)| (*s, b.clone()))
                .unwrap_or((404, b"not found".to_vec()));
            let head = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    (base, count)
}

#[test]
fn fetch_keeps_only_verified_files() {
    let good = b"the real bytes".to_vec();
    let sha = sha256_hex(&good);
    let (base, _) = serve(
        vec![
            ("/good".into(), 200, good.clone()),
            ("/corrupt".into(), 200, b"tampered bytes".to_vec()),
            ("/broken".into(), 500, b"oops".to_vec()),
        ],
        3,
    );
    let dir = temp_dir("fetch");
    let dest = dir.join("file.gz");

    let err = fetch_verified(&format!("{base}/corrupt"), &sha, &dest)
        .unwrap_err()
        .to_string();
    assert!(err.contains("SHA-256 mismatch"), "{err}");
    assert!(!dest.exists());

    let err = fetch_verified(&format!("{base}/broken"), &sha, &dest)
        .unwrap_err()
        .to_string();
    assert!(err.contains("500"), "{err}");
    assert!(!dest.exists());

    fetch_verified(&format!("{base}/good"), &sha, &dest).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), good);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

#[test]
fn dataset_download_falls_back_across_mirrors_verifies_and_caches() {
    let files: Vec<(String, Vec<u8>)> = tiny_idx_files(6)
        .into_iter()
        .map(|(name, bytes)| {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&bytes).unwrap();
            (format!("{name}.gz"), gz.finish().unwrap())
        })
        .collect();
    let remote: Vec<RemoteFile> = files
        .iter()
        .map(|(name, bytes)| RemoteFile {
            name: leak(name.clone()),
            sha256: leak(sha256_hex(bytes)),
        })
        .collect();
    let dataset = RemoteDataset {
        name: "tiny",
        mirrors: &[],
        files: remote.try_into().unwrap(),
    };
    // Mirror "a" fails for everything (500); mirror "b" serves the right bytes.
    let mut routes: Vec<(String, u16, Vec<u8>)> = Vec::new();
    for (name, bytes) in &files {
        routes.push((format!("/a/{name}"), 500, Vec::new()));
        routes.push((format!("/b/{name}"), 200, bytes.clone()));
    }
    let (base, count) = serve(routes, 8);
    let cache = temp_dir("cache");
    let mirrors = vec![format!("{base}/a/"), format!("{base}/b/")];
    let dir = ensure_dataset(&dataset, &mirrors, &cache).unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 8);
    let set = ImageSet::load(
        &DataSource::Dir(dir.clone()),
        Split::Train,
        &DataOptions::default(),
    )
    .unwrap();
    assert_eq!(set.len(), 6);

    // Everything is cached and verified: no further request.
    ensure_dataset(&dataset, &mirrors, &cache).unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 8);

    // A corrupted cached file is detected and, with no server left, reported; it is not kept.
    let cached = dir.join(&files[0].0);
    std::fs::write(&cached, b"garbage").unwrap();
    let err = ensure_dataset(&dataset, &[format!("{base}/b/")], &cache)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&files[0].0), "{err}");
    assert!(!cached.exists());
    std::fs::remove_dir_all(Path::new(&cache)).unwrap();
}
