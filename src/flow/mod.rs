//! Flow matching: the probability path ([`path`]), the training objectives and their losses
//! ([`objective`]), the pairing of data and noise ([`coupling`]), the stable target
//! ([`stable_target`]) and the draws of noise and times.
//!
//! Convention of the reference: t = 0 is data, t = 1 is noise. On the linear path
//! `x_t = (1 - t) x0 + t x1`, the target velocity is `dx_t/dt = x1 - x0`, and the loss is the
//! mean squared error between the predicted and the target velocity. Everything here works on
//! tensors of any rank (`[batch, features]`, `[batch, c, h, w]`, ...).

pub mod coupling;
pub mod objective;
pub mod path;
pub mod scheduler;
pub mod stable_target;

pub use path::{LinearPath, PathSample, ProbPath};

use burn::tensor::{Device, Tensor, TensorData};
use rand::Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

/// The inputs and target of one flow-matching training step (a [`PathSample`] of the
/// [`LinearPath`]).
pub type TrainingTuple<const D: usize> = PathSample<D>;

/// The point at time `t` (`[batch]`) on the straight path from data `x0` to noise `x1`.
pub fn interpolate<const D: usize>(x0: Tensor<D>, x1: Tensor<D>, t: Tensor<1>) -> Tensor<D> {
    LinearPath::point(x0, x1, t)
}

/// The velocity of the straight path, constant in time: `x1 - x0`.
pub fn target_velocity<const D: usize>(x0: Tensor<D>, x1: Tensor<D>) -> Tensor<D> {
    x1 - x0
}

/// Builds the training tuple for data `x0`, noise `x1` and times `t` on the linear path.
pub fn training_tuple<const D: usize>(
    x0: Tensor<D>,
    x1: Tensor<D>,
    t: Tensor<1>,
) -> TrainingTuple<D> {
    LinearPath.sample(x0, x1, t)
}

/// Mean squared error between predicted and target velocity (a one-element tensor).
pub fn velocity_loss<const D: usize>(predicted: Tensor<D>, target: Tensor<D>) -> Tensor<1> {
    (predicted - target).square().mean()
}

/// Standard normal noise of the given shape, drawn from `rng` (reproducible from its seed).
pub fn gaussian_noise<R: Rng, const D: usize>(
    rng: &mut R,
    shape: [usize; D],
    device: &Device,
) -> Tensor<D> {
    Tensor::from_data(
        TensorData::new(gaussian_values(rng, shape.iter().product()), shape),
        device,
    )
}

/// `len` standard normal values drawn from `rng`.
pub fn gaussian_values<R: Rng>(rng: &mut R, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.sample(StandardNormal)).collect()
}

/// Training times drawn uniformly from [0, 1), as in the reference.
pub fn uniform_times<R: Rng>(rng: &mut R, batch: usize, device: &Device) -> Tensor<1> {
    TimeSampling::Uniform.sample(rng, batch, device)
}

/// How training times are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum TimeSampling {
    /// Uniform on [0, 1) (the reference).
    Uniform,
    /// `sigmoid(n)` with `n ~ N(mean, std^2)`: more weight on intermediate times (Esser et al. 2024).
    LogitNormal {
        /// Mean of the underlying normal.
        mean: f32,
        /// Standard deviation of the underlying normal.
        std: f32,
    },
}

impl TimeSampling {
    /// Rejects a logit-normal with a non-finite mean or a non-positive deviation.
    pub fn validate(&self) -> crate::Result<()> {
        match *self {
            TimeSampling::LogitNormal { mean, std }
                if !(mean.is_finite() && std > 0.0 && std.is_finite()) =>
            {
                Err(crate::Error::invalid(
                    "logit-normal",
                    format!("mean {mean}, std {std}: need a finite mean and a positive std"),
                ))
            }
            _ => Ok(()),
        }
    }

    /// `batch` times drawn from `rng`.
    pub fn sample<R: Rng>(&self, rng: &mut R, batch: usize, device: &Device) -> Tensor<1> {
        let values: Vec<f32> = (0..batch).map(|_| self.draw(rng)).collect();
        Tensor::from_data(TensorData::new(values, [batch]), device)
    }

    /// One time drawn from `rng`.
    pub fn draw<R: Rng>(&self, rng: &mut R) -> f32 {
        match *self {
            TimeSampling::Uniform => rng.random::<f32>(),
            TimeSampling::LogitNormal { mean, std } => {
                let n: f32 = rng.sample(StandardNormal);
                1.0 / (1.0 + (-(mean + std * n)).exp())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn max_abs(a: Tensor<4>, b: Tensor<4>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    #[test]
    fn path_endpoints_and_target_velocity() {
        let device = Device::flex();
        let mut rng = StdRng::seed_from_u64(1);
        let x0 = gaussian_noise(&mut rng, [3, 1, 4, 4], &device);
        let x1 = gaussian_noise(&mut rng, [3, 1, 4, 4], &device);
        let at = |t: f32| interpolate(x0.clone(), x1.clone(), Tensor::full([3], t, &device));
        assert!(max_abs(at(0.0), x0.clone()) < 1e-6);
        assert!(max_abs(at(1.0), x1.clone()) < 1e-6);
        // The path is straight: its finite difference is the target velocity everywhere.
        let slope = (at(0.7) - at(0.2)) / 0.5;
        let tuple = training_tuple(x0.clone(), x1.clone(), Tensor::full([3], 0.3, &device));
        assert!(max_abs(slope, tuple.target.clone()) < 1e-5);
        assert!(max_abs(tuple.target, x1 - x0) < 1e-6);
    }

    #[test]
    fn loss_is_the_mean_squared_error() {
        let device = Device::flex();
        let pred = Tensor::<4>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [1, 1, 2, 2]),
            &device,
        );
        let target = Tensor::<4>::from_data(
            TensorData::new(vec![0.0f32, 2.0, 5.0, 4.0], [1, 1, 2, 2]),
            &device,
        );
        let loss = velocity_loss(pred, target).into_scalar::<f32>();
        assert!((loss - (1.0 + 4.0) / 4.0).abs() < 1e-6);
    }

    #[test]
    fn noise_and_times_are_reproducible_and_in_range() {
        let device = Device::flex();
        let a = gaussian_noise(&mut StdRng::seed_from_u64(3), [2, 1, 8, 8], &device);
        let b = gaussian_noise(&mut StdRng::seed_from_u64(3), [2, 1, 8, 8], &device);
        assert_eq!(max_abs(a.clone(), b), 0.0);
        let values = a
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap();
        let mean = values.iter().sum::<f32>() / values.len() as f32;
        assert!(mean.abs() < 0.3);
        let t = uniform_times(&mut StdRng::seed_from_u64(4), 100, &device);
        let t = t
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap();
        assert!(t.iter().all(|v| (0.0..1.0).contains(v)));
    }
}
