//! What a run reports while it trains: per-step and per-epoch reports, the observer that
//! receives them, and what a finished run leaves behind.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// What one optimiser step did.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// 1-based global step.
    pub step: u64,
    /// 0-based epoch.
    pub epoch: usize,
    /// Velocity-MSE loss of the batch.
    pub loss: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Learning rate used.
    pub lr: f64,
    /// Images per second of this step.
    pub img_s: f64,
    /// Training seconds so far (wall clock of the steps, over resumed sessions).
    pub elapsed_s: f64,
    /// Training seconds so far as CPU time per worker thread (see [`Progress::budget_seconds`](crate::checkpoint::Progress::budget_seconds)).
    pub budget_s: f64,
}

/// Summary of a completed epoch.
#[derive(Debug, Clone, Serialize)]
pub struct EpochReport {
    /// 0-based epoch.
    pub epoch: usize,
    /// Mean loss over the epoch's steps.
    pub mean_loss: f32,
    /// Global step at the end of the epoch.
    pub step: u64,
    /// Wall time of the epoch in seconds.
    pub seconds: f64,
}

/// Receives progress while training runs (a progress bar, a logger, a test).
pub trait TrainObserver {
    /// Called before the first step with the steps planned and those already done (on resume).
    fn on_start(&mut self, _total_steps: u64, _done_steps: u64) {}
    /// Called after every step.
    fn on_step(&mut self, _report: &StepReport) {}
    /// Called after every epoch.
    fn on_epoch(&mut self, _report: &EpochReport) {}
    /// Called after a checkpoint is written.
    fn on_checkpoint(&mut self, _path: &Path) {}
    /// Asked before every step: `true` saves a resumable checkpoint and stops (e.g. on Ctrl-C).
    fn should_stop(&mut self) -> bool {
        false
    }
}

/// An observer that ignores everything.
impl TrainObserver for () {}

/// What a run did, and the files it left in its output folder (none without one).
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// The final checkpoint (or, when interrupted, the resumable one).
    pub checkpoint: PathBuf,
    /// Per-step and per-epoch losses as JSON lines.
    pub metrics: PathBuf,
    /// The loss curve PNG.
    pub loss_curve: PathBuf,
    /// Steps taken in all (including those before a resume).
    pub steps: u64,
    /// Mean loss of the last epoch reported: a full one, or the partial one that `max_steps`
    /// ended (NaN when a stop came before the first report).
    pub final_loss: f32,
    /// Whether the run stopped early at the observer's request.
    pub interrupted: bool,
}
