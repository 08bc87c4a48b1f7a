//! Tells the tests whether the shared reference material (`../shared/parity`, present on the
//! project's own machines and in CI, absent from a user's clone) is beside the repository:
//! the full-width parity test runs when it is and is reported as ignored when it is not.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(shared_parity)");
    println!("cargo::rerun-if-changed=build.rs");
    let weights = std::path::Path::new("../shared/parity/seed-unet/weights.safetensors");
    if weights.is_file() {
        println!("cargo::rustc-cfg=shared_parity");
        println!("cargo::rerun-if-changed={}", weights.display());
    }
}
