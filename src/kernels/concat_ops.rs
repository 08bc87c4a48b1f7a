//! Channel concatenation `[a, b]` of two `[batch, channels, h, w]` maps as a burn backend
//! extension: on `flex` the copies run in parallel over the images, and under autodiff the
//! gradient is split into two contiguous tensors (burn's `cat` copies on one thread and hands
//! its gradients on as strided views, which the kernels downstream then copy again).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Flex, backend_extension};

use super::base::{flex_tensor, par_written, values, write_copy};

/// Channel concatenation as a backend extension.
#[backend_extension(Flex, Autodiff)]
pub trait ConcatKernelOps: Backend {
    /// See [`super::concat_channels`].
    fn concat_channels_par(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self>;
}

fn dims4(t: &FlexTensor) -> [usize; 4] {
    let s = t.layout().shape();
    [s[0], s[1], s[2], s[3]]
}

impl ConcatKernelOps for Flex {
    fn concat_channels_par(a: FlexTensor, b: FlexTensor) -> FlexTensor {
        let ([batch, ca, h, w], cb) = (dims4(&a), dims4(&b)[1]);
        let plane = h * w;
        let (a_len, b_len) = (ca * plane, cb * plane);
        let (av, bv) = (values(&a), values(&b));
        // SAFETY: each image's run is filled by its two copies, which cover it.
        let (out, _) = unsafe {
            par_written(batch * (a_len + b_len), a_len + b_len, |i, run| {
                let (head, tail) = run.split_at_mut(a_len);
                write_copy(head, &av[i * a_len..(i + 1) * a_len]);
                write_copy(tail, &bv[i * b_len..(i + 1) * b_len]);
            })
        };
        flex_tensor(out, [batch, ca + cb, h, w])
    }
}

/// The channels of the two inputs.
type ConcatState = [usize; 2];

#[derive(Debug)]
struct ConcatBackward;

/// The first `ca` and the last `cb` channels of each image of `grad`, as two tensors.
fn split_channels(grad: &FlexTensor, [ca, cb]: ConcatState) -> [FlexTensor; 2] {
    let [batch, _, h, w] = dims4(grad);
    let plane = h * w;
    let g = values(grad);
    let run = (ca + cb) * plane;
    let part = |start: usize, len: usize| {
        // SAFETY: each image's run is one copy of `len` values.
        let (out, _) = unsafe {
            par_written(batch * len, len, |i, dst| {
                write_copy(dst, &g[i * run + start..i * run + start + len]);
            })
        };
        out
    };
    let (a, b) = rayon::join(|| part(0, ca * plane), || part(ca * plane, cb * plane));
    [
        flex_tensor(a, [batch, ca, h, w]),
        flex_tensor(b, [batch, cb, h, w]),
    ]
}

impl Backward<Flex, 2> for ConcatBackward {
    type State = ConcatState;

    fn backward(self, ops: Ops<ConcatState, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        let parts = split_channels(&grad, ops.state);
        for (node, part) in ops.parents.into_iter().zip(parts) {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, part);
            }
        }
    }
}

impl<C: CheckpointStrategy> ConcatKernelOps for Autodiff<Flex, C> {
    fn concat_channels_par(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        let nodes = [a.node(), b.node()];
        let (a, b) = (a.into_primitive(), b.into_primitive());
        let channels = [dims4(&a)[1], dims4(&b)[1]];
        match ConcatBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(channels, Flex::concat_channels_par(a, b)),
            OpsKind::UnTracked(prep) => prep.finish(Flex::concat_channels_par(a, b)),
        }
    }
}
