//! The fused time-shift + GroupNorm + SiLU ([`super::norm_silu`], SiLU optional) as a burn
//! backend extension, for `flex` and for autodiff over `flex` (hand-written backward pass).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Flex, backend_extension};
use burn::tensor::TensorData;

use super::base::{flex_tensor, values};
use super::norm_silu::{self, NormParams, NormShape};

/// The fused block tail as a backend extension.
#[backend_extension(Flex, Autodiff)]
pub trait NormKernelOps: Backend {
    /// See [`super::group_norm_silu`] (and [`super::group_norm_affine`], with `silu` off).
    fn group_norm_silu_fused(
        h: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        eps: f32,
        silu: bool,
    ) -> FloatTensor<Self>;
}

fn norm_shape(h: &FlexTensor, groups: usize) -> NormShape {
    let hs = h.layout().shape();
    NormShape {
        batch: hs[0],
        channels: hs[1],
        plane: hs[2] * hs[3],
        groups,
    }
}

/// Runs `f` with the raw values of the op's `[shift, gamma, beta]`, `eps` and `silu`.
fn with_params<R>(
    tensors: [&FlexTensor; 3],
    (eps, silu): (f32, bool),
    f: impl FnOnce(&NormParams) -> R,
) -> R {
    let [shift, gamma, beta] = tensors.map(values);
    f(&NormParams {
        shift: &shift,
        gamma: &gamma,
        beta: &beta,
        eps,
        silu,
    })
}

impl NormKernelOps for Flex {
    fn group_norm_silu_fused(
        h: FlexTensor,
        shift: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        groups: usize,
        eps: f32,
        silu: bool,
    ) -> FlexTensor {
        let shape = norm_shape(&h, groups);
        let mut h = h;
        let len = shape.batch * shape.channels * shape.plane;
        // A conv output nobody else holds (inference) is normalised where it lies.
        if h.is_contiguous()
            && let Some(hy) = h.try_storage_mut::<f32>()
            && hy.len() == len
        {
            with_params([&shift, &gamma, &beta], (eps, silu), |params| {
                norm_silu::forward_in_place(&shape, hy, params)
            });
            return h;
        }
        let y = with_params([&shift, &gamma, &beta], (eps, silu), |params| {
            norm_silu::forward(&shape, &values(&h), params)
        });
        let dims = h.layout().shape();
        flex_tensor(y, [dims[0], dims[1], dims[2], dims[3]])
    }
}

/// What the backward pass of the fused GroupNorm keeps: its four inputs, groups, epsilon and
/// whether SiLU follows.
type NormState = ([FlexTensor; 4], usize, f32, bool);

#[derive(Debug)]
struct GroupNormSiluBackward;

impl Backward<Flex, 4> for GroupNormSiluBackward {
    type State = NormState;

    fn backward(self, ops: Ops<NormState, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        let ([h, shift, gamma, beta], groups, eps, silu) = ops.state;
        let shape = norm_shape(&h, groups);
        let dims = h.layout().shape().to_vec();
        let affine_dims = gamma.layout().shape().to_vec();
        let g = with_params([&shift, &gamma, &beta], (eps, silu), |params| {
            norm_silu::backward(&shape, &values(&h), params, &values(&grad))
        });
        let outputs = [
            TensorData::new(g.input, dims),
            TensorData::new(g.shift, [shape.batch, shape.channels]),
            TensorData::new(g.gamma, affine_dims.clone()),
            TensorData::new(g.beta, affine_dims),
        ];
        for (node, data) in ops.parents.into_iter().zip(outputs) {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, FlexTensor::from_data(data));
            }
        }
    }
}

impl<C: CheckpointStrategy> NormKernelOps for Autodiff<Flex, C> {
    fn group_norm_silu_fused(
        h: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        eps: f32,
        silu: bool,
    ) -> FloatTensor<Self> {
        let nodes = [h.node(), shift.node(), gamma.node(), beta.node()];
        let inputs = [h, shift, gamma, beta].map(|t| t.into_primitive());
        match GroupNormSiluBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let [h, shift, gamma, beta] = inputs.clone();
                let output = Flex::group_norm_silu_fused(h, shift, gamma, beta, groups, eps, silu);
                prep.finish((inputs, groups, eps, silu), output)
            }
            OpsKind::UnTracked(prep) => {
                let [h, shift, gamma, beta] = inputs;
                prep.finish(Flex::group_norm_silu_fused(
                    h, shift, gamma, beta, groups, eps, silu,
                ))
            }
        }
    }
}
