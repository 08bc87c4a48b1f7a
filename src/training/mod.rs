//! The training loop of the reference (train.py): AdamW, global gradient-norm clipping, loss
//! logged per step and per epoch (JSON lines), loss curve, atomic checkpoints.

pub mod ema;
pub mod few_step;
pub mod lr_schedule;
pub mod recipes;

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Bytes, Device, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{
    self, META_PROGRESS, META_TRAIN_CONFIG, OPTIMIZER_STATE, Progress, Weights,
};
use crate::data::{EpochOrder, ImageSet};
use crate::error::{Error, Result};
use crate::flow::coupling::{Coupling, ot_assignment, reorder_rows};
use crate::flow::objective::{self, Batch, Objective};
use crate::flow::pairs::PairSet;
use crate::flow::stable_target::Reference;
use crate::flow::{self, TimeSampling};
use crate::image_out;
use crate::model::{Network, NetworkConfig, UNetConfig, one_hot_labels};
use crate::tensor_file::{TensorFile, write_atomic};
use crate::training::ema::Ema;
use crate::training::lr_schedule::LrSchedule;

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
    /// time is CPU time per worker thread ([`Progress::budget_seconds`]), so a busy machine
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

/// One-hot labels with each replaced by "no label" with probability `dropout`.
fn dropped_labels(
    labels: &[u16],
    classes: usize,
    dropout: f32,
    rng: &mut StdRng,
    device: &Device,
) -> Tensor<2> {
    let kept: Vec<Option<usize>> = labels
        .iter()
        .map(|&l| (rng.random::<f32>() >= dropout).then_some(l as usize))
        .collect();
    one_hot_labels(&kept, classes, device)
}

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
    /// Training seconds so far as CPU time per worker thread (see [`Progress::budget_seconds`]).
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

/// Files a run leaves in its output folder.
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

/// Name of the final checkpoint in the output folder.
pub const FINAL_CHECKPOINT: &str = "final.safetensors";
/// Name of the resumable checkpoint (model, EMA, optimiser state, progress), rewritten at every
/// checkpoint and on interruption.
pub const RESUME_CHECKPOINT: &str = "last.safetensors";
const METRICS: &str = "metrics.jsonl";
/// Name of the run's configuration file (TOML), readable by `train --config`.
pub const CONFIG: &str = "config.toml";
const LOSS_CURVE: &str = "loss_curve.png";

/// Name of the lock file a running `train` holds in its output folder.
pub const LOCK_FILE: &str = "train.lock";

/// An exclusive lock on a run folder, held while training writes into it, so that a second
/// `train` into the same folder refuses instead of interleaving its files. The operating
/// system releases it when the process ends, however it ends.
pub struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    /// Takes the lock of `dir` (which must exist), or fails at once if another process has it.
    pub fn acquire(dir: &Path) -> Result<Self> {
        let path = dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        #[cfg(unix)]
        {
            use std::io::{Read, Seek};
            use std::os::fd::AsRawFd;
            // SAFETY: flock on a file descriptor this function owns.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let error = std::io::Error::last_os_error();
                if error.kind() != std::io::ErrorKind::WouldBlock {
                    return Err(Error::io(&path, error));
                }
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(Error::Locked {
                    dir: dir.to_path_buf(),
                    holder: match holder.trim() {
                        "" => "unknown pid".into(),
                        pid => format!("pid {pid}"),
                    },
                });
            }
            file.set_len(0)
                .and_then(|_| file.rewind())
                .and_then(|_| write!(file, "{}", std::process::id()))
                .map_err(|e| Error::io(&path, e))?;
        }
        Ok(RunLock { _file: file })
    }
}

/// What a run trains on: images (flow matching, mean flow) or a teacher's (noise, sample)
/// pairs (reflow, distillation).
#[derive(Clone, Copy)]
pub enum TrainData<'a> {
    /// Images with labels.
    Images(&'a ImageSet),
    /// Pairs from a teacher.
    Pairs(&'a PairSet),
}

impl<'a> From<&'a ImageSet> for TrainData<'a> {
    fn from(set: &'a ImageSet) -> Self {
        TrainData::Images(set)
    }
}

impl<'a> From<&'a PairSet> for TrainData<'a> {
    fn from(set: &'a PairSet) -> Self {
        TrainData::Pairs(set)
    }
}

impl TrainData<'_> {
    fn len(&self) -> usize {
        match self {
            TrainData::Images(set) => set.len(),
            TrainData::Pairs(set) => set.len(),
        }
    }

    fn shape(&self) -> [usize; 3] {
        match self {
            TrainData::Images(set) => set.shape(),
            TrainData::Pairs(set) => set.shape,
        }
    }
}

/// Everything that changes while training runs.
struct RunState {
    model: Network,
    optimizer: ModuleOptimizer,
    ema: Option<Ema>,
    progress: Progress,
    step_losses: Vec<(u64, f32)>,
    epoch_losses: Vec<(u64, f32)>,
}

/// Trains a fresh model (or one that starts from `config.init_from`) on `data` and writes
/// checkpoints, metrics and the loss curve to `out_dir`.
pub fn train<'a>(
    config: &TrainConfig,
    data: impl Into<TrainData<'a>>,
    out_dir: &Path,
    device: &Device,
    observer: &mut dyn TrainObserver,
) -> Result<TrainOutcome> {
    let data = data.into();
    config.validate()?;
    check_data(config, data)?;
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let _lock = RunLock::acquire(out_dir)?;
    let device = device.clone().autodiff();
    let model = match &config.init_from {
        None => Network::init(&config.model, config.seed, &device)?,
        Some(path) => {
            let start = checkpoint::load_weights(path, &device, Weights::PreferEma)?.model;
            if start.config() != config.model {
                return Err(Error::bad_file(
                    path,
                    format!(
                        "is a {}, the run trains a {}",
                        start.config().describe(),
                        config.model.describe()
                    ),
                ));
            }
            start
        }
    };
    let state = RunState {
        ema: config.ema_decay.map(|decay| Ema::new(&model, decay)),
        model,
        optimizer: adamw(config),
        progress: Progress::default(),
        step_losses: Vec::new(),
        epoch_losses: Vec::new(),
    };
    let metrics = out_dir.join(METRICS);
    std::fs::write(&metrics, b"").map_err(|e| Error::io(&metrics, e))?;
    write_atomic(&out_dir.join(CONFIG), config.to_toml().as_bytes())?;
    run(config, data, out_dir, &device, state, observer)
}

/// The training configuration stored in a run's resumable checkpoint.
pub fn resume_config(out_dir: &Path) -> Result<TrainConfig> {
    let path = out_dir.join(RESUME_CHECKPOINT);
    stored_config(&TensorFile::read(&path)?, &path)
}

/// The training configuration in the metadata of checkpoint `file` (read from `path`).
fn stored_config(file: &TensorFile, path: &Path) -> Result<TrainConfig> {
    let toml = file
        .metadata
        .get(META_TRAIN_CONFIG)
        .ok_or_else(|| Error::bad_file(path, "no training configuration in the metadata"))?;
    toml::from_str(toml)
        .map_err(|e| Error::bad_file(path, format!("bad training configuration: {e}")))
}

/// Continues the run in `out_dir` from its resumable checkpoint, exactly where it stopped:
/// same weights, EMA, optimiser state, data order and noise as an uninterrupted run.
pub fn resume<'a>(
    data: impl Into<TrainData<'a>>,
    out_dir: &Path,
    device: &Device,
    observer: &mut dyn TrainObserver,
) -> Result<TrainOutcome> {
    let data = data.into();
    let _lock = RunLock::acquire(out_dir)?;
    let path = out_dir.join(RESUME_CHECKPOINT);
    let mut file = TensorFile::read(&path)?;
    let config = stored_config(&file, &path)?;
    check_data(&config, data)?;
    let device = device.clone().autodiff();
    let raw = checkpoint::model_from_file(&file, &path, &device, Weights::Raw)?;
    let in_file = |e: Error| Error::bad_file(&path, e.to_string());
    let progress = raw
        .progress()
        .map_err(in_file)?
        .ok_or_else(|| Error::bad_file(&path, "no training progress in the metadata"))?;
    let state_bytes = file
        .blobs
        .remove(OPTIMIZER_STATE)
        .ok_or_else(|| Error::bad_file(&path, "no optimiser state: not a resumable checkpoint"))?;
    let optimizer = adamw(&config)
        .from_bytes(Bytes::from_bytes_vec(state_bytes))
        .map_err(|e| Error::bad_file(&path, format!("bad optimiser state: {e:?}")))?;
    let ema = match (config.ema_decay, raw.ema_info().map_err(in_file)?) {
        (Some(decay), Some(info)) => {
            let averaged = checkpoint::model_from_file(
                &file,
                &path,
                &device.clone().inner(),
                Weights::PreferEma,
            )?;
            Some(Ema::resume(averaged.model, decay, info.updates))
        }
        _ => None,
    };
    // Keep the log up to the checkpoint: later lines belong to steps that will be redone.
    let metrics = out_dir.join(METRICS);
    let text = std::fs::read_to_string(&metrics).map_err(|e| Error::io(&metrics, e))?;
    let (mut step_losses, mut epoch_losses, mut kept) = (Vec::new(), Vec::new(), String::new());
    for line in text.lines() {
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::bad_file(&metrics, format!("bad line: {e}")))?;
        let step = value["step"].as_u64().unwrap_or(u64::MAX);
        if step > progress.step {
            break;
        }
        match (value["loss"].as_f64(), value["mean_loss"].as_f64()) {
            (Some(loss), _) => step_losses.push((step, loss as f32)),
            (_, Some(mean)) => epoch_losses.push((step, mean as f32)),
            _ => {}
        }
        kept.push_str(line);
        kept.push('\n');
    }
    write_atomic(&metrics, kept.as_bytes())?;
    let state = RunState {
        model: raw.model,
        optimizer,
        ema,
        progress,
        step_losses,
        epoch_losses,
    };
    run(&config, data, out_dir, &device, state, observer)
}

/// The step-driven loop shared by fresh and resumed runs. Step `s` (0-based) is batch
/// `s mod B` of epoch `s div B` (B batches per epoch), with noise and times seeded by `s`, so
/// the position in the data and every random draw follow from the step count alone.
fn run(
    config: &TrainConfig,
    data: TrainData,
    out_dir: &Path,
    device: &Device,
    mut state: RunState,
    observer: &mut dyn TrainObserver,
) -> Result<TrainOutcome> {
    let metrics_path = out_dir.join(METRICS);
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(&metrics_path)
        .map_err(|e| Error::io(&metrics_path, e))?;
    let mut metrics = BufWriter::new(file);
    let mut log = |line: String| {
        writeln!(metrics, "{line}")
            .and_then(|_| metrics.flush())
            .map_err(|e| Error::io(&metrics_path, e))
    };
    let loss_curve = out_dir.join(LOSS_CURVE);
    let resume_path = out_dir.join(RESUME_CHECKPOINT);

    let batches_per_epoch = data.len().div_ceil(config.batch_size) as u64;
    let planned = config.epochs as u64 * batches_per_epoch;
    let total_steps = config.max_steps.map_or(planned, |m| m.min(planned));
    observer.on_start(total_steps, state.progress.step);

    let mut order: Option<(usize, EpochOrder)> = None;
    let mut epoch_started = Instant::now();
    let out_of_time = |progress: &Progress| {
        config
            .max_minutes
            .is_some_and(|m| progress.budget_seconds >= m * 60.0)
    };
    while state.progress.step < total_steps && !out_of_time(&state.progress) {
        if observer.should_stop() {
            save_checkpoint(&state, config, true, &resume_path)?;
            observer.on_checkpoint(&resume_path);
            image_out::loss_curve(&state.step_losses, &state.epoch_losses, &loss_curve)?;
            return Ok(outcome(&state, resume_path, metrics_path, loss_curve, true));
        }
        let step_started = Instant::now();
        let cpu_started = process_cpu_seconds();
        let epoch = (state.progress.step / batches_per_epoch) as usize;
        let batch = (state.progress.step % batches_per_epoch) as usize;
        if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            order = Some((
                epoch,
                EpochOrder::new(data.len(), config.batch_size, config.seed, epoch),
            ));
        }
        let indices = order.as_ref().expect("order of this epoch").1.batch(batch);
        let step = state.progress.step + 1;
        let mut rng = StdRng::seed_from_u64(step_seed(config.seed, step));
        let batch = match data {
            TrainData::Images(set) => {
                let (x0, image_labels) = match config.flip {
                    true => set.batch_flipped(indices, &mut rng, device),
                    false => set.batch(indices, device),
                };
                let labels = config.model.num_classes().map(|classes| {
                    dropped_labels(
                        &image_labels,
                        classes,
                        config.label_dropout,
                        &mut rng,
                        device,
                    )
                });
                let reference = config.stable_target.map(|size| {
                    let classes = config.model.num_classes();
                    reference_batch(set, (&x0, &image_labels), size, classes, &mut rng)
                });
                Batch {
                    x0,
                    x1: None,
                    labels,
                    reference,
                }
            }
            TrainData::Pairs(pairs) => {
                let (x0, x1) = pairs.batch(indices, device);
                Batch {
                    x0,
                    x1: Some(x1),
                    labels: None,
                    reference: None,
                }
            }
        };
        let lr = config.lr_schedule.rate(config.lr, step, total_steps);
        let (model, loss, grad_norm) = train_step(
            state.model,
            &mut state.optimizer,
            batch,
            &mut rng,
            lr,
            config,
        )
        .map_err(|loss| Error::Diverged { step, loss })?;
        state.model = model;
        if let Some(ema) = &mut state.ema {
            ema.update(&state.model);
        }
        state.progress.step = step;
        state.progress.epoch_loss_sum += loss as f64;
        state.progress.epoch_steps += 1;
        state.step_losses.push((step, loss));
        let seconds = step_started.elapsed().as_secs_f64();
        let before = state.progress.budget_seconds;
        state.progress.train_seconds += seconds;
        state.progress.budget_seconds +=
            (process_cpu_seconds() - cpu_started) / rayon::current_num_threads() as f64;
        let report = StepReport {
            step,
            epoch,
            loss,
            grad_norm,
            lr,
            img_s: indices.len() as f64 / seconds,
            elapsed_s: state.progress.train_seconds,
            budget_s: state.progress.budget_seconds,
        };
        log(serde_json::to_string(&report).expect("report serialises"))?;
        observer.on_step(&report);
        for &minutes in &config.checkpoint_minutes {
            let mark = minutes * 60.0;
            if before < mark && state.progress.budget_seconds >= mark {
                let path = out_dir.join(format!("minutes-{minutes:04}.safetensors"));
                save_checkpoint(&state, config, false, &path)?;
                observer.on_checkpoint(&path);
            }
        }

        let epoch_done = step.is_multiple_of(batches_per_epoch);
        if epoch_done || step == total_steps {
            let mean_loss =
                (state.progress.epoch_loss_sum / state.progress.epoch_steps as f64) as f32;
            let report = EpochReport {
                epoch,
                mean_loss,
                step,
                seconds: epoch_started.elapsed().as_secs_f64(),
            };
            log(serde_json::to_string(&report).expect("report serialises"))?;
            observer.on_epoch(&report);
            epoch_started = Instant::now();
            state.epoch_losses.push((step, mean_loss));
            state.progress.last_epoch_loss = Some(mean_loss);
            state.progress.epoch = epoch + 1;
            state.progress.epoch_loss_sum = 0.0;
            state.progress.epoch_steps = 0;
            let epochs_done = epoch + 1;
            if epoch_done
                && config.checkpoint_every > 0
                && epochs_done.is_multiple_of(config.checkpoint_every)
            {
                let path = out_dir.join(format!("epoch-{epochs_done:04}.safetensors"));
                save_checkpoint(&state, config, false, &path)?;
                observer.on_checkpoint(&path);
                save_checkpoint(&state, config, true, &resume_path)?;
                image_out::loss_curve(&state.step_losses, &state.epoch_losses, &loss_curve)?;
            }
        }
    }
    let checkpoint = out_dir.join(FINAL_CHECKPOINT);
    save_checkpoint(&state, config, false, &checkpoint)?;
    save_checkpoint(&state, config, true, &resume_path)?;
    observer.on_checkpoint(&checkpoint);
    image_out::loss_curve(&state.step_losses, &state.epoch_losses, &loss_curve)?;
    Ok(outcome(&state, checkpoint, metrics_path, loss_curve, false))
}

fn outcome(
    state: &RunState,
    checkpoint: PathBuf,
    metrics: PathBuf,
    loss_curve: PathBuf,
    interrupted: bool,
) -> TrainOutcome {
    TrainOutcome {
        checkpoint,
        metrics,
        loss_curve,
        steps: state.progress.step,
        final_loss: state.progress.last_epoch_loss.unwrap_or(f32::NAN),
        interrupted,
    }
}

/// Checks that `data` suits `config`: the network's image shape, labels within the classes of
/// a conditional model, pairs for a pair objective and images otherwise.
pub fn check_data(config: &TrainConfig, data: TrainData) -> Result<()> {
    let want = config.model.image_shape();
    if data.shape() != want {
        return Err(Error::invalid(
            "data",
            format!(
                "{}: images are {:?} (channels, height, width), the network takes {want:?}",
                config.data,
                data.shape()
            ),
        ));
    }
    match (data, config.objective.pairs()) {
        (TrainData::Pairs(_), None) | (TrainData::Images(_), Some(_)) => {
            return Err(Error::invalid(
                "data",
                format!(
                    "the {} objective trains on {}",
                    config.objective.name(),
                    if config.objective.pairs().is_some() {
                        "a teacher's pairs"
                    } else {
                        "images"
                    }
                ),
            ));
        }
        _ => {}
    }
    if config.objective.pairs().is_some() && config.model.num_classes().is_some() {
        return Err(Error::invalid(
            "classes",
            "reflow and distillation train unconditional models (the pairs carry no labels)",
        ));
    }
    if let (Some(classes), TrainData::Images(set)) = (config.model.num_classes(), data) {
        if !set.is_labelled() {
            return Err(Error::invalid(
                "classes",
                format!(
                    "{}: the images carry no labels, so a conditional model cannot learn",
                    config.data
                ),
            ));
        }
        if set.classes.len() > classes {
            return Err(Error::invalid(
                "classes",
                format!(
                    "{}: the data has {} classes, the model {classes} (--classes {})",
                    config.data,
                    set.classes.len(),
                    set.classes.len()
                ),
            ));
        }
    }
    if matches!(config.objective, Objective::MeanFlow { .. }) != config.model.is_mean_flow() {
        return Err(Error::invalid(
            "objective",
            "the mean-flow objective needs a network with the interval input, and only it does",
        ));
    }
    Ok(())
}

/// The AdamW optimiser of `config` (gradient clipping is applied separately, globally).
pub fn adamw(config: &TrainConfig) -> ModuleOptimizer {
    AdamWConfig::new()
        .with_beta_1(config.betas.0)
        .with_beta_2(config.betas.1)
        .with_epsilon(config.eps)
        .with_weight_decay(config.weight_decay)
        .init()
}

/// One optimiser step at rate `lr` on `batch` (on an autodiff device) under the objective of
/// `config`, noise (when the batch has none) and times drawn from `rng`.
/// Returns the updated model, the loss and the gradient norm before clipping, or the loss
/// when it is not finite (the model is then not updated).
pub fn train_step(
    model: Network,
    optimizer: &mut ModuleOptimizer,
    batch: Batch,
    rng: &mut StdRng,
    lr: f64,
    config: &TrainConfig,
) -> std::result::Result<(Network, f32, f32), f32> {
    let x1 = match &batch.x1 {
        Some(x1) => x1.clone(),
        None => noise_for(&batch.x0, config.coupling, rng),
    };
    let loss = objective::loss(
        &config.objective,
        &model,
        batch,
        x1,
        &config.time_sampling,
        rng,
    );
    let loss_value = loss.clone().into_scalar::<f32>();
    if !loss_value.is_finite() {
        return Err(loss_value);
    }
    let mut grads = GradientsParams::from_grads(loss.backward(), &model);
    let grad_norm = global_grad_norm(&model, &grads);
    if let Some(max_norm) = config.grad_clip {
        scale_grads(&model, &mut grads, clip_factor(grad_norm, max_norm));
    }
    Ok((optimizer.step(lr, model, grads), loss_value, grad_norm))
}

/// The stable target's reference: the batch `x0` (labelled `labels`) and `size - batch`
/// training images drawn from `set` at random, with their labels when `classes` is some.
fn reference_batch(
    set: &ImageSet,
    (x0, labels): (&Tensor<4>, &[u16]),
    size: usize,
    classes: Option<usize>,
    rng: &mut StdRng,
) -> Reference {
    let [batch, c, h, w] = x0.dims();
    let device = x0.device();
    let extra: Vec<usize> = (0..size.saturating_sub(batch))
        .map(|_| rng.random_range(0..set.len()))
        .collect();
    let (values, extra_labels) = set.batch_values(&extra);
    let extra = Tensor::<2>::from_data(TensorData::new(values, [extra.len(), c * h * w]), &device);
    let labels = classes.map(|classes| {
        let all: Vec<Option<usize>> = labels
            .iter()
            .chain(&extra_labels)
            .map(|&l| Some(l as usize))
            .collect();
        one_hot_labels(&all, classes, &device)
    });
    Reference {
        images: Tensor::cat(vec![x0.clone().reshape([batch, c * h * w]), extra], 0),
        labels,
    }
}

/// Fresh noise for the data `x0`, paired by `coupling`.
fn noise_for(x0: &Tensor<4>, coupling: Coupling, rng: &mut StdRng) -> Tensor<4> {
    let device = x0.device();
    let [batch, ..] = x0.dims();
    match coupling {
        Coupling::Independent => flow::gaussian_noise(rng, x0.dims(), &device),
        Coupling::MinibatchOt => {
            let dim = x0.dims()[1..].iter().product();
            let noise = flow::gaussian_values(rng, batch * dim);
            let data = x0
                .to_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .expect("f32 data");
            let paired = reorder_rows(&noise, &ot_assignment(&data, &noise, dim), dim);
            Tensor::from_data(TensorData::new(paired, x0.dims()), &device)
        }
    }
}

/// CPU time (user + system) this process has used, in seconds (0 where unknown).
pub fn process_cpu_seconds() -> f64 {
    #[cfg(unix)]
    {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage writes a rusage into the pointer it is given.
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } == 0 {
            // SAFETY: initialised by the successful call.
            let u = unsafe { usage.assume_init() };
            let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
            return seconds(u.ru_utime) + seconds(u.ru_stime);
        }
    }
    0.0
}

/// Seed of the noise and times of one step: a pure function of (seed, step), so resuming at
/// any step draws the same values as an uninterrupted run.
fn step_seed(seed: u64, step: u64) -> u64 {
    seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Writes the model, EMA, progress and configuration; with `resumable`, the optimiser state too.
fn save_checkpoint(
    state: &RunState,
    config: &TrainConfig,
    resumable: bool,
    path: &Path,
) -> Result<()> {
    let metadata = HashMap::from([
        (
            META_PROGRESS.to_string(),
            serde_json::to_string(&state.progress).expect("progress serialises"),
        ),
        (META_TRAIN_CONFIG.to_string(), config.to_toml()),
    ]);
    let optimizer_state = if resumable {
        let bytes = state.optimizer.into_bytes().map_err(|e| {
            Error::bad_file(path, format!("cannot serialise the optimiser state: {e:?}"))
        })?;
        Some(bytes.to_vec())
    } else {
        None
    };
    checkpoint::save(
        &state.model,
        state.ema.as_ref(),
        optimizer_state,
        metadata,
        path,
    )
}

/// PyTorch's `clip_grad_norm_` factor: `min(1, max_norm / (norm + 1e-6))`.
pub fn clip_factor(norm: f32, max_norm: f32) -> f32 {
    (max_norm / (norm + 1e-6)).min(1.0)
}

/// The L2 norm of all gradients of `model` taken together (not per parameter).
pub fn global_grad_norm<M: Module>(model: &M, grads: &GradientsParams) -> f32 {
    struct SquaredSums<'a> {
        grads: &'a GradientsParams,
        sums: Vec<Tensor<1>>,
    }
    impl ModuleVisitor for SquaredSums<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(grad) = self.grads.get::<D>(param.id) {
                self.sums.push(grad.square().sum());
            }
        }
    }
    let mut visitor = SquaredSums {
        grads,
        sums: Vec::new(),
    };
    model.visit(&mut visitor);
    if visitor.sums.is_empty() {
        return 0.0;
    }
    Tensor::cat(visitor.sums, 0)
        .sum()
        .sqrt()
        .into_scalar::<f32>()
}

/// Multiplies every gradient of `model` by `factor` (no-op when `factor` is 1).
pub fn scale_grads<M: Module>(model: &M, grads: &mut GradientsParams, factor: f32) {
    if factor >= 1.0 {
        return;
    }
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: f32,
    }
    impl ModuleVisitor for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(grad) = self.grads.remove::<D>(param.id) {
                self.grads.register(param.id, grad * self.factor);
            }
        }
    }
    model.visit(&mut Scale { grads, factor });
}
