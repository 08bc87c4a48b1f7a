//! Training flowmatch's own networks ([`Network`]) on image sets and teacher pairs: the run
//! that `flowmatch train` starts and resumes. It builds the network its [`TrainConfig`]
//! describes (or starts from a checkpoint), checks the data, records the configuration in the
//! run folder and in every checkpoint, and hands over to the generic loop.

use std::path::Path;

use burn::tensor::Device;

use super::config::TrainConfig;
use super::fit::{RunFiles, fresh_state, prepare_dir, resumed_state, run};
use super::observer::{TrainObserver, TrainOutcome};
use super::pairs::PairSet;
use super::run_dir::{CONFIG, RESUME_CHECKPOINT, RunLock};
use crate::checkpoint::{self, META_TRAIN_CONFIG, Weights};
use crate::data::{ImageSet, ImageSource};
use crate::error::{Error, Result};
use crate::model::Network;
use crate::tensor_file::{TensorFile, write_atomic};

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
    fn shape(&self) -> [usize; 3] {
        match self {
            TrainData::Images(set) => set.shape(),
            TrainData::Pairs(set) => set.shape,
        }
    }
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
    let files = run_files(config, out_dir);
    let _lock = prepare_dir(&files)?;
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
    let fit = config.fit_config();
    write_atomic(&out_dir.join(CONFIG), config.to_toml().as_bytes())?;
    let state = fresh_state(model, &fit);
    outcome(dispatch(
        (&fit, config.flip),
        data,
        files,
        &device,
        state,
        observer,
    )?)
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
    resume_with_time_limit(data, out_dir, None, device, observer)
}

/// [`resume`] with a new limit on the training time, in minutes, when `max_minutes` is given
/// (recorded in the run's configuration from then on). The learning-rate schedule follows the
/// steps, not the minutes, so the run stays exactly the uninterrupted one up to where it stops:
/// a run cut short by its time limit (on a busy machine, say) can be carried on to its
/// planned steps.
pub fn resume_with_time_limit<'a>(
    data: impl Into<TrainData<'a>>,
    out_dir: &Path,
    max_minutes: Option<f64>,
    device: &Device,
    observer: &mut dyn TrainObserver,
) -> Result<TrainOutcome> {
    let data = data.into();
    let _lock = RunLock::acquire(out_dir)?;
    let path = out_dir.join(RESUME_CHECKPOINT);
    let file = TensorFile::read(&path)?;
    let mut config = stored_config(&file, &path)?;
    if let Some(minutes) = max_minutes {
        config.max_minutes = Some(minutes);
        config.validate()?;
    }
    check_data(&config, data)?;
    let device = device.clone().autodiff();
    let raw = checkpoint::model_from_file(&file, &path, &device, Weights::Raw)?;
    let fit = config.fit_config();
    let plain = device.clone().inner();
    let averaged = |file: &TensorFile| {
        checkpoint::model_from_file(file, &path, &plain, Weights::PreferEma).map(|l| l.model)
    };
    let state = resumed_state(raw, &file, &path, &fit, averaged)?;
    let files = run_files(&config, out_dir);
    outcome(dispatch(
        (&fit, config.flip),
        data,
        files,
        &device,
        state,
        observer,
    )?)
}

fn run_files<'a>(config: &TrainConfig, out_dir: &'a Path) -> RunFiles<'a> {
    RunFiles {
        dir: out_dir,
        config_key: META_TRAIN_CONFIG,
        config_toml: config.to_toml(),
    }
}

/// Runs the loop on images (flipped at random when the configuration says so) or pairs.
fn dispatch(
    (fit, flip): (&super::FitConfig, bool),
    data: TrainData,
    files: RunFiles,
    device: &Device,
    state: super::fit::RunState<Network>,
    observer: &mut dyn TrainObserver,
) -> Result<super::Fitted<Network>> {
    match data {
        TrainData::Images(set) => run(
            fit,
            &ImageSource { set, flip },
            Some(files),
            device,
            state,
            observer,
        ),
        TrainData::Pairs(pairs) => run(fit, pairs, Some(files), device, state, observer),
    }
}

fn outcome(fitted: super::Fitted<Network>) -> Result<TrainOutcome> {
    let files = fitted
        .files
        .expect("a run of a built-in network writes its folder");
    Ok(TrainOutcome {
        checkpoint: files.checkpoint,
        metrics: files.metrics,
        loss_curve: files.loss_curve,
        steps: fitted.steps,
        final_loss: fitted.final_loss,
        interrupted: fitted.interrupted,
    })
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
    if config.objective.is_mean_flow() != config.model.is_mean_flow() {
        return Err(Error::invalid(
            "objective",
            "the mean-flow objective needs a network with the interval input, and only it does",
        ));
    }
    Ok(())
}
