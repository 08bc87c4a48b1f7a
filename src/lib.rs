//! flowmatch: flow-matching generative models on images, built on burn.
//!
//! - [`flow`]: the linear probability path, the training tuple and the velocity loss;
//!   [`coupling`]: independent or minibatch-OT pairing of data and noise.
//! - [`model`]: the reference SimpleUNet with PyTorch-compatible parameter names.
//! - [`solver`]: ODE solvers from noise (t = 1) to data (t = 0).
//! - [`data`]: IDX reading, data sets (embedded, directories, downloads) and batching.
//! - [`train`]: the training loop (AdamW, global gradient clipping, logging, checkpoints),
//!   with [`ema`] weight averaging and [`lr_schedule`] schedules.
//! - [`checkpoint`], [`tensor_file`]: safetensors files, written atomically.
//! - [`image_out`]: sample grids, trajectory strips, GIFs and loss curves.
//! - [`sampling`]: starting noise, sampling and trajectories.
//! - [`device`]: choosing the CPU (`flex`) or CUDA backend.
//! - [`classifier`], [`metrics`], [`likelihood`], [`eval`]: sample quality and likelihood.
//! - [`bench`]: throughput and memory measurements.

pub mod bench;
pub mod checkpoint;
pub mod classifier;
pub mod coupling;
pub mod data;
pub mod device;
pub mod ema;
pub mod error;
pub mod eval;
pub mod flow;
pub mod guidance;
pub mod image_out;
pub mod kernels;
pub mod likelihood;
pub mod lr_schedule;
pub mod metrics;
pub mod model;
pub mod sampling;
pub mod solver;
pub mod tensor_file;
pub mod train;

pub use error::{Error, Result};
