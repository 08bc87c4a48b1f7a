//! The command line end to end: happy paths on tiny models and the reference weights, and
//! every kind of bad input giving a one-line error, a non-zero exit and no overwritten file.

mod common;

use std::path::Path;

use common::{
    TINY_NET, assert_clean_error, assert_success, fixture as parity, run as flowmatch, s, temp_dir,
};

use flowmatch::model::NamedTensor;
use flowmatch::tensor_file::TensorFile;

#[test]
fn a_pytorch_export_loads_and_samples_like_the_reference() {
    let dir = temp_dir("pytorch");
    let raw = dir.join("x0.safetensors");
    let png = dir.join("grid.png");
    let out = flowmatch(&[
        "sample",
        "--checkpoint",
        s(&parity("weights.safetensors")),
        "--init-noise",
        s(&parity("cases.safetensors")),
        "--steps",
        "10",
        "--out",
        s(&png),
        "--save-tensor",
        s(&raw),
    ]);
    assert_success(&out);
    let ours = TensorFile::read(&raw).unwrap();
    let reference = TensorFile::read(&parity("cases.safetensors")).unwrap();
    let (a, b) = (&ours.tensors["x0"], &reference.tensors["x0_steps10"]);
    assert_eq!(a.shape, vec![4, 1, 28, 28]);
    let err = a
        .values
        .iter()
        .zip(&b.values)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(err <= 1e-3, "max abs error {err}");
    let grid = image::open(&png).unwrap();
    assert_eq!((grid.width(), grid.height()), (2 + 2 * 30, 2 + 2 * 30));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn train_sample_trajectory_and_info_on_a_tiny_model() {
    let dir = temp_dir("tiny");
    let run = dir.join("run");
    let train = ["--epochs", "1", "--out", s(&run)];
    let out = flowmatch(&[&["train"], &TINY_NET[..], &train].concat());
    assert_success(&out);
    let ckpt = run.join("final.safetensors");
    assert!(
        ckpt.is_file()
            && run.join("loss_curve.png").is_file()
            && run.join("metrics.jsonl").is_file()
    );

    let grid = dir.join("samples.png");
    let out = flowmatch(&[
        "sample",
        "--checkpoint",
        s(&ckpt),
        "--n",
        "9",
        "--steps",
        "3",
        "--out",
        s(&grid),
    ]);
    assert_success(&out);
    let img = image::open(&grid).unwrap();
    assert_eq!((img.width(), img.height()), (92, 92));

    let (strip, gif) = (dir.join("traj.png"), dir.join("traj.gif"));
    let out = flowmatch(&[
        "trajectory",
        "--checkpoint",
        s(&ckpt),
        "--n",
        "2",
        "--steps",
        "10",
        "--out",
        s(&strip),
        "--gif",
        s(&gif),
    ]);
    assert_success(&out);
    let strip_img = image::open(&strip).unwrap();
    // 7 captured states (0,1,2,4,6,8,9 of 10) plus t=0: 8 columns; 2 rows of 84-px images.
    assert_eq!(strip_img.width() % 8, 0);
    assert!(strip_img.height() > 2 * 84);
    let frames = image::codecs::gif::GifDecoder::new(std::io::BufReader::new(
        std::fs::File::open(&gif).unwrap(),
    ))
    .map(|d| image::AnimationDecoder::into_frames(d).count())
    .unwrap();
    assert_eq!(frames, 11);

    // Class options need a conditional model: a clean one-line error here.
    let out = flowmatch(&[
        "sample",
        "--checkpoint",
        s(&ckpt),
        "--digits",
        "0-2",
        "--n",
        "2",
        "--out",
        s(&grid),
    ]);
    assert_clean_error(&out, &["unconditional"]);
    let out = flowmatch(&[
        "sample",
        "--checkpoint",
        s(&ckpt),
        "--digits",
        "9-2",
        "--out",
        s(&grid),
    ]);
    assert_clean_error(&out, &["--digits"]);

    let out = flowmatch(&["info", s(&ckpt)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        stdout.contains("widths 8/16/32")
            && stdout.contains("unconditional")
            && stdout.contains("2 steps")
            && stdout.contains("last epoch loss 1.")
            && !stdout.contains("Some(")
            && stdout.contains("batch_size = 32"),
        "{stdout}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn many_samples_are_generated_in_chunks_with_a_grid_of_the_first() {
    let dir = temp_dir("chunks");
    let (grid, small) = (dir.join("grid.png"), dir.join("small.safetensors"));
    let ckpt = parity("weights.safetensors");
    let out = flowmatch(&[
        "sample",
        "--checkpoint",
        s(&ckpt),
        "--n",
        "1030",
        "--steps",
        "1",
        "--batch-size",
        "400",
        "--out",
        s(&grid),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_success(&out);
    assert!(stdout.contains("the first 1024 of 1030"), "{stdout}");
    // 1024 tiles in 32 columns; every sample in the tensor file named after the grid.
    let img = image::open(&grid).unwrap();
    assert_eq!((img.width(), img.height()), (2 + 32 * 30, 2 + 32 * 30));
    let all = TensorFile::read(&dir.join("grid.safetensors")).unwrap();
    assert_eq!(all.tensors["x0"].shape, vec![1030, 1, 28, 28]);
    // The chunks continue one noise stream: the first samples are those of a small run.
    let out = flowmatch(&[
        "sample",
        "--checkpoint",
        s(&ckpt),
        "--n",
        "9",
        "--steps",
        "1",
        "--out",
        s(&dir.join("nine.png")),
        "--save-tensor",
        s(&small),
    ]);
    assert!(out.status.success());
    let nine = &TensorFile::read(&small).unwrap().tensors["x0"];
    let err = nine
        .values
        .iter()
        .zip(&all.tensors["x0"].values)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(err < 1e-4, "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_truncated_and_corrupt_data_files_fail_cleanly() {
    let dir = temp_dir("baddata");
    let out = flowmatch(&[
        "train",
        "--data",
        s(&dir.join("nowhere")),
        "--out",
        s(&dir.join("run")),
    ]);
    assert_clean_error(&out, &["nowhere", "no such data folder"]);

    // Truncated gzip images in an otherwise valid folder.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/mnist-10k");
    for name in ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"] {
        std::fs::copy(src.join(name), dir.join(name)).unwrap();
    }
    let images = dir.join("train-images-idx3-ubyte.gz");
    let bytes = std::fs::read(&images).unwrap();
    std::fs::write(&images, &bytes[..bytes.len() / 2]).unwrap();
    let out = flowmatch(&["train", "--data", s(&dir), "--out", s(&dir.join("run"))]);
    assert_clean_error(&out, &["train-images-idx3-ubyte.gz", "gzip"]);

    // Raw file with a wrong magic number.
    std::fs::remove_file(&images).unwrap();
    std::fs::write(
        dir.join("train-images-idx3-ubyte"),
        [0u8, 0, 9, 3, 0, 0, 0, 1],
    )
    .unwrap();
    let out = flowmatch(&["train", "--data", s(&dir), "--out", s(&dir.join("run"))]);
    assert_clean_error(&out, &["train-images-idx3-ubyte", "magic"]);
    assert!(!dir.join("run").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_checkpoints_and_noise_fail_without_overwriting_outputs() {
    let dir = temp_dir("badckpt");
    let existing = dir.join("keep.png");
    std::fs::write(&existing, b"previous result").unwrap();
    let keep = s(&existing);

    let out = flowmatch(&[
        "sample",
        "--checkpoint",
        s(&dir.join("absent.safetensors")),
        "--out",
        keep,
    ]);
    assert_clean_error(&out, &["absent.safetensors"]);

    let corrupt = dir.join("corrupt.safetensors");
    std::fs::write(&corrupt, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json").unwrap();
    let out = flowmatch(&["sample", "--checkpoint", s(&corrupt), "--out", keep]);
    assert_clean_error(&out, &["corrupt.safetensors", "safetensors"]);

    // A checkpoint of another architecture.
    let other = dir.join("other.safetensors");
    let mut file = TensorFile::default();
    let t = NamedTensor {
        name: "encoder.weight".into(),
        shape: vec![4, 4],
        values: vec![0.0; 16],
    };
    file.tensors.insert(t.name.clone(), t);
    file.write(&other).unwrap();
    let out = flowmatch(&["sample", "--checkpoint", s(&other), "--out", keep]);
    assert_clean_error(
        &out,
        &[
            "other.safetensors",
            "not a SimpleUNet or ResUNet checkpoint",
        ],
    );

    // Unreadable training records: an error naming the file, not a checkpoint without them.
    let garbled = dir.join("garbled.safetensors");
    let mut file = TensorFile::read(&parity("weights.safetensors")).unwrap();
    file.metadata.insert(
        flowmatch::checkpoint::META_PROGRESS.into(),
        "{not json".into(),
    );
    file.write(&garbled).unwrap();
    let out = flowmatch(&["info", s(&garbled)]);
    assert_clean_error(&out, &["garbled.safetensors", "checkpoint metadata"]);

    // Wrong-shaped starting noise.
    let noise = dir.join("noise.safetensors");
    let mut file = TensorFile::default();
    let t = NamedTensor {
        name: "x1".into(),
        shape: vec![2, 1, 14, 14],
        values: vec![0.0; 392],
    };
    file.tensors.insert(t.name.clone(), t);
    file.write(&noise).unwrap();
    let ckpt = parity("weights.safetensors");
    let out = flowmatch(&[
        "sample",
        "--checkpoint",
        s(&ckpt),
        "--init-noise",
        s(&noise),
        "--out",
        keep,
    ]);
    assert_clean_error(&out, &["noise.safetensors", "[2, 1, 14, 14]"]);

    // Bad flag values.
    let out = flowmatch(&[
        "train",
        "--widths",
        "10,20,30",
        "--out",
        s(&dir.join("run")),
    ]);
    assert_clean_error(&out, &["--widths", "multiple of 8"]);
    let out = flowmatch(&[
        "sample",
        "--checkpoint",
        s(&ckpt),
        "--steps",
        "0",
        "--out",
        keep,
    ]);
    assert_clean_error(&out, &["--steps"]);
    let out = flowmatch(&[
        "sample",
        "--checkpoint",
        s(&ckpt),
        "--n",
        "many",
        "--out",
        keep,
    ]);
    assert!(!out.status.success());

    assert_eq!(std::fs::read(&existing).unwrap(), b"previous result");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn no_output_replaces_the_checkpoint_and_huge_counts_fail_cleanly() {
    let dir = temp_dir("inputs");
    let ckpt = dir.join("final.safetensors");
    std::fs::copy(parity("weights.safetensors"), &ckpt).unwrap();
    let before = std::fs::read(&ckpt).unwrap();
    let c = s(&ckpt);

    // More samples than a grid shows go to the grid's name with .safetensors: the checkpoint.
    let grid = dir.join("final.png");
    let out = flowmatch(&[
        "sample",
        "--checkpoint",
        c,
        "--n",
        "1100",
        "--steps",
        "1",
        "--out",
        s(&grid),
    ]);
    assert_clean_error(&out, &["final.safetensors", "is the input"]);
    let out = flowmatch(&["sample", "--checkpoint", c, "--n", "4", "--out", c]);
    assert_clean_error(&out, &["is the input"]);
    let out = flowmatch(&["trajectory", "--checkpoint", c, "--steps", "2", "--gif", c]);
    assert_clean_error(&out, &["is the input"]);
    assert_eq!(
        std::fs::read(&ckpt).unwrap(),
        before,
        "the checkpoint changed"
    );
    assert!(!grid.exists());

    // Counts that would need terabytes are refused before anything is allocated.
    let out = flowmatch(&[
        "sample",
        "--checkpoint",
        c,
        "--steps",
        "1000000000000",
        "--out",
        s(&grid),
    ]);
    assert_clean_error(&out, &["--steps", "100000"]);
    let out = flowmatch(&[
        "trajectory",
        "--checkpoint",
        c,
        "--steps",
        "90000",
        "--n",
        "64",
    ]);
    assert_clean_error(&out, &["--steps", "MB"]);
    let out = flowmatch(&[
        "sample",
        "--checkpoint",
        c,
        "--digits",
        "0-99999999999999",
        "--out",
        s(&grid),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most 100000 classes"));
    let out = flowmatch(&["eval", "--checkpoint", c, "--n", "1", "--nfe", "1"]);
    assert_clean_error(&out, &["sample count", "from 2 to"]);
    let out = flowmatch(&["eval", "--checkpoint", c, "--n", "8", "--nfe", "1000000000"]);
    assert_clean_error(&out, &["steps", "100000"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_runs_config_file_reproduces_the_run() {
    let dir = temp_dir("config");
    let (first, second) = (dir.join("first"), dir.join("second"));
    let out = flowmatch(&[
        "train",
        "--widths",
        "8,16,32",
        "--limit",
        "32",
        "--batch-size",
        "16",
        "--epochs",
        "1",
        "--time-sampling",
        "logit-normal",
        "--coupling",
        "minibatch-ot",
        "--out",
        s(&first),
    ]);
    assert_success(&out);
    let config = first.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.contains("coupling = \"minibatch-ot\"") && text.contains("logit-normal"),
        "{text}"
    );
    let out = flowmatch(&["train", "--config", s(&config), "--out", s(&second)]);
    assert_success(&out);
    let a = TensorFile::read(&first.join("final.safetensors")).unwrap();
    let b = TensorFile::read(&second.join("final.safetensors")).unwrap();
    for (name, t) in &a.tensors {
        assert_eq!(t.values, b.tensors[name].values, "{name}");
    }
    std::fs::write(&config, "epochs = \"many\"").unwrap();
    let out = flowmatch(&["train", "--config", s(&config), "--out", s(&second)]);
    assert_clean_error(&out, &["config.toml", "bad training configuration"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_network_flag_trains_and_shows_in_info() {
    let dir = temp_dir("resunet");
    let out = flowmatch(&[
        "train",
        "--arch",
        "resunet",
        "--size",
        "tiny",
        "--base-channels",
        "8",
        "--channel-mult",
        "1,2",
        "--res-blocks",
        "1",
        "--attention",
        "14",
        "--head-channels",
        "8",
        "--dropout",
        "0.1",
        "--classes",
        "10",
        "--limit",
        "32",
        "--batch-size",
        "16",
        "--steps",
        "2",
        "--out",
        s(&dir),
    ]);
    assert_success(&out);
    let out = flowmatch(&["info", s(&dir.join("final.safetensors"))]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ResUNet widths 8/16, 1 residual block(s) per level, attention at 14x14")
            && stdout.contains("dropout 0.1")
            && stdout.contains("class-conditional, 10 classes")
            && stdout.contains("arch = \"resunet\""),
        "{stdout}"
    );
    let out = flowmatch(&[
        "train",
        "--arch",
        "resunet",
        "--attention",
        "5",
        "--out",
        s(&dir),
    ]);
    assert_clean_error(&out, &["attention", "5"]);
    let out = flowmatch(&["train", "--preset", "nonsense", "--out", s(&dir)]);
    assert_clean_error(&out, &["preset", "reference"]);
    // A size's attention (7x7 for 28x28 images) moves with --image-size: 8x8 at 32x32.
    let out = flowmatch(&[
        "bench",
        "--arch",
        "resunet",
        "--size",
        "tiny",
        "--image-size",
        "32",
        "--channels",
        "3",
        "--quick",
        "--train-batch",
        "2",
        "--sample-batch",
        "1",
    ]);
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("attention at 8x8") && stdout.contains("3x32x32 images"),
        "{stdout}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_preset_keeps_its_time_limit_unless_the_flag_overrides_it() {
    let dir = temp_dir("preset-minutes");
    for (extra, expected) in [
        (&[][..], "max_minutes = 120.0"),
        (&["--max-minutes", "3"][..], "max_minutes = 3.0"),
    ] {
        let mut args = vec![
            "train", "--preset", "small-2h", "--limit", "64", "--steps", "1",
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--out", s(&dir)]);
        assert_success(&flowmatch(&args));
        let out = flowmatch(&["info", s(&dir.join("final.safetensors"))]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(expected), "{expected}: {stdout}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn curve_measures_each_checkpoint_and_reuses_what_it_measured() {
    let dir = temp_dir("curve");
    let run = dir.join("run");
    let train = ["--steps", "4", "--checkpoint-every", "0", "--out", s(&run)];
    let out = flowmatch(&[&["train"], &TINY_NET[..], &train].concat());
    assert_success(&out);
    let (jsonl, plot) = (dir.join("curve.jsonl"), dir.join("curve.png"));
    let curve_of = |run: &std::path::Path, nfe: &str, reuse: bool| {
        let mut args = vec![
            "curve",
            "--run",
            s(run),
            "--nfe",
            nfe,
            "--n",
            "20",
            "--out",
            s(&jsonl),
            "--plot",
            s(&plot),
        ];
        if reuse {
            args.push("--reuse");
        }
        assert_success(&flowmatch(&args));
        let text = std::fs::read_to_string(&jsonl).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        lines
    };
    let curve = |nfe: &str, reuse: bool| curve_of(&run, nfe, reuse);
    let first = curve("2", false);
    assert!(first[0].get("floor").is_some() && plot.is_file());
    assert_eq!(
        first.len(),
        2,
        "the floor and the final checkpoint at 2 NFE"
    );
    assert_eq!(
        (first[1]["nfe"].as_u64(), first[1]["steps"].as_u64()),
        (Some(2), Some(4))
    );

    // Mark the measured point: --reuse keeps it and measures only the new NFE.
    let marked = std::fs::read_to_string(&jsonl)
        .unwrap()
        .replace(&format!("\"fid\":{}", first[1]["fid"]), "\"fid\":12345.0");
    std::fs::write(&jsonl, marked).unwrap();
    let second = curve("2,3", true);
    assert_eq!(second.len(), 3);
    assert_eq!(
        second[1]["fid"].as_f64(),
        Some(12345.0),
        "the known point is kept"
    );
    assert_eq!(second[2]["nfe"].as_u64(), Some(3));
    // Without --reuse everything is measured again.
    let third = curve("2", false);
    assert_eq!(third[1]["fid"], first[1]["fid"]);

    // Another run measured with --reuse keeps the first run's points beside its own.
    let other = dir.join("other");
    let train = [
        "--steps",
        "2",
        "--checkpoint-every",
        "0",
        "--out",
        s(&other),
    ];
    assert_success(&flowmatch(&[&["train"], &TINY_NET[..], &train].concat()));
    let runs: Vec<String> = curve_of(&other, "2", true)[1..]
        .iter()
        .map(|p| p["run"].to_string())
        .collect();
    assert_eq!(runs, ["\"other\"", "\"run\""]);

    // A run on other data is not measured with the digit classifier.
    let config = other.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("data = \"embedded\"", "data = \"cifar10\""),
    )
    .unwrap();
    let out = flowmatch(&["curve", "--run", s(&other), "--out", s(&jsonl)]);
    assert_clean_error(&out, &["other", "cifar10", "MNIST runs"]);
    std::fs::remove_dir_all(&dir).unwrap();
}
