//! Faults a real run meets: a full disk while a checkpoint is written, a second `train` into a
//! folder another one is writing, non-finite numbers in the inputs, and a reader that closes the
//! pipe early. Each must end in a clear one-line error (or quietly, for the pipe), never a
//! panic, and never with an earlier result destroyed.

mod common;

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};

use common::{assert_clean_error, assert_success, fixture, flowmatch, run, s, temp_dir};

use flowmatch::model::NamedTensor;
use flowmatch::tensor_file::TensorFile;
use flowmatch::training::RunLock;

const TINY: [&str; 8] = [
    "--widths",
    "8,16,32",
    "--limit",
    "64",
    "--batch-size",
    "32",
    "--epochs",
    "1",
];

fn tiny_train(out: &Path, extra: &[&str]) -> Command {
    let mut cmd = flowmatch();
    cmd.arg("train")
        .args(TINY)
        .args(extra)
        .arg("--out")
        .arg(out);
    cmd
}

#[test]
fn a_full_disk_while_checkpointing_is_an_error_and_keeps_the_old_checkpoint() {
    let dir = temp_dir("full");
    let out = tiny_train(&dir, &[]).output().unwrap();
    assert_success(&out);
    let final_ckpt = dir.join("final.safetensors");
    let before = std::fs::read(&final_ckpt).unwrap();
    assert!(before.len() > 200_000);

    // Files may grow to 100 kB only: the log and config fit, a checkpoint does not.
    let mut cmd = tiny_train(&dir, &["--seed", "1"]);
    // SAFETY: setrlimit is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 100_000,
                rlim_max: 100_000,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert_clean_error(
        &out,
        &[
            "final.safetensors",
            "cannot write",
            "previous version of this file is unchanged",
        ],
    );
    assert_eq!(
        std::fs::read(&final_ckpt).unwrap(),
        before,
        "the old checkpoint changed"
    );
    let leftovers: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_second_train_into_a_busy_folder_refuses() {
    let dir = temp_dir("lock");
    let out = tiny_train(&dir, &[]).output().unwrap();
    assert_success(&out);
    let files = [
        "metrics.jsonl",
        "config.toml",
        "final.safetensors",
        "last.safetensors",
    ];
    let before: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(dir.join(f)).unwrap())
        .collect();

    // This process plays the part of a `train` that is still running.
    let lock = RunLock::acquire(&dir).unwrap();
    let out = tiny_train(&dir, &["--seed", "3"]).output().unwrap();
    assert_clean_error(
        &out,
        &[
            "another flowmatch process",
            &format!("pid {}", std::process::id()),
            "choose another --out",
        ],
    );
    let out = run(&["train", "--resume", s(&dir)]);
    assert_clean_error(&out, &["another flowmatch process"]);
    for (file, bytes) in files.iter().zip(&before) {
        assert_eq!(
            &std::fs::read(dir.join(file)).unwrap(),
            bytes,
            "{file} changed"
        );
    }
    // Once the holder is gone, the folder is free again.
    drop(lock);
    let out = tiny_train(&dir, &["--seed", "3"]).output().unwrap();
    assert_success(&out);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn write_tensor(path: &Path, name: &str, shape: Vec<usize>, values: Vec<f32>) {
    let mut file = TensorFile::default();
    let t = NamedTensor {
        name: name.into(),
        shape,
        values,
    };
    file.tensors.insert(t.name.clone(), t);
    file.write(path).unwrap();
}

#[test]
fn non_finite_noise_and_weights_are_errors_and_nothing_is_written() {
    let dir = temp_dir("nan");
    let grid = dir.join("grid.png");
    let raw = dir.join("raw.safetensors");
    std::fs::write(&grid, b"previous result").unwrap();

    let noise = dir.join("noise.safetensors");
    let mut values = vec![0.5f32; 2 * 784];
    values[100] = f32::NAN;
    write_tensor(&noise, "x1", vec![2, 1, 28, 28], values.clone());
    let out = run(&[
        "sample",
        "--checkpoint",
        s(&fixture("weights.safetensors")),
        "--init-noise",
        s(&noise),
        "--out",
        s(&grid),
        "--save-tensor",
        s(&raw),
    ]);
    assert_clean_error(&out, &["noise.safetensors", "'x1'", "non-finite"]);

    values[100] = f32::INFINITY;
    write_tensor(&noise, "x1", vec![2, 1, 28, 28], values);
    let out = run(&[
        "sample",
        "--checkpoint",
        s(&fixture("weights.safetensors")),
        "--init-noise",
        s(&noise),
        "--out",
        s(&grid),
    ]);
    assert_clean_error(&out, &["noise.safetensors", "inf"]);

    let mut weights = TensorFile::read(&fixture("weights.safetensors")).unwrap();
    weights.tensors.get_mut("mid1.conv.weight").unwrap().values[7] = f32::NAN;
    let broken = dir.join("broken.safetensors");
    weights.write(&broken).unwrap();
    let out = run(&["sample", "--checkpoint", s(&broken), "--out", s(&grid)]);
    assert_clean_error(
        &out,
        &["broken.safetensors", "mid1.conv.weight", "non-finite"],
    );
    let out = run(&["info", s(&broken)]);
    assert_clean_error(&out, &["broken.safetensors", "non-finite"]);

    assert_eq!(std::fs::read(&grid).unwrap(), b"previous result");
    assert!(!raw.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let mut child = flowmatch()
        .args(["info", s(&fixture("weights.safetensors"))])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before the program has written anything (as `| head -0` would).
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.is_empty(), "{stderr}");
    assert!(
        out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
        "{:?}",
        out.status
    );
}
