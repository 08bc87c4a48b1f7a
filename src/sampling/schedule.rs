//! Sampling on a scheduler's path: a model that predicts the data or the noise as a velocity
//! field ([`AsVelocity`]), and a trained model sampled along another scheduler without
//! retraining ([`Retimed`], flow_matching's `ScheduleTransformedModel`: the scale-time
//! transformation between two affine paths with the same coupling).
//!
//! A model trained on scheduler `o` gives the velocity `v_o(x, tau)`. Along scheduler `n`, the
//! point at time `t` is `k(t) X_tau` with `tau` the time of `o` whose signal-to-noise ratio
//! `a/b` equals that of `n` at `t`, and `k = b_n(t) / b_o(tau)`; its velocity is
//! `v_n(x, t) = (k'/k) x + k tau' v_o(x / k, tau)`.

use burn::tensor::Tensor;

use super::solvers::VelocityField;
use crate::flow::scheduler::{EDGE, Parametrisation, Prediction, Scheduler, to_velocity};

/// A field whose output is a prediction of the kind `parametrisation` says, turned into the
/// velocity on its scheduler's path.
pub struct AsVelocity<'a, F: ?Sized> {
    field: &'a F,
    parametrisation: Parametrisation,
}

impl<'a, F: ?Sized> AsVelocity<'a, F> {
    /// `field`'s predictions as velocities.
    pub fn new(field: &'a F, parametrisation: Parametrisation) -> Self {
        AsVelocity {
            field,
            parametrisation,
        }
    }
}

impl<const D: usize, F: VelocityField<D> + ?Sized> VelocityField<D> for AsVelocity<'_, F> {
    fn velocity(&self, x: Tensor<D>, t: f32) -> Tensor<D> {
        let Parametrisation {
            scheduler,
            prediction,
        } = self.parametrisation;
        let out = self.field.velocity(x.clone(), t);
        match prediction {
            Prediction::Velocity => out,
            _ => to_velocity(&scheduler, prediction, out, x, t as f64),
        }
    }

    fn step_velocity(&self, x: Tensor<D>, t: f32, r: f32) -> Tensor<D> {
        match self.parametrisation.prediction {
            Prediction::Velocity => self.field.step_velocity(x, t, r),
            _ => self.velocity(x, t),
        }
    }

    fn evaluations_at(&self, t: f32) -> usize {
        self.field.evaluations_at(t)
    }
}

/// A velocity field trained on `original`, sampled along `new`.
pub struct Retimed<'a, F: ?Sized> {
    field: &'a F,
    original: Scheduler,
    new: Scheduler,
}

impl<'a, F: ?Sized> Retimed<'a, F> {
    /// `field` (trained on `original`) as a field of `new`.
    pub fn new(field: &'a F, original: Scheduler, new: Scheduler) -> Self {
        Retimed {
            field,
            original,
            new,
        }
    }

    /// `(tau, k, k'/k, tau')` at time `t` of the new scheduler (kept [`EDGE`] from both ends:
    /// `b = 0` at the data end, and a derivative may be infinite at the noise end).
    pub fn transform(&self, t: f64) -> (f64, f64, f64, f64) {
        let t = t.clamp(EDGE, 1.0 - EDGE);
        let n = self.new.at(t);
        let tau = self.original.snr_inverse(n.a / n.b).clamp(EDGE, 1.0 - EDGE);
        let o = self.original.at(tau);
        let k = n.b / o.b;
        let d_tau = o.b * o.b * (n.da * n.b - n.a * n.db) / (n.b * n.b * (o.da * o.b - o.a * o.db));
        let dk = (n.db * o.b - n.b * o.db * d_tau) / (o.b * o.b);
        (tau, k, dk / k, d_tau)
    }
}

impl<const D: usize, F: VelocityField<D> + ?Sized> VelocityField<D> for Retimed<'_, F> {
    fn velocity(&self, x: Tensor<D>, t: f32) -> Tensor<D> {
        if self.original == self.new {
            return self.field.velocity(x, t);
        }
        let (tau, k, dk_over_k, d_tau) = self.transform(t as f64);
        let v = self.field.velocity(x.clone() / k, tau as f32);
        x * dk_over_k + v * (k * d_tau)
    }

    fn step_velocity(&self, x: Tensor<D>, t: f32, r: f32) -> Tensor<D> {
        match self.original == self.new {
            true => self.field.step_velocity(x, t, r),
            false => self.velocity(x, t),
        }
    }

    fn evaluations_at(&self, t: f32) -> usize {
        self.field.evaluations_at(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::solvers::{Solver, TimeGrid, solve};
    use burn::tensor::Device;

    /// The exact marginal velocity of data `N(m, c^2)` and noise `N(0, 1)` on the path of
    /// `scheduler`: `a' m + (a a' c^2 + b b') / (a^2 c^2 + b^2) (x - a m)`.
    struct Gaussian {
        scheduler: Scheduler,
        m: f64,
        c: f64,
    }

    impl VelocityField<2> for Gaussian {
        fn velocity(&self, x: Tensor<2>, t: f32) -> Tensor<2> {
            let s = self.scheduler.at((t as f64).clamp(1e-6, 1.0));
            let (m, c2) = (self.m, self.c * self.c);
            let gain = (s.a * s.da * c2 + s.b * s.db) / (s.a * s.a * c2 + s.b * s.b);
            (x - s.a * m) * gain + s.da * m
        }
    }

    fn noise() -> Tensor<2> {
        Tensor::from_floats([[-1.5, 0.3], [0.8, 2.0], [0.0, -0.7]], &Device::flex())
    }

    #[test]
    fn retiming_to_the_same_scheduler_changes_nothing() {
        let field = Gaussian {
            scheduler: Scheduler::Linear,
            m: 0.5,
            c: 0.3,
        };
        let same = Retimed::new(&field, Scheduler::Linear, Scheduler::Linear);
        let x = noise();
        for t in [0.9f32, 0.5, 0.1] {
            let d = same.velocity(x.clone(), t) - field.velocity(x.clone(), t);
            assert!(d.abs().max().into_scalar::<f32>() < 1e-7);
        }
        // The transformation itself is the identity when both schedulers agree.
        let (tau, k, dk, d_tau) =
            Retimed::new(&field, Scheduler::Cosine, Scheduler::Cosine).transform(0.4);
        assert!(
            (tau - 0.4).abs() < 1e-9
                && (k - 1.0).abs() < 1e-9
                && dk.abs() < 1e-7
                && (d_tau - 1.0).abs() < 1e-7
        );
    }

    /// Linear -> cosine with a fine solver lands on the same samples (the same coupling of
    /// noise and data): within 2e-3 with 400 RK4 steps.
    #[test]
    fn retiming_linear_to_cosine_ends_at_the_same_samples() {
        let field = Gaussian {
            scheduler: Scheduler::Linear,
            m: 0.5,
            c: 0.3,
        };
        let plain = solve(
            &field,
            Solver::Rk4,
            noise(),
            400,
            TimeGrid::Uniform,
            |_, _, _| {},
        )
        .x;
        let exact = noise() * 0.3 + 0.5;
        assert!((plain.clone() - exact).abs().max().into_scalar::<f32>() < 1e-3);
        for new in [
            Scheduler::Cosine,
            Scheduler::Polynomial { n: 2.0 },
            Scheduler::LinearVp,
        ] {
            let retimed = Retimed::new(&field, Scheduler::Linear, new);
            let moved = solve(
                &retimed,
                Solver::Rk4,
                noise(),
                400,
                TimeGrid::Uniform,
                |_, _, _| {},
            )
            .x;
            let gap = (moved - plain.clone()).abs().max().into_scalar::<f32>();
            assert!(gap < 2e-3, "{new}: {gap}");
        }
    }

    /// A polynomial path with `n < 1` has an infinite velocity at the noise end: re-timing onto
    /// it stays finite (times are kept [`EDGE`] from both ends), though uniform steps follow
    /// it poorly there.
    #[test]
    fn retiming_onto_a_singular_path_stays_finite() {
        let field = Gaussian {
            scheduler: Scheduler::Linear,
            m: 0.5,
            c: 0.3,
        };
        let retimed = Retimed::new(&field, Scheduler::Linear, Scheduler::Polynomial { n: 0.5 });
        let x = solve(
            &retimed,
            Solver::Euler,
            noise(),
            10,
            TimeGrid::Uniform,
            |_, _, _| {},
        )
        .x;
        assert!(x.is_finite().all().into_scalar::<bool>());
    }

    /// The same Gaussian's posterior mean of the data, `m + a c^2 / (a^2 c^2 + b^2) (x - a m)`.
    struct GaussianData(Gaussian);

    impl VelocityField<2> for GaussianData {
        fn velocity(&self, x: Tensor<2>, t: f32) -> Tensor<2> {
            let Gaussian { scheduler, m, c } = &self.0;
            let s = scheduler.at(t as f64);
            let gain = s.a * c * c / (s.a * s.a * c * c + s.b * s.b);
            (x - s.a * m) * gain + *m
        }
    }

    #[test]
    fn a_data_prediction_becomes_the_velocity() {
        for scheduler in [Scheduler::Linear, Scheduler::Cosine] {
            let velocity = Gaussian {
                scheduler,
                m: 0.5,
                c: 0.3,
            };
            let data = GaussianData(Gaussian {
                scheduler,
                m: 0.5,
                c: 0.3,
            });
            let parametrisation = Parametrisation {
                scheduler,
                prediction: Prediction::Data,
            };
            let converted = AsVelocity::new(&data, parametrisation);
            for t in [0.8f32, 0.5, 0.2] {
                let d = converted.velocity(noise(), t) - velocity.velocity(noise(), t);
                assert!(
                    d.abs().max().into_scalar::<f32>() < 1e-4,
                    "{scheduler} at {t}"
                );
            }
        }
    }
}
