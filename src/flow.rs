//! Flow matching on the linear path (rectified flow / OT-CFM with sigma = 0).
//!
//! Convention of the reference: t = 0 is data, t = 1 is noise.
//! `x_t = (1 - t) x0 + t x1`, the target velocity is `dx_t/dt = x1 - x0`, and the loss is the
//! mean squared error between the predicted and the target velocity.

use burn::tensor::{Device, Tensor, TensorData};
use rand::Rng;
use rand_distr::StandardNormal;

/// The inputs and target of one flow-matching training step.
#[derive(Debug, Clone)]
pub struct TrainingTuple {
    /// Points on the path, `(1 - t) x0 + t x1`.
    pub x_t: Tensor<4>,
    /// The time of each point, `[batch]`.
    pub t: Tensor<1>,
    /// The velocity the model should predict, `x1 - x0`.
    pub target: Tensor<4>,
}

/// The point at time `t` (`[batch]`) on the straight path from data `x0` to noise `x1`.
pub fn interpolate(x0: Tensor<4>, x1: Tensor<4>, t: Tensor<1>) -> Tensor<4> {
    let [b, ..] = x0.dims();
    let t = t.reshape([b, 1, 1, 1]);
    x0 * (t.clone().neg() + 1.0) + x1 * t
}

/// The velocity of the straight path, constant in time: `x1 - x0`.
pub fn target_velocity(x0: Tensor<4>, x1: Tensor<4>) -> Tensor<4> {
    x1 - x0
}

/// Builds the training tuple for data `x0`, noise `x1` and times `t`.
pub fn training_tuple(x0: Tensor<4>, x1: Tensor<4>, t: Tensor<1>) -> TrainingTuple {
    TrainingTuple {
        x_t: interpolate(x0.clone(), x1.clone(), t.clone()),
        target: target_velocity(x0, x1),
        t,
    }
}

/// Mean squared error between predicted and target velocity (a one-element tensor).
pub fn velocity_loss(predicted: Tensor<4>, target: Tensor<4>) -> Tensor<1> {
    (predicted - target).square().mean()
}

/// Standard normal noise of the given shape, drawn from `rng` (reproducible from its seed).
pub fn gaussian_noise<R: Rng>(rng: &mut R, shape: [usize; 4], device: &Device) -> Tensor<4> {
    let len = shape.iter().product();
    let values: Vec<f32> = (0..len).map(|_| rng.sample(StandardNormal)).collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Training times drawn uniformly from [0, 1), as in the reference.
pub fn uniform_times<R: Rng>(rng: &mut R, batch: usize, device: &Device) -> Tensor<1> {
    let values: Vec<f32> = (0..batch).map(|_| rng.random::<f32>()).collect();
    Tensor::from_data(TensorData::new(values, [batch]), device)
}
