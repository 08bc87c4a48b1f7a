//! Training: the generic loop for any velocity model and data ([`fit()`], [`fit_in`],
//! [`fit_resume`]), and the runs of flowmatch's own networks on images and teacher pairs
//! ([`train`], [`resume`]) built on it.
//!
//! One concept per file: the configuration ([`config`]), the run folder and its lock
//! ([`run_dir`]), the loop ([`mod@fit`]), one optimiser step ([`step`]), global gradient
//! clipping ([`clipping`]), a batch's labels, references and noise ([`batch`]), the weight
//! average ([`ema`]), progress reports ([`observer`]), CPU time ([`cpu_time`]), the built-in
//! networks' runs ([`networks`]), named recipes ([`recipes`]), teacher pairs ([`pairs`]) and
//! the few-step recipes ([`few_step`]).

pub mod batch;
pub mod clipping;
pub mod config;
pub mod cpu_time;
pub mod ema;
pub mod few_step;
pub mod fit;
#[cfg(feature = "learner")]
pub mod learner;
pub mod networks;
pub mod observer;
pub mod pairs;
pub mod recipes;
pub mod run_dir;
pub mod step;

pub use crate::lr_schedule;
pub use clipping::{clip_factor, global_grad_norm, scale_grads};
pub use config::{FitConfig, MAX_BATCH, MAX_STABLE_REFERENCE, TrainConfig};
pub use cpu_time::process_cpu_seconds;
pub use fit::{Fitted, META_FIT_CONFIG, RunOutputs, check_source, fit, fit_in, fit_resume};
pub use networks::{TrainData, check_data, resume, resume_config, resume_with_time_limit, train};
pub use observer::{EpochReport, StepReport, TrainObserver, TrainOutcome};
pub use run_dir::{CONFIG, FINAL_CHECKPOINT, LOCK_FILE, RESUME_CHECKPOINT, RunLock};
pub use step::{StepError, adamw, train_step};
