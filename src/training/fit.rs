//! The training loop, for any [`VelocityModel`] and any [`BatchSource`]: AdamW with global
//! clipping, a learning-rate schedule, an optional EMA of the weights, per-step logging, and,
//! with a run folder, checkpoints and exact resume.
//!
//! Step `s` (0-based) is batch `s mod B` of epoch `s div B` (B batches per epoch), with data
//! order, noise, times and dropout seeded by the run's seed and `s` alone, so a resumed run
//! continues exactly as an uninterrupted one.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::tensor::{Bytes, Device};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::batch::{dropped_labels, reference_batch};
use super::config::FitConfig;
use super::cpu_time::process_cpu_seconds;
use super::ema::Ema;
use super::observer::{EpochReport, StepReport, TrainObserver};
use super::run_dir::{FINAL_CHECKPOINT, LOSS_CURVE, METRICS, RESUME_CHECKPOINT, RunLock};
use super::step::{StepError, adamw, train_step};
use crate::checkpoint::{
    self, EmaInfo, LoadedModel, META_PROGRESS, OPTIMIZER_STATE, Progress, Weights,
};
use crate::data::{BatchSource, EpochOrder};
use crate::error::{Error, Result};
use crate::flow::objective::Batch;
use crate::image_out;
use crate::model::{SequentialIds, VelocityModel};
use crate::tensor_file::{TensorFile, write_atomic};

/// Metadata key of a [`fit`] run's configuration (TOML of [`FitConfig`]).
pub const META_FIT_CONFIG: &str = "flowmatch.fit_config";

/// A trained model and what its run did.
#[derive(Debug)]
pub struct Fitted<M> {
    /// The weights after the last step (on the plain device).
    pub model: M,
    /// The exponential moving average of the weights, when the run kept one.
    pub ema: Option<M>,
    /// Steps taken in all (including those before a resume).
    pub steps: u64,
    /// Mean loss of the last epoch reported (NaN when a stop came before the first report).
    pub final_loss: f32,
    /// Whether the run stopped early at the observer's request.
    pub interrupted: bool,
    /// The files a run with an output folder left: the final (or, when interrupted, the
    /// resumable) checkpoint, the metrics and the loss curve.
    pub files: Option<RunOutputs>,
}

impl<M> Fitted<M> {
    /// The weights to sample with: the average when there is one, else the last weights.
    pub fn sampler(&self) -> &M {
        self.ema.as_ref().unwrap_or(&self.model)
    }
}

/// The files a run left in its output folder.
#[derive(Debug, Clone)]
pub struct RunOutputs {
    /// The final checkpoint (or, when interrupted, the resumable one).
    pub checkpoint: PathBuf,
    /// Per-step and per-epoch losses as JSON lines.
    pub metrics: PathBuf,
    /// The loss curve PNG.
    pub loss_curve: PathBuf,
}

/// Trains `model` (built on any device; it trains on that device with autodiff) on `data`
/// under `config`, in memory: no files, no observer. Returns the trained weights.
///
/// ```
/// # use burn::module::Module;
/// # use burn::nn::{Linear, LinearConfig};
/// # use burn::tensor::{Device, Tensor};
/// # use flowmatch::model::{Condition, VelocityModel};
/// # #[derive(Module, Debug)]
/// # struct Mlp { layer: Linear }
/// # impl VelocityModel<2> for Mlp {
/// #     fn velocity(&self, x: Tensor<2>, t: Tensor<1>, _: &Condition) -> Tensor<2> {
/// #         self.layer.forward(Tensor::cat(vec![x, t.unsqueeze_dim(1)], 1))
/// #     }
/// #     fn sample_shape(&self) -> Vec<usize> { vec![2] }
/// # }
/// use flowmatch::data::InMemory;
/// use flowmatch::training::{FitConfig, fit};
///
/// let device = Device::flex();
/// let model = Mlp { layer: LinearConfig::new(3, 2).init(&device) };
/// let points = InMemory::new(vec![0.5, -0.5, -0.5, 0.5], [2, 2]).unwrap();
/// let config = FitConfig { epochs: 3, batch_size: 2, lr: 1e-2, ..FitConfig::default() };
/// let trained = fit(model, &points, &config, &device).unwrap();
/// assert_eq!(trained.steps, 3);
/// ```
pub fn fit<const D: usize, M, S>(
    model: M,
    data: &S,
    config: &FitConfig,
    device: &Device,
) -> Result<Fitted<M>>
where
    M: VelocityModel<D>,
    S: BatchSource<D> + ?Sized,
{
    start(model, data, config, None, device, &mut ())
}

/// Trains `model` on `data` like [`fit`], writing the run into `out_dir`: `metrics.jsonl`, the
/// loss curve, checkpoints (every `checkpoint_every` epochs, at `checkpoint_minutes`, the final
/// one) and the resumable `last.safetensors` that [`fit_resume`] continues from. `observer` sees
/// every step and may stop the run.
pub fn fit_in<const D: usize, M, S>(
    model: M,
    data: &S,
    config: &FitConfig,
    out_dir: &Path,
    device: &Device,
    observer: &mut dyn TrainObserver,
) -> Result<Fitted<M>>
where
    M: VelocityModel<D>,
    S: BatchSource<D> + ?Sized,
{
    let files = RunFiles {
        dir: out_dir,
        config_key: META_FIT_CONFIG,
        config_toml: config.to_toml(),
    };
    start(model, data, config, Some(files), device, observer)
}

/// Continues the [`fit_in`] run in `out_dir` exactly where it stopped. `model` is a model of
/// the same architecture (freshly built: its weights are replaced by the checkpoint's).
pub fn fit_resume<const D: usize, M, S>(
    model: M,
    data: &S,
    out_dir: &Path,
    device: &Device,
    observer: &mut dyn TrainObserver,
) -> Result<Fitted<M>>
where
    M: VelocityModel<D>,
    S: BatchSource<D> + ?Sized,
{
    let _lock = RunLock::acquire(out_dir)?;
    let path = out_dir.join(RESUME_CHECKPOINT);
    let file = TensorFile::read(&path)?;
    let toml = file
        .metadata
        .get(META_FIT_CONFIG)
        .ok_or_else(|| Error::bad_file(&path, "no fit configuration in the metadata"))?;
    let config: FitConfig = toml::from_str(toml)
        .map_err(|e| Error::bad_file(&path, format!("bad fit configuration: {e}")))?;
    check_source(&model, data, &config)?;
    let ad_device = device.clone().autodiff();
    let model = on_autodiff(model, &ad_device);
    let raw = checkpoint::module_from_file(model.clone(), &file, &path, Weights::Raw)?;
    let averaged = |_: &TensorFile| {
        checkpoint::module_from_file(model.valid(), &file, &path, Weights::PreferEma)
            .map(|loaded| loaded.model)
    };
    let files = RunFiles {
        dir: out_dir,
        config_key: META_FIT_CONFIG,
        config_toml: config.to_toml(),
    };
    let state = resumed_state(raw, &file, &path, &config, averaged)?;
    run(&config, data, Some(files), &ad_device, state, observer)
}

/// A fresh run of a user's model.
fn start<const D: usize, M, S>(
    model: M,
    data: &S,
    config: &FitConfig,
    files: Option<RunFiles>,
    device: &Device,
    observer: &mut dyn TrainObserver,
) -> Result<Fitted<M>>
where
    M: VelocityModel<D>,
    S: BatchSource<D> + ?Sized,
{
    config.validate()?;
    check_source(&model, data, config)?;
    let ad_device = device.clone().autodiff();
    let model = on_autodiff(model, &ad_device);
    let _lock = match &files {
        Some(files) => Some(prepare_dir(files)?),
        None => None,
    };
    run(
        config,
        data,
        files,
        &ad_device,
        fresh_state(model, config),
        observer,
    )
}

/// `model` on the autodiff device `device`, ready to train, its parameters numbered by
/// position so that the optimiser state of a resumable checkpoint finds them again.
fn on_autodiff<M: Module>(model: M, device: &Device) -> M {
    model.fork(device).train().map(&mut SequentialIds(0))
}

/// Checks that `data` suits `model` and `config`: item shape, labels for a conditional
/// model, pairs for a pair objective and plain data otherwise, a mean-flow model for the
/// mean-flow objective.
pub fn check_source<const D: usize, M, S>(model: &M, data: &S, config: &FitConfig) -> Result<()>
where
    M: VelocityModel<D>,
    S: BatchSource<D> + ?Sized,
{
    if data.is_empty() {
        return Err(Error::invalid("data", "holds no items"));
    }
    if data.sample_shape() != model.sample_shape() {
        return Err(Error::invalid(
            "data",
            format!(
                "items are {:?}, the model takes {:?}",
                data.sample_shape(),
                model.sample_shape()
            ),
        ));
    }
    if data.is_pairs() != config.objective.pairs().is_some() {
        return Err(Error::invalid(
            "data",
            format!(
                "the {} objective trains on {}",
                config.objective.name(),
                match config.objective.pairs() {
                    Some(_) => "a teacher's pairs",
                    None => "data items",
                }
            ),
        ));
    }
    if let Some(classes) = model.num_classes() {
        match data.classes() {
            None => {
                return Err(Error::invalid(
                    "classes",
                    "the data carries no labels, so a conditional model cannot learn",
                ));
            }
            Some(n) if n > classes => {
                return Err(Error::invalid(
                    "classes",
                    format!("the data has {n} classes, the model {classes}"),
                ));
            }
            _ => {}
        }
    }
    if config.objective.is_mean_flow() != model.is_mean_flow() {
        return Err(Error::invalid(
            "objective",
            "the mean-flow objective needs a model with the interval input, and only it does",
        ));
    }
    Ok(())
}

/// Where a run writes: its folder and the configuration recorded in every checkpoint.
pub(crate) struct RunFiles<'a> {
    /// The run folder.
    pub dir: &'a Path,
    /// Metadata key of the configuration.
    pub config_key: &'static str,
    /// The configuration as TOML.
    pub config_toml: String,
}

/// Creates the run folder, takes its lock and starts an empty metrics log.
pub(crate) fn prepare_dir(files: &RunFiles) -> Result<RunLock> {
    std::fs::create_dir_all(files.dir).map_err(|e| Error::io(files.dir, e))?;
    let lock = RunLock::acquire(files.dir)?;
    let metrics = files.dir.join(METRICS);
    std::fs::write(&metrics, b"").map_err(|e| Error::io(&metrics, e))?;
    Ok(lock)
}

/// Everything that changes while training runs.
pub(crate) struct RunState<M> {
    model: M,
    optimizer: ModuleOptimizer,
    ema: Option<Ema<M>>,
    progress: Progress,
    step_losses: Vec<(u64, f32)>,
    epoch_losses: Vec<(u64, f32)>,
}

/// The state of a fresh run of `model` (on the autodiff device).
pub(crate) fn fresh_state<M: Module>(model: M, config: &FitConfig) -> RunState<M> {
    RunState {
        ema: config.ema_decay.map(|decay| Ema::new(&model, decay)),
        model,
        optimizer: adamw(config),
        progress: Progress::default(),
        step_losses: Vec::new(),
        epoch_losses: Vec::new(),
    }
}

/// The state stored in a resumable checkpoint: `raw` holds its weights (on the autodiff
/// device), `averaged` loads its EMA (on the plain device) when the run keeps one.
pub(crate) fn resumed_state<M: Module>(
    raw: LoadedModel<M>,
    file: &TensorFile,
    path: &Path,
    config: &FitConfig,
    averaged: impl FnOnce(&TensorFile) -> Result<M>,
) -> Result<RunState<M>> {
    let in_file = |e: Error| Error::bad_file(path, e.to_string());
    let progress = raw
        .progress()
        .map_err(in_file)?
        .ok_or_else(|| Error::bad_file(path, "no training progress in the metadata"))?;
    let state_bytes = file
        .blobs
        .get(OPTIMIZER_STATE)
        .ok_or_else(|| Error::bad_file(path, "no optimiser state: not a resumable checkpoint"))?;
    let optimizer = adamw(config)
        .from_bytes(Bytes::from_bytes_vec(state_bytes.clone()))
        .map_err(|e| Error::bad_file(path, format!("bad optimiser state: {e:?}")))?;
    let ema = match (config.ema_decay, raw.ema_info().map_err(in_file)?) {
        (Some(decay), Some(info)) => Some(Ema::resume(averaged(file)?, decay, info.updates)),
        _ => None,
    };
    Ok(RunState {
        model: raw.model,
        optimizer,
        ema,
        progress,
        step_losses: Vec::new(),
        epoch_losses: Vec::new(),
    })
}

/// The step-driven loop shared by fresh and resumed runs of every model.
pub(crate) fn run<const D: usize, M, S>(
    config: &FitConfig,
    data: &S,
    files: Option<RunFiles>,
    device: &Device,
    mut state: RunState<M>,
    observer: &mut dyn TrainObserver,
) -> Result<Fitted<M>>
where
    M: VelocityModel<D>,
    S: BatchSource<D> + ?Sized,
{
    let mut record = Recorder::open(files, &mut state)?;
    let batches_per_epoch = data.len().div_ceil(config.batch_size) as u64;
    let planned = config.epochs as u64 * batches_per_epoch;
    let total_steps = config.max_steps.map_or(planned, |m| m.min(planned));
    observer.on_start(total_steps, state.progress.step);

    let classes = state.model.num_classes();
    let mut order: Option<(usize, EpochOrder)> = None;
    let mut epoch_started = Instant::now();
    let out_of_time = |progress: &Progress| {
        config
            .max_minutes
            .is_some_and(|m| progress.budget_seconds >= m * 60.0)
    };
    while state.progress.step < total_steps && !out_of_time(&state.progress) {
        if observer.should_stop() {
            let path = record.checkpoint(&state, Saved::Resumable)?;
            path.iter().for_each(|p| observer.on_checkpoint(p));
            record.loss_curve(&state)?;
            return Ok(record.finish(state, path, true));
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
        let drawn = data.batch(indices, Some(&mut rng), device)?;
        let labels = classes
            .zip(drawn.labels.as_deref())
            .map(|(classes, labels)| {
                dropped_labels(labels, classes, config.label_dropout, &mut rng, device)
            });
        let reference = match config.stable_target {
            Some(size) => {
                let labels = drawn.labels.as_deref();
                Some(reference_batch(
                    data,
                    (&drawn.x0, labels),
                    size,
                    classes,
                    &mut rng,
                )?)
            }
            None => None,
        };
        let batch = Batch {
            x0: drawn.x0,
            x1: drawn.x1,
            labels,
            reference,
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
        .map_err(|e| match e {
            StepError::NonFinite(loss) => Error::Diverged { step, loss },
            StepError::BadOutput(reason) => Error::ModelOutput { step, reason },
        })?;
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
        record.log(serde_json::to_string(&report).expect("report serialises"))?;
        observer.on_step(&report);
        for &minutes in &config.checkpoint_minutes {
            let mark = minutes * 60.0;
            if before < mark && state.progress.budget_seconds >= mark {
                let name = format!("minutes-{minutes:04}.safetensors");
                if let Some(path) = record.checkpoint(&state, Saved::Named(&name))? {
                    observer.on_checkpoint(&path);
                }
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
            record.log(serde_json::to_string(&report).expect("report serialises"))?;
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
                let name = format!("epoch-{epochs_done:04}.safetensors");
                if let Some(path) = record.checkpoint(&state, Saved::Named(&name))? {
                    observer.on_checkpoint(&path);
                }
                record.checkpoint(&state, Saved::Resumable)?;
                record.loss_curve(&state)?;
            }
        }
    }
    let path = record.checkpoint(&state, Saved::Named(FINAL_CHECKPOINT))?;
    record.checkpoint(&state, Saved::Resumable)?;
    path.iter().for_each(|p| observer.on_checkpoint(p));
    record.loss_curve(&state)?;
    Ok(record.finish(state, path, false))
}

/// Seed of the noise and times of one step: a pure function of (seed, step), so resuming at
/// any step draws the same values as an uninterrupted run.
fn step_seed(seed: u64, step: u64) -> u64 {
    seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Which checkpoint to write.
enum Saved<'a> {
    /// A weights-only checkpoint of this name.
    Named(&'a str),
    /// The resumable checkpoint (with the optimiser state).
    Resumable,
}

/// Writes a run's log, checkpoints and loss curve into its folder; without a folder, nothing.
struct Recorder<'a> {
    files: Option<(RunFiles<'a>, BufWriter<std::fs::File>)>,
}

impl<'a> Recorder<'a> {
    /// Opens the metrics log for appending; on resume, keeps its lines up to the checkpoint's
    /// step (later ones belong to steps that will be redone) and reloads their losses.
    fn open<M>(files: Option<RunFiles<'a>>, state: &mut RunState<M>) -> Result<Self> {
        let Some(files) = files else {
            return Ok(Recorder { files: None });
        };
        let path = files.dir.join(METRICS);
        if state.progress.step > 0 {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let mut kept = String::new();
            for line in text.lines() {
                let value: serde_json::Value = serde_json::from_str(line)
                    .map_err(|e| Error::bad_file(&path, format!("bad line: {e}")))?;
                let step = value["step"].as_u64().unwrap_or(u64::MAX);
                if step > state.progress.step {
                    break;
                }
                match (value["loss"].as_f64(), value["mean_loss"].as_f64()) {
                    (Some(loss), _) => state.step_losses.push((step, loss as f32)),
                    (_, Some(mean)) => state.epoch_losses.push((step, mean as f32)),
                    _ => {}
                }
                kept.push_str(line);
                kept.push('\n');
            }
            write_atomic(&path, kept.as_bytes())?;
        }
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(Recorder {
            files: Some((files, BufWriter::new(file))),
        })
    }

    fn log(&mut self, line: String) -> Result<()> {
        if let Some((files, metrics)) = &mut self.files {
            writeln!(metrics, "{line}")
                .and_then(|_| metrics.flush())
                .map_err(|e| Error::io(files.dir.join(METRICS), e))?;
        }
        Ok(())
    }

    /// Writes the model, EMA, progress and configuration; the resumable checkpoint also holds
    /// the optimiser state. Returns the path written.
    fn checkpoint<const D: usize, M: VelocityModel<D>>(
        &self,
        state: &RunState<M>,
        which: Saved,
    ) -> Result<Option<PathBuf>> {
        let Some((files, _)) = &self.files else {
            return Ok(None);
        };
        let (path, resumable) = match which {
            Saved::Named(name) => (files.dir.join(name), false),
            Saved::Resumable => (files.dir.join(RESUME_CHECKPOINT), true),
        };
        let metadata = HashMap::from([
            (
                META_PROGRESS.to_string(),
                serde_json::to_string(&state.progress).expect("progress serialises"),
            ),
            (files.config_key.to_string(), files.config_toml.clone()),
        ]);
        let optimizer_state = match resumable {
            true => Some(
                state
                    .optimizer
                    .into_bytes()
                    .map_err(|e| {
                        Error::bad_file(
                            &path,
                            format!("cannot serialise the optimiser state: {e:?}"),
                        )
                    })?
                    .to_vec(),
            ),
            false => None,
        };
        let ema = state.ema.as_ref().map(|ema| {
            let info = EmaInfo {
                decay: ema.decay(),
                updates: ema.updates(),
            };
            (ema.model(), info)
        });
        checkpoint::save(&state.model, ema, optimizer_state, metadata, &path)?;
        Ok(Some(path))
    }

    fn loss_curve<M>(&self, state: &RunState<M>) -> Result<()> {
        match &self.files {
            Some((files, _)) => image_out::loss_curve(
                &state.step_losses,
                &state.epoch_losses,
                &files.dir.join(LOSS_CURVE),
            ),
            None => Ok(()),
        }
    }

    fn finish<M: Module>(
        self,
        state: RunState<M>,
        checkpoint: Option<PathBuf>,
        interrupted: bool,
    ) -> Fitted<M> {
        let files = self
            .files
            .zip(checkpoint)
            .map(|((files, _), checkpoint)| RunOutputs {
                checkpoint,
                metrics: files.dir.join(METRICS),
                loss_curve: files.dir.join(LOSS_CURVE),
            });
        Fitted {
            model: state.model.valid(),
            ema: state.ema.map(|ema| ema.model().clone()),
            steps: state.progress.step,
            final_loss: state.progress.last_epoch_loss.unwrap_or(f32::NAN),
            interrupted,
            files,
        }
    }
}
