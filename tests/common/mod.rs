//! Helpers shared by the integration tests: running the binary, temporary folders, the parity
//! fixture, IDX bytes, the shape of a clean command-line error and value comparison.
#![allow(dead_code)] // each test crate uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The smallest network and data the training tests use: SimpleUNet 8/16/32 on 64 digits in
/// batches of 32.
pub const TINY_NET: [&str; 6] = ["--widths", "8,16,32", "--limit", "64", "--batch-size", "32"];

/// The flowmatch binary with 2 worker threads.
pub fn flowmatch() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowmatch"));
    cmd.env("RAYON_NUM_THREADS", "2");
    cmd
}

/// Runs the binary with `args` and collects its output.
pub fn run(args: &[&str]) -> Output {
    flowmatch()
        .args(args)
        .output()
        .expect("runs the flowmatch binary")
}

/// A fresh, empty folder for test `name` of this process.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flowmatch-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A file of the small-width parity fixture (`tests/fixtures/parity-small`).
pub fn fixture(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parity-small")
        .join(file)
}

/// A path as the `&str` an argument list wants.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Asserts success, showing stderr otherwise.
pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts a clean failure: exit code non-zero, one line on stderr containing every `needle`.
pub fn assert_clean_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "not one line: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "'{needle}' not in: {stderr}");
    }
}

/// The bytes of a raw IDX file of unsigned bytes with `dims`.
pub fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        out.extend(d.to_be_bytes());
    }
    out.extend(data);
    out
}

/// The largest absolute difference between two equally long value lists.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
