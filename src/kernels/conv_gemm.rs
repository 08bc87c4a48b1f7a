//! Convolution as matrix multiplication on contiguous NCHW `f32` buffers, in all three
//! directions (output, input gradient, weight gradient).
//!
//! The batch is cut into chunks of whole images. For a chunk, `im2col` lays the receptive fields
//! out as a `[c_in·k·k, images·h_out·w_out]` matrix, so each direction is one large GEMM per
//! chunk (the `gemm` crate, the same one burn's `flex` backend uses):
//!
//! - output:          `y = W · cols`                 (`[c_out, c_in·k·k] · [c_in·k·k, n]`)
//! - input gradient:  `cols' = Wᵀ · dy`, then `col2im` adds each column back to its pixels
//! - weight gradient: `dW += dy · colsᵀ`, summed over chunks
//!
//! Chunks run in parallel on rayon's pool, each GEMM single-threaded. A transposed convolution
//! is the adjoint of a convolution, so the same three kernels serve it (see `super`).

use std::mem::MaybeUninit;

use super::base::{
    COLUMNS_PER_CHUNK, MatRef, assume_written, matmul, par_written, per_chunk_output,
    per_chunk_output_and_sum, resized, sum_over_chunks, write_all,
};
pub use super::base::{ConvGeometry, Stacked};
use super::simd::madd;
use super::{polyphase, winograd};
use rayon::prelude::*;

/// [`COLUMNS_PER_CHUNK`] for the weight gradient, where the columns are the reduction dimension and longer
/// runs win (measured on training steps).
const WEIGHT_GRAD_COLUMNS_PER_CHUNK: usize = 4096;

/// Fills `cols` (`[patch_len, images·out_plane]`) from the images of `x`.
#[inline(always)]
fn im2col_inner(g: &ConvGeometry, x: &Stacked, cols: &mut [f32]) {
    let images = x.images;
    let [in_h, in_w] = g.in_hw;
    let [out_h, out_w] = g.out_hw();
    let (k, s) = (g.kernel, g.stride);
    let n = images * g.out_plane();
    for (row, dst) in cols.chunks_exact_mut(n).enumerate().take(g.patch_len()) {
        let (ci, kh, kw) = (row / (k * k), (row / k) % k, row % k);
        let rows = g.valid_outputs(kh, in_h, out_h);
        let cols_ok = g.valid_outputs(kw, in_w, out_w);
        for (b, image_dst) in dst.chunks_exact_mut(g.out_plane()).enumerate() {
            let src = x.plane_of(b, ci);
            for (oh, dst_row) in image_dst.chunks_exact_mut(out_w).enumerate() {
                if !rows.contains(&oh) || cols_ok.is_empty() {
                    dst_row.fill(0.0);
                    continue;
                }
                // Zero only the padding, copy the rest.
                dst_row[..cols_ok.start].fill(0.0);
                dst_row[cols_ok.end..].fill(0.0);
                let ih = oh * s + kh - g.padding;
                let src_row = &src[ih * in_w..][..in_w];
                let dst_row = &mut dst_row[cols_ok.clone()];
                let first = cols_ok.start * s + kw - g.padding;
                if s == 1 {
                    dst_row.copy_from_slice(&src_row[first..first + dst_row.len()]);
                } else {
                    for (d, v) in dst_row.iter_mut().zip(src_row[first..].iter().step_by(s)) {
                        *d = *v;
                    }
                }
            }
        }
    }
}

simd_dispatch!(im2col => im2col_inner(g: &ConvGeometry, x: &Stacked, cols: &mut [f32]));

/// Adds every column of `cols` (`[patch_len, images·out_plane]`) back to the pixels it was read
/// from: the adjoint of [`im2col`]. `dx` (`images` input images) must start zeroed.
#[inline(always)]
fn col2im_inner(g: &ConvGeometry, cols: &[f32], images: usize, dx: &mut [f32]) {
    let [in_h, in_w] = g.in_hw;
    let [out_h, out_w] = g.out_hw();
    let (k, s) = (g.kernel, g.stride);
    let n = images * g.out_plane();
    for (row, src) in cols.chunks_exact(n).enumerate().take(g.patch_len()) {
        let (ci, kh, kw) = (row / (k * k), (row / k) % k, row % k);
        let rows = g.valid_outputs(kh, in_h, out_h);
        let cols_ok = g.valid_outputs(kw, in_w, out_w);
        if cols_ok.is_empty() {
            continue;
        }
        for (b, image_src) in src.chunks_exact(g.out_plane()).enumerate() {
            let dst = &mut dx[(b * g.c_in + ci) * g.in_plane()..][..g.in_plane()];
            for oh in rows.clone() {
                let ih = oh * s + kh - g.padding;
                let first = cols_ok.start * s + kw - g.padding;
                let dst_row = &mut dst[ih * in_w + first..(ih + 1) * in_w];
                let src_row = &image_src[oh * out_w..][cols_ok.clone()];
                if s == 1 {
                    for (d, v) in dst_row.iter_mut().zip(src_row) {
                        *d += *v;
                    }
                } else {
                    for (d, v) in dst_row.iter_mut().step_by(s).zip(src_row) {
                        *d += *v;
                    }
                }
            }
        }
    }
}

simd_dispatch!(col2im => col2im_inner(
    g: &ConvGeometry, cols: &[f32], images: usize, dx: &mut [f32],
));

/// [`im2col`], on polyphase grids where the geometry suits them.
fn gather(g: &ConvGeometry, x: &Stacked, cols: &mut [f32], work: &mut Vec<f32>) {
    if polyphase::applies(g) {
        polyphase::im2col(g, x, cols, work)
    } else {
        im2col(g, x, cols)
    }
}

/// [`col2im`] into uninitialised images `dx` (every pixel written), on polyphase grids where
/// the geometry suits them.
fn scatter<'a>(
    g: &ConvGeometry,
    cols: &[f32],
    images: usize,
    dx: &'a mut [MaybeUninit<f32>],
    work: &mut Vec<f32>,
) -> &'a mut [f32] {
    if polyphase::applies(g) {
        polyphase::col2im(g, cols, images, dx, work);
        // SAFETY: the polyphase `col2im` writes every pixel of every image.
        unsafe { assume_written(dx) }
    } else {
        let dx = write_all(dx, 0.0);
        col2im(g, cols, images, dx);
        dx
    }
}

/// Copies the images of `src` into a `[channels, images·plane]` matrix.
fn images_to_channel_major(src: &Stacked, dst: &mut [f32]) {
    let (images, plane) = (src.images, src.plane);
    for c in 0..src.channels() {
        for b in 0..images {
            dst[(c * images + b) * plane..][..plane].copy_from_slice(src.plane_of(b, c));
        }
    }
}

/// The convolution's output `[batch, c_out, h_out, w_out]` for input `x` (`[batch, c_in, h, w]`,
/// possibly as channel blocks), weight `[c_out, c_in, k, k]` and optional bias `[c_out]`.
pub fn conv_forward(
    g: &ConvGeometry,
    x: &Stacked,
    weight: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    assert_eq!(
        (x.images, x.plane, x.channels()),
        (g.batch, g.in_plane(), g.c_in),
        "input size"
    );
    assert_eq!(weight.len(), g.c_out * g.patch_len(), "weight size");
    if winograd::applies(g) {
        return winograd::conv3x3(g, x, weight, bias);
    }
    if g.kernel == 1 && g.stride == 1 && g.padding == 0 && g.c_out <= POINTWISE_MAX_OUT {
        return pointwise(g, x, weight, bias);
    }
    let (plane, patch) = (g.out_plane(), g.patch_len());
    let per_chunk = g.images_per_chunk(COLUMNS_PER_CHUNK);
    per_chunk_output(
        x,
        per_chunk,
        g.c_out * plane,
        |x_chunk, y_chunk, scratch| {
            let n = x_chunk.images * plane;
            let cols = resized(&mut scratch.cols, patch * n);
            gather(g, x_chunk, cols, &mut scratch.phases);
            let out = resized(&mut scratch.product, g.c_out * n);
            let w = MatRef::row_major(weight, patch);
            matmul(g.c_out, n, patch, out, false, w, MatRef::row_major(cols, n));
            channel_major_to_images(out, g.c_out, plane, bias, y_chunk);
        },
    )
}

/// Output channels up to which a 1×1 convolution is computed directly: a GEMM with so few rows
/// would waste most of its 16-row microkernels (the U-Net's output layer has one channel).
const POINTWISE_MAX_OUT: usize = 8;

/// A 1×1 convolution with few output channels: per image and output channel, the bias plus
/// one weighted sum of the input planes.
fn pointwise(g: &ConvGeometry, x: &Stacked, weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let plane = g.in_plane();
    // SAFETY: each output plane is first written with its bias.
    let (y, _) = unsafe {
        par_written(g.batch * g.c_out * plane, g.c_out * plane, |b, image| {
            for (co, y) in image.chunks_exact_mut(plane).enumerate() {
                let y = write_all(y, bias.map_or(0.0, |bias| bias[co]));
                for ci in 0..g.c_in {
                    add_scaled(y, weight[co * g.c_in + ci], x.plane_of(b, ci));
                }
            }
        })
    };
    y
}

/// `y += a·x`.
#[inline(always)]
fn add_scaled_inner<const FMA: bool>(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y = madd::<FMA>(a, *x, *y);
    }
}

simd_dispatch!(add_scaled => add_scaled_inner::<FMA>(y: &mut [f32], a: f32, x: &[f32]));

/// Writes `m` (`[channels, images·plane]`) into the images `y` (`[images, channels, plane]`),
/// plus `bias` per channel.
fn channel_major_to_images(
    m: &[f32],
    channels: usize,
    plane: usize,
    bias: Option<&[f32]>,
    y: &mut [MaybeUninit<f32>],
) {
    let n = y.len() / channels;
    for (b, image) in y.chunks_exact_mut(channels * plane).enumerate() {
        for (c, dst) in image.chunks_exact_mut(plane).enumerate() {
            let shift = bias.map_or(0.0, |bias| bias[c]);
            let src = &m[c * n + b * plane..][..plane];
            for (d, s) in dst.iter_mut().zip(src) {
                d.write(s + shift);
            }
        }
    }
}

/// The gradient with respect to the input `[batch, c_in, h, w]`, given the output gradient
/// `dy` (`[batch, c_out, h_out, w_out]`, possibly as channel blocks) and weight
/// `[c_out, c_in, k, k]`.
pub fn conv_input_grad(g: &ConvGeometry, dy: &Stacked, weight: &[f32]) -> Vec<f32> {
    adjoint(g, dy, weight, None)
}

/// The transposed convolution of `x` (`[batch, c_out, h_out, w_out]`, possibly as channel
/// blocks) with `weight` (`[c_out, c_in, k, k]`) plus `bias` (`[c_in]`), `[batch, c_in, h, w]`:
/// the input gradient of the convolution `g`, plus the bias.
pub fn conv_transpose(g: &ConvGeometry, x: &Stacked, weight: &[f32], bias: &[f32]) -> Vec<f32> {
    adjoint(g, x, weight, Some(bias))
}

/// The adjoint of the convolution `g` applied to `dy`, plus `bias` per input channel.
fn adjoint(g: &ConvGeometry, dy: &Stacked, weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let (plane, patch) = (g.out_plane(), g.patch_len());
    assert_eq!(
        (dy.images, dy.plane, dy.channels()),
        (g.batch, plane, g.c_out),
        "output gradient size"
    );
    assert_eq!(weight.len(), g.c_out * patch, "weight size");
    let adjoint = ConvGeometry {
        c_in: g.c_out,
        c_out: g.c_in,
        ..*g
    };
    if winograd::applies(g) && winograd::applies(&adjoint) {
        // The input gradient of a 3x3 stride-1 convolution is a 3x3 stride-1 convolution.
        let weight = winograd::adjoint_weight(weight, g.c_out, g.c_in);
        return winograd::conv3x3(&adjoint, dy, &weight, bias);
    }
    let per_chunk = g.images_per_chunk(COLUMNS_PER_CHUNK);
    per_chunk_output(
        dy,
        per_chunk,
        g.c_in * g.in_plane(),
        |dy_chunk, dx_chunk, scratch| {
            let n = dy_chunk.images * plane;
            let dy_mat = resized(&mut scratch.product, g.c_out * n);
            images_to_channel_major(dy_chunk, dy_mat);
            let cols = resized(&mut scratch.cols, patch * n);
            let w_t = MatRef::row_major(weight, patch).transposed();
            let dy_ref = MatRef::row_major(dy_mat, n);
            matmul(patch, n, g.c_out, cols, false, w_t, dy_ref);
            let dx_chunk = scatter(g, cols, dy_chunk.images, dx_chunk, &mut scratch.phases);
            if let Some(bias) = bias {
                for (i, image_channel) in dx_chunk.chunks_exact_mut(g.in_plane()).enumerate() {
                    let shift = bias[i % g.c_in];
                    image_channel.iter_mut().for_each(|v| *v += shift);
                }
            }
        },
    )
}

/// The gradient with respect to the weight `[c_out, c_in, k, k]`, given the input `x` and the
/// output gradient `dy` (each possibly as channel blocks).
pub fn conv_weight_grad(g: &ConvGeometry, x: &Stacked, dy: &Stacked) -> Vec<f32> {
    let (plane, patch) = (g.out_plane(), g.patch_len());
    g.check_sizes(x, dy);
    if winograd::applies(g) {
        return winograd::weight_grad(g, x, dy);
    }
    let per_chunk = g.images_per_chunk(WEIGHT_GRAD_COLUMNS_PER_CHUNK);
    let chunks = paired_chunks(x, dy, per_chunk);
    let dw = sum_over_chunks(
        &chunks,
        g.c_out * patch,
        |(x_chunk, dy_chunk), dw, scratch| {
            let n = x_chunk.images * plane;
            let cols = resized(&mut scratch.cols, patch * n);
            gather(g, x_chunk, cols, &mut scratch.phases);
            let dy_mat = resized(&mut scratch.product, g.c_out * n);
            images_to_channel_major(dy_chunk, dy_mat);
            add_weight_grad(g, dw, dy_mat, cols);
        },
    );
    finish_weight_grad(g, dw)
}

/// The chunks of `a` and `b` (of the same images) side by side.
fn paired_chunks<'a>(
    a: &Stacked<'a>,
    b: &Stacked<'a>,
    per_chunk: usize,
) -> Vec<(Stacked<'a>, Stacked<'a>)> {
    a.chunks(per_chunk)
        .into_iter()
        .zip(b.chunks(per_chunk))
        .collect()
}

/// Whether [`add_weight_grad`] accumulates `dwᵀ`: both GEMM operands run along the pixels, so
/// one of them is transposed while the GEMM packs it, and this makes that the smaller one.
fn weight_grad_transposed(g: &ConvGeometry) -> bool {
    g.patch_len() > g.c_out
}

/// `dw += dy · colsᵀ` for one chunk (`dy`: `[c_out, n]`, `cols`: `[patch_len, n]`), `dw`
/// transposed if [`weight_grad_transposed`].
fn add_weight_grad(g: &ConvGeometry, dw: &mut [f32], dy: &[f32], cols: &[f32]) {
    let (patch, n) = (g.patch_len(), cols.len() / g.patch_len());
    let (cols, dy) = (MatRef::row_major(cols, n), MatRef::row_major(dy, n));
    if weight_grad_transposed(g) {
        matmul(patch, g.c_out, n, dw, true, cols, dy.transposed());
    } else {
        matmul(g.c_out, patch, n, dw, true, dy, cols.transposed());
    }
}

/// The weight gradient `[c_out, c_in, k, k]` from the sum of [`add_weight_grad`].
fn finish_weight_grad(g: &ConvGeometry, dw: Vec<f32>) -> Vec<f32> {
    if !weight_grad_transposed(g) {
        return dw;
    }
    let patch = g.patch_len();
    let mut out = vec![0.0f32; dw.len()];
    out.par_chunks_exact_mut(patch)
        .enumerate()
        .for_each(|(co, row)| {
            for (j, v) in row.iter_mut().enumerate() {
                *v = dw[j * g.c_out + co];
            }
        });
    out
}

/// The gradients of the convolution's input and weight together ([`conv_input_grad`] and
/// [`conv_weight_grad`]) in one pass over the chunks, which copies each chunk of `dy` to
/// channel-major layout once for both GEMMs.
pub fn conv_backward(
    g: &ConvGeometry,
    x: &Stacked,
    dy: &Stacked,
    weight: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    if winograd::applies(g) {
        return (conv_input_grad(g, dy, weight), conv_weight_grad(g, x, dy));
    }
    let (plane, patch) = (g.out_plane(), g.patch_len());
    g.check_sizes(x, dy);
    assert_eq!(weight.len(), g.c_out * patch, "weight size");
    let per_chunk = g.images_per_chunk(COLUMNS_PER_CHUNK);
    let w_t = MatRef::row_major(weight, patch).transposed();
    let (dx, dw) = per_chunk_output_and_sum(
        &paired_chunks(x, dy, per_chunk),
        g.c_in * g.in_plane(),
        g.c_out * patch,
        |(x_chunk, dy_chunk), dx_chunk, dw, scratch| {
            let n = x_chunk.images * plane;
            let dy_mat = resized(&mut scratch.product, g.c_out * n);
            images_to_channel_major(dy_chunk, dy_mat);
            let cols = resized(&mut scratch.cols, patch * n);
            let dy_ref = MatRef::row_major(dy_mat, n);
            matmul(patch, n, g.c_out, cols, false, w_t, dy_ref);
            scatter(g, cols, x_chunk.images, dx_chunk, &mut scratch.phases);
            gather(g, x_chunk, cols, &mut scratch.phases);
            add_weight_grad(g, dw, dy_mat, cols);
        },
    );
    (dx, finish_weight_grad(g, dw))
}

/// The gradients of the transposed convolution of `x` (the adjoint of `g`, see
/// [`conv_transpose`]) with respect to its input and weight, given its output gradient `dy`:
/// `conv_forward(g, dy)` and `conv_weight_grad(g, dy, x)` together, in one pass over the chunks
/// that gathers each chunk's columns of `dy` once for both GEMMs.
pub fn conv_transpose_backward(
    g: &ConvGeometry,
    x: &Stacked,
    dy: &Stacked,
    weight: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    if winograd::applies(g) {
        return (
            conv_forward(g, dy, weight, None),
            conv_weight_grad(g, dy, x),
        );
    }
    let (plane, patch) = (g.out_plane(), g.patch_len());
    g.check_sizes(dy, x);
    assert_eq!(weight.len(), g.c_out * patch, "weight size");
    let per_chunk = g.images_per_chunk(COLUMNS_PER_CHUNK);
    let w = MatRef::row_major(weight, patch);
    let (dx, dw) = per_chunk_output_and_sum(
        &paired_chunks(dy, x, per_chunk),
        g.c_out * plane,
        g.c_out * patch,
        |(dy_chunk, x_chunk), dx_chunk, dw, scratch| {
            let n = dy_chunk.images * plane;
            let cols = resized(&mut scratch.cols, patch * n);
            gather(g, dy_chunk, cols, &mut scratch.phases);
            let x_mat = resized(&mut scratch.product, g.c_out * n);
            images_to_channel_major(x_chunk, x_mat);
            add_weight_grad(g, dw, x_mat, cols);
            let out = resized(&mut scratch.product, g.c_out * n);
            matmul(g.c_out, n, patch, out, false, w, MatRef::row_major(cols, n));
            channel_major_to_images(out, g.c_out, plane, None, dx_chunk);
        },
    );
    (dx, finish_weight_grad(g, dw))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct definition: y[b,o,i,j] = Σ x[b,c,i·s+u-p, j·s+v-p] w[o,c,u,v].
    fn naive_conv(g: &ConvGeometry, x: &[f32], w: &[f32]) -> Vec<f32> {
        let [h, wd] = g.in_hw;
        let [oh, ow] = g.out_hw();
        let k = g.kernel;
        let mut y = vec![0.0; g.batch * g.c_out * oh * ow];
        for b in 0..g.batch {
            for o in 0..g.c_out {
                for i in 0..oh {
                    for j in 0..ow {
                        let mut acc = 0.0;
                        for c in 0..g.c_in {
                            for u in 0..k {
                                for v in 0..k {
                                    let r = (i * g.stride + u) as isize - g.padding as isize;
                                    let q = (j * g.stride + v) as isize - g.padding as isize;
                                    if r >= 0 && q >= 0 && (r as usize) < h && (q as usize) < wd {
                                        acc += x
                                            [((b * g.c_in + c) * h + r as usize) * wd + q as usize]
                                            * w[((o * g.c_in + c) * k + u) * k + v];
                                    }
                                }
                            }
                        }
                        y[((b * g.c_out + o) * oh + i) * ow + j] = acc;
                    }
                }
            }
        }
        y
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 500.0 - 1.0
            })
            .collect()
    }

    fn dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(a, b)| *a as f64 * *b as f64).sum()
    }

    #[test]
    fn all_directions_match_the_definition() {
        // (kernel, stride, padding, size, channels in, channels out); 3x3 stride 1 with 8+
        // channels each way runs (and is checked) through the Winograd path, odd sizes included;
        // the stride-2 cases with an output of half the size gather on polyphase grids, the last
        // stride-2 case (odd size, 4x4 kernel) does not; the 1x1 case with 4 outputs is computed
        // directly, the one with 12 as a GEMM.
        for (kernel, stride, padding, hw, c_in, c_out) in [
            (3, 1, 1, [7, 6], 3, 4),
            (3, 1, 1, [7, 6], 9, 10),
            (3, 1, 1, [4, 5], 8, 8),
            (3, 1, 1, [6, 5], 12, 8),
            (3, 2, 1, [9, 8], 3, 4),
            (4, 2, 1, [6, 6], 3, 4),
            (4, 2, 1, [10, 6], 9, 12),
            (4, 2, 1, [7, 5], 3, 4),
            (1, 1, 0, [5, 4], 3, 4),
            (1, 1, 0, [5, 4], 3, 12),
            // A kernel reaching past a 1-wide input: some taps see no pixel at all.
            (5, 1, 2, [6, 1], 3, 4),
        ] {
            let g = ConvGeometry {
                batch: 5,
                c_in,
                c_out,
                in_hw: hw,
                kernel,
                stride,
                padding,
            };
            assert_eq!(polyphase::applies(&g), stride == 2 && hw != [7, 5]);
            let x = values(g.batch * g.c_in * g.in_plane(), 1);
            let w = values(g.c_out * g.patch_len(), 2);
            let bias = values(g.c_out, 3);
            let x_in = Stacked::single(&x, g.batch, g.in_plane());
            let y = conv_forward(&g, &x_in, &w, Some(&bias));
            let expected = naive_conv(&g, &x, &w);
            for (i, (a, e)) in y.iter().zip(&expected).enumerate() {
                let e = e + bias[(i / g.out_plane()) % g.c_out];
                assert!(
                    (a - e).abs() < 1e-4,
                    "forward {kernel}/{stride}: {a} vs {e}"
                );
            }
            // Adjoint identities: <dy, conv(x)> = <conv_input_grad(dy), x> = <conv_weight_grad, w>.
            let dy = values(y.len(), 4);
            let dy_in = Stacked::single(&dy, g.batch, g.out_plane());
            let dx = conv_input_grad(&g, &dy_in, &w);
            let dw = conv_weight_grad(&g, &x_in, &dy_in);
            // The same input split into two channel blocks.
            let split = g.in_plane() * 2;
            let (a, b): (Vec<f32>, Vec<f32>) = {
                let (mut a, mut b) = (Vec::new(), Vec::new());
                for image in x.chunks(g.c_in * g.in_plane()) {
                    a.extend_from_slice(&image[..split]);
                    b.extend_from_slice(&image[split..]);
                }
                (a, b)
            };
            let x_split = Stacked::new([&a[..], &b[..]], g.batch, g.in_plane());
            assert_eq!(conv_forward(&g, &x_split, &w, Some(&bias)), y);
            assert_eq!(conv_weight_grad(&g, &x_split, &dy_in), dw);
            // The fused backward passes give the same gradients (the weight gradient's sums may
            // be split into other chunks).
            let close = |a: &[f32], b: &[f32]| {
                a.len() == b.len() && a.iter().zip(b).all(|(a, b)| (a - b).abs() < 1e-4)
            };
            let (fused_dx, fused_dw) = conv_backward(&g, &x_split, &dy_in, &w);
            assert!(
                close(&fused_dx, &dx) && close(&fused_dw, &dw),
                "conv backward"
            );
            // A transposed convolution of `dy` with output gradient `x`.
            let (t_dx, t_dw) = conv_transpose_backward(&g, &dy_in, &x_in, &w);
            let y_no_bias = conv_forward(&g, &x_in, &w, None);
            assert!(
                close(&t_dx, &y_no_bias) && close(&t_dw, &dw),
                "transposed backward"
            );
            let reference = dot(&dy, &expected);
            assert!((dot(&dx, &x) - reference).abs() < 1e-3 * reference.abs().max(1.0));
            assert!((dot(&dw, &w) - reference).abs() < 1e-3 * reference.abs().max(1.0));
        }
    }
}
