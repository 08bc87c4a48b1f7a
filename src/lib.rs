//! flowmatch: flow-matching generative models on burn, as a library and a command-line
//! program.
//!
//! Bring your own burn model: implement [`model::VelocityModel`] (the velocity at points `x_t`
//! of any rank and times `t`, t = 0 data, t = 1 noise), give your data as a
//! [`data::BatchSource`] ([`data::InMemory`] for tensors you have), and flowmatch's loop trains
//! it ([`training::fit()`]: AdamW, global clipping, schedules, EMA, checkpoints, exact resume)
//! and its solvers sample it ([`sampling`]). The built-in networks ([`model::Network`]) are two
//! implementations of the same trait.
//!
//! The smallest training and sampling, a linear model of 2-D points:
//!
//! ```
//! use burn::module::Module;
//! use burn::nn::{Linear, LinearConfig};
//! use burn::tensor::{Device, Tensor};
//! use flowmatch::data::InMemory;
//! use flowmatch::model::{Condition, VelocityModel};
//! use flowmatch::sampling::{sample, solvers::Solver};
//! use flowmatch::training::{FitConfig, fit};
//!
//! #[derive(Module, Debug)]
//! struct Linear2d {
//!     layer: Linear,
//! }
//!
//! impl VelocityModel<2> for Linear2d {
//!     fn velocity(&self, x: Tensor<2>, t: Tensor<1>, _: &Condition) -> Tensor<2> {
//!         self.layer.forward(Tensor::cat(vec![x, t.unsqueeze_dim(1)], 1))
//!     }
//!     fn sample_shape(&self) -> Vec<usize> {
//!         vec![2]
//!     }
//! }
//!
//! # fn main() -> flowmatch::Result<()> {
//! let device = Device::flex();
//! let points = InMemory::new(vec![1.0, 2.0, 1.2, 1.8, 0.8, 2.1, 1.1, 2.2], [4, 2])?;
//! let model = Linear2d { layer: LinearConfig::new(3, 2).init(&device) };
//! let config = FitConfig { batch_size: 4, lr: 1e-2, max_steps: Some(50), ..FitConfig::default() };
//! let trained = fit(model, &points, &config, &device)?;
//! let samples = sample(&trained.model, 8, Solver::Euler, 10, 0, &device)?;
//! assert_eq!(samples.dims(), [8, 2]);
//! # Ok(())
//! # }
//! ```
//!
//! The modules, one concept each:
//!
//! - [`model`]: the [`VelocityModel`](model::VelocityModel) trait and the built-in networks,
//!   the reference SimpleUNet and a residual U-Net, with PyTorch-compatible parameter names.
//! - [`flow`]: the probability path ([`flow::path`]), the objectives and their losses
//!   ([`flow::objective`]: flow matching, reflow, distillation, mean flow), time sampling, the
//!   pairing of data and noise ([`flow::coupling`]) and the stable target.
//! - [`training`]: the generic loop ([`training::fit()`]) and the runs of the built-in networks
//!   ([`training::train`]), split by concept (configuration, run folder, step, clipping, EMA,
//!   observers, recipes, few-step recipes and teacher pairs).
//! - [`sampling`]: seeded noise, chunked generation, trajectories; the ODE solvers
//!   ([`sampling::solvers`]) and classifier-free guidance ([`sampling::guidance`]).
//! - [`evaluation`]: sample quality (classifier-FID and friends, with the pinned classifier),
//!   memorisation, likelihood and straightness.
//! - [`data`]: the [`BatchSource`](data::BatchSource) interface, IDX reading, data sets
//!   (embedded, folders, downloads), batching, augmentation.
//! - [`checkpoint`], [`tensor_file`]: safetensors files, written atomically.
//! - [`lr_schedule`]: learning-rate schedules.
//! - [`kernels`]: hand-written CPU kernels behind burn's backend extension.
//! - [`image_out`]: sample grids, trajectory strips, GIFs and plots; [`trajectory`]: a
//!   trajectory written to files, within its memory limits.
//! - [`demo`]: the few-minute demonstration run; [`serve`]: the local web page and its API.
//! - [`bench`](mod@bench): throughput and memory measurements; [`device`]: choosing the backend.

#![warn(missing_docs)]

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
pub mod lr_schedule;
pub mod model;
pub mod pretrained;
pub mod sampling;
pub mod serve;
pub mod tensor_file;
pub mod training;
pub mod trajectory;

pub use error::{Error, Result};
