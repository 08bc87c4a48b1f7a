//! Tells the tests what this machine has beyond the repository:
//! - the shared reference material (`../shared/parity`, present on the project's own machines
//!   and in CI, absent from a user's clone): the full-width parity test runs when it is;
//! - headless Chromium and the browser-test driver (`tests/browser/node_modules`, set up by
//!   `.ci/run`): the page test runs when both are there.
//!
//! Tests whose material is missing are reported as ignored, not passed.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(shared_parity)");
    println!("cargo::rustc-check-cfg=cfg(browser_test)");
    println!("cargo::rerun-if-changed=build.rs");
    let driver = std::path::Path::new("tests/browser/node_modules/playwright-core/package.json");
    println!("cargo::rerun-if-changed=tests/browser/package-lock.json");
    if driver.is_file() && std::path::Path::new("/usr/bin/chromium").is_file() {
        println!("cargo::rustc-cfg=browser_test");
    }
    let weights = std::path::Path::new("../shared/parity/seed-unet/weights.safetensors");
    if weights.is_file() {
        println!("cargo::rustc-cfg=shared_parity");
        println!("cargo::rerun-if-changed={}", weights.display());
    }
}
