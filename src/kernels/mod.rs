//! Hand-written CPU kernels, registered with burn through its backend-extension mechanism.
//!
//! [`conv2d`] and [`conv_transpose2d`] look like burn's functions of the same names;
//! [`group_norm_silu`] is a U-Net block's tail (time shift, GroupNorm, SiLU) in one pass. On the
//! `flex` CPU backend they run the kernels of [`conv_gemm`] and [`norm_silu`], with their own
//! backward pass under autodiff; on any other device they are burn's plain composition
//! (`plain_*`). Tests compare both paths, forward and gradients.

pub mod conv_gemm;
pub mod norm_silu;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::activation::silu;
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::{DType, Device, Tensor, TensorData};
use rayon::prelude::*;

use conv_gemm::{ConvGeometry, conv_forward, conv_input_grad, conv_weight_grad};
use norm_silu::{NormParams, NormShape};

/// Convolution with a square `kernel`, the same `stride` and zero `padding` on both axes, as
/// PyTorch's `Conv2d`: `x` `[batch, in, h, w]`, `weight` `[out, in, k, k]`, `bias` `[out]`.
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    stride: usize,
    padding: usize,
) -> Tensor<4> {
    if on_flex(&x) {
        Tensor::from_dispatch(<Dispatch as CpuKernelOps>::conv2d_gemm(
            x.into_dispatch(),
            weight.into_dispatch(),
            bias.into_dispatch(),
            stride,
            padding,
        ))
    } else {
        plain_conv2d(x, weight, bias, stride, padding)
    }
}

/// Transposed convolution as PyTorch's `ConvTranspose2d` (no output padding): `x`
/// `[batch, in, h, w]`, `weight` `[in, out, k, k]`, `bias` `[out]`; output size
/// `(h - 1)·stride - 2·padding + k`.
pub fn conv_transpose2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    stride: usize,
    padding: usize,
) -> Tensor<4> {
    if on_flex(&x) {
        Tensor::from_dispatch(<Dispatch as CpuKernelOps>::conv_transpose2d_gemm(
            x.into_dispatch(),
            weight.into_dispatch(),
            bias.into_dispatch(),
            stride,
            padding,
        ))
    } else {
        plain_conv_transpose2d(x, weight, bias, stride, padding)
    }
}

/// [`conv2d`] as burn's own composition (what the kernels are tested against).
pub fn plain_conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    stride: usize,
    padding: usize,
) -> Tensor<4> {
    let options = ConvOptions::new([stride; 2], [padding; 2], [1, 1], 1);
    burn::tensor::module::conv2d(x, weight, Some(bias), options)
}

/// [`conv_transpose2d`] as burn's own composition (what the kernels are tested against).
pub fn plain_conv_transpose2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    stride: usize,
    padding: usize,
) -> Tensor<4> {
    let options = ConvTransposeOptions::new([stride; 2], [padding; 2], [0, 0], [1, 1], 1);
    burn::tensor::module::conv_transpose2d(x, weight, Some(bias), options)
}

/// `silu(group_norm(h + shift))`: `h` `[batch, channels, height, width]` plus a per-(image,
/// channel) `shift` `[batch, channels]`, GroupNorm over `groups` groups with scale `gamma` and
/// offset `beta` (`[channels]`) and variance epsilon `eps`, then SiLU.
pub fn group_norm_silu(
    h: Tensor<4>,
    shift: Tensor<2>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    groups: usize,
    eps: f32,
) -> Tensor<4> {
    if on_flex(&h) {
        Tensor::from_dispatch(<Dispatch as CpuKernelOps>::group_norm_silu_fused(
            h.into_dispatch(),
            shift.into_dispatch(),
            gamma.into_dispatch(),
            beta.into_dispatch(),
            groups,
            eps,
        ))
    } else {
        plain_group_norm_silu(h, shift, gamma, beta, groups, eps)
    }
}

/// [`group_norm_silu`] as burn's own composition (what the kernel is tested against).
pub fn plain_group_norm_silu(
    h: Tensor<4>,
    shift: Tensor<2>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    groups: usize,
    eps: f32,
) -> Tensor<4> {
    let [b, c, height, width] = h.dims();
    let grouped =
        (h + shift.reshape([b, c, 1, 1])).reshape([b, groups, (c / groups) * height * width]);
    let (var, mean) = grouped.clone().var_mean_bias(2);
    let normed = ((grouped - mean) / (var + eps as f64).sqrt()).reshape([b, c, height, width]);
    silu(normed * gamma.reshape([1, c, 1, 1]) + beta.reshape([1, c, 1, 1]))
}

/// Whether the kernels serve `x`: `f32` values on the `flex` backend.
fn on_flex(x: &Tensor<4>) -> bool {
    x.dtype() == DType::F32 && x.device().without_autodiff() == Device::flex()
}

/// The kernels as a backend extension: implemented for `flex` and for autodiff over `flex`
/// (with hand-written backward passes).
#[backend_extension(Flex, Autodiff)]
pub trait CpuKernelOps: Backend {
    /// See [`group_norm_silu`].
    fn group_norm_silu_fused(
        h: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        eps: f32,
    ) -> FloatTensor<Self>;

    /// See [`conv2d`].
    fn conv2d_gemm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self>;

    /// See [`conv_transpose2d`].
    fn conv_transpose2d_gemm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self>;
}

/// A vector of `len` values computed in parallel: `fill(i, chunk)` receives the `i`-th run of
/// `chunk_len` values (the last may be shorter), zeroed on the worker thread, not serially
/// before the parallel work starts.
pub(crate) fn par_zeroed(
    len: usize,
    chunk_len: usize,
    fill: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk_len.max(1))
        .enumerate()
        .for_each(|(i, chunk)| {
            chunk.iter_mut().for_each(|v| {
                v.write(0.0);
            });
            // SAFETY: every element of `chunk` was initialised just above.
            let chunk = unsafe {
                std::slice::from_raw_parts_mut(chunk.as_mut_ptr().cast::<f32>(), chunk.len())
            };
            fill(i, chunk);
        });
    // SAFETY: the chunks cover `0..len` and each was initialised.
    unsafe { out.set_len(len) };
    out
}

/// The geometry of a convolution of `x` by `weight` (`[out, in, k, k]`).
fn conv_geometry(
    x: &FlexTensor,
    weight: &FlexTensor,
    stride: usize,
    padding: usize,
) -> ConvGeometry {
    let xs = x.layout().shape();
    let ws = weight.layout().shape();
    ConvGeometry {
        batch: xs[0],
        c_in: xs[1],
        c_out: ws[0],
        in_hw: [xs[2], xs[3]],
        kernel: ws[2],
        stride,
        padding,
    }
}

/// The convolution that a transposed convolution of `x` by `weight` (`[in, out, k, k]`) is the
/// adjoint of: it maps the transposed convolution's output back to its input.
fn transposed_geometry(
    x: &FlexTensor,
    weight: &FlexTensor,
    stride: usize,
    padding: usize,
) -> ConvGeometry {
    let xs = x.layout().shape();
    let ws = weight.layout().shape();
    let k = ws[2];
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

fn values(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(slice) => std::borrow::Cow::Borrowed(slice),
        None => std::borrow::Cow::Owned(t.to_contiguous().as_slice::<f32>().unwrap().to_vec()),
    }
}

fn flex_tensor(values: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// Per-channel sums of `dy` `[batch, channels, plane]`: the bias gradient.
fn bias_grad(dy: &[f32], channels: usize, plane: usize) -> FlexTensor {
    let per_image_channel: Vec<f32> = dy
        .par_chunks(plane)
        .map(|image_channel| image_channel.iter().sum::<f32>())
        .collect();
    let mut sums = vec![0.0f32; channels];
    for (i, s) in per_image_channel.iter().enumerate() {
        sums[i % channels] += s;
    }
    FlexTensor::from_data(TensorData::new(sums, [channels]))
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

impl CpuKernelOps for Flex {
    fn group_norm_silu_fused(
        h: FlexTensor,
        shift: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        groups: usize,
        eps: f32,
    ) -> FlexTensor {
        let shape = norm_shape(&h, groups);
        let dims = h.layout().shape().to_vec();
        let (shift, gamma, beta) = (values(&shift), values(&gamma), values(&beta));
        let params = NormParams {
            shift: &shift,
            gamma: &gamma,
            beta: &beta,
            eps,
        };
        let y = norm_silu::forward(&shape, &values(&h), &params);
        flex_tensor(y, [dims[0], dims[1], dims[2], dims[3]])
    }

    fn conv2d_gemm(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        stride: usize,
        padding: usize,
    ) -> FlexTensor {
        let g = conv_geometry(&x, &weight, stride, padding);
        let y = conv_forward(&g, &values(&x), &values(&weight), Some(&values(&bias)));
        let [h, w] = g.out_hw();
        flex_tensor(y, [g.batch, g.c_out, h, w])
    }

    fn conv_transpose2d_gemm(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        stride: usize,
        padding: usize,
    ) -> FlexTensor {
        let g = transposed_geometry(&x, &weight, stride, padding);
        let mut y = conv_input_grad(&g, &values(&x), &values(&weight));
        let plane = g.in_hw[0] * g.in_hw[1];
        let bias = values(&bias);
        y.par_chunks_mut(plane)
            .enumerate()
            .for_each(|(i, image_channel)| {
                let shift = bias[i % g.c_in];
                image_channel.iter_mut().for_each(|v| *v += shift);
            });
        flex_tensor(y, [g.batch, g.c_in, g.in_hw[0], g.in_hw[1]])
    }
}

/// What the backward pass of a GEMM convolution keeps: its input, weight and geometry.
type ConvState = (FlexTensor, FlexTensor, ConvGeometry);

#[derive(Debug)]
struct Conv2dGemmBackward;

impl Backward<Flex, 3> for Conv2dGemmBackward {
    type State = ConvState;

    fn backward(self, ops: Ops<ConvState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_weight, node_bias] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (x, weight, g) = ops.state;
        let dy = values(&grad);
        let [h, w] = g.out_hw();
        if let Some(node) = node_x {
            let dx = conv_input_grad(&g, &dy, &values(&weight));
            let shape = [g.batch, g.c_in, g.in_hw[0], g.in_hw[1]];
            grads.register::<Flex>(node.id, flex_tensor(dx, shape));
        }
        if let Some(node) = node_weight {
            let dw = conv_weight_grad(&g, &values(&x), &dy);
            let shape = [g.c_out, g.c_in, g.kernel, g.kernel];
            grads.register::<Flex>(node.id, flex_tensor(dw, shape));
        }
        if let Some(node) = node_bias {
            grads.register::<Flex>(node.id, bias_grad(&dy, g.c_out, h * w));
        }
    }
}

#[derive(Debug)]
struct ConvTranspose2dGemmBackward;

impl Backward<Flex, 3> for ConvTranspose2dGemmBackward {
    type State = ConvState;

    fn backward(self, ops: Ops<ConvState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_weight, node_bias] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        // `g` is the convolution this op is the adjoint of: its input is our output.
        let (x, weight, g) = ops.state;
        let dy = values(&grad);
        let [h, w] = g.out_hw();
        if let Some(node) = node_x {
            let dx = conv_forward(&g, &dy, &values(&weight), None);
            grads.register::<Flex>(node.id, flex_tensor(dx, [g.batch, g.c_out, h, w]));
        }
        if let Some(node) = node_weight {
            let dw = conv_weight_grad(&g, &dy, &values(&x));
            let shape = [g.c_out, g.c_in, g.kernel, g.kernel];
            grads.register::<Flex>(node.id, flex_tensor(dw, shape));
        }
        if let Some(node) = node_bias {
            grads.register::<Flex>(node.id, bias_grad(&dy, g.c_in, g.in_hw[0] * g.in_hw[1]));
        }
    }
}

/// What the backward pass of the fused GroupNorm keeps: its four inputs, groups and epsilon.
type NormState = ([FlexTensor; 4], usize, f32);

#[derive(Debug)]
struct GroupNormSiluBackward;

impl Backward<Flex, 4> for GroupNormSiluBackward {
    type State = NormState;

    fn backward(self, ops: Ops<NormState, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        let ([h, shift, gamma, beta], groups, eps) = ops.state;
        let shape = norm_shape(&h, groups);
        let dims = h.layout().shape().to_vec();
        let (shift_v, gamma_v, beta_v) = (values(&shift), values(&gamma), values(&beta));
        let params = NormParams {
            shift: &shift_v,
            gamma: &gamma_v,
            beta: &beta_v,
            eps,
        };
        let g = norm_silu::backward(&shape, &values(&h), &params, &values(&grad));
        let outputs = [
            TensorData::new(g.input, dims),
            TensorData::new(g.shift, [shape.batch, shape.channels]),
            TensorData::new(g.gamma, [shape.channels]),
            TensorData::new(g.beta, [shape.channels]),
        ];
        for (node, data) in ops.parents.into_iter().zip(outputs) {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, FlexTensor::from_data(data));
            }
        }
    }
}

impl<C: CheckpointStrategy> CpuKernelOps for Autodiff<Flex, C> {
    fn group_norm_silu_fused(
        h: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        eps: f32,
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
                let output = Flex::group_norm_silu_fused(h, shift, gamma, beta, groups, eps);
                prep.finish((inputs, groups, eps), output)
            }
            OpsKind::UnTracked(prep) => {
                let [h, shift, gamma, beta] = inputs;
                prep.finish(Flex::group_norm_silu_fused(
                    h, shift, gamma, beta, groups, eps,
                ))
            }
        }
    }

    fn conv2d_gemm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        let nodes = [x.node(), weight.node(), bias.node()];
        let (x, weight, bias) = (
            x.into_primitive(),
            weight.into_primitive(),
            bias.into_primitive(),
        );
        match Conv2dGemmBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let g = conv_geometry(&x, &weight, stride, padding);
                let state = (x.clone(), weight.clone(), g);
                prep.finish(state, Flex::conv2d_gemm(x, weight, bias, stride, padding))
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(Flex::conv2d_gemm(x, weight, bias, stride, padding))
            }
        }
    }

    fn conv_transpose2d_gemm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        let nodes = [x.node(), weight.node(), bias.node()];
        let (x, weight, bias) = (
            x.into_primitive(),
            weight.into_primitive(),
            bias.into_primitive(),
        );
        match ConvTranspose2dGemmBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let g = transposed_geometry(&x, &weight, stride, padding);
                let state = (x.clone(), weight.clone(), g);
                prep.finish(
                    state,
                    Flex::conv_transpose2d_gemm(x, weight, bias, stride, padding),
                )
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::conv_transpose2d_gemm(
                x, weight, bias, stride, padding,
            )),
        }
    }
}
