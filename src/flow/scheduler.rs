//! Schedulers of affine probability paths `x_t = a(t) x0 + b(t) x1`, in flowmatch's time
//! (t = 0 data `x0`, t = 1 noise `x1`), and the [`AffinePath`] they define.
//!
//! The formulas are those of facebookresearch/flow_matching's schedulers, whose time runs the
//! other way (`s = 1 - t`, `x_s = alpha_s data + sigma_s noise`): `a(t) = alpha(1 - t)`,
//! `b(t) = sigma(1 - t)`, and the derivatives change sign. [`Scheduler::Linear`] is the
//! straight line of rectified flow, `a = 1 - t`, `b = t`.

use std::f64::consts::PI;
use std::fmt;
use std::str::FromStr;

use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::path::{PathSample, ProbPath};
use crate::error::{Error, Result};

/// `a`, `b` and their time derivatives at one time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Coefficients {
    /// The weight of the data, `a(t)`.
    pub a: f64,
    /// The weight of the noise, `b(t)`.
    pub b: f64,
    /// `da/dt`.
    pub da: f64,
    /// `db/dt`.
    pub db: f64,
}

/// How the path moves from data to noise.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Scheduler {
    /// `a = 1 - t`, `b = t` (flow_matching's `CondOTScheduler`; rectified flow).
    #[default]
    Linear,
    /// `a = cos(pi t / 2)`, `b = sin(pi t / 2)` (`CosineScheduler`).
    Cosine,
    /// The variance-preserving path of a linear-beta diffusion (`VPScheduler`):
    /// `a = exp(-T/2)`, `b = sqrt(1 - exp(-T))`, `T = t^2 (beta_max - beta_min) / 2 + t beta_min`.
    Vp {
        /// `beta_min` (0.1 in flow_matching).
        beta_min: f64,
        /// `beta_max` (20 in flow_matching).
        beta_max: f64,
    },
    /// `a = 1 - t`, `b = sqrt(1 - (1 - t)^2)` (`LinearVPScheduler`).
    LinearVp,
    /// `a = (1 - t)^n`, `b = 1 - (1 - t)^n` (`PolynomialConvexScheduler`).
    Polynomial {
        /// The power `n` (positive).
        n: f64,
    },
}

impl Scheduler {
    /// flow_matching's `(alpha, sigma, d alpha / ds, d sigma / ds)` at its time `s` (0 noise,
    /// 1 data).
    fn reference(&self, s: f64) -> (f64, f64, f64, f64) {
        match *self {
            Scheduler::Linear => (s, 1.0 - s, 1.0, -1.0),
            Scheduler::Cosine => {
                let h = PI / 2.0;
                (
                    (h * s).sin(),
                    (h * s).cos(),
                    h * (h * s).cos(),
                    -h * (h * s).sin(),
                )
            }
            Scheduler::Vp { beta_min, beta_max } => {
                let (b, big) = (beta_min, beta_max);
                let t = 0.5 * (1.0 - s).powi(2) * (big - b) + (1.0 - s) * b;
                let dt = -(1.0 - s) * (big - b) - b;
                let sigma = (1.0 - (-t).exp()).sqrt();
                (
                    (-0.5 * t).exp(),
                    sigma,
                    -0.5 * dt * (-0.5 * t).exp(),
                    0.5 * dt * (-t).exp() / sigma,
                )
            }
            Scheduler::LinearVp => {
                let sigma = (1.0 - s * s).sqrt();
                (s, sigma, 1.0, -s / sigma)
            }
            Scheduler::Polynomial { n } => {
                let d = n * s.powf(n - 1.0);
                (s.powf(n), 1.0 - s.powf(n), d, -d)
            }
        }
    }

    /// `a`, `b` and their derivatives at flowmatch time `t`.
    pub fn at(&self, t: f64) -> Coefficients {
        let (alpha, sigma, d_alpha, d_sigma) = self.reference(1.0 - t);
        Coefficients {
            a: alpha,
            b: sigma,
            da: -d_alpha,
            db: -d_sigma,
        }
    }

    /// The time whose signal-to-noise ratio `a / b` is `snr` (flow_matching's `snr_inverse`,
    /// in flowmatch's time).
    pub fn snr_inverse(&self, snr: f64) -> f64 {
        let s = match *self {
            Scheduler::Linear => snr / (1.0 + snr),
            Scheduler::Polynomial { n } => (snr / (1.0 + snr)).powf(1.0 / n),
            Scheduler::Cosine => 2.0 * snr.atan() / PI,
            Scheduler::LinearVp => (snr * snr / (1.0 + snr * snr)).sqrt(),
            Scheduler::Vp { beta_min, beta_max } => {
                let (b, big) = (beta_min, beta_max);
                let t = -(snr * snr / (snr * snr + 1.0)).ln();
                1.0 - (-b + (b * b + 2.0 * (big - b) * t).sqrt()) / (big - b)
            }
        };
        1.0 - s
    }

    /// Rejects parameters with no path: a non-positive power, betas not `0 <= min < max`.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Scheduler::Polynomial { n } if !(n.is_finite() && n > 0.0) => Err(Error::invalid(
                "scheduler",
                format!("polynomial power {n}: must be positive"),
            )),
            Scheduler::Vp { beta_min, beta_max }
                if !(beta_min >= 0.0 && beta_max > beta_min && beta_max.is_finite()) =>
            {
                Err(Error::invalid(
                    "scheduler",
                    format!("vp betas {beta_min}, {beta_max}: need 0 <= min < max"),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Per-row coefficients for times `t` as four `[batch]` tensors.
    fn tensors(&self, t: &Tensor<1>) -> [Tensor<1>; 4] {
        let times = t
            .to_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("f32 times");
        let device = t.device();
        let column = |f: &dyn Fn(Coefficients) -> f64| {
            let values: Vec<f32> = times.iter().map(|&t| f(self.at(t as f64)) as f32).collect();
            let n = values.len();
            Tensor::<1>::from_data(TensorData::new(values, [n]), &device)
        };
        [
            column(&|c| c.a),
            column(&|c| c.b),
            column(&|c| c.da),
            column(&|c| c.db),
        ]
    }
}

impl fmt::Display for Scheduler {
    /// As `--scheduler` takes it: `linear`, `cosine`, `vp`, `linear-vp`, `polynomial:N`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scheduler::Linear => write!(f, "linear"),
            Scheduler::Cosine => write!(f, "cosine"),
            Scheduler::Vp { beta_min, beta_max } if (*beta_min, *beta_max) == (0.1, 20.0) => {
                write!(f, "vp")
            }
            Scheduler::Vp { beta_min, beta_max } => write!(f, "vp:{beta_min},{beta_max}"),
            Scheduler::LinearVp => write!(f, "linear-vp"),
            Scheduler::Polynomial { n } => write!(f, "polynomial:{n}"),
        }
    }
}

impl FromStr for Scheduler {
    type Err = String;
    /// `linear`, `cosine`, `vp` (betas 0.1 and 20), `vp:MIN,MAX`, `linear-vp`, `polynomial:N`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let number = |v: &str| v.trim().parse::<f64>().map_err(|e| format!("'{v}': {e}"));
        let scheduler = match s.split_once(':') {
            None => match s {
                "linear" => Scheduler::Linear,
                "cosine" => Scheduler::Cosine,
                "vp" => Scheduler::Vp {
                    beta_min: 0.1,
                    beta_max: 20.0,
                },
                "linear-vp" => Scheduler::LinearVp,
                other => {
                    return Err(format!(
                        "unknown scheduler '{other}' (linear, cosine, vp, vp:MIN,MAX, linear-vp, polynomial:N)"
                    ));
                }
            },
            Some(("polynomial", n)) => Scheduler::Polynomial { n: number(n)? },
            Some(("vp", betas)) => match betas.split_once(',') {
                Some((lo, hi)) => Scheduler::Vp {
                    beta_min: number(lo)?,
                    beta_max: number(hi)?,
                },
                None => return Err(format!("vp:{betas}: give vp:MIN,MAX")),
            },
            Some(_) => return Err(format!("unknown scheduler '{s}'")),
        };
        scheduler.validate().map_err(|e| e.to_string())?;
        Ok(scheduler)
    }
}

/// What the network predicts; the solvers always receive the velocity (see [`to_velocity`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Prediction {
    /// The velocity `dx_t/dt = a' x0 + b' x1` (flow matching).
    #[default]
    Velocity,
    /// The data `x0`.
    Data,
    /// The noise `x1` (epsilon prediction).
    Noise,
}

impl FromStr for Prediction {
    type Err = String;
    /// `velocity`, `data` (or `x0`) or `noise` (or `epsilon`).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "velocity" => Ok(Prediction::Velocity),
            "data" | "x0" => Ok(Prediction::Data),
            "noise" | "epsilon" => Ok(Prediction::Noise),
            other => Err(format!(
                "unknown prediction '{other}' (velocity, data, noise)"
            )),
        }
    }
}

impl fmt::Display for Prediction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Prediction::Velocity => "velocity",
            Prediction::Data => "data",
            Prediction::Noise => "noise",
        })
    }
}

/// A path's scheduler and what the network predicts on it: how a model's output becomes a
/// velocity, and what a training step regresses it onto.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Parametrisation {
    /// The path's scheduler.
    #[serde(default)]
    pub scheduler: Scheduler,
    /// What the network predicts.
    #[serde(default)]
    pub prediction: Prediction,
}

impl Parametrisation {
    /// Whether this is flow matching's own: the linear path, velocity prediction.
    pub fn is_straight(&self) -> bool {
        *self == Parametrisation::default()
    }
}

/// Times are kept this far inside (0, 1) when a conversion divides by `a` or `b`.
pub const EDGE: f64 = 1e-4;

/// Converts a `prediction` of kind `from` at point `x_t` (time coefficients `c`) into the
/// velocity, the data and the noise it implies: `(v, x0, x1)`.
pub fn convert<const D: usize>(
    from: Prediction,
    prediction: Tensor<D>,
    x_t: Tensor<D>,
    c: Coefficients,
) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
    let Coefficients { a, b, da, db } = c;
    match from {
        Prediction::Velocity => {
            // [a b; a' b'] [x0; x1] = [x_t; v].
            let det = a * db - b * da;
            let x0 = (x_t.clone() * db - prediction.clone() * b) / det;
            let x1 = (prediction.clone() * a - x_t * da) / det;
            (prediction, x0, x1)
        }
        Prediction::Data => {
            let x1 = (x_t - prediction.clone() * a) / b;
            let v = prediction.clone() * da + x1.clone() * db;
            (v, prediction, x1)
        }
        Prediction::Noise => {
            let x0 = (x_t - prediction.clone() * b) / a;
            let v = x0.clone() * da + prediction.clone() * db;
            (v, x0, prediction)
        }
    }
}

/// The velocity implied by a `prediction` of kind `from` at `x_t`, time `t` of `scheduler`
/// (the time kept [`EDGE`] inside (0, 1) where the conversion divides by `a` or `b`).
pub fn to_velocity<const D: usize>(
    scheduler: &Scheduler,
    from: Prediction,
    prediction: Tensor<D>,
    x_t: Tensor<D>,
    t: f64,
) -> Tensor<D> {
    if from == Prediction::Velocity {
        return prediction;
    }
    let c = scheduler.at(t.clamp(EDGE, 1.0 - EDGE));
    convert(from, prediction, x_t, c).0
}

/// The affine path of a [`Scheduler`]: `x_t = a(t) x0 + b(t) x1`, target `a'(t) x0 + b'(t) x1`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct AffinePath {
    /// Its scheduler.
    pub scheduler: Scheduler,
}

impl ProbPath for AffinePath {
    fn sample<const D: usize>(&self, x0: Tensor<D>, x1: Tensor<D>, t: Tensor<1>) -> PathSample<D> {
        let n = x0.dims()[0];
        let shape = crate::model::per_row::<D>(n);
        let [a, b, da, db] = self.scheduler.tensors(&t).map(|c| c.reshape(shape));
        PathSample {
            x_t: x0.clone() * a + x1.clone() * b,
            target: x0 * da + x1 * db,
            t,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    const ALL: [Scheduler; 6] = [
        Scheduler::Linear,
        Scheduler::Cosine,
        Scheduler::Vp {
            beta_min: 0.1,
            beta_max: 20.0,
        },
        Scheduler::LinearVp,
        Scheduler::Polynomial { n: 2.0 },
        Scheduler::Polynomial { n: 0.5 },
    ];

    /// flow_matching's formulas, written out in its own time `s`, at `s = 1 - t`.
    fn flow_matching(s: &Scheduler, r: f64) -> (f64, f64, f64, f64) {
        match *s {
            Scheduler::Linear => (r, 1.0 - r, 1.0, -1.0),
            Scheduler::Cosine => (
                (PI / 2.0 * r).sin(),
                (PI / 2.0 * r).cos(),
                PI / 2.0 * (PI / 2.0 * r).cos(),
                -PI / 2.0 * (PI / 2.0 * r).sin(),
            ),
            Scheduler::Vp {
                beta_min: b,
                beta_max: bb,
            } => {
                let t = 0.5 * (1.0 - r) * (1.0 - r) * (bb - b) + (1.0 - r) * b;
                let dt = -(1.0 - r) * (bb - b) - b;
                (
                    (-0.5 * t).exp(),
                    (1.0 - (-t).exp()).sqrt(),
                    -0.5 * dt * (-0.5 * t).exp(),
                    0.5 * dt * (-t).exp() / (1.0 - (-t).exp()).sqrt(),
                )
            }
            Scheduler::LinearVp => (r, (1.0 - r * r).sqrt(), 1.0, -r / (1.0 - r * r).sqrt()),
            Scheduler::Polynomial { n } => (
                r.powf(n),
                1.0 - r.powf(n),
                n * r.powf(n - 1.0),
                -n * r.powf(n - 1.0),
            ),
        }
    }

    #[test]
    fn values_and_derivatives_match_flow_matching_in_reversed_time() {
        for s in ALL {
            for t in [0.1, 0.25, 0.5, 0.8, 0.95] {
                let c = s.at(t);
                let (alpha, sigma, d_alpha, d_sigma) = flow_matching(&s, 1.0 - t);
                let close = |x: f64, y: f64| (x - y).abs() < 1e-12 * (1.0 + y.abs());
                assert!(close(c.a, alpha) && close(c.b, sigma), "{s} at {t}");
                assert!(close(c.da, -d_alpha) && close(c.db, -d_sigma), "{s} at {t}");
                // The derivatives are those of the values (central differences).
                let h = 1e-6;
                let (up, down) = (s.at(t + h), s.at(t - h));
                assert!(((up.a - down.a) / (2.0 * h) - c.da).abs() < 1e-5 * (1.0 + c.da.abs()));
                assert!(((up.b - down.b) / (2.0 * h) - c.db).abs() < 1e-5 * (1.0 + c.db.abs()));
            }
        }
    }

    #[test]
    fn the_linear_scheduler_is_the_straight_path_and_snr_inverts() {
        let c = Scheduler::Linear.at(0.3);
        let want = [0.7, 0.3, -1.0, 1.0];
        let got = [c.a, c.b, c.da, c.db];
        assert!(
            got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-12),
            "{got:?}"
        );
        for s in ALL {
            for t in [0.05, 0.3, 0.6, 0.9] {
                let c = s.at(t);
                let back = s.snr_inverse(c.a / c.b);
                assert!((back - t).abs() < 1e-9, "{s}: {t} -> {back}");
            }
        }
    }

    #[test]
    fn predictions_convert_and_round_trip() {
        let device = Device::flex();
        let x0 = Tensor::<2>::from_floats([[0.5, -1.0], [2.0, 0.25]], &device);
        let x1 = Tensor::<2>::from_floats([[-0.3, 0.8], [1.1, -0.6]], &device);
        let max = |a: Tensor<2>, b: Tensor<2>| (a - b).abs().max().into_scalar::<f32>();
        for s in ALL {
            let c = s.at(0.4);
            let x_t = x0.clone() * c.a + x1.clone() * c.b;
            let v = x0.clone() * c.da + x1.clone() * c.db;
            for (kind, prediction) in [
                (Prediction::Velocity, v.clone()),
                (Prediction::Data, x0.clone()),
                (Prediction::Noise, x1.clone()),
            ] {
                let (v2, a2, b2) = convert(kind, prediction, x_t.clone(), c);
                assert!(max(v2, v.clone()) < 1e-4, "{s} {kind}: velocity");
                assert!(max(a2, x0.clone()) < 1e-4, "{s} {kind}: data");
                assert!(max(b2, x1.clone()) < 1e-4, "{s} {kind}: noise");
            }
        }
    }

    #[test]
    fn the_affine_path_of_the_linear_scheduler_is_the_linear_path() {
        let device = Device::flex();
        let x0 = Tensor::<2>::from_floats([[0.5, -1.0], [2.0, 0.25]], &device);
        let x1 = Tensor::<2>::from_floats([[-0.3, 0.8], [1.1, -0.6]], &device);
        let t = Tensor::<1>::from_floats([0.2, 0.7], &device);
        let a = AffinePath::default().sample(x0.clone(), x1.clone(), t.clone());
        let b = super::super::LinearPath.sample(x0, x1, t);
        assert!((a.x_t - b.x_t).abs().max().into_scalar::<f32>() < 1e-6);
        assert!((a.target - b.target).abs().max().into_scalar::<f32>() < 1e-6);
    }

    #[test]
    fn names_parse_and_bad_parameters_are_refused() {
        for s in ALL {
            assert_eq!(s.to_string().parse::<Scheduler>(), Ok(s));
        }
        assert!("polynomial:0".parse::<Scheduler>().is_err());
        assert!("vp:5,1".parse::<Scheduler>().is_err());
        assert!("quadratic".parse::<Scheduler>().is_err());
        assert_eq!("x0".parse::<Prediction>(), Ok(Prediction::Data));
    }
}
