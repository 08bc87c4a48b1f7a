//! Exact resume, Ctrl-C and kill -9: an interrupted run continues to the same weights as an
//! uninterrupted one, and no moment of a crash leaves a broken checkpoint.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use burn::tensor::Device;
use flowmatch::checkpoint;
use flowmatch::data::{DataOptions, DataSource, ImageSet, Split};
use flowmatch::flow::TimeSampling;
use flowmatch::model::UNetConfig;
use flowmatch::tensor_file::TensorFile;
use flowmatch::training::lr_schedule::LrSchedule;
use flowmatch::training::{self, TrainConfig, TrainObserver};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flowmatch-resume-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Stops the run after `after` steps.
struct StopAfter {
    after: u64,
    seen: u64,
}

impl TrainObserver for StopAfter {
    fn on_step(&mut self, _: &training::StepReport) {
        self.seen += 1;
    }
    fn should_stop(&mut self) -> bool {
        self.seen >= self.after
    }
}

#[test]
fn an_interrupted_run_resumes_to_the_same_weights() {
    let data = ImageSet::load(&DataSource::Embedded, Split::Train, &DataOptions::default())
        .unwrap()
        .take(64);
    let config = TrainConfig {
        model: UNetConfig::with_widths([8, 16, 32]).into(),
        epochs: 3,
        batch_size: 16,
        lr: 2e-3,
        lr_schedule: LrSchedule::WarmupCosine { warmup_steps: 3 },
        ema_decay: Some(0.9),
        time_sampling: TimeSampling::LogitNormal {
            mean: 0.0,
            std: 1.0,
        },
        checkpoint_every: 1,
        seed: 11,
        ..TrainConfig::default()
    };
    let device = Device::flex();
    let (whole, split) = (temp_dir("whole"), temp_dir("split"));
    training::train(&config, &data, &whole, &device, &mut ()).unwrap();

    // Stop mid-epoch (step 6 of 12; 4 steps per epoch), then resume.
    let stopped = training::train(
        &config,
        &data,
        &split,
        &device,
        &mut StopAfter { after: 6, seen: 0 },
    )
    .unwrap();
    assert!(stopped.interrupted);
    assert_eq!(stopped.steps, 6);
    assert!(!split.join("final.safetensors").exists());
    let resumed = training::resume(&data, &split, &device, &mut ()).unwrap();
    assert!(!resumed.interrupted);
    assert_eq!(resumed.steps, 12);

    let a = TensorFile::read(&whole.join("final.safetensors")).unwrap();
    let b = TensorFile::read(&split.join("final.safetensors")).unwrap();
    assert_eq!(a.tensors.len(), 108, "54 weights and 54 EMA weights");
    for (name, t) in &a.tensors {
        let max = t
            .values
            .iter()
            .zip(&b.tensors[name].values)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(max <= 1e-6, "{name}: differs by {max}");
    }
    let lines = |dir: &Path| {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count()
    };
    assert_eq!(lines(&whole), lines(&split));

    // A run stopped by its time limit is carried on to its planned steps with a new limit,
    // to the same weights (the schedule follows the steps).
    let timed = temp_dir("timed");
    let short = TrainConfig {
        max_minutes: Some(1e-9),
        ..config.clone()
    };
    let cut = training::train(&short, &data, &timed, &device, &mut ()).unwrap();
    assert!(cut.steps < 12, "{}", cut.steps);
    let carried =
        training::resume_with_time_limit(&data, &timed, Some(60.0), &device, &mut ()).unwrap();
    assert_eq!(carried.steps, 12);
    let c = TensorFile::read(&timed.join("final.safetensors")).unwrap();
    for (name, t) in &a.tensors {
        assert_eq!(t.values, c.tensors[name].values, "{name}");
    }
    assert!(training::resume_with_time_limit(&data, &timed, Some(-1.0), &device, &mut ()).is_err());
    for dir in [whole, split, timed] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

fn flowmatch() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowmatch"));
    cmd.env("RAYON_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn tiny_training(out: &Path) -> Command {
    let mut cmd = flowmatch();
    cmd.args([
        "train",
        "--widths",
        "8,16,32",
        "--limit",
        "64",
        "--batch-size",
        "16",
        "--epochs",
        "400",
    ])
    .args(["--checkpoint-every", "1", "--out"])
    .arg(out);
    cmd
}

/// Every checkpoint in `dir` reads completely and loads as a model.
fn all_checkpoints_load(dir: &Path) -> usize {
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            checkpoint::load(&path, &Device::flex())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            count += 1;
        }
    }
    count
}

fn wait_for(path: &Path, limit: Duration) {
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < limit, "{} did not appear", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn kill_9_at_any_moment_leaves_loadable_checkpoints() {
    let out = temp_dir("kill");
    let last = out.join("last.safetensors");
    for round in 0..6u64 {
        let mut cmd = if last.exists() {
            let mut c = flowmatch();
            c.args(["train", "--resume"]).arg(&out);
            c
        } else {
            tiny_training(&out)
        };
        let mut child = cmd.spawn().unwrap();
        if round == 0 {
            wait_for(&last, Duration::from_secs(60));
        }
        // Different moments: while writing checkpoints, between them, during steps.
        std::thread::sleep(Duration::from_millis(150 + 170 * round));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(all_checkpoints_load(&out) > 0);
    }
    let progress = checkpoint::load(&last, &Device::flex())
        .unwrap()
        .progress()
        .unwrap()
        .unwrap();
    assert!(progress.step > 0);
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn sigint_saves_a_resumable_checkpoint_and_exits_cleanly() {
    let out = temp_dir("sigint");
    let child = tiny_training(&out).spawn().unwrap();
    wait_for(&out.join("epoch-0002.safetensors"), Duration::from_secs(60));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("interrupted after step"), "{stdout}");
    let saved = checkpoint::load(&out.join("last.safetensors"), &Device::flex()).unwrap();
    assert!(saved.progress().unwrap().unwrap().step >= 8);
    assert!(!out.join("final.safetensors").exists());
    std::fs::remove_dir_all(&out).unwrap();
}
