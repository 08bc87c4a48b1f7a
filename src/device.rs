//! Choosing where tensors live: the pure-Rust `flex` CPU backend, or CUDA when built with the
//! `cuda` feature.

use burn::tensor::Device;

use crate::error::{Error, Result};

/// Names accepted by [`device_from_name`].
pub const DEVICE_NAMES: &str = if cfg!(feature = "cuda") {
    "cpu, cuda, cuda:N"
} else {
    "cpu"
};

/// `cpu` is burn's `flex` backend; `cuda` / `cuda:N` is a CUDA GPU (feature `cuda`).
pub fn device_from_name(name: &str) -> Result<Device> {
    match name {
        "cpu" | "flex" => Ok(Device::flex()),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Device::cuda(0)),
        #[cfg(feature = "cuda")]
        other if other.starts_with("cuda:") => other[5..]
            .parse::<usize>()
            .map(Device::cuda)
            .map_err(|_| Error::invalid("device", format!("'{other}': expected cuda:N"))),
        other => Err(Error::invalid(
            "device",
            format!("'{other}' (available in this build: {DEVICE_NAMES})"),
        )),
    }
}

/// Asks glibc's allocator to serve tensor-sized buffers (up to 32 MiB) from its heap and to keep
/// freed memory for reuse, instead of mapping fresh zeroed pages for every large tensor and
/// unmapping them again (page faults and TLB flushes that cost about a tenth of a training step).
/// Call once at start-up; does nothing on other platforms.
pub fn reuse_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
