//! The probability path: where a point between data and noise sits at time `t`, and the
//! velocity it moves with (flow_matching's `ProbPath`). flowmatch's convention: t = 0 is data,
//! t = 1 is noise.
//!
//! A path is a small trait, so other paths (affine paths with other schedulers) fit without
//! touching the losses or the loop; [`LinearPath`] is today's straight line, the path of
//! rectified flow and of OT conditional flow matching with `sigma = 0`.

use burn::tensor::Tensor;

use crate::model::per_row;

/// A point on the path, its time and the velocity the model should predict there.
#[derive(Debug, Clone)]
pub struct PathSample<const D: usize> {
    /// The point `x_t` (`[batch, ...]`).
    pub x_t: Tensor<D>,
    /// Its time (`[batch]`).
    pub t: Tensor<1>,
    /// The conditional velocity `d x_t / dt` at `x_t`: the regression target.
    pub target: Tensor<D>,
}

/// A probability path from data (t = 0) to noise (t = 1), conditioned on one pair.
pub trait ProbPath {
    /// The point at times `t` (`[batch]`) on the path from data `x0` to noise `x1` (same shape,
    /// any rank), with its velocity.
    fn sample<const D: usize>(&self, x0: Tensor<D>, x1: Tensor<D>, t: Tensor<1>) -> PathSample<D>;
}

/// The straight line `x_t = (1 - t) x0 + t x1`, whose velocity is `x1 - x0` at every time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinearPath;

impl LinearPath {
    /// The point at times `t` on the line from `x0` to `x1`.
    pub fn point<const D: usize>(x0: Tensor<D>, x1: Tensor<D>, t: Tensor<1>) -> Tensor<D> {
        let b = x0.dims()[0];
        let t = t.reshape(per_row::<D>(b));
        x0 * (t.clone().neg() + 1.0) + x1 * t
    }
}

impl ProbPath for LinearPath {
    fn sample<const D: usize>(&self, x0: Tensor<D>, x1: Tensor<D>, t: Tensor<1>) -> PathSample<D> {
        PathSample {
            x_t: LinearPath::point(x0.clone(), x1.clone(), t.clone()),
            target: x1 - x0,
            t,
        }
    }
}
