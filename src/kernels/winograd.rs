//! 3×3 convolutions with stride 1 and padding 1 by Winograd's minimal filtering F(2×2, 3×3):
//! 16 multiplications per 2×2 output tile and channel pair instead of 36.
//!
//! With `d` a 4×4 input tile and `g` a 3×3 filter, the 2×2 output is `Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A`.
//! Summed over input channels, the element-wise products become 16 GEMMs
//! `M[e] = U[e] · V[e]` (`U[e]`: `[c_out, c_in]` transformed filters, `V[e]`: `[c_in, tiles]`
//! transformed input tiles), one per position `e` of the 4×4 transform domain. The weight
//! gradient runs the same algebra backwards: `dU[e] = dM[e] · V[e]ᵀ` with `dM = A dy Aᵀ` per
//! output tile, then `dg = Gᵀ dU G`.

use super::conv_gemm::{
    COLUMNS_PER_CHUNK, ConvGeometry, MatRef, Stacked, matmul, resized, sum_over_chunks,
    with_scratch,
};
use super::par_zeroed;

/// Whether the geometry suits F(2×2, 3×3): a 3×3 kernel, stride 1, padding 1 (and enough input
/// channels for the transforms to pay off).
pub fn applies(g: &ConvGeometry) -> bool {
    g.kernel == 3 && g.stride == 1 && g.padding == 1 && g.c_in >= 8
}

/// Transformed filters `G g Gᵀ`, laid out `[16, c_out, c_in]`, for a weight `[c_out, c_in, 3, 3]`.
fn transform_filters(weight: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let mut u = vec![0.0f32; 16 * c_out * c_in];
    for (pair, g) in weight.chunks_exact(9).enumerate() {
        // G g (4x3), then (G g) Gᵀ (4x4); G = [[1,0,0],[½,½,½],[½,-½,½],[0,0,1]].
        let mut gg = [[0.0f32; 3]; 4];
        for col in 0..3 {
            let (a, b, c) = (g[col], g[3 + col], g[6 + col]);
            gg[0][col] = a;
            gg[1][col] = 0.5 * (a + b + c);
            gg[2][col] = 0.5 * (a - b + c);
            gg[3][col] = c;
        }
        for (row, r) in gg.iter().enumerate() {
            let t = [
                r[0],
                0.5 * (r[0] + r[1] + r[2]),
                0.5 * (r[0] - r[1] + r[2]),
                r[2],
            ];
            for (col, v) in t.iter().enumerate() {
                u[(row * 4 + col) * c_out * c_in + pair] = *v;
            }
        }
    }
    u
}

/// The convolution's output `[batch, c_out, h, w]` (see [`super::conv_gemm::conv_forward`]).
pub fn conv3x3(g: &ConvGeometry, x: &Stacked, weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let [h, w] = g.in_hw;
    let (tiles_h, tiles_w) = (h.div_ceil(2), w.div_ceil(2));
    let tiles_per_image = tiles_h * tiles_w;
    let plane = h * w;
    let u = transform_filters(weight, g.c_out, g.c_in);
    let per_chunk = g.images_per_chunk(COLUMNS_PER_CHUNK);
    let chunks = x.chunks(per_chunk);
    par_zeroed(
        g.batch * g.c_out * plane,
        per_chunk * g.c_out * plane,
        |i, y_chunk| {
            let x_chunk = &chunks[i];
            let images = y_chunk.len() / (g.c_out * plane);
            let tiles = images * tiles_per_image;
            with_scratch(|scratch| {
                let v = resized(&mut scratch.cols, 16 * g.c_in * tiles);
                transform_inputs(g, x_chunk, tiles_w, tiles_h, v);
                // M[e] = U[e] · V[e]
                let m = resized(&mut scratch.product, 16 * g.c_out * tiles);
                for e in 0..16 {
                    let u_e =
                        MatRef::row_major(&u[e * g.c_out * g.c_in..][..g.c_out * g.c_in], g.c_in);
                    let v_e = MatRef::row_major(&v[e * g.c_in * tiles..][..g.c_in * tiles], tiles);
                    let m_e = &mut m[e * g.c_out * tiles..][..g.c_out * tiles];
                    matmul(g.c_out, tiles, g.c_in, m_e, false, u_e, v_e);
                }
                transform_outputs(g, m, images, [tiles_h, tiles_w], bias, y_chunk);
            })
        },
    )
}

/// Fills `v` (`[16, c_in, tiles]`) with `Bᵀ d B` of every input tile `d` of `x`, one row of
/// tiles at a time. The four input rows of the tile row are zero-padded and split into even and
/// odd columns, so that the vertical half of the transform and the horizontal half (per row and
/// column of the 4x4 domain, over the tiles of the row, contiguous in `v`) are plain vector
/// loops. Bᵀ = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]].
fn transform_inputs(g: &ConvGeometry, x: &Stacked, tiles_w: usize, tiles_h: usize, v: &mut [f32]) {
    let [h, w] = g.in_hw;
    let tiles_per_image = tiles_h * tiles_w;
    let tiles = v.len() / (16 * g.c_in);
    let images = tiles / tiles_per_image;
    // Padded column p (input column p - 1) lives at half[p % 2][p / 2].
    let half = tiles_w + 1;
    let mut rows = vec![0.0f32; 4 * 2 * half];
    let mut vertical = vec![0.0f32; 4 * 2 * half];
    for ci in 0..g.c_in {
        for b in 0..images {
            let src = x.plane_of(b, ci);
            for ty in 0..tiles_h {
                for (r, row) in rows.chunks_exact_mut(2 * half).enumerate() {
                    row.fill(0.0);
                    let y = (2 * ty + r) as isize - 1;
                    if y >= 0 && (y as usize) < h {
                        let (even, odd) = row.split_at_mut(half);
                        for (col, value) in src[y as usize * w..][..w].iter().enumerate() {
                            let p = col + 1;
                            if p % 2 == 0 {
                                even[p / 2] = *value;
                            } else {
                                odd[p / 2] = *value;
                            }
                        }
                    }
                }
                let (r0, rest) = rows.split_at(2 * half);
                let (r1, rest) = rest.split_at(2 * half);
                let (r2, r3) = rest.split_at(2 * half);
                let (v0, rest) = vertical.split_at_mut(2 * half);
                let (v1, rest) = rest.split_at_mut(2 * half);
                let (v2, v3) = rest.split_at_mut(2 * half);
                for c in 0..2 * half {
                    v0[c] = r0[c] - r2[c];
                    v1[c] = r1[c] + r2[c];
                    v2[c] = r2[c] - r1[c];
                    v3[c] = r1[c] - r3[c];
                }
                let t0 = b * tiles_per_image + ty * tiles_w;
                for (k, vk) in vertical.chunks_exact(2 * half).enumerate() {
                    let (even, odd) = vk.split_at(half);
                    let at = |e: usize| (e * g.c_in + ci) * tiles + t0;
                    let (lo, hi) = v.split_at_mut(at(4 * k + 2));
                    let (out0, out1) = lo[at(4 * k)..].split_at_mut(g.c_in * tiles);
                    let (out2, out3) = hi.split_at_mut(g.c_in * tiles);
                    let (out0, out1) = (&mut out0[..tiles_w], &mut out1[..tiles_w]);
                    let (out2, out3) = (&mut out2[..tiles_w], &mut out3[..tiles_w]);
                    let (e0, e1) = (&even[..tiles_w], &even[1..=tiles_w]);
                    let (o0, o1) = (&odd[..tiles_w], &odd[1..=tiles_w]);
                    for tx in 0..tiles_w {
                        out0[tx] = e0[tx] - e1[tx];
                        out1[tx] = o0[tx] + e1[tx];
                        out2[tx] = e1[tx] - o0[tx];
                        out3[tx] = o0[tx] - o1[tx];
                    }
                }
            }
        }
    }
}

/// Writes `Aᵀ m A` (plus the bias) of every tile of `m` (`[16, c_out, tiles]`) into `y`
/// (`[images, c_out, h, w]`), per row of tiles: the vertical half over the row's tiles, then the
/// horizontal half into the two output rows. Aᵀ = [[1,1,1,0],[0,1,-1,-1]].
fn transform_outputs(
    g: &ConvGeometry,
    m: &[f32],
    images: usize,
    [tiles_h, tiles_w]: [usize; 2],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let [h, w] = g.in_hw;
    let (plane, tiles_per_image) = (h * w, tiles_h * tiles_w);
    let tiles = images * tiles_per_image;
    // sums[(i * 4 + j) * tiles_w + tx] = (Aᵀ m)[i][j] of tile tx of the current row.
    let mut sums = vec![0.0f32; 8 * tiles_w];
    for co in 0..g.c_out {
        let shift = bias.map_or(0.0, |bias| bias[co]);
        for b in 0..images {
            let dst = &mut y[(b * g.c_out + co) * plane..][..plane];
            for ty in 0..tiles_h {
                let t0 = b * tiles_per_image + ty * tiles_w;
                let row_of = |e: usize| &m[(e * g.c_out + co) * tiles + t0..][..tiles_w];
                for j in 0..4 {
                    let (m0, m1) = (row_of(j), row_of(4 + j));
                    let (m2, m3) = (row_of(8 + j), row_of(12 + j));
                    let (top, bottom) = sums.split_at_mut(4 * tiles_w);
                    let top = &mut top[j * tiles_w..][..tiles_w];
                    let bottom = &mut bottom[j * tiles_w..][..tiles_w];
                    for tx in 0..tiles_w {
                        top[tx] = m0[tx] + m1[tx] + m2[tx];
                        bottom[tx] = m1[tx] - m2[tx] - m3[tx];
                    }
                }
                for i in 0..2 {
                    let row = 2 * ty + i;
                    if row >= h {
                        continue;
                    }
                    let s = &sums[i * 4 * tiles_w..][..4 * tiles_w];
                    let out = &mut dst[row * w..][..w];
                    for tx in 0..tiles_w {
                        let (a0, a1) = (s[tx], s[tiles_w + tx]);
                        let (a2, a3) = (s[2 * tiles_w + tx], s[3 * tiles_w + tx]);
                        out[2 * tx] = a0 + a1 + a2 + shift;
                        if 2 * tx + 1 < w {
                            out[2 * tx + 1] = a1 - a2 - a3 + shift;
                        }
                    }
                }
            }
        }
    }
}

/// The weight gradient `[c_out, c_in, 3, 3]` given the input `x` and the output gradient `dy`
/// (see [`super::conv_gemm::conv_weight_grad`]): the adjoint of [`conv3x3`] with respect to the
/// filters. Chunks are summed over a fixed split, in order (independent of scheduling).
pub fn weight_grad(g: &ConvGeometry, x: &Stacked, dy: &Stacked) -> Vec<f32> {
    let [h, w] = g.in_hw;
    let (tiles_h, tiles_w) = (h.div_ceil(2), w.div_ceil(2));
    let tiles_per_image = tiles_h * tiles_w;
    let per_chunk = g.images_per_chunk(COLUMNS_PER_CHUNK);
    let chunks: Vec<_> = x
        .chunks(per_chunk)
        .into_iter()
        .zip(dy.chunks(per_chunk))
        .collect();
    let du = sum_over_chunks(
        &chunks,
        16 * g.c_out * g.c_in,
        |(x_chunk, dy_chunk), du, scratch| {
            let tiles = x_chunk.images() * tiles_per_image;
            let v = resized(&mut scratch.cols, 16 * g.c_in * tiles);
            transform_inputs(g, x_chunk, tiles_w, tiles_h, v);
            let dm = resized(&mut scratch.product, 16 * g.c_out * tiles);
            transform_output_grads(g, dy_chunk, [tiles_h, tiles_w], dm);
            for e in 0..16 {
                let dm_e = MatRef::row_major(&dm[e * g.c_out * tiles..][..g.c_out * tiles], tiles);
                let v_e = MatRef::row_major(&v[e * g.c_in * tiles..][..g.c_in * tiles], tiles);
                let du_e = &mut du[e * g.c_out * g.c_in..][..g.c_out * g.c_in];
                matmul(g.c_out, g.c_in, tiles, du_e, true, dm_e, v_e.transposed());
            }
        },
    );
    untransform_filters(&du, g.c_out, g.c_in)
}

/// Fills `dm` (`[16, c_out, tiles]`) with `A ȳ Aᵀ` of every 2×2 output-gradient tile `ȳ` of `dy`
/// (zero beyond the image): the adjoint of the output transform. A = [[1,0],[1,1],[1,-1],[0,-1]].
fn transform_output_grads(
    g: &ConvGeometry,
    dy: &Stacked,
    [tiles_h, tiles_w]: [usize; 2],
    dm: &mut [f32],
) {
    let [h, w] = g.in_hw;
    let tiles_per_image = tiles_h * tiles_w;
    let tiles = dy.images() * tiles_per_image;
    let at = |row: &[f32], col: usize| if col < w { row[col] } else { 0.0 };
    for co in 0..g.c_out {
        for b in 0..dy.images() {
            let src = dy.plane_of(b, co);
            for ty in 0..tiles_h {
                let top = &src[2 * ty * w..][..w];
                let bottom = if 2 * ty + 1 < h {
                    &src[(2 * ty + 1) * w..][..w]
                } else {
                    &[][..]
                };
                for tx in 0..tiles_w {
                    let (a, bb) = (at(top, 2 * tx), at(top, 2 * tx + 1));
                    let (c, d) = if bottom.is_empty() {
                        (0.0, 0.0)
                    } else {
                        (at(bottom, 2 * tx), at(bottom, 2 * tx + 1))
                    };
                    // Rows of A ȳ, then each row [p, q] times Aᵀ: [p, p + q, p - q, -q].
                    let rows = [[a, bb], [a + c, bb + d], [a - c, bb - d], [-c, -d]];
                    let t = b * tiles_per_image + ty * tiles_w + tx;
                    for (r, [p, q]) in rows.iter().enumerate() {
                        for (col, value) in [*p, p + q, p - q, -q].iter().enumerate() {
                            dm[((r * 4 + col) * g.c_out + co) * tiles + t] = *value;
                        }
                    }
                }
            }
        }
    }
}

/// `Gᵀ X G` (3×3) of every 4×4 filter gradient `X` in `du` (`[16, c_out, c_in]`), laid out as a
/// weight `[c_out, c_in, 3, 3]`: the adjoint of [`transform_filters`].
fn untransform_filters(du: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let pairs = c_out * c_in;
    let mut weight = vec![0.0f32; 9 * pairs];
    // Gᵀ applied to four values: [x0 + ½x1 + ½x2, ½x1 - ½x2, ½x1 + ½x2 + x3].
    let gt = |x: [f32; 4]| {
        [
            x[0] + 0.5 * (x[1] + x[2]),
            0.5 * (x[1] - x[2]),
            0.5 * (x[1] + x[2]) + x[3],
        ]
    };
    for (pair, out) in weight.chunks_exact_mut(9).enumerate() {
        let x = |r: usize, c: usize| du[(r * 4 + c) * pairs + pair];
        let cols: [[f32; 3]; 4] = std::array::from_fn(|c| gt([x(0, c), x(1, c), x(2, c), x(3, c)]));
        for r in 0..3 {
            let row = gt([cols[0][r], cols[1][r], cols[2][r], cols[3][r]]);
            out[r * 3..r * 3 + 3].copy_from_slice(&row);
        }
    }
    weight
}

/// The weight of the convolution that computes a 3×3 stride-1 convolution's input gradient:
/// channels exchanged and the kernel rotated by 180°, `[c_in, c_out, 3, 3]`.
pub fn adjoint_weight(weight: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; weight.len()];
    for co in 0..c_out {
        for ci in 0..c_in {
            for k in 0..9 {
                out[(ci * c_out + co) * 9 + (8 - k)] = weight[(co * c_in + ci) * 9 + k];
            }
        }
    }
    out
}
