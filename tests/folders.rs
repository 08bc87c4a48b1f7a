//! Your own images: a folder of small colour pictures in two classes trains a conditional
//! model, samples a colour grid of the right size, and guided samples show their class; and
//! the faults of real folders (empty, corrupt files, other files, mixed sizes, one class).

mod common;

use std::path::Path;

use common::{assert_clean_error, assert_success, run, s, temp_dir};
use flowmatch::tensor_file::TensorFile;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Writes `count` `size`x`size` pictures into `dir/<class>/`: a random shade with a little
/// noise, a strong red channel for "red" ones and a strong blue one otherwise, and a bright
/// square at a random place. Every fourth is a JPEG.
fn write_class(dir: &Path, class: &str, count: usize, size: u32, rng: &mut StdRng) {
    let folder = dir.join(class);
    std::fs::create_dir_all(&folder).unwrap();
    for i in 0..count {
        let (strong, weak, other) = (
            rng.random_range(180..=230i32),
            rng.random_range(20..70i32),
            rng.random_range(20..70i32),
        );
        let (sx, sy) = (rng.random_range(0..size / 2), rng.random_range(0..size / 2));
        let image = image::RgbImage::from_fn(size, size, |x, y| {
            let lift = if (sx..sx + size / 3).contains(&x) && (sy..sy + size / 3).contains(&y) {
                25
            } else {
                0
            };
            let mut v = |base: i32| (base + lift + rng.random_range(-8..=8)).clamp(0, 255) as u8;
            match class {
                "red" => image::Rgb([v(strong), v(other), v(weak)]),
                _ => image::Rgb([v(weak), v(other), v(strong)]),
            }
        });
        let ext = if i % 4 == 0 { "jpg" } else { "png" };
        image.save(folder.join(format!("{i:03}.{ext}"))).unwrap();
    }
}

/// Mean red minus mean blue of each `[3, h, w]` image of `values`.
fn red_minus_blue(values: &[f32], plane: usize) -> Vec<f32> {
    values
        .chunks(3 * plane)
        .map(|img| {
            let mean =
                |c: usize| img[c * plane..(c + 1) * plane].iter().sum::<f32>() / plane as f32;
            mean(0) - mean(2)
        })
        .collect()
}

#[test]
fn a_folder_of_two_colour_classes_trains_and_guides() {
    let dir = temp_dir("folder");
    let data = dir.join("pictures");
    let mut rng = StdRng::seed_from_u64(0);
    write_class(&data, "red", 40, 20, &mut rng);
    write_class(&data, "blue", 40, 20, &mut rng);
    let (run_dir, cache) = (dir.join("run"), dir.join("cache"));
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--data",
            s(&data),
            "--cache-dir",
            s(&cache),
            "--image-size",
            "16",
            "--channels",
            "3",
            "--classes",
            "2",
            "--arch",
            "resunet",
            "--base-channels",
            "8",
            "--channel-mult",
            "1,2",
            "--attention",
            "none",
            "--batch-size",
            "32",
            "--lr",
            "3e-3",
            "--lr-schedule",
            "cosine",
            "--warmup-steps",
            "10",
            "--steps",
            "150",
            "--label-dropout",
            "0.2",
            "--flip",
            "--out",
            s(&run_dir),
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let out = train(&[]);
    assert_success(&out);
    // Decoded once into the cache; the second run maps it.
    let decoded = std::fs::read_dir(cache.join("decoded")).unwrap().count();
    assert_eq!(decoded, 2, "one packed file and its description");
    let ckpt = run_dir.join("final.safetensors");
    let out = run(&["info", s(&ckpt)]);
    let info = String::from_utf8_lossy(&out.stdout);
    assert!(
        info.contains("3x16x16 images") && info.contains("class-conditional, 2 classes"),
        "{info}"
    );
    assert!(
        info.contains("class_names = [\"blue\", \"red\"]"),
        "sorted class names: {info}"
    );

    // A colour grid of the right size, without any shape flag.
    let grid = dir.join("grid.png");
    let out = run(&[
        "sample",
        "--checkpoint",
        s(&ckpt),
        "--n",
        "9",
        "--steps",
        "5",
        "--out",
        s(&grid),
    ]);
    assert_success(&out);
    let img = image::open(&grid).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (2 + 3 * 18, 2 + 3 * 18));
    assert!(img.pixels().any(|p| p.0[0] != p.0[2]), "a colour grid");

    // The rule: a guided sample of "red" (label 1) has a stronger red than blue channel, one of
    // "blue" (label 0) the reverse, on average over its pixels.
    for (digit, sign) in [("1", 1.0f32), ("0", -1.0)] {
        let raw = dir.join(format!("class-{digit}.safetensors"));
        let out = run(&[
            "sample",
            "--checkpoint",
            s(&ckpt),
            "--digit",
            digit,
            "--guidance",
            "3",
            "--n",
            "8",
            "--steps",
            "10",
            "--out",
            s(&dir.join("g.png")),
            "--save-tensor",
            s(&raw),
        ]);
        assert_success(&out);
        let x0 = &TensorFile::read(&raw).unwrap().tensors["x0"];
        assert_eq!(x0.shape, vec![8, 3, 16, 16]);
        let scores = red_minus_blue(&x0.values, 256);
        let right = scores.iter().filter(|&&d| d * sign > 0.2).count();
        assert!(
            right >= 7,
            "class {digit}: red - blue per sample {scores:?}"
        );
    }
    // eval trains a classifier on the folder's labels (once; kept in the cache) as its
    // yardstick.
    let results = dir.join("eval.jsonl");
    let eval = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--checkpoint",
            s(&ckpt),
            "--data",
            s(&data),
            "--cache-dir",
            s(&cache),
            "--solvers",
            "euler",
            "--nfe",
            "2",
            "--n",
            "4",
            "--out",
            s(&results),
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let out = eval(&["--guidance-scales", "1"]);
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("training a classifier on") && stdout.contains("2 labels"),
        "{stdout}"
    );
    assert!(
        stdout.contains("labels, w=1") && stdout.contains("real data (floor)"),
        "{stdout}"
    );
    let out = eval(&[]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("trained on"),
        "reused from the cache"
    );

    // The reference SimpleUNet takes the same folder (at this width its GroupNorm has one
    // channel per group, which erases a picture's mean colour: the residual U-Net is the one
    // for colour classes).
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
        "--steps",
        "2",
        "--out",
        s(&dir.join("simple")),
    ]);
    assert_success(&out);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn faults_of_real_folders() {
    let dir = temp_dir("folder-faults");
    let cache = dir.join("cache");
    let train = |data: &Path| {
        run(&[
            "train",
            "--data",
            s(data),
            "--cache-dir",
            s(&cache),
            "--widths",
            "8,16,32",
            "--steps",
            "1",
            "--batch-size",
            "4",
            "--out",
            s(&dir.join("run")),
        ])
    };
    // An empty folder.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert_clean_error(&train(&empty), &["empty", "no PNG or JPEG images"]);

    // Corrupt and truncated images are skipped with a warning naming them; other files are
    // ignored with a note; the rest trains.
    let mixed = dir.join("mixed");
    let mut rng = StdRng::seed_from_u64(1);
    write_class(&mixed, "red", 6, 16, &mut rng);
    write_class(&mixed, "blue", 6, 16, &mut rng);
    std::fs::write(mixed.join("red/broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let good = std::fs::read(mixed.join("blue/001.png")).unwrap();
    std::fs::write(mixed.join("blue/cut.png"), &good[..good.len() / 2]).unwrap();
    std::fs::write(mixed.join("notes.txt"), b"hello").unwrap();
    let out = train(&mixed);
    assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("broken.png") && stderr.contains("skipped"),
        "{stderr}"
    );
    assert!(stderr.contains("cut.png"), "{stderr}");
    assert!(
        stderr.contains("ignored 1 file(s) that are not PNG or JPEG"),
        "{stderr}"
    );

    // Mixed sizes without --image-size: an error naming a file of each size.
    let sizes = dir.join("sizes");
    write_class(&sizes, "a", 2, 16, &mut rng);
    write_class(&sizes, "b", 2, 12, &mut rng);
    assert_clean_error(&train(&sizes), &["12x12", "16x16", "--image-size"]);

    // One class: trains without labels, and says so; a conditional run is refused.
    let single = dir.join("single");
    write_class(&single, "only", 5, 16, &mut rng);
    let out = train(&single);
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("a single class folder ('only')"));
    // Without labels eval says what it cannot measure, and measures what needs no classifier.
    let out = run(&[
        "eval",
        "--checkpoint",
        s(&dir.join("run/final.safetensors")),
        "--data",
        s(&single),
        "--cache-dir",
        s(&cache),
        "--n",
        "1",
        "--straightness",
        "--out",
        s(&dir.join("e.jsonl")),
    ]);
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("no labels") && stdout.contains("cannot be measured"),
        "{stdout}"
    );
    assert!(stdout.contains("straightness"), "{stdout}");
    let out = run(&[
        "train",
        "--data",
        s(&single),
        "--cache-dir",
        s(&cache),
        "--classes",
        "2",
        "--steps",
        "1",
        "--out",
        s(&dir.join("run2")),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let last = stderr.trim().lines().last().unwrap();
    assert!(
        last.starts_with("error:") && last.contains("no labels"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn thin_images_and_folder_links_stay_bounded() {
    use flowmatch::data::{DataOptions, DataSource, ImageSet, Split};
    let dir = temp_dir("folder-bounds");
    let root = dir.join("images");
    let mut rng = StdRng::seed_from_u64(2);
    write_class(&root, "red", 4, 16, &mut rng);
    write_class(&root, "blue", 4, 16, &mut rng);
    // A 1 x 20,000 picture: resized before its centre was cropped, it needed 8 x 160,000.
    image::GrayImage::from_fn(1, 20_000, |_, y| image::Luma([(y % 256) as u8]))
        .save(root.join("red/thin.png"))
        .unwrap();
    // A link from inside a class back to the top: each folder is walked once.
    std::os::unix::fs::symlink(&root, root.join("blue/loop")).unwrap();
    let options = DataOptions {
        cache_dir: dir.join("cache"),
        image_size: Some(8),
        channels: Some(3),
        holdout: 0.0,
        ..DataOptions::default()
    };
    let set = ImageSet::load(&DataSource::Dir(root.clone()), Split::Train, &options).unwrap();
    assert_eq!((set.len(), set.shape()), (9, [3, 8, 8]));
    std::fs::remove_dir_all(&dir).unwrap();
}
