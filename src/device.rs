//! Choosing where tensors live: the pure-Rust `flex` CPU backend (the default, with
//! flowmatch's own kernels), burn's `wgpu` backend (feature `wgpu`: Vulkan, Metal or DX12 on any
//! vendor's GPU, or a software Vulkan driver such as Mesa's lavapipe), or CUDA (feature `cuda`).
//! The other backends run burn's plain composition of every operation.

use burn::tensor::Device;

use crate::error::{Error, Result};

/// The names [`device_from_name`] accepts in this build.
pub fn device_names() -> String {
    let mut names = vec!["cpu"];
    if cfg!(feature = "wgpu") {
        names.push(
            "wgpu (the best adapter), wgpu:cpu (a software driver such as lavapipe), \
             wgpu:discrete:N, wgpu:integrated:N",
        );
    }
    if cfg!(feature = "cuda") {
        names.push("cuda, cuda:N");
    }
    names.join(", ")
}

/// `cpu` is burn's `flex` backend; `wgpu[:cpu|:discrete:N|:integrated:N]` a wgpu adapter
/// (feature `wgpu`); `cuda` / `cuda:N` a CUDA GPU (feature `cuda`).
pub fn device_from_name(name: &str) -> Result<Device> {
    let bad = |reason: &str| {
        Error::invalid(
            "device",
            format!(
                "'{name}': {reason} (available in this build: {})",
                device_names()
            ),
        )
    };
    let index = |s: &str| s.parse::<usize>().map_err(|_| bad("expected a number"));
    let parts: Vec<&str> = name.split(':').collect();
    match parts[..] {
        ["cpu"] | ["flex"] => Ok(Device::flex()),
        #[cfg(feature = "wgpu")]
        ["wgpu"] => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
        #[cfg(feature = "wgpu")]
        ["wgpu", "cpu"] => Ok(Device::wgpu(burn::tensor::DeviceKind::Cpu)),
        #[cfg(feature = "wgpu")]
        ["wgpu", "discrete", i] => Ok(Device::wgpu(burn::tensor::DeviceKind::DiscreteGpu(index(
            i,
        )?))),
        #[cfg(feature = "wgpu")]
        ["wgpu", "integrated", i] => Ok(Device::wgpu(burn::tensor::DeviceKind::IntegratedGpu(
            index(i)?,
        ))),
        #[cfg(feature = "cuda")]
        ["cuda"] => Ok(Device::cuda(0)),
        #[cfg(feature = "cuda")]
        ["cuda", i] => Ok(Device::cuda(index(i)?)),
        ["wgpu", ..] if !cfg!(feature = "wgpu") => Err(bad(
            "this build has no wgpu backend: build with --features wgpu",
        )),
        ["cuda", ..] if !cfg!(feature = "cuda") => Err(bad(
            "this build has no CUDA backend: build with --features cuda",
        )),
        _ => {
            let _ = index;
            Err(bad("unknown device"))
        }
    }
}

/// Asks glibc's allocator to serve tensor-sized buffers (up to 32 MiB) from its heap and to keep
/// freed memory for reuse, instead of mapping fresh zeroed pages for every large tensor and
/// unmapping them again (page faults and TLB flushes that cost about a tenth of a training step).
/// The 64 MiB top pad keeps the worker threads' arenas too: glibc deletes an extra heap of a
/// thread's arena as soon as it is empty unless the pad asks for more room than that, and the
/// demo's training then faulted in about 15 MB of fresh pages per step (7 % of its wall time).
/// Call once at start-up; does nothing on other platforms.
pub fn reuse_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_parsed_or_refused_with_the_list() {
        assert!(device_from_name("cpu").is_ok());
        let err = device_from_name("tpu").unwrap_err().to_string();
        assert!(
            err.contains("unknown device") && err.contains("cpu"),
            "{err}"
        );
        if !cfg!(feature = "wgpu") {
            let err = device_from_name("wgpu:cpu").unwrap_err().to_string();
            assert!(err.contains("--features wgpu"), "{err}");
        }
    }
}
