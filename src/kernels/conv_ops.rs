//! The GEMM convolutions ([`super::conv_gemm`]) as a burn backend extension, for `flex` and for
//! autodiff over `flex` (hand-written backward passes). Each op takes its input as one tensor or
//! as two (a U-Net skip connection, concatenated along channels without a copy).
//!
//! A transposed convolution is the adjoint of a convolution `A` (the one mapping its output back
//! to its input, [`transposed_geometry`]): forward `Aᵀx` is `A`'s input gradient, the input
//! gradient is `A dy`, and the weight gradient is `A`'s weight gradient with the roles of input
//! and output gradient exchanged.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Flex, backend_extension};
use rayon::prelude::*;

use super::base::{ConvGeometry, Stacked, flex_tensor, par_written, values, write_copy};
use super::conv_gemm::{
    conv_backward, conv_forward, conv_input_grad, conv_transpose, conv_transpose_backward,
    conv_weight_grad,
};

/// The GEMM convolutions as a backend extension.
#[backend_extension(Flex, Autodiff)]
pub trait ConvKernelOps: Backend {
    /// See [`super::conv2d`].
    fn conv2d_gemm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self>;

    /// See [`super::conv2d_skip`].
    fn conv2d_skip_gemm(
        x: FloatTensor<Self>,
        skip: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self>;

    /// See [`super::conv_transpose2d`].
    fn conv_transpose2d_gemm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self>;

    /// See [`super::conv_transpose2d_skip`].
    fn conv_transpose2d_skip_gemm(
        x: FloatTensor<Self>,
        skip: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self>;
}

/// Convolution or transposed convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Conv,
    Transposed,
}

/// A convolution's inputs and settings.
#[derive(Debug, Clone)]
struct ConvCall {
    kind: Kind,
    /// The input, as one tensor or two channel blocks.
    inputs: Vec<FlexTensor>,
    weight: FlexTensor,
    stride: usize,
    padding: usize,
}

impl ConvCall {
    fn channels(&self) -> usize {
        self.inputs.iter().map(|t| t.layout().shape()[1]).sum()
    }

    /// The geometry of the convolution computed by the GEMM kernels: this convolution itself, or
    /// for a transposed convolution the one it is the adjoint of (which maps its output back to
    /// its input).
    fn geometry(&self) -> ConvGeometry {
        let xs = self.inputs[0].layout().shape();
        let ws = self.weight.layout().shape();
        let (k, stride, padding) = (ws[2], self.stride, self.padding);
        match self.kind {
            Kind::Conv => ConvGeometry {
                batch: xs[0],
                c_in: self.channels(),
                c_out: ws[0],
                in_hw: [xs[2], xs[3]],
                kernel: k,
                stride,
                padding,
            },
            Kind::Transposed => {
                let size = |n: usize| (n - 1) * stride + k - 2 * padding;
                ConvGeometry {
                    batch: xs[0],
                    c_in: ws[1],
                    c_out: ws[0],
                    in_hw: [size(xs[2]), size(xs[3])],
                    kernel: k,
                    stride,
                    padding,
                }
            }
        }
    }

    fn forward(&self, bias: &FlexTensor) -> FlexTensor {
        let g = self.geometry();
        let inputs: Vec<_> = self.inputs.iter().map(values).collect();
        let weight = values(&self.weight);
        let bias = values(bias);
        let [out_h, out_w] = g.out_hw();
        match self.kind {
            Kind::Conv => {
                let x = stacked(&inputs, g.batch, g.in_hw[0] * g.in_hw[1]);
                let y = conv_forward(&g, &x, &weight, Some(&bias));
                flex_tensor(y, [g.batch, g.c_out, out_h, out_w])
            }
            Kind::Transposed => {
                let x = stacked(&inputs, g.batch, out_h * out_w);
                let y = conv_transpose(&g, &x, &weight, &bias);
                flex_tensor(y, [g.batch, g.c_in, g.in_hw[0], g.in_hw[1]])
            }
        }
    }

    /// Gradients of the inputs (one per block), the weight and the bias, given the output
    /// gradient `grad`; `needed` says which to compute (inputs..., weight, bias).
    fn backward(&self, grad: &FlexTensor, needed: &[bool]) -> Vec<Option<FlexTensor>> {
        let g = self.geometry();
        let inputs: Vec<_> = self.inputs.iter().map(values).collect();
        let weight = values(&self.weight);
        let dy_raw = values(grad);
        let (in_plane, [out_h, out_w]) = (g.in_hw[0] * g.in_hw[1], g.out_hw());
        let out_plane = out_h * out_w;
        let blocks = self.inputs.len();
        let input_needed = needed[..blocks].iter().any(|n| *n);
        let weight_needed = needed[blocks];
        // Both gradients in one pass over the chunks when both are needed.
        let both = |(dx, dw): (Vec<f32>, Vec<f32>)| (Some(dx), Some(dw));
        let (x_grad, weight_grad, shape, bias_grad) = match self.kind {
            Kind::Conv => {
                let x = stacked(&inputs, g.batch, in_plane);
                let dy = Stacked::single(&dy_raw, g.batch, out_plane);
                let (dx, dw) = match (input_needed, weight_needed) {
                    (true, true) => both(conv_backward(&g, &x, &dy, &weight)),
                    _ => (
                        input_needed.then(|| conv_input_grad(&g, &dy, &weight)),
                        weight_needed.then(|| conv_weight_grad(&g, &x, &dy)),
                    ),
                };
                let shape = [g.batch, g.c_in, g.in_hw[0], g.in_hw[1]];
                let db = needed[blocks + 1].then(|| bias_sums(&dy_raw, g.c_out, out_plane));
                (dx, dw, shape, db)
            }
            Kind::Transposed => {
                let x = stacked(&inputs, g.batch, out_plane);
                let dy = Stacked::single(&dy_raw, g.batch, in_plane);
                let (dx, dw) = match (input_needed, weight_needed) {
                    (true, true) => both(conv_transpose_backward(&g, &x, &dy, &weight)),
                    _ => (
                        input_needed.then(|| conv_forward(&g, &dy, &weight, None)),
                        weight_needed.then(|| conv_weight_grad(&g, &dy, &x)),
                    ),
                };
                let shape = [g.batch, g.c_out, out_h, out_w];
                let db = needed[blocks + 1].then(|| bias_sums(&dy_raw, g.c_in, in_plane));
                (dx, dw, shape, db)
            }
        };
        let x_grad = x_grad.map(|dx| (dx, shape));
        let mut grads: Vec<Option<FlexTensor>> = match x_grad {
            Some((dx, [b, c, h, w])) if blocks == 1 => vec![Some(flex_tensor(dx, [b, c, h, w]))],
            Some((dx, [b, _, h, w])) => {
                let split: Vec<usize> = self.inputs.iter().map(|t| t.layout().shape()[1]).collect();
                split_channels(&dx, b, h * w, &split)
                    .into_iter()
                    .zip(&split)
                    .map(|(part, c)| Some(flex_tensor(part, [b, *c, h, w])))
                    .collect()
            }
            None => vec![None; blocks],
        };
        let ws = self.weight.layout().shape();
        let weight_shape = [ws[0], ws[1], ws[2], ws[3]];
        grads.push(weight_grad.map(|dw| flex_tensor(dw, weight_shape)));
        let bias_len = bias_grad.as_ref().map_or(0, Vec::len);
        grads.push(bias_grad.map(|db| flex_tensor(db, [bias_len])));
        grads
    }
}

/// The stacked view of one or two input blocks.
fn stacked<'a>(
    inputs: &'a [std::borrow::Cow<'a, [f32]>],
    images: usize,
    plane: usize,
) -> Stacked<'a> {
    match inputs {
        [x] => Stacked::single(x, images, plane),
        [x, skip] => Stacked::new([x, skip], images, plane),
        _ => panic!("a convolution takes one or two input blocks"),
    }
}

/// Per-channel sums of `dy` `[batch, channels, plane]`: the bias gradient.
fn bias_sums(dy: &[f32], channels: usize, plane: usize) -> Vec<f32> {
    let per_image_channel: Vec<f32> = dy.par_chunks(plane).map(super::simd::sum).collect();
    let mut sums = vec![0.0f32; channels];
    for (i, s) in per_image_channel.iter().enumerate() {
        sums[i % channels] += s;
    }
    sums
}

/// Splits `[images, Σ channels, plane]` into one `[images, channels[i], plane]` per block.
fn split_channels(x: &[f32], images: usize, plane: usize, channels: &[usize]) -> Vec<Vec<f32>> {
    let total: usize = channels.iter().sum();
    let mut first = 0;
    channels
        .iter()
        .map(|c| {
            let (start, per_image) = (first * plane, c * plane);
            first += c;
            // SAFETY: every run is written with a copy.
            let (part, _) = unsafe {
                par_written(images * per_image, per_image, |b, out| {
                    write_copy(out, &x[b * total * plane + start..][..per_image]);
                })
            };
            part
        })
        .collect()
}

impl ConvKernelOps for Flex {
    fn conv2d_gemm(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        stride: usize,
        padding: usize,
    ) -> FlexTensor {
        ConvCall {
            kind: Kind::Conv,
            inputs: vec![x],
            weight,
            stride,
            padding,
        }
        .forward(&bias)
    }

    fn conv2d_skip_gemm(
        x: FlexTensor,
        skip: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        stride: usize,
        padding: usize,
    ) -> FlexTensor {
        let inputs = vec![x, skip];
        ConvCall {
            kind: Kind::Conv,
            inputs,
            weight,
            stride,
            padding,
        }
        .forward(&bias)
    }

    fn conv_transpose2d_gemm(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        stride: usize,
        padding: usize,
    ) -> FlexTensor {
        let inputs = vec![x];
        ConvCall {
            kind: Kind::Transposed,
            inputs,
            weight,
            stride,
            padding,
        }
        .forward(&bias)
    }

    fn conv_transpose2d_skip_gemm(
        x: FlexTensor,
        skip: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        stride: usize,
        padding: usize,
    ) -> FlexTensor {
        let inputs = vec![x, skip];
        ConvCall {
            kind: Kind::Transposed,
            inputs,
            weight,
            stride,
            padding,
        }
        .forward(&bias)
    }
}

/// The backward pass of a GEMM convolution with `N` parents: the input blocks, weight, bias.
#[derive(Debug)]
struct ConvBackward;

impl<const N: usize> Backward<Flex, N> for ConvBackward {
    type State = ConvCall;

    fn backward(self, ops: Ops<ConvCall, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        let needed = ops.parents.each_ref().map(Option::is_some);
        let computed = ops.state.backward(&grad, &needed);
        for (node, value) in ops.parents.into_iter().zip(computed) {
            if let (Some(node), Some(value)) = (node, value) {
                grads.register::<Flex>(node.id, value);
            }
        }
    }
}

/// Runs `call` under autodiff: the parents are its input blocks, weight and bias.
fn tracked<C: CheckpointStrategy, const N: usize>(
    kind: Kind,
    tensors: [FloatTensor<Autodiff<Flex, C>>; N],
    stride: usize,
    padding: usize,
) -> FloatTensor<Autodiff<Flex, C>> {
    let nodes = tensors.each_ref().map(|t| t.node());
    let mut primitives: Vec<FlexTensor> = tensors.into_iter().map(|t| t.into_primitive()).collect();
    let bias = primitives.pop().expect("bias");
    let weight = primitives.pop().expect("weight");
    let call = ConvCall {
        kind,
        inputs: primitives,
        weight,
        stride,
        padding,
    };
    match ConvBackward.prepare::<C>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let output = call.forward(&bias);
            prep.finish(call, output)
        }
        OpsKind::UnTracked(prep) => prep.finish(call.forward(&bias)),
    }
}

impl<C: CheckpointStrategy> ConvKernelOps for Autodiff<Flex, C> {
    fn conv2d_gemm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        tracked::<C, 3>(Kind::Conv, [x, weight, bias], stride, padding)
    }

    fn conv2d_skip_gemm(
        x: FloatTensor<Self>,
        skip: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        tracked::<C, 4>(Kind::Conv, [x, skip, weight, bias], stride, padding)
    }

    fn conv_transpose2d_gemm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        tracked::<C, 3>(Kind::Transposed, [x, weight, bias], stride, padding)
    }

    fn conv_transpose2d_skip_gemm(
        x: FloatTensor<Self>,
        skip: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        tracked::<C, 4>(Kind::Transposed, [x, skip, weight, bias], stride, padding)
    }
}
