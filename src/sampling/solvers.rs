//! ODE solvers that carry noise (t = 1) to data (t = 0) along a velocity field.
//!
//! Every solver reports the number of velocity evaluations (NFE) it really made: evaluations are
//! counted as they happen, so there is no hidden step doubling. Fixed-step solvers use
//! `stages x steps` evaluations (Euler 1, midpoint 2, Heun 2, RK4 4 per step); Dormand-Prince
//! 5(4) uses 6 per attempted step plus 2 to choose its first step (first-same-as-last reuse).

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;

use burn::tensor::Tensor;

use crate::model::{Condition, VelocityModel};

/// Anything that predicts a velocity for a batch of states at one time: every
/// [`VelocityModel`], a guided model, or a closure-like field of your own.
pub trait VelocityField<const D: usize> {
    /// The velocity at states `x` (`[batch, ...]`), all at time `t`.
    fn velocity(&self, x: Tensor<D>, t: f32) -> Tensor<D>;

    /// The velocity to step with from `t` to `r`: the average velocity over `[r, t]` for a
    /// field that has one (a mean-flow model), the instantaneous one at `t` otherwise.
    fn step_velocity(&self, x: Tensor<D>, t: f32, _r: f32) -> Tensor<D> {
        self.velocity(x, t)
    }

    /// Network evaluations one call costs (2 for guidance with both branches batched).
    fn evaluations(&self) -> usize {
        1
    }

    /// Network evaluations a call at time `t` costs (guidance on an interval of times costs 2
    /// inside it, 1 outside).
    fn evaluations_at(&self, _t: f32) -> usize {
        self.evaluations()
    }
}

impl<const D: usize, M: VelocityModel<D>> VelocityField<D> for M {
    fn velocity(&self, x: Tensor<D>, t: f32) -> Tensor<D> {
        let b = x.dims()[0];
        let times = Tensor::<1>::full([b], t, &x.device());
        VelocityModel::velocity(self, x, times, &Condition::none())
    }

    fn step_velocity(&self, x: Tensor<D>, t: f32, r: f32) -> Tensor<D> {
        if !self.is_mean_flow() {
            return VelocityField::velocity(self, x, t);
        }
        let b = x.dims()[0];
        let device = x.device();
        let times = Tensor::<1>::full([b], t, &device);
        let cond = Condition {
            r: Some(Tensor::full([b], r, &device)),
            ..Condition::none()
        };
        VelocityModel::velocity(self, x, times, &cond)
    }
}

/// The end state of an integration and the number of velocity evaluations it used.
#[derive(Debug, Clone)]
pub struct Solution<const D: usize> {
    /// The state at t = 0.
    pub x: Tensor<D>,
    /// Number of function (velocity-field) evaluations.
    pub nfe: usize,
    /// Accepted steps.
    pub steps: usize,
}

/// An integration method.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Solver {
    /// Explicit Euler, 1 evaluation per step (the reference sampler).
    Euler,
    /// Explicit midpoint (RK2), 2 per step.
    Midpoint,
    /// Heun's method (trapezoidal RK2), 2 per step.
    Heun,
    /// Classic fourth-order Runge-Kutta, 4 per step.
    Rk4,
    /// Adaptive Dormand-Prince 5(4) with relative and absolute tolerances.
    Dopri5 {
        /// Relative tolerance.
        rtol: f32,
        /// Absolute tolerance.
        atol: f32,
    },
}

impl Solver {
    /// Evaluations per step of a fixed-step method (`None` for adaptive ones).
    pub fn stages(&self) -> Option<usize> {
        match self {
            Solver::Euler => Some(1),
            Solver::Midpoint | Solver::Heun => Some(2),
            Solver::Rk4 => Some(4),
            Solver::Dopri5 { .. } => None,
        }
    }
}

impl fmt::Display for Solver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Solver::Euler => "euler",
            Solver::Midpoint => "midpoint",
            Solver::Heun => "heun",
            Solver::Rk4 => "rk4",
            Solver::Dopri5 { .. } => "dopri5",
        })
    }
}

impl FromStr for Solver {
    type Err = String;
    /// `euler`, `midpoint`, `heun`, `rk4` or `dopri5` (tolerances 1e-5 / 1e-5; set them after).
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "euler" => Ok(Solver::Euler),
            "midpoint" => Ok(Solver::Midpoint),
            "heun" => Ok(Solver::Heun),
            "rk4" => Ok(Solver::Rk4),
            "dopri5" => Ok(Solver::Dopri5 {
                rtol: 1e-5,
                atol: 1e-5,
            }),
            other => Err(format!(
                "unknown solver '{other}' (euler, midpoint, heun, rk4, dopri5)"
            )),
        }
    }
}

/// How the fixed-step time points are spread between t = 1 and t = 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TimeGrid {
    /// Equal steps (the reference).
    Uniform,
    /// `t = s u / (1 + (s - 1) u)` for uniform `u`: `s < 1` puts more steps near the data end
    /// (t = 0), `s > 1` near the noise end; `s = 1` is uniform.
    Shifted(f32),
}

impl TimeGrid {
    /// The `steps + 1` decreasing time points from 1 to 0.
    pub fn points(&self, steps: usize) -> Vec<f32> {
        (0..=steps)
            .map(|i| {
                let u = 1.0 - i as f64 / steps as f64;
                match *self {
                    TimeGrid::Uniform => u as f32,
                    TimeGrid::Shifted(s) => {
                        let s = s as f64;
                        (s * u / (1.0 + (s - 1.0) * u)) as f32
                    }
                }
            })
            .collect()
    }
}

impl fmt::Display for TimeGrid {
    /// `uniform` or `shifted by S`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimeGrid::Uniform => write!(f, "uniform"),
            TimeGrid::Shifted(s) => write!(f, "shifted by {s}"),
        }
    }
}

/// Counts the evaluations of a field.
struct Counted<'a, const D: usize, F: VelocityField<D> + ?Sized> {
    field: &'a F,
    count: Cell<usize>,
}

impl<const D: usize, F: VelocityField<D> + ?Sized> Counted<'_, D, F> {
    fn eval(&self, x: Tensor<D>, t: f32) -> Tensor<D> {
        self.count
            .set(self.count.get() + self.field.evaluations_at(t));
        self.field.velocity(x, t)
    }

    fn eval_step(&self, x: Tensor<D>, t: f32, r: f32) -> Tensor<D> {
        self.count
            .set(self.count.get() + self.field.evaluations_at(t));
        self.field.step_velocity(x, t, r)
    }
}

/// Integrates from `x1` at t = 1 to t = 0.
///
/// Fixed-step solvers follow `grid` with `steps` steps; Dormand-Prince picks its own steps and
/// ignores both. `observe(i, t, x)` sees every state on the way (before step `i`).
pub fn solve<const D: usize, F: VelocityField<D> + ?Sized>(
    field: &F,
    solver: Solver,
    x1: Tensor<D>,
    steps: usize,
    grid: TimeGrid,
    mut observe: impl FnMut(usize, f32, &Tensor<D>),
) -> Solution<D> {
    let f = Counted {
        field,
        count: Cell::new(0),
    };
    if let Solver::Dopri5 { rtol, atol } = solver {
        return dopri5(&f, x1, rtol, atol, observe);
    }
    let times = grid.points(steps);
    let mut x = x1;
    for (i, pair) in times.windows(2).enumerate() {
        let (t, h) = (pair[0], pair[1] - pair[0]);
        observe(i, t, &x);
        x = match solver {
            // A mean-flow model steps with its average velocity over [t + h, t].
            Solver::Euler => x.clone() + f.eval_step(x, t, t + h) * h,
            Solver::Midpoint => {
                let k1 = f.eval(x.clone(), t);
                x.clone() + f.eval(x + k1 * (h / 2.0), t + h / 2.0) * h
            }
            Solver::Heun => {
                let k1 = f.eval(x.clone(), t);
                let k2 = f.eval(x.clone() + k1.clone() * h, t + h);
                x + (k1 + k2) * (h / 2.0)
            }
            Solver::Rk4 => {
                let k1 = f.eval(x.clone(), t);
                let k2 = f.eval(x.clone() + k1.clone() * (h / 2.0), t + h / 2.0);
                let k3 = f.eval(x.clone() + k2.clone() * (h / 2.0), t + h / 2.0);
                let k4 = f.eval(x.clone() + k3.clone() * h, t + h);
                x + (k1 + (k2 + k3) * 2.0 + k4) * (h / 6.0)
            }
            Solver::Dopri5 { .. } => unreachable!("handled above"),
        };
    }
    Solution {
        x,
        nfe: f.count.get(),
        steps,
    }
}

/// The reference sampler: `steps` uniform Euler steps from t = 1 to t = 0,
/// `x <- x - v(x, t_i) / steps` with `t_i = 1 - i / steps`.
pub fn euler<const D: usize, F: VelocityField<D>>(
    field: &F,
    x1: Tensor<D>,
    steps: usize,
    observe: impl FnMut(usize, f32, &Tensor<D>),
) -> Solution<D> {
    solve(field, Solver::Euler, x1, steps, TimeGrid::Uniform, observe)
}

/// Root mean square of `e / (atol + rtol * max(|a|, |b|))` (Hairer's error norm).
fn error_norm<const D: usize>(
    e: Tensor<D>,
    a: &Tensor<D>,
    b: &Tensor<D>,
    rtol: f32,
    atol: f32,
) -> f32 {
    let scale = a.clone().abs().max_pair(b.clone().abs()) * rtol + atol;
    (e / scale).square().mean().sqrt().into_scalar::<f32>()
}

fn rms<const D: usize>(x: &Tensor<D>) -> f32 {
    x.clone().square().mean().sqrt().into_scalar::<f32>()
}

/// The smallest step dopri5 takes: one of this size is accepted whatever its error.
const MIN_ADAPTIVE_STEP: f32 = 1e-5;

/// Dormand-Prince 5(4) from t = 1 to t = 0 with standard step-size control.
fn dopri5<const D: usize, F: VelocityField<D> + ?Sized>(
    f: &Counted<D, F>,
    x1: Tensor<D>,
    rtol: f32,
    atol: f32,
    mut observe: impl FnMut(usize, f32, &Tensor<D>),
) -> Solution<D> {
    // Butcher tableau (Dormand & Prince 1980).
    const C: [f32; 6] = [1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0, 1.0];
    const A2: [f32; 1] = [1.0 / 5.0];
    const A3: [f32; 2] = [3.0 / 40.0, 9.0 / 40.0];
    const A4: [f32; 3] = [44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0];
    const A5: [f32; 4] = [
        19372.0 / 6561.0,
        -25360.0 / 2187.0,
        64448.0 / 6561.0,
        -212.0 / 729.0,
    ];
    const A6: [f32; 5] = [
        9017.0 / 3168.0,
        -355.0 / 33.0,
        46732.0 / 5247.0,
        49.0 / 176.0,
        -5103.0 / 18656.0,
    ];
    // 5th-order weights (also the last stage's coefficients: first same as last).
    const B: [f32; 6] = [
        35.0 / 384.0,
        0.0,
        500.0 / 1113.0,
        125.0 / 192.0,
        -2187.0 / 6784.0,
        11.0 / 84.0,
    ];
    // Difference between the 5th- and 4th-order weights (7 stages).
    const E: [f32; 7] = [
        71.0 / 57600.0,
        0.0,
        -71.0 / 16695.0,
        71.0 / 1920.0,
        -17253.0 / 339200.0,
        22.0 / 525.0,
        -1.0 / 40.0,
    ];
    let combine = |x: &Tensor<D>, ks: &[Tensor<D>], a: &[f32], h: f32| {
        ks.iter()
            .zip(a)
            .filter(|(_, c)| **c != 0.0)
            .fold(x.clone(), |acc, (k, c)| acc + k.clone() * (h * c))
    };

    let mut t = 1.0f32;
    let mut x = x1;
    let mut k1 = f.eval(x.clone(), t);
    // Initial step (Hairer, Norsett & Wanner, II.4), integrating towards t = 0 (negative h).
    let scale = x.clone().abs() * rtol + atol;
    let scaled_rms = |v: Tensor<D>| rms(&(v / scale.clone()));
    let (d0, d1) = (scaled_rms(x.clone()), scaled_rms(k1.clone()));
    let h0 = if d0 < 1e-5 || d1 < 1e-5 {
        1e-6
    } else {
        0.01 * d0 / d1
    };
    let probe = f.eval(x.clone() - k1.clone() * h0, t - h0);
    let d2 = scaled_rms(probe - k1.clone()) / h0;
    let h1 = if d1.max(d2) <= 1e-15 {
        (h0 * 1e-3).max(1e-6)
    } else {
        (0.01 / d1.max(d2)).powf(1.0 / 5.0)
    };
    let mut h = -(100.0 * h0).min(h1).min(1.0);
    let mut accepted = 0;
    while t > 0.0 {
        if t + h < 1e-6 {
            h = -t;
        }
        let k2 = f.eval(combine(&x, &[k1.clone()], &A2, h), t + C[0] * h);
        let k3 = f.eval(combine(&x, &[k1.clone(), k2.clone()], &A3, h), t + C[1] * h);
        let k4 = f.eval(
            combine(&x, &[k1.clone(), k2.clone(), k3.clone()], &A4, h),
            t + C[2] * h,
        );
        let ks4 = [k1.clone(), k2.clone(), k3.clone(), k4.clone()];
        let k5 = f.eval(combine(&x, &ks4, &A5, h), t + C[3] * h);
        let ks5 = [k1.clone(), k2.clone(), k3.clone(), k4.clone(), k5.clone()];
        let k6 = f.eval(combine(&x, &ks5, &A6, h), t + C[4] * h);
        let ks6 = [k1.clone(), k2, k3, k4, k5, k6];
        let x_new = combine(&x, &ks6, &B, h);
        let k7 = f.eval(x_new.clone(), t + h);
        let mut all = ks6.to_vec();
        all.push(k7.clone());
        let err = all
            .iter()
            .zip(E)
            .filter(|(_, c)| *c != 0.0)
            .fold(Tensor::zeros(x.dims(), &x.device()), |acc, (k, c)| {
                acc + k.clone() * (h * c)
            });
        let norm = error_norm(err, &x, &x_new, rtol, atol);
        // A step of the smallest size is taken whatever its error, and a field that is not
        // finite (no step size helps) finishes in one more step: the loop always ends.
        let finite = norm.is_finite();
        if norm <= 1.0 || !finite || -h <= MIN_ADAPTIVE_STEP {
            observe(accepted, t, &x);
            accepted += 1;
            t += h;
            x = x_new;
            k1 = k7;
        }
        if !finite {
            h = -t;
            continue;
        }
        let factor = if norm == 0.0 {
            5.0
        } else {
            (0.9 * norm.powf(-0.2)).clamp(0.2, 5.0)
        };
        h *= if norm <= 1.0 { factor } else { factor.min(1.0) };
        h = h.min(-MIN_ADAPTIVE_STEP);
    }
    Solution {
        x,
        nfe: f.count.get(),
        steps: accepted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::gaussian_noise;
    use burn::tensor::{Device, TensorData};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn max_abs(a: Tensor<4>, b: Tensor<4>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    /// dx/dt = cos(t) x, whose exact flow is x(t) = x(1) exp(sin t - sin 1).
    struct Oscillating;

    impl VelocityField<4> for Oscillating {
        fn velocity(&self, x: Tensor<4>, t: f32) -> Tensor<4> {
            x * t.cos()
        }
    }

    fn start() -> Tensor<4> {
        Tensor::from_data(
            TensorData::new(vec![1.0f32, -0.5, 2.0, 0.25], [1, 1, 2, 2]),
            &Device::flex(),
        )
    }

    fn error(solution: &Solution<4>) -> f32 {
        let exact = start() * (0f32.sin() - 1f32.sin()).exp();
        (solution.x.clone() - exact)
            .abs()
            .max()
            .into_scalar::<f32>()
    }

    #[test]
    fn fixed_step_solvers_have_their_order_and_nfe() {
        for (solver, order, steps) in [
            (Solver::Euler, 1.0, 16),
            (Solver::Midpoint, 2.0, 8),
            (Solver::Heun, 2.0, 8),
            (Solver::Rk4, 4.0, 2),
        ] {
            let coarse = solve(
                &Oscillating,
                solver,
                start(),
                steps,
                TimeGrid::Uniform,
                |_, _, _| {},
            );
            let fine = solve(
                &Oscillating,
                solver,
                start(),
                2 * steps,
                TimeGrid::Uniform,
                |_, _, _| {},
            );
            let stages = solver.stages().unwrap();
            assert_eq!(
                (coarse.nfe, fine.nfe),
                (steps * stages, 2 * steps * stages),
                "{solver}"
            );
            let ratio = error(&coarse) / error(&fine);
            let expected = 2f32.powf(order);
            assert!(
                ratio > expected * 0.7 && ratio < expected * 1.4,
                "{solver}: error ratio {ratio}, expected about {expected}"
            );
        }
    }

    #[test]
    fn dopri5_meets_its_tolerance_and_counts_evaluations() {
        let mut last_nfe = 0;
        for tol in [1e-3f32, 1e-5] {
            let mut observed = 0;
            let solver = Solver::Dopri5 {
                rtol: tol,
                atol: tol,
            };
            let sol = solve(
                &Oscillating,
                solver,
                start(),
                0,
                TimeGrid::Uniform,
                |_, _, _| observed += 1,
            );
            assert!(error(&sol) < 10.0 * tol, "tol {tol}: error {}", error(&sol));
            assert_eq!(observed, sol.steps);
            // 2 evaluations to pick the first step, then 6 per attempted step.
            assert_eq!((sol.nfe - 2) % 6, 0, "nfe {}", sol.nfe);
            assert!(sol.nfe >= 2 + 6 * sol.steps);
            assert!(sol.nfe > last_nfe, "tighter tolerance should cost more");
            last_nfe = sol.nfe;
        }
    }

    /// A field that is not finite anywhere, as a diverged model's.
    struct NotFinite(f32);

    impl VelocityField<4> for NotFinite {
        fn velocity(&self, x: Tensor<4>, _t: f32) -> Tensor<4> {
            x * self.0
        }
    }

    #[test]
    fn dopri5_ends_on_a_field_that_is_not_finite() {
        for value in [f32::NAN, f32::INFINITY] {
            let sol = solve(
                &NotFinite(value),
                Solver::Dopri5 {
                    rtol: 1e-5,
                    atol: 1e-5,
                },
                start(),
                0,
                TimeGrid::Uniform,
                |_, _, _| {},
            );
            assert!(sol.steps <= 3 && sol.nfe <= 2 + 6 * 3, "{value}: {sol:?}");
        }
    }

    #[test]
    fn time_grids_run_from_one_to_zero() {
        let uniform = TimeGrid::Uniform.points(4);
        assert_eq!(uniform, vec![1.0, 0.75, 0.5, 0.25, 0.0]);
        let shifted = TimeGrid::Shifted(0.5).points(4);
        assert_eq!((shifted[0], shifted[4]), (1.0, 0.0));
        // s < 1: the last step (nearest the data) is shorter than the first.
        assert!(shifted[3] - shifted[4] < shifted[0] - shifted[1]);
        assert_eq!(TimeGrid::Shifted(3.0).to_string(), "shifted by 3");
        let observed: Vec<f32> = {
            let mut ts = Vec::new();
            solve(
                &Oscillating,
                Solver::Heun,
                start(),
                4,
                TimeGrid::Shifted(0.5),
                |_, t, _| ts.push(t),
            );
            ts
        };
        assert_eq!(observed, shifted[..4].to_vec());
    }

    /// The velocity of the straight line through a fixed data point: `(x - x0) / t`.
    struct TowardsPoint(Tensor<4>);

    impl VelocityField<4> for TowardsPoint {
        fn velocity(&self, x: Tensor<4>, t: f32) -> Tensor<4> {
            (x - self.0.clone()) / t
        }
    }

    #[test]
    fn euler_is_exact_on_a_straight_path() {
        let device = Device::flex();
        let mut rng = StdRng::seed_from_u64(2);
        let x0 = gaussian_noise(&mut rng, [2, 1, 3, 3], &device);
        let x1 = gaussian_noise(&mut rng, [2, 1, 3, 3], &device);
        for steps in [1, 3, 7] {
            let mut times = Vec::new();
            let solution = euler(&TowardsPoint(x0.clone()), x1.clone(), steps, |i, t, _| {
                times.push((i, t))
            });
            assert_eq!(solution.nfe, steps);
            assert_eq!(times.first(), Some(&(0, 1.0)));
            assert_eq!(times.len(), steps);
            assert!(max_abs(solution.x, x0.clone()) < 1e-5, "{steps} steps");
        }
    }
}
