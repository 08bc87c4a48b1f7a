//! Multi-head self-attention over the positions of a feature map, as a burn backend extension:
//! on `flex` each image's heads are one parallel task (scores, softmax and weighted sum as
//! small GEMMs on the projections where they lie, with no copies of transposed or sliced
//! views), and under autodiff a backward pass of its own from the attention weights kept by
//! the forward pass.
//!
//! Per head, with `q`, `k`, `v` `[d, n]` (channels × positions) and `s = 1/√d`:
//! `W = softmax_rows(s·qᵀk)`, `out = v·Wᵀ`; backward: `dv = dout·W`, `dW = doutᵀ·v`,
//! `G = s·W ⊙ (dW - rowsum(dW ⊙ W))`, `dq = k·Gᵀ`, `dk = q·G`.

use std::mem::MaybeUninit;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Flex, backend_extension};
use rayon::prelude::*;

use super::base::{MatRef, flex_tensor, matmul, par_written, values, write_all};

/// Self-attention as a backend extension.
#[backend_extension(Flex, Autodiff)]
pub trait AttentionKernelOps: Backend {
    /// See [`super::attention`].
    fn attention_heads(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self>;
}

/// The sizes of one call.
#[derive(Debug, Clone, Copy)]
struct Dims {
    images: usize,
    heads: usize,
    /// Channels per head.
    d: usize,
    /// Positions (height × width).
    n: usize,
    /// Height and width.
    hw: [usize; 2],
}

impl Dims {
    /// The sizes of `qkv` (`[images, 3·heads·d, h, w]`) split into `heads` heads.
    fn of(qkv: &FlexTensor, heads: usize) -> Self {
        let s = qkv.layout().shape();
        Dims {
            images: s[0],
            heads,
            d: s[1] / 3 / heads,
            n: s[2] * s[3],
            hw: [s[2], s[3]],
        }
    }

    /// Values of one head's `q`, `k`, `v` or output.
    fn head(&self) -> usize {
        self.d * self.n
    }

    /// Values of one image's output (`[heads, d, n]`).
    fn image_out(&self) -> usize {
        self.heads * self.head()
    }

    /// Values of one image's attention weights (`[heads, n, n]`).
    fn image_weights(&self) -> usize {
        self.heads * self.n * self.n
    }

    fn scale(&self) -> f32 {
        1.0 / (self.d as f32).sqrt()
    }

    /// Head `head`'s block of part `part` (0 = q, 1 = k, 2 = v) of one image's `[3, heads, d, n]`.
    fn part<'a>(&self, image: &'a [f32], part: usize, head: usize) -> MatRef<'a> {
        let at = (part * self.heads + head) * self.head();
        MatRef::row_major(&image[at..at + self.head()], self.n)
    }
}

/// `softmax(scale · row)` of each row (`n` values) of `w`, in place.
fn softmax_rows(w: &mut [f32], n: usize, scale: f32) {
    for row in w.chunks_exact_mut(n) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
        let mut sum = 0.0f32;
        for v in row.iter_mut() {
            *v = ((*v - max) * scale).exp();
            sum += *v;
        }
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

/// One image's heads: the output (`[heads, d, n]`) and the attention weights (`[heads, n, n]`).
fn image_forward(s: &Dims, qkv: &[f32], out: &mut [MaybeUninit<f32>], w: &mut [MaybeUninit<f32>]) {
    let (d, n) = (s.d, s.n);
    let (out, w) = (write_all(out, 0.0), write_all(w, 0.0));
    for h in 0..s.heads {
        let w_h = &mut w[h * n * n..][..n * n];
        let (q, k, v) = (s.part(qkv, 0, h), s.part(qkv, 1, h), s.part(qkv, 2, h));
        matmul(n, n, d, w_h, false, q.transposed(), k);
        softmax_rows(w_h, n, s.scale());
        let out_h = &mut out[h * d * n..][..d * n];
        matmul(
            d,
            n,
            n,
            out_h,
            false,
            v,
            MatRef::row_major(w_h, n).transposed(),
        );
    }
}

/// The output `[images, heads·d, h, w]` and the weights `[images, heads, n, n]`, in parallel
/// over the images.
fn forward(s: &Dims, qkv: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (out_len, w_len) = (s.image_out(), s.image_weights());
    let mut out = Vec::with_capacity(s.images * out_len);
    let mut w = Vec::with_capacity(s.images * w_len);
    let per_image = 3 * out_len;
    out.spare_capacity_mut()[..s.images * out_len]
        .par_chunks_mut(out_len)
        .zip(w.spare_capacity_mut()[..s.images * w_len].par_chunks_mut(w_len))
        .enumerate()
        .for_each(|(i, (out, w))| {
            image_forward(s, &qkv[i * per_image..][..per_image], out, w);
        });
    // SAFETY: `image_forward` wrote every value of each image's output and weights.
    unsafe {
        out.set_len(s.images * out_len);
        w.set_len(s.images * w_len);
    }
    (out, w)
}

/// One image's input gradient (`[3, heads, d, n]`: dq, dk, dv) from its projections, weights
/// and output gradient.
fn image_backward(s: &Dims, qkv: &[f32], w: &[f32], dout: &[f32], dqkv: &mut [MaybeUninit<f32>]) {
    let (d, n, scale) = (s.d, s.n, s.scale());
    let dqkv = write_all(dqkv, 0.0);
    let mut g = vec![0.0f32; n * n];
    for h in 0..s.heads {
        let (q, k, v) = (s.part(qkv, 0, h), s.part(qkv, 1, h), s.part(qkv, 2, h));
        let w_h = &w[h * n * n..][..n * n];
        let dout_h = MatRef::row_major(&dout[h * d * n..][..d * n], n);
        let slot = |part: usize| (part * s.heads + h) * d * n;
        let dv = &mut dqkv[slot(2)..][..d * n];
        matmul(d, n, n, dv, false, dout_h, MatRef::row_major(w_h, n));
        matmul(n, n, d, &mut g, false, dout_h.transposed(), v);
        for (g, w) in g.chunks_exact_mut(n).zip(w_h.chunks_exact(n)) {
            let dot: f32 = g.iter().zip(w).map(|(g, w)| g * w).sum();
            for (g, w) in g.iter_mut().zip(w) {
                *g = scale * w * (*g - dot);
            }
        }
        let gm = MatRef::row_major(&g, n);
        matmul(
            d,
            n,
            n,
            &mut dqkv[slot(0)..][..d * n],
            false,
            k,
            gm.transposed(),
        );
        matmul(d, n, n, &mut dqkv[slot(1)..][..d * n], false, q, gm);
    }
}

/// The gradient of `qkv`, in parallel over the images.
fn backward(s: &Dims, qkv: &[f32], w: &[f32], dout: &[f32]) -> Vec<f32> {
    let per_image = 3 * s.image_out();
    let (out_len, w_len) = (s.image_out(), s.image_weights());
    // SAFETY: `image_backward` writes every value of its image's run.
    let (dqkv, _) = unsafe {
        par_written(s.images * per_image, per_image, |i, run| {
            image_backward(
                s,
                &qkv[i * per_image..][..per_image],
                &w[i * w_len..][..w_len],
                &dout[i * out_len..][..out_len],
                run,
            )
        })
    };
    dqkv
}

impl AttentionKernelOps for Flex {
    fn attention_heads(qkv: FlexTensor, heads: usize) -> FlexTensor {
        let s = Dims::of(&qkv, heads);
        let (out, _) = forward(&s, &values(&qkv));
        flex_tensor(out, [s.images, s.heads * s.d, s.hw[0], s.hw[1]])
    }
}

/// What the backward pass keeps: the projections, the attention weights and the sizes.
type AttentionState = (FlexTensor, FlexTensor, Dims);

#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 1> for AttentionBackward {
    type State = AttentionState;

    fn backward(self, ops: Ops<AttentionState, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        let (qkv, w, s) = ops.state;
        let dqkv = backward(&s, &values(&qkv), &values(&w), &values(&grad));
        if let [Some(node)] = ops.parents {
            let shape = [s.images, 3 * s.heads * s.d, s.hw[0], s.hw[1]];
            grads.register::<Flex>(node.id, flex_tensor(dqkv, shape));
        }
    }
}

impl<C: CheckpointStrategy> AttentionKernelOps for Autodiff<Flex, C> {
    fn attention_heads(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self> {
        let node = qkv.node();
        let qkv = qkv.into_primitive();
        match AttentionBackward
            .prepare::<C>([node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let s = Dims::of(&qkv, heads);
                let (out, w) = forward(&s, &values(&qkv));
                let out = flex_tensor(out, [s.images, s.heads * s.d, s.hw[0], s.hw[1]]);
                let w = flex_tensor(w, [s.images, s.heads, s.n, s.n]);
                prep.finish((qkv, w, s), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::attention_heads(qkv, heads)),
        }
    }
}
