//! What a training step minimises, one objective beside the other (the path and the loss are
//! those of [`super`]: t = 0 data, t = 1 noise, `x_t = (1 - t) x0 + t x1`, target `x1 - x0`):
//!
//! - **flow matching**: fresh noise for each image, the straight path's velocity;
//! - **reflow** (rectified flow's k-rectification, Liu et al. 2022): the same on fixed
//!   (noise, sample) pairs drawn from a teacher, whose paths straighten with each round;
//! - **distillation** into a `k`-step Euler sampler: the student's unrolled `k` steps from the
//!   teacher's noise regressed onto the teacher's sample;
//! - **mean flow** (Geng et al. 2025): the network `u(z, r, t)` learns the average velocity
//!   over `[r, t]` from the identity `u = v - (t - r) d/dt u` (d/dt along the path), so one
//!   evaluation jumps from noise to data. burn has no forward-mode autodiff: the total
//!   derivative, a Jacobian-vector product in the direction `(v, 0, 1)`, is a forward finite
//!   difference of two network evaluations (see [`finite_difference_jvp`]).

use std::path::PathBuf;

use burn::tensor::Tensor;
use rand::Rng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::path::ProbPath;
use super::scheduler::{AffinePath, Parametrisation, Prediction};
use super::stable_target::{Reference, stable_target};
use super::{TimeSampling, training_tuple, velocity_loss};
use crate::error::{Error, Result};
use crate::model::{Condition, VelocityModel, per_row};

/// A training objective.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Objective {
    /// Flow matching with fresh noise (the reference).
    #[default]
    FlowMatching,
    /// Flow matching on fixed (noise, sample) pairs from a teacher.
    Reflow {
        /// The folder of pair shards.
        pairs: PathBuf,
    },
    /// Regression of a `steps`-step Euler student onto a teacher's (noise, sample) pairs.
    Distill {
        /// The folder of pair shards.
        pairs: PathBuf,
        /// Euler steps of the student.
        steps: usize,
    },
    /// SplitMeanFlow: the average velocity over an interval, from scratch, taught by interval
    /// splitting's consistency (no Jacobian-vector product).
    SplitMeanFlow {
        /// Fraction of the images with `r = t` (plain flow matching: the boundary condition).
        equal_fraction: f32,
    },
    /// MeanFlow: the average velocity over an interval, from scratch.
    MeanFlow {
        /// Fraction of the steps with `r = t` (plain flow matching).
        equal_fraction: f32,
        /// Step of the finite difference standing in for the JVP.
        epsilon: f32,
    },
}

impl Objective {
    /// The pair folder a pair objective trains on.
    pub fn pairs(&self) -> Option<&PathBuf> {
        match self {
            Objective::Reflow { pairs } | Objective::Distill { pairs, .. } => Some(pairs),
            _ => None,
        }
    }

    /// Checks the parameters: a mean flow's `equal_fraction` in [0, 1] and `epsilon` in
    /// (0, 0.5]; a student of at least one step.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Objective::MeanFlow {
                equal_fraction,
                epsilon,
            } => {
                if !(0.0..=1.0).contains(&equal_fraction) {
                    return Err(Error::invalid(
                        "mean-flow equal fraction",
                        format!("{equal_fraction}: must be in [0, 1]"),
                    ));
                }
                if epsilon.is_nan() || epsilon <= 0.0 || epsilon > 0.5 {
                    return Err(Error::invalid(
                        "mean-flow epsilon",
                        format!("{epsilon}: must be in (0, 0.5]"),
                    ));
                }
                Ok(())
            }
            Objective::SplitMeanFlow { equal_fraction }
                if !(0.0..=1.0).contains(&equal_fraction) =>
            {
                Err(Error::invalid(
                    "split-mean-flow equal fraction",
                    format!("{equal_fraction}: must be in [0, 1]"),
                ))
            }
            Objective::Distill { steps: 0, .. } => {
                Err(Error::invalid("student steps", "must be positive"))
            }
            _ => Ok(()),
        }
    }

    /// Whether it trains a mean-flow model (one with the interval input).
    pub fn is_mean_flow(&self) -> bool {
        matches!(
            self,
            Objective::MeanFlow { .. } | Objective::SplitMeanFlow { .. }
        )
    }

    /// The Euler steps a model trained with it is made to be sampled with, for the objectives
    /// that make few-step models: a distilled student's steps, one for a mean flow.
    pub fn sampling_steps(&self) -> Option<usize> {
        match *self {
            Objective::Distill { steps, .. } => Some(steps),
            Objective::MeanFlow { .. } | Objective::SplitMeanFlow { .. } => Some(1),
            Objective::FlowMatching | Objective::Reflow { .. } => None,
        }
    }

    /// Its name, as `train --objective` takes it.
    pub fn name(&self) -> &'static str {
        match self {
            Objective::FlowMatching => "flow-matching",
            Objective::Reflow { .. } => "reflow",
            Objective::Distill { .. } => "distill",
            Objective::MeanFlow { .. } => "mean-flow",
            Objective::SplitMeanFlow { .. } => "split-mean-flow",
        }
    }
}

/// One batch: the data (or the teacher's samples) `x0`, the teacher's noise `x1` for the pair
/// objectives (fresh noise is drawn otherwise), and one-hot labels of a conditional model.
pub struct Batch<const D: usize> {
    /// Data, `[batch, ...]` (`[batch, c, h, w]` for images).
    pub x0: Tensor<D>,
    /// The noise each `x0` was drawn from (pair objectives).
    pub x1: Option<Tensor<D>>,
    /// One-hot labels (`[batch, classes + 1]`).
    pub labels: Option<Tensor<2>>,
    /// Training images (the rows of `x0` among them) over which flow matching averages its
    /// target ([`stable_target`]); none: the target `x1 - x0`.
    pub reference: Option<Reference>,
}

/// The loss of `model` on `batch` under `objective`, with `x1` the noise paired with the data
/// and times drawn from `times` with `rng`; an error says what was wrong with the model's
/// output (a shape other than its input's).
pub fn loss<const D: usize, M: VelocityModel<D>>(
    objective: &Objective,
    model: &M,
    batch: Batch<D>,
    (x1, parametrisation): (Tensor<D>, Parametrisation),
    times: &TimeSampling,
    rng: &mut StdRng,
) -> Result<Tensor<1>, String> {
    let train = |labels: Option<Tensor<2>>, r: Option<Tensor<1>>, seed: u64| Condition {
        labels,
        r,
        train_seed: Some(seed),
    };
    let n = batch.x0.dims()[0];
    let device = batch.x0.device();
    match objective {
        Objective::FlowMatching | Objective::Reflow { .. } => {
            let t = times.sample(rng, n, &device);
            let mut tuple = match parametrisation.is_straight() {
                true => training_tuple(batch.x0.clone(), x1.clone(), t),
                false => AffinePath {
                    scheduler: parametrisation.scheduler,
                }
                .sample(batch.x0.clone(), x1.clone(), t),
            };
            if let Some(reference) = batch.reference {
                let point = (tuple.x_t.clone(), tuple.t.clone());
                let labels = batch.labels.clone();
                tuple.target =
                    stable_target(point, batch.x0.clone(), x1.clone(), reference, labels);
            }
            let target = match parametrisation.prediction {
                Prediction::Velocity => tuple.target,
                Prediction::Data => batch.x0,
                Prediction::Noise => x1,
            };
            let cond = train(batch.labels, None, rng.random());
            let predicted = checked(model.velocity(tuple.x_t, tuple.t, &cond), &target)?;
            Ok(velocity_loss(predicted, target))
        }
        Objective::Distill { steps, .. } => {
            let mut x = x1;
            for i in 0..*steps {
                let t = 1.0 - i as f32 / *steps as f32;
                let t = Tensor::<1>::full([n], t, &device);
                let cond = train(batch.labels.clone(), None, rng.random());
                let v = checked(model.velocity(x.clone(), t, &cond), &x)?;
                x = x - v / *steps as f64;
            }
            Ok((x - batch.x0).square().mean())
        }
        Objective::SplitMeanFlow { equal_fraction } => {
            let (r, t) = interval(times, *equal_fraction, 0.0, n, rng);
            let s: Vec<f32> = r
                .iter()
                .zip(&t)
                .map(|(r, t)| r + rng.random::<f32>() * (t - r))
                .collect();
            let equal: Vec<f32> = r.iter().zip(&t).map(|(r, t)| f32::from(r == t)).collect();
            let tensor = |v: &[f32]| Tensor::<1>::from_floats(v, &device);
            let (rt, st, tt) = (tensor(&r), tensor(&s), tensor(&t));
            let tuple = training_tuple(batch.x0, x1, tt.clone());
            let seed = rng.random();
            let labels = batch.labels;
            let cond = train(labels.clone(), Some(rt.clone()), seed);
            let u = checked(
                model.velocity(tuple.x_t.clone(), tt.clone(), &cond),
                &tuple.x_t,
            )?;
            // The two halves from the same network off the autodiff graph (stop-gradient).
            let frozen_model = model.valid();
            let plain = |x: Tensor<1>| x.without_autodiff();
            let frozen = |z: Tensor<D>, r: Tensor<1>, t: Tensor<1>| {
                let labels = labels.clone().map(|l| l.without_autodiff());
                let cond = train(labels, Some(plain(r)), seed);
                frozen_model
                    .velocity(z.without_autodiff(), plain(t), &cond)
                    .autodiff()
            };
            let split = split_mean_flow_target(frozen, (tuple.x_t, rt, st, tt));
            let keep = tensor(&equal).reshape(per_row::<D>(n));
            let target = tuple.target * keep.clone() + split * (keep.neg() + 1.0);
            Ok(velocity_loss(u, target.detach()))
        }
        Objective::MeanFlow {
            equal_fraction,
            epsilon,
        } => {
            let (r, t) = interval(times, *equal_fraction, *epsilon, n, rng);
            let tensor = |v: Vec<f32>| Tensor::<1>::from_floats(v.as_slice(), &device);
            let (rt, tt) = (tensor(r.clone()), tensor(t.clone()));
            let tuple = training_tuple(batch.x0, x1, tt.clone());
            let seed = rng.random();
            let labels = batch.labels;
            let cond = train(labels.clone(), Some(rt.clone()), seed);
            let u = checked(
                model.velocity(tuple.x_t.clone(), tt.clone(), &cond),
                &tuple.x_t,
            )?;
            // The same network off the autodiff graph for the target (stop-gradient): the
            // inference path, its result a constant of the loss.
            let frozen_model = model.valid();
            let plain = |x: Tensor<1>| x.without_autodiff();
            let frozen = |z: Tensor<D>, t: Tensor<1>| {
                let labels = labels.clone().map(|l| l.without_autodiff());
                let cond = train(labels, Some(plain(rt.clone())), seed);
                frozen_model
                    .velocity(z.without_autodiff(), plain(t), &cond)
                    .autodiff()
            };
            let target = mean_flow_target(
                frozen,
                (tuple.x_t, rt.clone(), tt),
                tuple.target,
                *epsilon,
                u.clone().detach(),
            );
            Ok(adaptive_loss(u, target.detach()))
        }
    }
}

/// `output` when it has the shape of `input`, else what is wrong.
fn checked<const D: usize>(output: Tensor<D>, input: &Tensor<D>) -> Result<Tensor<D>, String> {
    match output.dims() == input.dims() {
        true => Ok(output),
        false => Err(format!(
            "it returned shape {:?} for input of shape {:?} (the velocity has the input's shape)",
            output.dims(),
            input.dims()
        )),
    }
}

/// SplitMeanFlow's target for the average velocity `u(z_t, r, t)` (Guo et al. 2025), from
/// interval splitting at `s` in `[r, t]`: `(t - r) u(z_t, r, t) = (t - s) u(z_t, s, t) +
/// (s - r) u(z_s, r, s)` with `z_s = z_t - (t - s) u(z_t, s, t)`, the point the average
/// velocity over `[s, t]` carries `z_t` to. `u(z, r, t)` is the model off the autodiff graph.
/// Rows with `r = t` get 0 (the caller trains them on the instantaneous velocity).
pub fn split_mean_flow_target<const D: usize>(
    u: impl Fn(Tensor<D>, Tensor<1>, Tensor<1>) -> Tensor<D>,
    (z_t, r, s, t): (Tensor<D>, Tensor<1>, Tensor<1>, Tensor<1>),
) -> Tensor<D> {
    let n = z_t.dims()[0];
    let rows = |x: Tensor<1>| x.reshape(per_row::<D>(n));
    let late = u(z_t.clone(), s.clone(), t.clone());
    let z_s = z_t - late.clone() * rows(t.clone() - s.clone());
    let early = u(z_s, r.clone(), s.clone());
    let span = rows(t.clone() - r.clone());
    let total = late * rows(t - s.clone()) + early * rows(s - r);
    // A zero-length interval divides 0 by 1 instead of by 0.
    let empty = span.clone().equal_elem(0.0).float();
    total / (span + empty)
}

/// MeanFlow's adaptive loss weighting (its `p = 1`, `c = 1e-3`): image `i`'s squared error
/// `‖Δᵢ‖²` weighted by `wᵢ ∝ 1 / (sg(‖Δᵢ‖²) + c)`, so that every image contributes about
/// equally however wrong it is, and a bad target (the finite difference through the time
/// embedding's `sin(1000 t)` is large where the network is rough) cannot blow a step up:
/// without it, training from scratch diverged (loss spikes above 10^4 in the first 300 steps
/// at lr 2e-3). The weights are normalised to mean 1 over the batch, so the loss reads as a
/// mean squared error per value (the harmonic mean of the images' errors), on the scale of
/// flow matching's.
pub fn adaptive_loss<const D: usize>(predicted: Tensor<D>, target: Tensor<D>) -> Tensor<1> {
    const C: f64 = 1e-3;
    let dims = predicted.dims();
    let (n, values): (usize, usize) = (dims[0], dims[1..].iter().product());
    let squared = (predicted - target)
        .square()
        .reshape([n as i32, -1])
        .sum_dim(1);
    let inverse = (squared.clone().detach() + C).recip();
    let weight = inverse.clone() / inverse.mean().unsqueeze::<2>();
    (squared * weight).mean() / values as f64
}

/// `(r, t)` for each of `n` images: two times from `times`, `t` the later; with probability
/// `equal_fraction` `r = t`. `t` stays at least `epsilon` below 1 so that the finite
/// difference's second point is on the path.
fn interval(
    times: &TimeSampling,
    equal_fraction: f32,
    epsilon: f32,
    n: usize,
    rng: &mut StdRng,
) -> (Vec<f32>, Vec<f32>) {
    let pairs: Vec<(f32, f32)> = (0..n)
        .map(|_| {
            let (a, b) = (times.draw(rng), times.draw(rng));
            let (a, b) = (a.min(1.0 - epsilon), b.min(1.0 - epsilon));
            let (r, t) = (a.min(b), a.max(b));
            match rng.random::<f32>() < equal_fraction {
                true => (t, t),
                false => (r, t),
            }
        })
        .collect();
    pairs.into_iter().unzip()
}

/// MeanFlow's regression target for `u(z_t, r, t)` (`u_at`, already computed): `v - (t - r)
/// d/dt u`, the derivative along the path by [`finite_difference_jvp`]. For an empty interval
/// (`r = t`) it is `v` itself: there the model learns the instantaneous velocity, as flow
/// matching does.
pub fn mean_flow_target<const D: usize>(
    u: impl Fn(Tensor<D>, Tensor<1>) -> Tensor<D>,
    (z, r, t): (Tensor<D>, Tensor<1>, Tensor<1>),
    v: Tensor<D>,
    epsilon: f32,
    u_at: Tensor<D>,
) -> Tensor<D> {
    let n = z.dims()[0];
    let du = finite_difference_jvp(u, (z, t.clone()), v.clone(), epsilon, u_at);
    v - du * (t - r).reshape(per_row::<D>(n))
}

/// The derivative of `u` along the path, `d/dt u(z_t, r, t) = v · ∂_z u + ∂_t u`, by a forward
/// finite difference: `(u(z + ε v, t + ε) - u(z, t)) / ε`, with `u_at` the value at the start
/// (already computed). Its error is `O(ε)` (the second derivative along the path, large: the
/// time embedding oscillates as `sin(1000 t)`) plus `O(f32 rounding / ε)`; against an exact JVP
/// (tests/few_step.rs) it is smallest, 0.4 % of the largest component, at `ε = 1e-5`.
pub fn finite_difference_jvp<const D: usize>(
    u: impl Fn(Tensor<D>, Tensor<1>) -> Tensor<D>,
    (z, t): (Tensor<D>, Tensor<1>),
    v: Tensor<D>,
    epsilon: f32,
    u_at: Tensor<D>,
) -> Tensor<D> {
    let ahead = u(z + v * epsilon, t + epsilon);
    (ahead - u_at) / epsilon
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_step_objectives_say_their_steps() {
        let distill = Objective::Distill {
            pairs: "p".into(),
            steps: 2,
        };
        assert_eq!(distill.sampling_steps(), Some(2));
        let mean_flow = Objective::SplitMeanFlow {
            equal_fraction: 0.5,
        };
        assert_eq!(mean_flow.sampling_steps(), Some(1));
        assert_eq!(Objective::FlowMatching.sampling_steps(), None);
        let reflow = Objective::Reflow { pairs: "p".into() };
        assert_eq!(reflow.sampling_steps(), None);
    }
    use burn::tensor::{Device, TensorData};
    use rand::SeedableRng;

    #[test]
    fn objective_parameters_are_checked() {
        let mean_flow = |equal_fraction, epsilon| Objective::MeanFlow {
            equal_fraction,
            epsilon,
        };
        assert!(mean_flow(0.75, 1e-5).validate().is_ok());
        for (fraction, epsilon) in [(0.75, 0.0), (0.75, f32::NAN), (0.75, 1.0), (0.75, -1e-3)] {
            assert!(
                mean_flow(fraction, epsilon).validate().is_err(),
                "{epsilon}"
            );
        }
        assert!(mean_flow(1.5, 1e-5).validate().is_err());
        let distill = |steps| Objective::Distill {
            pairs: PathBuf::from("pairs"),
            steps,
        };
        assert!(distill(2).validate().is_ok() && distill(0).validate().is_err());
    }

    /// `u(z, t) = sin(z) t^2 + z t`, whose derivative along `(v, 1)` is
    /// `v (cos(z) t^2 + t) + 2 t sin(z) + z`.
    fn u(z: Tensor<4>, t: Tensor<1>) -> Tensor<4> {
        let t = t.reshape([z.dims()[0], 1, 1, 1]);
        z.clone().sin() * t.clone().square() + z * t
    }

    #[test]
    fn finite_difference_agrees_with_the_exact_derivative() {
        let device = Device::flex();
        let values = |seed: u64, n: usize| -> Vec<f32> {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..n).map(|_| rng.random_range(-1.5..1.5)).collect()
        };
        let z = Tensor::<4>::from_data(TensorData::new(values(1, 8), [2, 1, 2, 2]), &device);
        let v = Tensor::<4>::from_data(TensorData::new(values(2, 8), [2, 1, 2, 2]), &device);
        let t = Tensor::<1>::from_floats([0.3, 0.8], &device);
        let tb = t.clone().reshape([2, 1, 1, 1]);
        let exact = v.clone() * (z.clone().cos() * tb.clone().square() + tb.clone())
            + tb * z.clone().sin() * 2.0
            + z.clone();
        let mut errors = Vec::new();
        for epsilon in [1e-1, 1e-2, 1e-3] {
            let at = u(z.clone(), t.clone());
            let fd = finite_difference_jvp(u, (z.clone(), t.clone()), v.clone(), epsilon, at);
            errors.push((fd - exact.clone()).abs().max().into_scalar::<f32>());
        }
        // First order: ten times smaller a step, about ten times smaller an error.
        assert!(
            errors[0] < 0.5 && errors[1] < errors[0] / 5.0 && errors[2] < 5e-3,
            "{errors:?}"
        );
    }

    #[test]
    fn intervals_are_ordered_and_sometimes_empty() {
        let mut rng = StdRng::seed_from_u64(3);
        let (r, t) = interval(&TimeSampling::Uniform, 0.5, 0.01, 400, &mut rng);
        assert!(r.iter().zip(&t).all(|(r, t)| r <= t && *t <= 0.99));
        let equal = r.iter().zip(&t).filter(|(r, t)| r == t).count();
        assert!((150..250).contains(&equal), "{equal}");
    }

    #[test]
    fn adaptive_loss_caps_each_images_share() {
        let device = Device::flex();
        // Two images of 2 values: errors (3, 4) and (0, 0.01): ‖Δ‖² = 25 and 1e-4.
        let p = Tensor::<4>::from_data(
            TensorData::new(vec![3.0f32, 4.0, 0.0, 0.01], [2, 1, 1, 2]),
            &device,
        );
        let loss = adaptive_loss(p, Tensor::zeros([2, 1, 1, 2], &device)).into_scalar::<f32>();
        let (w1, w2) = (1.0 / 25.001, 1.0 / 1.1e-3);
        let mean = (w1 + w2) / 2.0;
        let want = (25.0 * w1 / mean + 1e-4 * w2 / mean) / 2.0 / 2.0;
        assert!((loss - want).abs() < 1e-5, "{loss} vs {want}");
    }

    /// The exact average velocity of the flow `dx/dt = lambda x` over `[r, t]` from `z`:
    /// `z (1 - exp(lambda (r - t))) / (t - r)` (`lambda z` when `r = t`).
    fn exponential(z: Tensor<2>, r: Tensor<1>, t: Tensor<1>) -> Tensor<2> {
        const LAMBDA: f32 = 1.3;
        let n = z.dims()[0];
        let gap = (t - r).reshape([n, 1]);
        let shrink = (gap.clone() * -LAMBDA).exp().neg() + 1.0;
        let empty = gap.clone().equal_elem(0.0).float();
        z.clone() * shrink / (gap + empty.clone()) * (empty.clone().neg() + 1.0)
            + z * empty * LAMBDA
    }

    #[test]
    fn the_split_target_of_an_exact_average_velocity_is_itself() {
        let device = Device::flex();
        let z = Tensor::<2>::from_floats([[0.5, -1.0], [2.0, 0.3], [-0.7, 0.1]], &device);
        let r = Tensor::<1>::from_floats([0.1, 0.0, 0.4], &device);
        let s = Tensor::<1>::from_floats([0.5, 0.6, 0.4], &device);
        let t = Tensor::<1>::from_floats([0.9, 1.0, 0.8], &device);
        let target = split_mean_flow_target(exponential, (z.clone(), r.clone(), s, t.clone()));
        let exact = exponential(z.clone(), r.clone(), t.clone());
        let gap = (target - exact).abs().max().into_scalar::<f32>();
        assert!(gap < 1e-5, "{gap}");
        // A field that is not an average velocity (u = z, whatever the interval) is not its own
        // split target: the consistency is what trains the model.
        let other = split_mean_flow_target(
            |z: Tensor<2>, _, _| z,
            (
                z.clone(),
                r,
                Tensor::from_floats([0.5, 0.6, 0.6], &device),
                t,
            ),
        );
        assert!((other - z).abs().max().into_scalar::<f32>() > 0.05);
    }
}
