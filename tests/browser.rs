//! The page in a real browser: headless Chromium (Debian's package) driven by playwright-core
//! (`tests/browser`, installed with `npm ci` there) loads the page of a server started here,
//! presses Generate, waits for the grid and the animation and checks that the canvases are not
//! blank. Without Chromium or the npm package (a user's machine) it is reported as ignored;
//! `.ci/run` installs both.

mod common;

use std::process::Command;

use burn::tensor::Device;
use flowmatch::serve::{ServeOptions, Server};

#[test]
#[cfg_attr(
    not(browser_test),
    ignore = "needs /usr/bin/chromium and tests/browser/node_modules (npm ci): installed by .ci/run"
)]
fn the_page_generates_and_animates_in_chromium() {
    let options = ServeOptions {
        checkpoints: vec![common::fixture("weights.safetensors")],
        shipped: vec![],
        host: "127.0.0.1".into(),
        port: 0,
        run: None,
        workers: 2,
    };
    let server = Server::bind(&options, &Device::flex()).unwrap();
    let url = server.url().to_string();
    std::thread::spawn(move || server.run());
    let dir = common::temp_dir("browser");
    let shot = dir.join("page.png");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/page-test.mjs");
    let out = Command::new("node")
        .arg(script)
        .arg(&url)
        .arg(&shot)
        .output()
        .expect("runs node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    let png = image::open(&shot).unwrap();
    assert_eq!((png.width(), png.height()), (1180, 660));
    std::fs::remove_dir_all(&dir).unwrap();
}
