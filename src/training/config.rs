//! A training run's configuration: [`TrainConfig`] for flowmatch's own networks on image sets
//! (stored as TOML in every checkpoint), and [`FitConfig`], the part the generic loop
//! ([`super::fit()`]) reads, for any velocity model and data.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::flow::TimeSampling;
use crate::flow::coupling::Coupling;
use crate::flow::objective::Objective;
use crate::flow::scheduler::{Parametrisation, Prediction, Scheduler};
use crate::lr_schedule::LrSchedule;
use crate::model::{NetworkConfig, UNetConfig};

/// Every training choice; stored in each checkpoint's metadata (as TOML).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The network: architecture and shape.
    pub model: NetworkConfig,
    /// Data set (`embedded`, `mnist`, `fashion-mnist`, `cifar10` or a folder).
    pub data: String,
    /// Only the first this many training images were used.
    #[serde(default)]
    pub data_limit: Option<usize>,
    /// Fraction of an image folder held out as its test split.
    #[serde(default = "default_holdout")]
    pub holdout: f64,
    /// Names of the classes of a conditional model, in label order.
    #[serde(default)]
    pub class_names: Vec<String>,
    /// Mirror each training image left-right with probability 1/2.
    #[serde(default)]
    pub flip: bool,
    /// What each step minimises.
    #[serde(default)]
    pub objective: Objective,
    /// Start from these weights (the EMA where the file has one) instead of a fresh network.
    #[serde(default)]
    pub init_from: Option<PathBuf>,
    /// Passes over the training set.
    pub epochs: usize,
    /// Stop after this many optimiser steps, even mid-epoch.
    pub max_steps: Option<u64>,
    /// Also stop (with a final checkpoint) once this many minutes of training time have passed
    /// (CPU time per worker thread, as `checkpoint_minutes`); the learning-rate schedule still
    /// follows the planned steps.
    #[serde(default)]
    pub max_minutes: Option<f64>,
    /// Images per step.
    pub batch_size: usize,
    /// AdamW (peak) learning rate.
    pub lr: f64,
    /// How the learning rate changes over the run.
    pub lr_schedule: LrSchedule,
    /// Probability of replacing a label by "no label" (conditional models; classifier-free guidance).
    #[serde(default = "default_label_dropout")]
    pub label_dropout: f32,
    /// How training times are drawn.
    pub time_sampling: TimeSampling,
    /// How data and noise are paired within a batch.
    #[serde(default)]
    pub coupling: Coupling,
    /// Images in the reference batch of the stable target (the batch and as many random
    /// training images as make it up; [`crate::flow::stable_target`]); none: the target
    /// `x1 - x0` of each image alone.
    #[serde(default)]
    pub stable_target: Option<usize>,
    /// The path's scheduler (linear: the straight line of rectified flow).
    #[serde(default)]
    pub scheduler: Scheduler,
    /// What the network predicts: the velocity, the data or the noise.
    #[serde(default)]
    pub prediction: Prediction,
    /// Decay of the exponential moving average of the weights (none: no average, as the reference).
    pub ema_decay: Option<f64>,
    /// AdamW betas.
    pub betas: (f32, f32),
    /// AdamW epsilon.
    pub eps: f32,
    /// AdamW decoupled weight decay.
    pub weight_decay: f32,
    /// Global gradient-norm clipping threshold (as PyTorch's `clip_grad_norm_`); none disables it.
    pub grad_clip: Option<f32>,
    /// Seed of initialisation, data order, noise and times.
    pub seed: u64,
    /// Write a checkpoint every this many epochs (0: only the final one).
    pub checkpoint_every: usize,
    /// Also write a checkpoint when the training time first reaches each of these minutes
    /// (`minutes-0005.safetensors` for 5), for quality against compute from one run. Training
    /// time is CPU time per worker thread ([`Progress::budget_seconds`](crate::checkpoint::Progress::budget_seconds)), so a busy machine
    /// does not move the marks.
    #[serde(default)]
    pub checkpoint_minutes: Vec<f64>,
}

impl Default for TrainConfig {
    /// The reference settings (train.py), with 100 epochs.
    fn default() -> Self {
        TrainConfig {
            model: NetworkConfig::Simple(UNetConfig::REFERENCE),
            data: "embedded".into(),
            data_limit: None,
            holdout: default_holdout(),
            class_names: Vec::new(),
            flip: false,
            objective: Objective::FlowMatching,
            init_from: None,
            epochs: 100,
            max_steps: None,
            max_minutes: None,
            batch_size: 128,
            lr: 1e-4,
            lr_schedule: LrSchedule::Constant,
            ema_decay: None,
            time_sampling: TimeSampling::Uniform,
            coupling: Coupling::Independent,
            stable_target: None,
            scheduler: Scheduler::Linear,
            prediction: Prediction::Velocity,
            label_dropout: default_label_dropout(),
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.01,
            grad_clip: Some(1.0),
            seed: 0,
            checkpoint_every: 10,
            checkpoint_minutes: Vec::new(),
        }
    }
}

impl TrainConfig {
    /// Rejects values that cannot train.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.fit_config().validate()
    }

    /// The loop's part of the configuration.
    pub fn fit_config(&self) -> FitConfig {
        FitConfig {
            objective: self.objective.clone(),
            epochs: self.epochs,
            max_steps: self.max_steps,
            max_minutes: self.max_minutes,
            batch_size: self.batch_size,
            lr: self.lr,
            lr_schedule: self.lr_schedule,
            label_dropout: self.label_dropout,
            time_sampling: self.time_sampling,
            coupling: self.coupling,
            stable_target: self.stable_target,
            scheduler: self.scheduler,
            prediction: self.prediction,
            ema_decay: self.ema_decay,
            betas: self.betas,
            eps: self.eps,
            weight_decay: self.weight_decay,
            grad_clip: self.grad_clip,
            seed: self.seed,
            checkpoint_every: self.checkpoint_every,
            checkpoint_minutes: self.checkpoint_minutes.clone(),
        }
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("config serialises to TOML")
    }

    /// The path's scheduler and what the network predicts.
    pub fn parametrisation(&self) -> Parametrisation {
        Parametrisation {
            scheduler: self.scheduler,
            prediction: self.prediction,
        }
    }
}

/// Largest batch a configuration may ask for.
pub const MAX_BATCH: usize = 1 << 16;

/// The largest stable-target reference batch.
pub const MAX_STABLE_REFERENCE: usize = 1 << 16;

fn default_holdout() -> f64 {
    0.1
}

fn default_label_dropout() -> f32 {
    0.1
}

/// How the training loop optimises any velocity model: objective, schedule, optimiser, EMA,
/// checkpoints. [`TrainConfig`] holds the same fields for flowmatch's own networks
/// ([`TrainConfig::fit_config`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitConfig {
    /// What each step minimises.
    #[serde(default)]
    pub objective: Objective,
    /// Passes over the training set.
    pub epochs: usize,
    /// Stop after this many optimiser steps, even mid-epoch.
    pub max_steps: Option<u64>,
    /// Also stop once this many minutes of training time (CPU time per worker thread) passed.
    #[serde(default)]
    pub max_minutes: Option<f64>,
    /// Items per step.
    pub batch_size: usize,
    /// AdamW (peak) learning rate.
    pub lr: f64,
    /// How the learning rate changes over the run.
    pub lr_schedule: LrSchedule,
    /// Probability of replacing a label by "no label" (conditional models).
    #[serde(default = "default_label_dropout")]
    pub label_dropout: f32,
    /// How training times are drawn.
    pub time_sampling: TimeSampling,
    /// How data and noise are paired within a batch.
    #[serde(default)]
    pub coupling: Coupling,
    /// Items in the stable target's reference batch (none: the target `x1 - x0`).
    #[serde(default)]
    pub stable_target: Option<usize>,
    /// The path's scheduler (linear: the straight line of rectified flow).
    #[serde(default)]
    pub scheduler: Scheduler,
    /// What the network predicts: the velocity, the data or the noise.
    #[serde(default)]
    pub prediction: Prediction,
    /// Decay of the exponential moving average of the weights (none: no average).
    pub ema_decay: Option<f64>,
    /// AdamW betas.
    pub betas: (f32, f32),
    /// AdamW epsilon.
    pub eps: f32,
    /// AdamW decoupled weight decay.
    pub weight_decay: f32,
    /// Global gradient-norm clipping threshold (none disables it).
    pub grad_clip: Option<f32>,
    /// Seed of data order, noise, times and dropout.
    pub seed: u64,
    /// Write a checkpoint every this many epochs (0: only the final one; a run without an
    /// output folder writes none).
    pub checkpoint_every: usize,
    /// Also write a checkpoint when the training time first reaches each of these minutes.
    #[serde(default)]
    pub checkpoint_minutes: Vec<f64>,
}

impl Default for FitConfig {
    /// The reference's optimisation (AdamW lr 1e-4, batch 128, clipping at 1, uniform times),
    /// for 100 epochs, no EMA.
    fn default() -> Self {
        TrainConfig::default().fit_config()
    }
}

impl FitConfig {
    /// Rejects values that cannot train.
    pub fn validate(&self) -> Result<()> {
        let positive = |what: &str, ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(Error::invalid(what, "must be positive"))
            }
        };
        positive("batch size", self.batch_size > 0)?;
        if self.batch_size > MAX_BATCH {
            return Err(Error::invalid(
                "batch size",
                format!("{}: at most {MAX_BATCH}", self.batch_size),
            ));
        }
        positive("AdamW epsilon", self.eps > 0.0 && self.eps.is_finite())?;
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(Error::invalid(
                "weight decay",
                format!("{}: must be finite and not negative", self.weight_decay),
            ));
        }
        self.time_sampling.validate()?;
        self.objective.validate()?;
        self.scheduler.validate()?;
        let straight =
            self.scheduler == Scheduler::Linear && self.prediction == Prediction::Velocity;
        if !straight && self.objective != Objective::FlowMatching {
            return Err(Error::invalid(
                "scheduler",
                format!(
                    "the {} objective works on the linear path with velocity prediction",
                    self.objective.name()
                ),
            ));
        }
        if !straight && self.stable_target.is_some() {
            return Err(Error::invalid(
                "stable target",
                "averages on the linear path with velocity prediction only",
            ));
        }
        if let Some(size) = self.stable_target {
            if !(self.batch_size..=MAX_STABLE_REFERENCE).contains(&size) {
                return Err(Error::invalid(
                    "stable-target reference",
                    format!(
                        "{size} images: needs at least the batch size ({}) and at most {MAX_STABLE_REFERENCE}",
                        self.batch_size
                    ),
                ));
            }
            if self.objective != Objective::FlowMatching {
                return Err(Error::invalid(
                    "stable target",
                    "averages over training images: only for the flow-matching objective",
                ));
            }
        }
        positive("epochs", self.epochs > 0)?;
        positive("learning rate", self.lr > 0.0 && self.lr.is_finite())?;
        positive("max steps", self.max_steps != Some(0))?;
        positive(
            "max minutes",
            self.max_minutes.is_none_or(|m| m.is_finite() && m > 0.0),
        )?;
        positive("gradient clip", self.grad_clip.is_none_or(|c| c > 0.0))?;
        if !(0.0..=1.0).contains(&self.label_dropout) {
            return Err(Error::invalid(
                "label dropout",
                format!("{}: must be in [0, 1]", self.label_dropout),
            ));
        }
        if self.ema_decay.is_some_and(|d| !(0.0..1.0).contains(&d)) {
            return Err(Error::invalid(
                "EMA decay",
                format!("{:?}: must be in [0, 1)", self.ema_decay),
            ));
        }
        if self
            .checkpoint_minutes
            .iter()
            .any(|m| !(m.is_finite() && *m > 0.0))
        {
            return Err(Error::invalid(
                "checkpoint minutes",
                format!("{:?}: each must be positive", self.checkpoint_minutes),
            ));
        }
        if !(0.0..1.0).contains(&self.betas.0) || !(0.0..1.0).contains(&self.betas.1) {
            return Err(Error::invalid(
                "betas",
                format!("{:?}: each must be in [0, 1)", self.betas),
            ));
        }
        Ok(())
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("config serialises to TOML")
    }

    /// The path's scheduler and what the network predicts.
    pub fn parametrisation(&self) -> Parametrisation {
        Parametrisation {
            scheduler: self.scheduler,
            prediction: self.prediction,
        }
    }
}
