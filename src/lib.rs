//! flowmatch: flow-matching generative models on images, built on burn.
//!
//! - [`flow`]: the linear probability path, the training tuple and the velocity loss, time
//!   sampling, the pairing of data and noise ([`flow::coupling`]) and the stable target
//!   ([`flow::stable_target`]).
//! - [`model`]: the velocity networks, the reference SimpleUNet and a residual U-Net, with
//!   PyTorch-compatible parameter names.
//! - [`sampling`]: starting noise, chunked generation, trajectories; the ODE solvers
//!   ([`sampling::solvers`]) and classifier-free guidance ([`sampling::guidance`]).
//! - [`training`]: the training loop (AdamW, global gradient clipping, logging, checkpoints),
//!   with EMA weight averaging, learning-rate schedules and named recipes.
//! - [`evaluation`]: sample quality (classifier-FID and friends, with the pinned classifier),
//!   memorisation, likelihood and straightness.
//! - [`data`]: IDX reading, data sets (embedded, folders, downloads), batching, augmentation.
//! - [`kernels`]: hand-written CPU kernels behind burn's backend extension.
//! - [`checkpoint`], [`tensor_file`]: safetensors files, written atomically.
//! - [`image_out`]: sample grids, trajectory strips, GIFs and plots; [`trajectory`]: a
//!   trajectory written to files, within its memory limits.
//! - [`demo`]: the few-minute demonstration run; [`serve`]: the local web page and its API.
//! - [`bench`]: throughput and memory measurements; [`device`]: choosing the backend.

pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod demo;
pub mod device;
pub mod error;
pub mod evaluation;
pub mod flow;
pub mod image_out;
pub mod kernels;
pub mod model;
pub mod sampling;
pub mod serve;
pub mod tensor_file;
pub mod training;
pub mod trajectory;

pub use error::{Error, Result};
