//! Scaled softmax over the last axis, `softmax(scale · x)`, as a burn backend extension: on
//! `flex` one parallel pass over the rows, and under autodiff a backward pass from the output
//! alone (`dx = scale · y · (g - <g, y>)` per row) instead of burn's chain of element-wise ops.

use super::{assume_written, flex_tensor, par_written, values};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Flex, backend_extension};

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 16;

/// The scaled softmax as a backend extension.
#[backend_extension(Flex, Autodiff)]
pub trait SoftmaxKernelOps: Backend {
    /// See [`super::scaled_softmax`].
    fn scaled_softmax_rows(x: FloatTensor<Self>, scale: f32) -> FloatTensor<Self>;
}

fn dims4(t: &FlexTensor) -> [usize; 4] {
    let s = t.layout().shape();
    [s[0], s[1], s[2], s[3]]
}

/// `softmax(scale · row)` of each row of `x` (rows of `n` values).
fn forward(x: &[f32], n: usize, scale: f32) -> Vec<f32> {
    let task = n * ROWS_PER_TASK;
    // SAFETY: every value of a task's rows is written (the exponentials, then scaled).
    let (y, _) = unsafe {
        par_written(x.len(), task, |i, ys| {
            let xs = &x[i * task..i * task + ys.len()];
            for (y, x) in ys.chunks_mut(n).zip(xs.chunks(n)) {
                let max = x.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
                let mut sum = 0.0f32;
                for (y, x) in y.iter_mut().zip(x) {
                    let e = ((x - max) * scale).exp();
                    y.write(e);
                    sum += e;
                }
                let inv = 1.0 / sum;
                // The row was written just above (covered by the SAFETY note of the block).
                let y = assume_written(y);
                y.iter_mut().for_each(|y| *y *= inv);
            }
        })
    };
    y
}

/// The gradient of the input given the output `y` and its gradient `g`, row by row.
fn backward(y: &[f32], g: &[f32], n: usize, scale: f32) -> Vec<f32> {
    let task = n * ROWS_PER_TASK;
    // SAFETY: every value of a task's rows is written.
    let (dx, _) = unsafe {
        par_written(y.len(), task, |i, dxs| {
            let range = i * task..i * task + dxs.len();
            let (ys, gs) = (&y[range.clone()], &g[range]);
            for ((dx, y), g) in dxs.chunks_mut(n).zip(ys.chunks(n)).zip(gs.chunks(n)) {
                let dot: f32 = y.iter().zip(g).map(|(y, g)| y * g).sum();
                for ((dx, y), g) in dx.iter_mut().zip(y).zip(g) {
                    dx.write(scale * y * (g - dot));
                }
            }
        })
    };
    dx
}

impl SoftmaxKernelOps for Flex {
    fn scaled_softmax_rows(x: FlexTensor, scale: f32) -> FlexTensor {
        let dims = dims4(&x);
        flex_tensor(forward(&values(&x), dims[3], scale), dims)
    }
}

/// What the backward pass keeps: the output and the scale.
type SoftmaxState = (FlexTensor, f32);

#[derive(Debug)]
struct SoftmaxBackward;

impl Backward<Flex, 1> for SoftmaxBackward {
    type State = SoftmaxState;

    fn backward(self, ops: Ops<SoftmaxState, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        let (y, scale) = ops.state;
        let dims = dims4(&y);
        let dx = backward(&values(&y), &values(&grad), dims[3], scale);
        if let [Some(node)] = ops.parents {
            grads.register::<Flex>(node.id, flex_tensor(dx, dims));
        }
    }
}

impl<C: CheckpointStrategy> SoftmaxKernelOps for Autodiff<Flex, C> {
    fn scaled_softmax_rows(x: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        let node = x.node();
        let x = x.into_primitive();
        match SoftmaxBackward
            .prepare::<C>([node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = Flex::scaled_softmax_rows(x, scale);
                prep.finish((y.clone(), scale), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::scaled_softmax_rows(x, scale)),
        }
    }
}
