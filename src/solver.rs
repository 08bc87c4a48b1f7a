//! ODE solvers that carry noise (t = 1) to data (t = 0) along a velocity field.

use burn::tensor::Tensor;

use crate::model::SimpleUNet;

/// Anything that predicts a velocity for a batch of states at one time.
pub trait VelocityField {
    /// The velocity at states `x` (`[batch, c, h, w]`), all at time `t`.
    fn velocity(&self, x: Tensor<4>, t: f32) -> Tensor<4>;
}

impl VelocityField for SimpleUNet {
    fn velocity(&self, x: Tensor<4>, t: f32) -> Tensor<4> {
        let [b, ..] = x.dims();
        let times = Tensor::<1>::full([b], t, &x.device());
        self.forward(x, times)
    }
}

/// The end state of an integration and the number of velocity evaluations it used.
#[derive(Debug, Clone)]
pub struct Solution {
    /// The state at t = 0.
    pub x: Tensor<4>,
    /// Number of function (velocity-field) evaluations.
    pub nfe: usize,
}

/// The reference sampler: `steps` uniform Euler steps from t = 1 to t = 0,
/// `x <- x - v(x, t_i) / steps` with `t_i = 1 - i / steps`.
///
/// `observe(i, t_i, x)` sees the state before step `i`, for trajectory views.
pub fn euler<F: VelocityField>(
    field: &F,
    x1: Tensor<4>,
    steps: usize,
    mut observe: impl FnMut(usize, f32, &Tensor<4>),
) -> Solution {
    let dt = 1.0 / steps as f32;
    let mut x = x1;
    for i in 0..steps {
        let t = 1.0 - i as f32 / steps as f32;
        observe(i, t, &x);
        x = x.clone() - field.velocity(x, t) * dt;
    }
    Solution { x, nfe: steps }
}
