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
use crate::evaluation::straightness::straightness;
use crate::flow::objective::Objective;
use crate::sampling::Generation;

/// Which few-step run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FewStep {
    /// Reflow (k-rectified flow).
    Reflow,
    /// Distillation into a student of this many Euler steps.
    Distill(usize),
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
    let base = checkpoint::load_weights(&options.base, device, Weights::PreferEma)?.model;
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
