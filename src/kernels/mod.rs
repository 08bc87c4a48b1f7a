//! Hand-written CPU kernels, registered with burn through its backend-extension mechanism.
//!
//! [`conv2d`] and [`conv_transpose2d`] look like burn's functions of the same names
//! ([`conv2d_skip`] and [`conv_transpose2d_skip`] take a U-Net skip connection as a second
//! input instead of a concatenated copy); [`group_norm_silu`] is a U-Net block's tail (time
//! shift, GroupNorm, SiLU) in one pass; [`concat_channels`] is a parallel `cat` along the
//! channels and [`attention`] multi-head self-attention from its projections. On the `flex`
//! CPU backend they run the kernels of [`conv_gemm`] and [`norm_silu`] and the loops of
//! `concat_ops` and `attention_ops` (registered in `conv_ops`, `norm_ops`, `concat_ops` and
//! `attention_ops`), with their own backward passes under autodiff; on any other device they
//! are burn's plain composition (`plain_*`, or burn's `cat`). Tests compare both paths, forward
//! and gradients.

#[macro_use]
mod simd;
mod attention_ops;
mod base;
mod concat_ops;
pub mod conv_gemm;
mod conv_ops;
mod norm_ops;
pub mod norm_silu;
mod polyphase;
mod winograd;

use burn::backend::Dispatch;
use burn::tensor::activation::{silu, softmax};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::{DType, Device, Tensor};

pub use attention_ops::AttentionKernelOps;
pub use concat_ops::ConcatKernelOps;
pub use conv_ops::ConvKernelOps;
pub use norm_ops::NormKernelOps;

/// Convolution with a square kernel, the same `stride` and zero `padding` on both axes, as
/// PyTorch's `Conv2d`: `x` `[batch, in, h, w]`, `weight` `[out, in, k, k]`, `bias` `[out]`.
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    stride: usize,
    padding: usize,
) -> Tensor<4> {
    convolve(false, x, None, weight, bias, [stride, padding])
}

/// [`conv2d`] of the channel concatenation `[x, skip]`, without building it.
pub fn conv2d_skip(
    x: Tensor<4>,
    skip: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    stride: usize,
    padding: usize,
) -> Tensor<4> {
    convolve(false, x, Some(skip), weight, bias, [stride, padding])
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
    convolve(true, x, None, weight, bias, [stride, padding])
}

/// [`conv_transpose2d`] of the channel concatenation `[x, skip]`, without building it.
pub fn conv_transpose2d_skip(
    x: Tensor<4>,
    skip: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    stride: usize,
    padding: usize,
) -> Tensor<4> {
    convolve(true, x, Some(skip), weight, bias, [stride, padding])
}

/// Routes a (transposed) convolution of `[x, skip]` to the kernels on `flex`, or to burn's
/// composition elsewhere.
fn convolve(
    transposed: bool,
    x: Tensor<4>,
    skip: Option<Tensor<4>>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    [stride, padding]: [usize; 2],
) -> Tensor<4> {
    if !on_flex(&x) {
        let x = match skip {
            Some(skip) => Tensor::cat(vec![x, skip], 1),
            None => x,
        };
        return match transposed {
            false => plain_conv2d(x, weight, bias, stride, padding),
            true => plain_conv_transpose2d(x, weight, bias, stride, padding),
        };
    }
    let (x, weight, bias) = (
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
    );
    Tensor::from_dispatch(match (transposed, skip.map(Tensor::into_dispatch)) {
        (false, None) => Dispatch::conv2d_gemm(x, weight, bias, stride, padding),
        (false, Some(s)) => Dispatch::conv2d_skip_gemm(x, s, weight, bias, stride, padding),
        (true, None) => Dispatch::conv_transpose2d_gemm(x, weight, bias, stride, padding),
        (true, Some(s)) => {
            Dispatch::conv_transpose2d_skip_gemm(x, s, weight, bias, stride, padding)
        }
    })
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
    match on_flex(&h) {
        true => fused_norm(h, Some(shift), gamma, beta, groups, eps, true),
        false => plain_group_norm_silu(h, shift, gamma, beta, groups, eps),
    }
}

/// `silu(gamma · group_norm(h) + beta)` with a `gamma` and `beta` per image and channel
/// (`[batch, channels]`): the modulated normalisation of a residual block, where the time (and
/// class) embedding sets scale and shift (`gamma = weight · (1 + scale)`,
/// `beta = bias · (1 + scale) + shift`). The same fused kernel as [`group_norm_silu`] on `flex`.
pub fn group_norm_silu_modulated(
    h: Tensor<4>,
    gamma: Tensor<2>,
    beta: Tensor<2>,
    groups: usize,
    eps: f32,
) -> Tensor<4> {
    match on_flex(&h) {
        true => fused_norm(h, None, gamma, beta, groups, eps, true),
        false => plain_group_norm_silu_modulated(h, gamma, beta, groups, eps),
    }
}

/// `gamma · group_norm(h) + beta` with `gamma`, `beta` `[channels]`: GroupNorm with its affine
/// map and no activation (as before attention); on `flex` the fused kernel of
/// [`group_norm_silu`] with SiLU left out.
pub fn group_norm_affine(
    h: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    groups: usize,
    eps: f32,
) -> Tensor<4> {
    match on_flex(&h) {
        true => fused_norm(h, None, gamma, beta, groups, eps, false),
        false => plain_group_norm_affine(h, gamma, beta, groups, eps),
    }
}

/// The fused kernel of the three above on `flex` (no shift: zeros).
fn fused_norm<const D: usize>(
    h: Tensor<4>,
    shift: Option<Tensor<2>>,
    gamma: Tensor<D>,
    beta: Tensor<D>,
    groups: usize,
    eps: f32,
    silu: bool,
) -> Tensor<4> {
    let [b, c, ..] = h.dims();
    let shift = shift.unwrap_or_else(|| Tensor::zeros([b, c], &h.device()));
    Tensor::from_dispatch(<Dispatch as NormKernelOps>::group_norm_silu_fused(
        h.into_dispatch(),
        shift.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        groups,
        eps,
        silu,
    ))
}

/// The channel concatenation `[a, b]` of two `[batch, channels, h, w]` maps, as burn's
/// `Tensor::cat(vec![a, b], 1)`; on `flex`, copied in parallel with a contiguous gradient for
/// each input.
pub fn concat_channels(a: Tensor<4>, b: Tensor<4>) -> Tensor<4> {
    if on_flex(&a) {
        Tensor::from_dispatch(<Dispatch as ConcatKernelOps>::concat_channels_par(
            a.into_dispatch(),
            b.into_dispatch(),
        ))
    } else {
        Tensor::cat(vec![a, b], 1)
    }
}

/// Multi-head self-attention over the positions of a feature map from its projections `qkv`
/// `[batch, 3·c, h, w]` (queries, keys and values, each `c = heads·d` channels, head-major):
/// per head, `out = v · softmax(qᵀk / √d)ᵀ`, as `[batch, c, h, w]`. On `flex` each image's
/// heads are one parallel task, with a backward pass of their own.
pub fn attention(qkv: Tensor<4>, heads: usize) -> Tensor<4> {
    if on_flex(&qkv) {
        Tensor::from_dispatch(<Dispatch as AttentionKernelOps>::attention_heads(
            qkv.into_dispatch(),
            heads,
        ))
    } else {
        plain_attention(qkv, heads)
    }
}

/// [`attention`] as burn's own composition (what the kernel is tested against).
pub fn plain_attention(qkv: Tensor<4>, heads: usize) -> Tensor<4> {
    let [b, c3, h, w] = qkv.dims();
    let (c, n) = (c3 / 3, h * w);
    let d = c / heads;
    let qkv = qkv.reshape([b, 3, heads, d, n]);
    let part = |i: usize| qkv.clone().narrow(1, i, 1).reshape([b, heads, d, n]);
    let (q, k, v) = (part(0), part(1), part(2));
    // weights[i, j] = softmax_j(q_i . k_j / sqrt(d)); out_i = sum_j weights[i, j] v_j.
    let weights = softmax(q.swap_dims(2, 3).matmul(k) * (1.0 / (d as f32).sqrt()), 3);
    v.matmul(weights.swap_dims(2, 3)).reshape([b, c, h, w])
}

/// `group_norm(h)` over `groups` groups, without the affine map: burn's composition (of the
/// plain functions above and the tests).
pub fn group_norm(h: Tensor<4>, groups: usize, eps: f32) -> Tensor<4> {
    let [b, c, height, width] = h.dims();
    let grouped = h.reshape([b, groups, (c / groups) * height * width]);
    let (var, mean) = grouped.clone().var_mean_bias(2);
    ((grouped - mean) / (var + eps as f64).sqrt()).reshape([b, c, height, width])
}

/// [`group_norm_affine`] as burn's own composition (what the kernel is tested against).
pub fn plain_group_norm_affine(
    h: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    groups: usize,
    eps: f32,
) -> Tensor<4> {
    let c = h.dims()[1];
    group_norm(h, groups, eps) * gamma.reshape([1, c, 1, 1]) + beta.reshape([1, c, 1, 1])
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
    let [b, c, ..] = h.dims();
    let normed = group_norm(h + shift.reshape([b, c, 1, 1]), groups, eps);
    silu(normed * gamma.reshape([1, c, 1, 1]) + beta.reshape([1, c, 1, 1]))
}

/// [`group_norm_silu_modulated`] as burn's own composition (what the kernel is tested against).
pub fn plain_group_norm_silu_modulated(
    h: Tensor<4>,
    gamma: Tensor<2>,
    beta: Tensor<2>,
    groups: usize,
    eps: f32,
) -> Tensor<4> {
    let [b, c, ..] = h.dims();
    let normed = group_norm(h, groups, eps);
    silu(normed * gamma.reshape([b, c, 1, 1]) + beta.reshape([b, c, 1, 1]))
}

/// Whether the kernels serve `x`: `f32` values on the `flex` backend.
fn on_flex(x: &Tensor<4>) -> bool {
    x.dtype() == DType::F32 && x.device().without_autodiff() == Device::flex()
}
