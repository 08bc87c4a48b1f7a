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

#[test]
fn images_without_pixels_are_refused_and_limits_come_before_resizing() {
    let dir = temp_dir("idx-empty-images");
    let files = [
        ("train-images-idx3-ubyte", idx_bytes(&[3, 0, 28], &[])),
        ("train-labels-idx1-ubyte", idx_bytes(&[3], &[0, 1, 2])),
        ("t10k-images-idx3-ubyte", idx_bytes(&[1, 0, 28], &[])),
        ("t10k-labels-idx1-ubyte", idx_bytes(&[1], &[0])),
    ];
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let err = load_error(&dir);
    assert!(
        err.contains("train-images-idx3-ubyte") && err.contains("hold no pixel"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();

    // --limit takes its images before they are brought to the asked size.
    let options = DataOptions {
        image_size: Some(64),
        limit: Some(10),
        ..DataOptions::default()
    };
    let train = ImageSet::load(&DataSource::Embedded, Split::Train, &options).unwrap();
    assert_eq!((train.len(), train.shape()), (10, [1, 64, 64]));
    let test = ImageSet::load(&DataSource::Embedded, Split::Test, &options).unwrap();
    assert_eq!(test.len(), 2000, "the limit is for the training split");
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

/// CIFAR-10 batch files in the real record format: label byte, then 1,024 red, 1,024 green,
/// 1,024 blue values; image `i` of a batch is filled with `i`, `2 i` and `3 i` (mod 256) and
/// labelled `i % 10`.
fn cifar_batches(records: usize) -> Vec<(String, Vec<u8>)> {
    let batch = |offset: usize| {
        let mut bytes = Vec::with_capacity(records * 3073);
        for i in offset..offset + records {
            bytes.push((i % 10) as u8);
            for c in 1..=3 {
                bytes.extend(std::iter::repeat_n((i * c % 256) as u8, 1024));
            }
        }
        bytes
    };
    let mut files: Vec<(String, Vec<u8>)> = (1..=5)
        .map(|k| (format!("data_batch_{k}.bin"), batch((k - 1) * records)))
        .collect();
    files.push(("test_batch.bin".into(), batch(1000)));
    files
}

#[test]
fn cifar10_batches_are_read_from_a_folder() {
    let dir = temp_dir("cifar-folder");
    let batches = dir.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&batches).unwrap();
    for (name, bytes) in cifar_batches(4) {
        std::fs::write(batches.join(name), bytes).unwrap();
    }
    let source = DataSource::Dir(dir.clone());
    let train = ImageSet::load(&source, Split::Train, &DataOptions::default()).unwrap();
    let test = ImageSet::load(&source, Split::Test, &DataOptions::default()).unwrap();
    assert_eq!((train.len(), test.len()), (20, 4));
    assert_eq!(train.shape(), [3, 32, 32]);
    assert_eq!(train.classes[3], "cat");
    // Image 7: planes 7, 14, 21; label 7.
    let image = train.image(7);
    assert_eq!((image[0], image[1024], image[2048]), (7, 14, 21));
    assert_eq!(train.label(7), 7);
    assert_eq!(test.label(1), 1);
    // Brought to grey 16x16 on request.
    let options = DataOptions {
        image_size: Some(16),
        channels: Some(1),
        ..DataOptions::default()
    };
    let small = ImageSet::load(&source, Split::Train, &options).unwrap();
    assert_eq!(small.shape(), [1, 16, 16]);
    assert_eq!(small.label(7), 7);

    // A truncated batch is an error naming it.
    let path = batches.join("data_batch_2.bin");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let err = load_error(&dir);
    assert!(
        err.contains("data_batch_2.bin") && err.contains("records"),
        "{err}"
    );
    // So is a label outside 0-9.
    let mut bad = bytes.clone();
    bad[0] = 10;
    std::fs::write(&path, bad).unwrap();
    let err = load_error(&dir);
    assert!(err.contains("label 10"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cifar10_download_is_verified_extracted_and_cached() {
    let files = cifar_batches(3);
    // The archive as the real one is laid out: cifar-10-batches-bin/<batch>.
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (name, bytes) in &files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(
            &mut header,
            format!("cifar-10-batches-bin/{name}"),
            &bytes[..],
        )
        .unwrap();
    }
    let archive = tar.into_inner().unwrap().finish().unwrap();
    let batches: Vec<(&'static str, &'static str)> = files
        .iter()
        .map(|(n, b)| (leak(n.clone()), leak(sha256_hex(b))))
        .collect();
    let remote = flowmatch::data::cifar::RemoteCifar {
        mirrors: &[],
        archive: "cifar-10-binary.tar.gz",
        archive_sha256: leak(sha256_hex(&archive)),
        max_bytes: 1 << 20,
        batches: batches.try_into().unwrap(),
    };
    let (base, count) = serve(
        vec![
            (
                "/bad/cifar-10-binary.tar.gz".into(),
                200,
                b"not the archive".to_vec(),
            ),
            ("/good/cifar-10-binary.tar.gz".into(), 200, archive.clone()),
        ],
        10,
    );
    let cache = temp_dir("cifar-cache");
    let mirrors = vec![format!("{base}/bad"), format!("{base}/good")];
    let dir = flowmatch::data::cifar::ensure(&remote, &mirrors, &cache).unwrap();
    assert_eq!(
        count.load(Ordering::SeqCst),
        2,
        "the bad mirror, then the good one"
    );
    let train = flowmatch::data::cifar::read_split(&dir, Split::Train).unwrap();
    assert_eq!(train.len(), 15);
    // Cached: no request the second time.
    flowmatch::data::cifar::ensure(&remote, &mirrors, &cache).unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 2);
    // A batch changed on disk is caught and the archive extracted again (no new download).
    std::fs::write(dir.join("test_batch.bin"), b"tampered").unwrap();
    flowmatch::data::cifar::ensure(&remote, &mirrors, &cache).unwrap();
    assert_eq!(
        std::fs::read(dir.join("test_batch.bin")).unwrap(),
        files[5].1
    );
    assert_eq!(count.load(Ordering::SeqCst), 2);
    // Only bad mirrors: an error, and nothing unverified kept.
    let other = temp_dir("cifar-cache-bad");
    let err = flowmatch::data::cifar::ensure(&remote, &[format!("{base}/bad")], &other)
        .unwrap_err()
        .to_string();
    assert!(err.contains("SHA-256"), "{err}");
    assert!(!other.join("cifar10/cifar-10-binary.tar.gz").exists());
    std::fs::remove_dir_all(&cache).unwrap();
    std::fs::remove_dir_all(&other).unwrap();
}
