//! The training loop of the reference (train.py): AdamW, global gradient-norm clipping, loss
//! logged per step and per epoch (JSON lines), loss curve, atomic checkpoints.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, META_PROGRESS, META_TRAIN_CONFIG, Progress};
use crate::data::{EpochOrder, ImageSet};
use crate::ema::Ema;
use crate::error::{Error, Result};
use crate::flow::{self, TimeSampling};
use crate::image_out;
use crate::lr_schedule::LrSchedule;
use crate::model::{SimpleUNet, UNetConfig};

/// Every training choice; stored in each checkpoint's metadata (as TOML).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The network's shape.
    pub model: UNetConfig,
    /// Data set (`embedded`, `mnist`, `fashion-mnist` or a folder), for the record.
    pub data: String,
    /// Passes over the training set.
    pub epochs: usize,
    /// Stop after this many optimiser steps, even mid-epoch.
    pub max_steps: Option<u64>,
    /// Images per step.
    pub batch_size: usize,
    /// AdamW (peak) learning rate.
    pub lr: f64,
    /// How the learning rate changes over the run.
    pub lr_schedule: LrSchedule,
    /// How training times are drawn.
    pub time_sampling: TimeSampling,
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
}

impl Default for TrainConfig {
    /// The reference settings (train.py), with 100 epochs.
    fn default() -> Self {
        TrainConfig {
            model: UNetConfig::REFERENCE,
            data: "embedded".into(),
            epochs: 100,
            max_steps: None,
            batch_size: 128,
            lr: 1e-4,
            lr_schedule: LrSchedule::Constant,
            ema_decay: None,
            time_sampling: TimeSampling::Uniform,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.01,
            grad_clip: Some(1.0),
            seed: 0,
            checkpoint_every: 10,
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
        positive("epochs", self.epochs > 0)?;
        positive("learning rate", self.lr > 0.0 && self.lr.is_finite())?;
        positive("max steps", self.max_steps != Some(0))?;
        positive("gradient clip", self.grad_clip.is_none_or(|c| c > 0.0))?;
        if self.ema_decay.is_some_and(|d| !(0.0..1.0).contains(&d)) {
            return Err(Error::invalid(
                "EMA decay",
                format!("{:?}: must be in [0, 1)", self.ema_decay),
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
    /// Called before the first step with the number of steps planned.
    fn on_start(&mut self, _total_steps: u64) {}
    /// Called after every step.
    fn on_step(&mut self, _report: &StepReport) {}
    /// Called after every epoch.
    fn on_epoch(&mut self, _report: &EpochReport) {}
    /// Called after a checkpoint is written.
    fn on_checkpoint(&mut self, _path: &Path) {}
}

/// An observer that ignores everything.
impl TrainObserver for () {}

/// Files a finished run leaves in its output folder.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// The final checkpoint.
    pub checkpoint: PathBuf,
    /// Per-step and per-epoch losses as JSON lines.
    pub metrics: PathBuf,
    /// The loss curve PNG.
    pub loss_curve: PathBuf,
    /// Steps taken.
    pub steps: u64,
    /// Mean loss of the last epoch (or partial epoch).
    pub final_loss: f32,
}

/// Name of the final checkpoint in the output folder.
pub const FINAL_CHECKPOINT: &str = "final.safetensors";

/// Trains a fresh model on `data` and writes checkpoints, metrics and the loss curve to `out_dir`.
pub fn train(
    config: &TrainConfig,
    data: &ImageSet,
    out_dir: &Path,
    device: &Device,
    observer: &mut dyn TrainObserver,
) -> Result<TrainOutcome> {
    config.validate()?;
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let device = device.clone().autodiff();
    let mut model = SimpleUNet::init(config.model, config.seed, &device)?;
    let mut optimizer = adamw(config);
    let mut ema = config.ema_decay.map(|decay| Ema::new(&model, decay));

    let metrics_path = out_dir.join("metrics.jsonl");
    let mut metrics =
        BufWriter::new(File::create(&metrics_path).map_err(|e| Error::io(&metrics_path, e))?);
    let mut log = |line: String| {
        writeln!(metrics, "{line}")
            .and_then(|_| metrics.flush())
            .map_err(|e| Error::io(&metrics_path, e))
    };

    let batches_per_epoch = data.len().div_ceil(config.batch_size) as u64;
    let planned = config.epochs as u64 * batches_per_epoch;
    let total_steps = config.max_steps.map_or(planned, |m| m.min(planned));
    observer.on_start(total_steps);

    let mut step = 0u64;
    let mut step_losses: Vec<(u64, f32)> = Vec::new();
    let mut epoch_losses: Vec<(u64, f32)> = Vec::new();
    let mut last_epoch_loss = None;
    let loss_curve = out_dir.join("loss_curve.png");
    'epochs: for epoch in 0..config.epochs {
        let started = Instant::now();
        let order = EpochOrder::new(data.len(), config.batch_size, config.seed, epoch);
        let mut epoch_sum = 0.0f64;
        let mut epoch_steps = 0usize;
        for b in 0..order.num_batches() {
            if step >= total_steps {
                break;
            }
            let step_started = Instant::now();
            step += 1;
            let indices = order.batch(b);
            let (x0, _labels) = data.batch(indices, &device);
            let mut rng = StdRng::seed_from_u64(step_seed(config.seed, step));
            let lr = config.lr_schedule.rate(config.lr, step, total_steps);
            let (updated, loss_value, grad_norm) =
                train_step(model, &mut optimizer, x0, &mut rng, lr, config)
                    .map_err(|loss| Error::Diverged { step, loss })?;
            model = updated;
            if let Some(ema) = &mut ema {
                ema.update(&model);
            }

            let report = StepReport {
                step,
                epoch,
                loss: loss_value,
                grad_norm,
                lr,
                img_s: indices.len() as f64 / step_started.elapsed().as_secs_f64(),
            };
            log(serde_json::to_string(&report).expect("report serialises"))?;
            observer.on_step(&report);
            step_losses.push((step, loss_value));
            epoch_sum += loss_value as f64;
            epoch_steps += 1;
        }
        if epoch_steps == 0 {
            break 'epochs;
        }
        let mean_loss = (epoch_sum / epoch_steps as f64) as f32;
        let report = EpochReport {
            epoch,
            mean_loss,
            step,
            seconds: started.elapsed().as_secs_f64(),
        };
        log(serde_json::to_string(&report).expect("report serialises"))?;
        observer.on_epoch(&report);
        epoch_losses.push((step, mean_loss));
        last_epoch_loss = Some(mean_loss);
        let epochs_done = epoch + 1;
        if config.checkpoint_every > 0 && epochs_done % config.checkpoint_every == 0 {
            let path = out_dir.join(format!("epoch-{epochs_done:04}.safetensors"));
            save_checkpoint(
                &model,
                ema.as_ref(),
                config,
                Progress {
                    epoch: epochs_done,
                    step,
                    last_epoch_loss,
                },
                &path,
            )?;
            observer.on_checkpoint(&path);
            image_out::loss_curve(&step_losses, &epoch_losses, &loss_curve)?;
        }
    }
    let epochs_done = epoch_losses.len();
    let checkpoint = out_dir.join(FINAL_CHECKPOINT);
    save_checkpoint(
        &model,
        ema.as_ref(),
        config,
        Progress {
            epoch: epochs_done,
            step,
            last_epoch_loss,
        },
        &checkpoint,
    )?;
    observer.on_checkpoint(&checkpoint);
    image_out::loss_curve(&step_losses, &epoch_losses, &loss_curve)?;
    Ok(TrainOutcome {
        checkpoint,
        metrics: metrics_path,
        loss_curve,
        steps: step,
        final_loss: last_epoch_loss.unwrap_or(f32::NAN),
    })
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

/// One optimiser step at rate `lr` on data `x0` (on an autodiff device), noise and times drawn
/// from `rng`.
/// Returns the updated model, the loss and the gradient norm before clipping, or the loss
/// when it is not finite (the model is then not updated).
pub fn train_step(
    model: SimpleUNet,
    optimizer: &mut ModuleOptimizer,
    x0: Tensor<4>,
    rng: &mut StdRng,
    lr: f64,
    config: &TrainConfig,
) -> std::result::Result<(SimpleUNet, f32, f32), f32> {
    let device = x0.device();
    let [batch, ..] = x0.dims();
    let x1 = flow::gaussian_noise(rng, x0.dims(), &device);
    let t = config.time_sampling.sample(rng, batch, &device);
    let tuple = flow::training_tuple(x0, x1, t);
    let loss = flow::velocity_loss(model.forward(tuple.x_t, tuple.t), tuple.target);
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

/// Seed of the noise and times of one step: a pure function of (seed, step), so resuming at
/// any step draws the same values as an uninterrupted run.
fn step_seed(seed: u64, step: u64) -> u64 {
    seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn save_checkpoint(
    model: &SimpleUNet,
    ema: Option<&Ema>,
    config: &TrainConfig,
    progress: Progress,
    path: &Path,
) -> Result<()> {
    let metadata = HashMap::from([
        (
            META_PROGRESS.to_string(),
            serde_json::to_string(&progress).expect("progress serialises"),
        ),
        (META_TRAIN_CONFIG.to_string(), config.to_toml()),
    ]);
    checkpoint::save(model, ema, metadata, path)
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
