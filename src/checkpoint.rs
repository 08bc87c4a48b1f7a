//! Model checkpoints: safetensors with PyTorch `state_dict` names, plus flowmatch metadata.
//!
//! A file exported from the reference PyTorch code (`safetensors.torch.save_file(model.state_dict())`)
//! loads as is; the widths are inferred from the tensor shapes.

use std::collections::HashMap;
use std::path::Path;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::flow::objective::Objective;
use crate::flow::scheduler::Parametrisation;
use crate::model::{
    Init, Network, NetworkConfig, ParamSource, UNetConfig, VelocityModel, named_parameters,
    pytorch_name,
};
use crate::tensor_file::{FileParams, TensorFile};

pub use crate::model::META_NETWORK;
/// Metadata key of the training progress (JSON of [`Progress`]).
pub const META_PROGRESS: &str = "flowmatch.progress";
/// Metadata key of the training configuration (TOML).
pub const META_TRAIN_CONFIG: &str = "flowmatch.train_config";
/// Metadata key of the EMA state (JSON of [`EmaInfo`]).
pub const META_EMA: &str = "flowmatch.ema";
/// Name of the optimiser state (burnpack bytes) in a resumable checkpoint.
pub const OPTIMIZER_STATE: &str = "optimizer_state";
/// Prefix of the EMA copies of the parameters (`ema.down1.conv.weight`, ...).
pub const EMA_PREFIX: &str = "ema.";

/// Which weights to load from a checkpoint that holds both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Weights {
    /// The exponential moving average when the file has one, else the raw weights.
    #[default]
    PreferEma,
    /// The raw (last optimiser step) weights.
    Raw,
}

/// The EMA settings stored beside the averaged weights.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EmaInfo {
    /// Decay of the average.
    pub decay: f64,
    /// Updates the average has seen.
    pub updates: u64,
}

/// How far training had got when a checkpoint was written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Epochs begun and reported (completed, or the last one cut short by `max_steps`).
    pub epoch: usize,
    /// Completed optimiser steps.
    pub step: u64,
    /// Mean loss of the last completed epoch, if any.
    pub last_epoch_loss: Option<f32>,
    /// Sum of the losses of the current (unfinished) epoch.
    #[serde(default)]
    pub epoch_loss_sum: f64,
    /// Steps of the current (unfinished) epoch.
    #[serde(default)]
    pub epoch_steps: usize,
    /// Wall-clock seconds spent in training steps so far (over all resumed sessions).
    #[serde(default)]
    pub train_seconds: f64,
    /// The same in CPU time of the process divided by its worker threads: the wall time the
    /// steps take on that many otherwise idle cores, robust to other load on the machine.
    #[serde(default)]
    pub budget_seconds: f64,
}

/// A loaded model and the metadata stored beside it.
#[derive(Debug)]
pub struct LoadedModel<M = Network> {
    /// The network.
    pub model: M,
    /// The file's metadata (empty for a plain PyTorch export).
    pub metadata: HashMap<String, String>,
    /// Whether `model` holds the EMA weights.
    pub is_ema: bool,
}

impl<M> LoadedModel<M> {
    /// The training progress recorded in the file, if any (an unreadable record is an error).
    pub fn progress(&self) -> Result<Option<Progress>> {
        self.record(META_PROGRESS)
    }

    /// The EMA settings recorded in the file, if it holds an average (an unreadable record is
    /// an error).
    pub fn ema_info(&self) -> Result<Option<EmaInfo>> {
        self.record(META_EMA)
    }

    /// The path and prediction the model was trained with (its training configuration's
    /// `scheduler` and `prediction`; flow matching's own for a file without them).
    pub fn parametrisation(&self) -> Result<Parametrisation> {
        match self.metadata.get(META_TRAIN_CONFIG) {
            None => Ok(Parametrisation::default()),
            Some(toml) => toml::from_str::<Parametrisation>(toml).map_err(|e| {
                Error::invalid("checkpoint metadata", format!("'{META_TRAIN_CONFIG}': {e}"))
            }),
        }
    }

    /// The objective the model was trained with (flow matching for a file without a training
    /// configuration).
    pub fn objective(&self) -> Result<Objective> {
        #[derive(Deserialize)]
        struct Trained {
            #[serde(default)]
            objective: Objective,
        }
        match self.metadata.get(META_TRAIN_CONFIG) {
            None => Ok(Objective::default()),
            Some(toml) => toml::from_str::<Trained>(toml)
                .map(|t| t.objective)
                .map_err(|e| {
                    Error::invalid("checkpoint metadata", format!("'{META_TRAIN_CONFIG}': {e}"))
                }),
        }
    }

    /// The Euler steps the model is made to be sampled with: a few-step model's own (from its
    /// objective), else [`DEFAULT_STEPS`](crate::sampling::DEFAULT_STEPS).
    pub fn sampling_steps(&self) -> Result<usize> {
        let own = self.objective()?.sampling_steps();
        Ok(own.unwrap_or(crate::sampling::DEFAULT_STEPS))
    }

    /// An error naming `path` when the model was trained on another path or prediction than
    /// flow matching's own (linear, velocity), which `what` cannot sample.
    pub fn require_velocity_model(&self, path: &Path, what: &str) -> Result<()> {
        let trained = self
            .parametrisation()
            .map_err(|e| Error::bad_file(path, e.to_string()))?;
        match trained.is_straight() {
            true => Ok(()),
            false => Err(Error::bad_file(
                path,
                format!(
                    "trained with scheduler {} and prediction {}: {what} takes flow-matching \
                     models (linear scheduler, velocity prediction); use `flowmatch sample` or \
                     `flowmatch eval`",
                    trained.scheduler, trained.prediction
                ),
            )),
        }
    }

    fn record<T: for<'de> Deserialize<'de>>(&self, key: &str) -> Result<Option<T>> {
        self.metadata
            .get(key)
            .map(|s| serde_json::from_str(s))
            .transpose()
            .map_err(|e| Error::invalid("checkpoint metadata", format!("'{key}': {e}")))
    }
}

/// Writes the model's parameters (and, when given, their EMA as `ema.*` and the optimiser state
/// as a byte tensor), `metadata` and the model's own
/// [`checkpoint_metadata`](VelocityModel::checkpoint_metadata) to `path` atomically.
pub fn save<const D: usize, M: VelocityModel<D>>(
    model: &M,
    ema: Option<(&M, EmaInfo)>,
    optimizer_state: Option<Vec<u8>>,
    metadata: HashMap<String, String>,
    path: &Path,
) -> Result<()> {
    let mut file = TensorFile {
        metadata,
        ..Default::default()
    };
    file.metadata.extend(model.checkpoint_metadata());
    file.metadata.insert("format".into(), "pt".into());
    for tensor in named_parameters(model) {
        file.tensors.insert(tensor.name.clone(), tensor);
    }
    if let Some((ema, info)) = ema {
        file.metadata.insert(
            META_EMA.into(),
            serde_json::to_string(&info).expect("serialises"),
        );
        for mut tensor in named_parameters(ema) {
            tensor.name = format!("{EMA_PREFIX}{}", tensor.name);
            file.tensors.insert(tensor.name.clone(), tensor);
        }
    }
    if let Some(bytes) = optimizer_state {
        file.blobs.insert(OPTIMIZER_STATE.into(), bytes);
    }
    file.write(path)
}

/// Loads a network checkpoint onto `device` (its EMA weights when it has them), checking
/// every tensor's name and shape.
pub fn load(path: &Path, device: &Device) -> Result<LoadedModel> {
    load_weights(path, device, Weights::PreferEma)
}

/// Loads the chosen weights of a network checkpoint onto `device`.
pub fn load_weights(path: &Path, device: &Device, weights: Weights) -> Result<LoadedModel> {
    model_from_file(&TensorFile::read(path)?, path, device, weights)
}

/// Builds the chosen weights of an already read checkpoint `file` (read from `path`) on `device`.
pub fn model_from_file(
    file: &TensorFile,
    path: &Path,
    device: &Device,
    weights: Weights,
) -> Result<LoadedModel> {
    let config = network_config(file, path)?;
    let has_ema = file.tensors.keys().any(|k| k.starts_with(EMA_PREFIX));
    let is_ema = has_ema && weights == Weights::PreferEma;
    let mut source = FileParams {
        file,
        path,
        prefix: if is_ema { EMA_PREFIX } else { "" },
        kind: CHECKPOINT_KIND,
    };
    let model = Network::build(&config, &mut source, device).map_err(|e| match e {
        Error::Invalid { reason, .. } => {
            Error::bad_file(path, format!("not a {CHECKPOINT_KIND}: {reason}"))
        }
        other => other,
    })?;
    let names: Vec<String> = model
        .named_parameters()
        .into_iter()
        .map(|t| t.name)
        .collect();
    let known = |k: &str| {
        names
            .iter()
            .any(|n| n == k.strip_prefix(EMA_PREFIX).unwrap_or(k))
    };
    let extra: Vec<&str> = file
        .tensors
        .keys()
        .map(String::as_str)
        .filter(|k| !known(k))
        .collect();
    if !extra.is_empty() {
        return Err(Error::bad_file(
            path,
            format!(
                "not a {CHECKPOINT_KIND}: unexpected tensors {}",
                extra.join(", ")
            ),
        ));
    }
    Ok(LoadedModel {
        model,
        metadata: file.metadata.clone(),
        is_ema,
    })
}

/// Metadata key of an exported model: which weights of the training checkpoint it holds
/// (`"ema"` or `"raw"`).
pub const META_EXPORTED: &str = "flowmatch.exported";

/// A checkpoint reduced to what sampling needs: the chosen `weights` (the EMA, when there is one
/// and it is preferred) under the plain parameter names, the network and training records,
/// and no optimiser state; `path` names the file in errors. Such a file loads everywhere a
/// checkpoint does but cannot resume training.
pub fn export(file: &TensorFile, path: &Path, weights: Weights) -> Result<TensorFile> {
    let has_ema = file.tensors.keys().any(|k| k.starts_with(EMA_PREFIX));
    let use_ema = has_ema && weights == Weights::PreferEma;
    let mut out = TensorFile {
        metadata: file.metadata.clone(),
        ..Default::default()
    };
    for (name, tensor) in &file.tensors {
        let kept = match (use_ema, name.strip_prefix(EMA_PREFIX)) {
            (true, Some(plain)) => Some(plain),
            (false, None) => Some(name.as_str()),
            _ => None,
        };
        if let Some(plain) = kept {
            let mut tensor = tensor.clone();
            tensor.name = plain.to_string();
            out.tensors.insert(plain.to_string(), tensor);
        }
    }
    if out.tensors.is_empty() {
        return Err(Error::bad_file(path, "holds no model tensors to export"));
    }
    out.metadata.remove(META_EMA);
    let kind = if use_ema { "ema" } else { "raw" };
    out.metadata
        .insert(META_EXPORTED.into(), format!("{{\"weights\":\"{kind}\"}}"));
    Ok(out)
}

/// Loads the chosen weights of the checkpoint at `path` into `model` (any burn module, such as
/// a user's own [`VelocityModel`]), matching parameters by their names (module paths, as
/// [`named_parameters`] gives them) and checking every shape; the file may hold no other
/// model tensors. The parameters keep their ids, so an optimiser's state still applies.
pub fn load_into<M: Module>(model: M, path: &Path, weights: Weights) -> Result<LoadedModel<M>> {
    module_from_file(model, &TensorFile::read(path)?, path, weights)
}

/// [`load_into`] from an already read checkpoint `file` (read from `path`).
pub fn module_from_file<M: Module>(
    model: M,
    file: &TensorFile,
    path: &Path,
    weights: Weights,
) -> Result<LoadedModel<M>> {
    let has_ema = file.tensors.keys().any(|k| k.starts_with(EMA_PREFIX));
    let is_ema = has_ema && weights == Weights::PreferEma;
    let names: Vec<String> = named_parameters(&model)
        .into_iter()
        .map(|t| t.name)
        .collect();
    let extra: Vec<&str> = file
        .tensors
        .keys()
        .map(String::as_str)
        .filter(|k| {
            !names
                .iter()
                .any(|n| n == k.strip_prefix(EMA_PREFIX).unwrap_or(k))
        })
        .collect();
    if !extra.is_empty() {
        return Err(Error::bad_file(
            path,
            format!(
                "holds tensors the model does not have: {}",
                extra.join(", ")
            ),
        ));
    }
    let mut loader = Loader {
        source: FileParams {
            file,
            path,
            prefix: if is_ema { EMA_PREFIX } else { "" },
            kind: "checkpoint of this model",
        },
        path: Vec::new(),
        error: None,
    };
    let model = model.map(&mut loader);
    match loader.error {
        Some(error) => Err(error),
        None => Ok(LoadedModel {
            model,
            metadata: file.metadata.clone(),
            is_ema,
        }),
    }
}

/// Replaces every parameter by the file's tensor of the same name, keeping its id.
struct Loader<'a> {
    source: FileParams<'a>,
    path: Vec<String>,
    error: Option<Error>,
}

impl ModuleMapper for Loader<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        if !container_type.starts_with("Enum:") {
            self.path.push(name.to_string());
        }
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        if !container_type.starts_with("Enum:") {
            self.path.pop();
        }
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.error.is_some() {
            return param;
        }
        let name = pytorch_name(&self.path.join("."));
        let source = &mut self.source;
        let error = &mut self.error;
        param.map(|old| {
            let shape = old.dims();
            let device = old.device();
            match source.tensor(&name, shape, Init::Constant(0.0), &device) {
                Ok(new) if old.is_require_grad() => new.require_grad(),
                Ok(new) => new,
                Err(e) => {
                    *error = Some(e);
                    old
                }
            }
        })
    }
}

/// What a checkpoint must be, for error messages.
const CHECKPOINT_KIND: &str = "SimpleUNet or ResUNet checkpoint";

/// The network of a checkpoint: from its metadata when flowmatch wrote it, else (a PyTorch
/// export of the reference SimpleUNet) from the tensor shapes.
fn network_config(file: &TensorFile, path: &Path) -> Result<NetworkConfig> {
    if let Some(json) = file.metadata.get(META_NETWORK) {
        return serde_json::from_str(json).map_err(|e| {
            Error::bad_file(
                path,
                format!("bad network description in the metadata: {e}"),
            )
        });
    }
    if file.tensors.contains_key("conv_in.weight") {
        return Err(Error::bad_file(
            path,
            format!(
                "a ResUNet export needs its shape in the metadata ('{META_NETWORK}', as \
                 scripts/torch_models.py writes it)"
            ),
        ));
    }
    infer_simple_config(file, path).map(NetworkConfig::Simple)
}

/// Reads a SimpleUNet's widths and time-embedding size from the tensor shapes.
fn infer_simple_config(file: &TensorFile, path: &Path) -> Result<UNetConfig> {
    let dims = |name: &str, rank: usize| -> Result<Vec<usize>> {
        let tensor = file.tensors.get(name).ok_or_else(|| {
            Error::bad_file(
                path,
                format!("not a {CHECKPOINT_KIND}: missing tensor '{name}'"),
            )
        })?;
        if tensor.shape.len() != rank {
            return Err(Error::bad_file(
                path,
                format!(
                    "not a {CHECKPOINT_KIND}: tensor '{name}' has shape {:?}",
                    tensor.shape
                ),
            ));
        }
        Ok(tensor.shape.clone())
    };
    let d1 = dims("down1.conv.weight", 4)?;
    let d2 = dims("down2.conv.weight", 4)?;
    let d3 = dims("down3.conv.weight", 4)?;
    let t = dims("time_mlp.1.weight", 2)?;
    let num_classes = match file.tensors.get("label_emb.weight") {
        Some(_) => Some(dims("label_emb.weight", 2)?[0].saturating_sub(1)),
        None => None,
    };
    Ok(UNetConfig {
        in_channels: d1[1],
        widths: [d1[0], d2[0], d3[0]],
        time_dim: t[1],
        num_classes,
        ..UNetConfig::REFERENCE
    })
}
