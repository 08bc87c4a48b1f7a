//! One optimiser step: the objective's loss on a batch, the backward pass, global clipping and
//! AdamW.

use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;
use rand::rngs::StdRng;

use super::batch::noise_for;
use super::clipping::{clip_factor, global_grad_norm, scale_grads};
use super::config::FitConfig;
use crate::flow::objective::{self, Batch};
use crate::model::VelocityModel;

/// The AdamW optimiser of `config` (gradient clipping is applied separately, globally).
pub fn adamw(config: &FitConfig) -> ModuleOptimizer {
    AdamWConfig::new()
        .with_beta_1(config.betas.0)
        .with_beta_2(config.betas.1)
        .with_epsilon(config.eps)
        .with_weight_decay(config.weight_decay)
        .init()
}

/// Why a step could not update the model.
#[derive(Debug, Clone, PartialEq)]
pub enum StepError {
    /// The loss was not finite (the value).
    NonFinite(f32),
    /// The model's output could not be used (what was wrong).
    BadOutput(String),
}

/// One optimiser step at rate `lr` on `batch` (on an autodiff device) under the objective of
/// `config`, noise (when the batch has none) and times drawn from `rng`.
/// Returns the updated model, the loss and the gradient norm before clipping; on a non-finite
/// loss or an unusable output the model is not updated.
pub fn train_step<const D: usize, M: VelocityModel<D>>(
    model: M,
    optimizer: &mut ModuleOptimizer,
    batch: Batch<D>,
    rng: &mut StdRng,
    lr: f64,
    config: &FitConfig,
) -> Result<(M, f32, f32), StepError> {
    let x1: Tensor<D> = match &batch.x1 {
        Some(x1) => x1.clone(),
        None => noise_for(&batch.x0, config.coupling, rng),
    };
    let loss = objective::loss(
        &config.objective,
        &model,
        batch,
        (x1, config.parametrisation()),
        &config.time_sampling,
        rng,
    )
    .map_err(StepError::BadOutput)?;
    let loss_value = loss.clone().into_scalar::<f32>();
    if !loss_value.is_finite() {
        return Err(StepError::NonFinite(loss_value));
    }
    let mut grads = GradientsParams::from_grads(loss.backward(), &model);
    let grad_norm = global_grad_norm(&model, &grads);
    if let Some(max_norm) = config.grad_clip {
        scale_grads(&model, &mut grads, clip_factor(grad_norm, max_norm));
    }
    Ok((optimizer.step(lr, model, grads), loss_value, grad_norm))
}
