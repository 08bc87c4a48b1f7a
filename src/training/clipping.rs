//! Global gradient-norm clipping, as PyTorch's `clip_grad_norm_` (burn's own clipping works
//! per parameter).

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

/// PyTorch's `clip_grad_norm_` factor: `min(1, max_norm / (norm + 1e-6))`.
pub fn clip_factor(norm: f32, max_norm: f32) -> f32 {
    (max_norm / (norm + 1e-6)).min(1.0)
}

/// The L2 norm of all gradients of `model` taken together (not per parameter).
pub fn global_grad_norm<M: Module>(model: &M, grads: &GradientsParams) -> f32 {
    struct SquaredSums<'a> {
        grads: &'a GradientsParams,
        sums: Vec<Tensor<1>>,
    }
    impl ModuleVisitor for SquaredSums<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(grad) = self.grads.get::<D>(param.id) {
                self.sums.push(grad.square().sum());
            }
        }
    }
    let mut visitor = SquaredSums {
        grads,
        sums: Vec::new(),
    };
    model.visit(&mut visitor);
    if visitor.sums.is_empty() {
        return 0.0;
    }
    Tensor::cat(visitor.sums, 0)
        .sum()
        .sqrt()
        .into_scalar::<f32>()
}

/// Multiplies every gradient of `model` by `factor` (no-op when `factor` is 1).
pub fn scale_grads<M: Module>(model: &M, grads: &mut GradientsParams, factor: f32) {
    if factor >= 1.0 {
        return;
    }
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: f32,
    }
    impl ModuleVisitor for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(grad) = self.grads.remove::<D>(param.id) {
                self.grads.register(param.id, grad * self.factor);
            }
        }
    }
    model.visit(&mut Scale { grads, factor });
}
