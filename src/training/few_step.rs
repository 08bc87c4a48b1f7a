//! Few-step models from a trained one: a reflow run (the base model's own noise-to-sample
//! pairs, then flow matching on them from the base weights: 2-rectified flow, whose paths are
//! straighter) and a distillation run (a `k`-step Euler student regressed onto the teacher's
//! pairs, from the teacher's weights). Both draw their pairs into `out/pairs` (resumable) and
//! train into `out`.

use std::path::PathBuf;

use burn::tensor::Device;

use super::pairs::{PairSet, PairsReport, generate_pairs};
use super::{TrainConfig, TrainObserver, TrainOutcome, train};
use crate::checkpoint::{self, Weights};
use crate::error::{Error, Result};
use crate::flow::objective::Objective;
use crate::lr_schedule::LrSchedule;
use crate::sampling::Generation;
use crate::sampling::straightness::straightness;

/// Which few-step run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FewStep {
    /// Reflow (k-rectified flow).
    Reflow,
    /// Distillation into a student of this many Euler steps.
    Distill(usize),
}

impl FewStep {
    /// What the run is, in words (`reflow (2-rectified flow)`).
    pub fn describe(&self) -> String {
        match self {
            FewStep::Reflow => "reflow (2-rectified flow)".to_string(),
            FewStep::Distill(k) => format!("distillation into a {k}-step Euler sampler"),
        }
    }
}

/// The training of a few-step run: how long, in what batches, how fast; the rest of the
/// recipe is fixed ([`FewStepTraining::config`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FewStepTraining {
    /// Optimiser steps.
    pub steps: u64,
    /// Pairs per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Decay of the EMA of the weights (`None`: no EMA).
    pub ema_decay: Option<f64>,
    /// Stop after this many minutes of training time.
    pub max_minutes: Option<f64>,
    /// Seed of the training.
    pub seed: u64,
}

/// Warm-up steps of the few-step recipe's learning rate (then cosine decay).
pub const WARMUP_STEPS: u64 = 100;

impl FewStepTraining {
    /// The recipe: these settings, a warm-up of [`WARMUP_STEPS`] then cosine decay over the
    /// steps (which end the run, not epochs), only the final checkpoint; the rest as
    /// [`TrainConfig::default`]. [`run`] sets the model, data, objective and start.
    pub fn config(&self) -> TrainConfig {
        TrainConfig {
            epochs: 100_000,
            max_steps: Some(self.steps),
            max_minutes: self.max_minutes,
            batch_size: self.batch_size,
            lr: self.lr,
            lr_schedule: LrSchedule::WarmupCosine {
                warmup_steps: WARMUP_STEPS,
            },
            ema_decay: self.ema_decay,
            seed: self.seed,
            checkpoint_every: 0,
            ..TrainConfig::default()
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct FewStepOptions {
    /// The base (teacher) checkpoint.
    pub base: PathBuf,
    /// Pairs to draw.
    pub pairs: usize,
    /// How the teacher samples them.
    pub teacher: Generation,
    /// Seed of the pairs' noise.
    pub seed: u64,
    /// Output folder (pairs in `out/pairs`).
    pub out: PathBuf,
    /// The training recipe (its model, data, objective and start are set here).
    pub recipe: TrainConfig,
}

/// What a few-step run did.
#[derive(Debug, Clone)]
pub struct FewStepReport {
    /// The pair generation.
    pub pairs: PairsReport,
    /// The training.
    pub outcome: TrainOutcome,
    /// Straightness of the base model's paths (100 samples, 20 Euler steps; 0 is straight).
    pub straightness_before: f64,
    /// The same for the trained model.
    pub straightness_after: f64,
}

/// Samples and steps of the straightness measure reported by few-step runs.
const STRAIGHTNESS: (usize, usize) = (100, 20);

/// Draws the pairs, then trains the few-step model; `on_pairs(done, total)` reports shards.
pub fn run(
    kind: FewStep,
    options: &FewStepOptions,
    device: &Device,
    on_pairs: impl FnMut(usize, usize),
    observer: &mut dyn TrainObserver,
) -> Result<FewStepReport> {
    let loaded = checkpoint::load_weights(&options.base, device, Weights::PreferEma)?;
    loaded.require_velocity_model(&options.base, "reflow and distillation")?;
    let base = loaded.model;
    if base.num_classes().is_some() || base.is_mean_flow() {
        return Err(Error::bad_file(
            &options.base,
            "reflow and distillation start from an unconditional flow-matching model",
        ));
    }
    let dir = options.out.join("pairs");
    let pairs = generate_pairs(
        &base,
        options.pairs,
        &options.teacher,
        options.seed,
        &dir,
        device,
        on_pairs,
    )?;
    let config = TrainConfig {
        model: base.config(),
        data: format!("pairs of {}", options.base.display()),
        objective: match kind {
            FewStep::Reflow => Objective::Reflow { pairs: dir.clone() },
            FewStep::Distill(steps) => Objective::Distill {
                pairs: dir.clone(),
                steps,
            },
        },
        init_from: Some(options.base.clone()),
        ..options.recipe.clone()
    };
    let set = PairSet::read(&dir)?;
    let outcome = train(&config, &set, &options.out, device, observer)?;
    let (n, steps) = STRAIGHTNESS;
    let straightness_before = straightness(&base, n, steps, options.seed, device);
    let trained = checkpoint::load_weights(&outcome.checkpoint, device, Weights::PreferEma)?.model;
    let straightness_after = straightness(&trained, n, steps, options.seed, device);
    Ok(FewStepReport {
        pairs,
        outcome,
        straightness_before,
        straightness_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recipe_is_steps_limited_with_warm_up_and_only_a_final_checkpoint() {
        let training = FewStepTraining {
            steps: 3000,
            batch_size: 32,
            lr: 5e-4,
            ema_decay: Some(0.999),
            max_minutes: None,
            seed: 4,
        };
        let config = training.config();
        config.validate().unwrap();
        assert_eq!(config.max_steps, Some(3000));
        assert!(config.epochs >= 100_000);
        assert_eq!(
            config.lr_schedule,
            LrSchedule::WarmupCosine { warmup_steps: 100 }
        );
        assert_eq!((config.batch_size, config.lr, config.seed), (32, 5e-4, 4));
        assert_eq!(
            (config.ema_decay, config.checkpoint_every),
            (Some(0.999), 0)
        );
    }

    #[test]
    fn runs_describe_themselves() {
        assert_eq!(FewStep::Reflow.describe(), "reflow (2-rectified flow)");
        assert_eq!(
            FewStep::Distill(2).describe(),
            "distillation into a 2-step Euler sampler"
        );
    }
}
