//! The standard FID's Inception network against its PyTorch twin: pytorch-fid's own network
//! with the pattern weights (`scripts/make-inception-fixture.py` wrote the features, FID and
//! KID of `tests/fixtures/inception`), the weights reader on files `torch.save` wrote in both
//! of its formats, and the verified download of the weights from a server on 127.0.0.1.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::tensor::Device;
use flowmatch::data::download::sha256_hex;
use flowmatch::data::to_unit;
use flowmatch::evaluation::inception::{
    FEATURES, Inception, WeightsFile, ensure_weights, pattern_weight,
};
use flowmatch::evaluation::metrics::{frechet_distance, kid_unscaled};

fn fixture(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/inception")
        .join(file)
}

/// A PNG as pytorch-fid reads it (through `Image.convert('RGB')` for grey ones), in
/// flowmatch's [-1, 1] scale: its shape `[c, h, w]` and values.
fn png(path: &Path) -> ([usize; 3], Vec<f32>) {
    let image = image::open(path).unwrap();
    let (w, h) = (image.width() as usize, image.height() as usize);
    let (c, bytes) = match image.color().channel_count() {
        1 => (1, image.to_luma8().into_raw()),
        _ => (3, image.to_rgb8().into_raw()),
    };
    // Interleaved HWC bytes to planar CHW values.
    let values = (0..c)
        .flat_map(|ch| (0..h * w).map(move |p| (ch, p)))
        .map(|(ch, p)| to_unit(bytes[p * c + ch]))
        .collect();
    ([c, h, w], values)
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap()
}

#[test]
fn pattern_weights_give_pytorch_fids_features_fid_and_kid() {
    let device = Device::flex();
    let net = Inception::build(|name, shape| Ok(pattern_weight(name, shape)), &device).unwrap();
    let expected = expected();
    let mut features = Vec::new();
    // Colour 32x32 images in one batch, then the greyscale 28x28 ones (repeated to RGB).
    for group in ["images/colour", "images/grey"] {
        let (mut shape, mut values) = ([0; 3], Vec::new());
        for name in expected["images"].as_array().unwrap() {
            let name = name.as_str().unwrap();
            if name.starts_with(group) {
                let (s, v) = png(&fixture(name));
                (shape, values) = (s, [values, v].concat());
            }
        }
        features.extend(net.embed(&values, shape).unwrap());
    }
    let bytes = std::fs::read(fixture("features.f32")).unwrap();
    let reference: Vec<Vec<f32>> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect::<Vec<_>>()
        .chunks(FEATURES)
        .map(<[f32]>::to_vec)
        .collect();
    assert_eq!((features.len(), reference.len()), (10, 10));
    let scale = expected["feature_max_abs"].as_f64().unwrap();
    let max_diff = features
        .iter()
        .flatten()
        .zip(reference.iter().flatten())
        .map(|(a, b)| (a - b).abs() as f64)
        .fold(0.0, f64::max);
    println!("features: max |rust - pytorch-fid| = {max_diff:.3e} (max |feature| {scale:.2})");
    assert!(max_diff <= 1e-4, "{max_diff}");

    let fid = frechet_distance(&features[..4], &features[4..8]);
    let fid_torch = expected["fid_halves"]["exact"].as_f64().unwrap();
    let fid_pytorch_fid = expected["fid_halves"]["pytorch_fid"].as_f64().unwrap();
    let rel = (fid - fid_torch).abs() / fid_torch;
    println!(
        "FID: {fid:.6} here, {fid_torch:.6} from PyTorch's features (pytorch-fid's scipy \
         sqrtm: {fid_pytorch_fid:.6}); relative difference {rel:.2e}"
    );
    assert!(rel <= 1e-3, "{rel}");
    assert!((fid - fid_pytorch_fid).abs() / fid_pytorch_fid <= 1e-3);

    // KID over all rows (one subset of every row: the same value whatever the order).
    let (kid, _) = kid_unscaled(&features[..4], &features[4..8], 1, 4, 0);
    let kid_torch = expected["kid_halves"].as_f64().unwrap();
    let rel = (kid - kid_torch).abs() / kid_torch.abs();
    println!("KID: {kid:.6} here, {kid_torch:.6} from PyTorch's; relative difference {rel:.2e}");
    assert!(rel <= 1e-3, "{rel}");
}

#[test]
fn weights_that_torch_saved_are_read_in_both_formats() {
    let names = [
        ("Conv2d_1a_3x3.conv.weight", vec![32, 3, 3, 3]),
        ("Conv2d_1a_3x3.bn.weight", vec![32]),
        ("Conv2d_1a_3x3.bn.bias", vec![32]),
        ("Conv2d_1a_3x3.bn.running_mean", vec![32]),
        ("Conv2d_1a_3x3.bn.running_var", vec![32]),
        ("fc.bias", vec![1008]),
    ];
    for file in ["small-zip.pth", "small-legacy.pth"] {
        let path = fixture(file);
        let weights = WeightsFile::open(&path).unwrap();
        for (name, shape) in &names {
            let values = weights.tensor(name, shape).unwrap();
            assert_eq!(values, pattern_weight(name, shape), "{file}: {name}");
        }
        let err = weights
            .tensor("Conv2d_1a_3x3.bn.bias", &[64])
            .unwrap_err()
            .to_string();
        assert!(err.contains("shape [32], expected [64]"), "{err}");
        let err = weights.tensor("Mixed_5b.branch1x1.conv.weight", &[64, 192, 1, 1]);
        assert!(err.unwrap_err().to_string().contains("no tensor"));
        // The counter is int64: not something the network reads as weights.
        let err = weights.tensor("Conv2d_1a_3x3.bn.num_batches_tracked", &[]);
        assert!(err.unwrap_err().to_string().contains("I64"));
        // The whole network needs the other tensors: a clean error, no panic.
        let err = Inception::load(&path, &Device::flex())
            .unwrap_err()
            .to_string();
        assert!(err.contains("Conv2d_2a_3x3.conv.weight"), "{err}");
    }
    let dir = std::env::temp_dir().join(format!("flowmatch-inception-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.pth");
    std::fs::write(&junk, b"not a weights file at all").unwrap();
    let err = WeightsFile::open(&junk).err().unwrap().to_string();
    assert!(err.contains("not a readable PyTorch weights file"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Serves `body` at `/w.pth` on 127.0.0.1 (404 elsewhere) and counts requests; stops after
/// `max_requests` connections.
fn serve(body: Vec<u8>, max_requests: usize) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max_requests) {
            let mut stream = stream.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            reader.read_line(&mut request).unwrap();
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap() == 0 || header == "\r\n" {
                    break;
                }
            }
            let (status, body) = match request.split_whitespace().nth(1) {
                Some("/w.pth") => (200, body.clone()),
                _ => (404, b"not found".to_vec()),
            };
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
fn weights_are_downloaded_once_into_the_cache_and_verified() {
    let body = b"stand-in for pytorch-fid's weights".to_vec();
    let sha = sha256_hex(&body);
    let (base, count) = serve(body.clone(), 4);
    let url = format!("{base}/w.pth");
    let cache = std::env::temp_dir().join(format!("flowmatch-incache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);

    // A checksum that does not match: refused, nothing kept.
    let wrong = sha256_hex(b"other bytes");
    let err = ensure_weights(&cache, &url, &wrong)
        .unwrap_err()
        .to_string();
    assert!(err.contains("SHA-256 mismatch"), "{err}");
    let path = cache
        .join("inception")
        .join("pt_inception-2015-12-05-6726825d.pth");
    assert!(!path.exists());

    // Downloaded and verified, then found in the cache without a request.
    assert_eq!(ensure_weights(&cache, &url, &sha).unwrap(), path);
    assert_eq!(std::fs::read(&path).unwrap(), body);
    assert_eq!(ensure_weights(&cache, &url, &sha).unwrap(), path);
    assert_eq!(count.load(Ordering::SeqCst), 2);

    // A damaged copy in the cache is replaced.
    std::fs::write(&path, b"damaged").unwrap();
    ensure_weights(&cache, &url, &sha).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), body);
    assert_eq!(count.load(Ordering::SeqCst), 3);

    // A server without the file: a clean error naming the address.
    let err = ensure_weights(&cache.join("other"), &format!("{base}/missing"), &sha);
    assert!(err.unwrap_err().to_string().contains("404"));
    std::fs::remove_dir_all(&cache).unwrap();
}
