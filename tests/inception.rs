//! The standard FID's Inception network against its PyTorch twin: pytorch-fid's own network
//! with the pattern weights (`scripts/make-inception-fixture.py` wrote the features, FID and
//! KID of `tests/fixtures/inception`), the weights reader on files `torch.save` wrote in both
//! of its formats, the verified download of the weights from a server on 127.0.0.1, and
//! `flowmatch eval --features inception` on a folder of colour pictures.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::tensor::Device;
use common::{assert_clean_error, assert_success, run, s, temp_dir};
use flowmatch::data::download::sha256_hex;
use flowmatch::data::to_unit;
use flowmatch::evaluation::inception::{
    FEATURES, Inception, WeightsFile, ensure_weights, pattern_weight,
};
use flowmatch::evaluation::metrics::{frechet_distance, kid_unscaled};
use flowmatch::model::NamedTensor;
use flowmatch::tensor_file::TensorFile;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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

/// Writes `count` 16x16 colour pictures into `dir`: a random colour, a brighter square at a
/// random place, a little noise.
fn pictures(dir: &Path, count: usize, rng: &mut StdRng) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..count {
        let base: [i32; 3] = std::array::from_fn(|_| rng.random_range(30..200));
        let (sx, sy) = (rng.random_range(0..10u32), rng.random_range(0..10u32));
        let image = image::RgbImage::from_fn(16, 16, |x, y| {
            let lift = if (sx..sx + 6).contains(&x) && (sy..sy + 6).contains(&y) {
                50
            } else {
                0
            };
            image::Rgb(base.map(|b| (b + lift + rng.random_range(-10..=10)).clamp(0, 255) as u8))
        });
        image.save(dir.join(format!("{i:03}.png"))).unwrap();
    }
}

#[test]
fn eval_measures_a_colour_folder_in_inception_features() {
    let dir = temp_dir("inception-eval");
    let (data, reference, cache) = (
        dir.join("pictures"),
        dir.join("reference"),
        dir.join("cache"),
    );
    let mut rng = StdRng::seed_from_u64(0);
    pictures(&data, 16, &mut rng);
    pictures(&reference, 8, &mut rng);
    let run_dir = dir.join("run");
    let out = run(&[
        "train",
        "--data",
        s(&data),
        "--cache-dir",
        s(&cache),
        "--image-size",
        "16",
        "--channels",
        "3",
        "--widths",
        "8,16,32",
        "--batch-size",
        "8",
        "--steps",
        "4",
        "--out",
        s(&run_dir),
    ]);
    assert_success(&out);
    let checkpoint = run_dir.join("final.safetensors");

    // The pattern weights as a safetensors file with pytorch-fid's names.
    let mut file = TensorFile::default();
    Inception::build(
        |name, shape| {
            let values = pattern_weight(name, shape);
            let tensor = NamedTensor {
                name: name.to_string(),
                shape: shape.to_vec(),
                values: values.clone(),
            };
            file.tensors.insert(name.to_string(), tensor);
            Ok(values)
        },
        &Device::flex(),
    )
    .unwrap();
    let weights = dir.join("pattern.safetensors");
    file.write(&weights).unwrap();

    let eval = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--checkpoint",
            s(&checkpoint),
            "--data",
            s(&data),
            "--cache-dir",
            s(&cache),
            "--holdout",
            "0.5",
            "--n",
            "4",
            "--solvers",
            "euler",
            "--nfe",
            "2",
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let jsonl = dir.join("eval.jsonl");
    let with = [
        "--features",
        "inception",
        "--inception-weights",
        s(&weights),
    ];
    let out = eval(&[&with[..], &["--out", s(&jsonl)]].concat());
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("pytorch-fid's Inception") && stdout.contains("FID"),
        "{stdout}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not pytorch-fid's published weights"),
        "{stderr}"
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "the floor and one setting");
    assert_eq!(lines[0]["solver"], "real-data-floor");
    let floor = lines[0]["quality"]["fid"].as_f64().unwrap();
    let sampled = lines[1]["fid"].as_f64().unwrap();
    assert!(
        floor.is_finite() && sampled.is_finite() && floor >= 0.0,
        "{floor} {sampled}"
    );
    assert!(lines.iter().all(|l| l["features"] == "inception"));
    assert!(
        lines[1]["confident"].is_null(),
        "no classes in Inception features"
    );

    // Against a folder of reference images: another floor.
    let jsonl_ref = dir.join("eval-ref.jsonl");
    let extra = ["--reference", s(&reference), "--out", s(&jsonl_ref)];
    let out = eval(&[&with[..], &extra[..]].concat());
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("images of"), "{stdout}");
    let text = std::fs::read_to_string(&jsonl_ref).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_ne!(first["quality"]["fid"].as_f64().unwrap(), floor);

    // No weights given and none in the cache: how to get them, in one line.
    let out = eval(&["--features", "inception"]);
    assert_clean_error(&out, &["--inception-weights download"]);
    let out = eval(&["--inception-weights", s(&weights)]);
    assert_clean_error(&out, &["--features inception"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Seconds per 1,000 images (32x32 colour, resized to 299x299) on this machine's threads:
/// `RAYON_NUM_THREADS=2 cargo test --release --test inception -- --ignored --nocapture`.
#[test]
#[ignore = "a timing, not a check: run it on its own"]
fn time_per_thousand_images() {
    let device = Device::flex();
    let net = Inception::build(|name, shape| Ok(pattern_weight(name, shape)), &device).unwrap();
    let n = 48;
    let values: Vec<f32> = (0..n * 3 * 32 * 32)
        .map(|i| ((i * 7919 % 255) as f32 / 127.5) - 1.0)
        .collect();
    net.embed(&values[..3 * 32 * 32], [3, 32, 32]).unwrap(); // warm-up
    let started = std::time::Instant::now();
    let features = net.embed(&values, [3, 32, 32]).unwrap();
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(features.len(), n);
    println!(
        "{n} images in {seconds:.1} s: {:.0} s per 1,000 images ({} threads)",
        seconds / n as f64 * 1000.0,
        rayon::current_num_threads()
    );
    // The metrics of 500 samples against 500 images, in 2,048 features.
    let mut rng = StdRng::seed_from_u64(0);
    let mut rows = || -> Vec<Vec<f32>> {
        (0..500)
            .map(|_| (0..FEATURES).map(|_| rng.random::<f32>()).collect())
            .collect()
    };
    let (a, b) = (rows(), rows());
    let started = std::time::Instant::now();
    let q = flowmatch::evaluation::metrics::inception_quality(&a, &b);
    println!(
        "FID and KID of 500 vs 500: {:.2} s (FID {:.3})",
        started.elapsed().as_secs_f64(),
        q.fid
    );
}
