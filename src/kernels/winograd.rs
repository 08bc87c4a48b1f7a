//! 3×3 convolutions with stride 1 and padding 1 by Winograd's minimal filtering F(2×2, 3×3):
//! 16 multiplications per 2×2 output tile and channel pair instead of 36.
//!
//! With `d` a 4×4 input tile and `g` a 3×3 filter, the 2×2 output is `Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A`.
//! Summed over input channels, the element-wise products become 16 GEMMs
//! `M[e] = U[e] · V[e]` (`U[e]`: `[c_out, c_in]` transformed filters, `V[e]`: `[c_in, tiles]`
//! transformed input tiles), one per position `e` of the 4×4 transform domain. The weight
//! gradient runs the same algebra backwards: `dU[e] = dM[e] · V[e]ᵀ` with `dM = A dy Aᵀ` per
//! output tile, then `dg = Gᵀ dU G`.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::base::{
    COLUMNS_PER_CHUNK, ConvGeometry, Grid, MatRef, Stacked, carve, masked, matmul,
    per_chunk_output, resized, sum_over_chunks,
};

/// Whether the geometry suits F(2×2, 3×3): a 3×3 kernel, stride 1, padding 1 (and enough input
/// channels for the transforms to pay off).
pub fn applies(g: &ConvGeometry) -> bool {
    g.kernel == 3 && g.stride == 1 && g.padding == 1 && g.c_in >= 8
}

/// Filters per block of [`transform_filters`].
const FILTER_BLOCK: usize = 256;

/// Transformed filters `G g Gᵀ`, laid out `[16, c_out, c_in]`, for a weight `[c_out, c_in, 3, 3]`
/// (G = [[1,0,0],[½,½,½],[½,-½,½],[0,0,1]]), in parallel blocks of filters, each writing its
/// part of the 16 rows.
fn transform_filters(weight: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let pairs = c_out * c_in;
    let mut u = Vec::with_capacity(16 * pairs);
    let mut rows: Vec<_> = u.spare_capacity_mut()[..16 * pairs]
        .chunks_mut(pairs)
        .map(|row| row.chunks_mut(FILTER_BLOCK))
        .collect();
    let blocks: Vec<Vec<&mut [MaybeUninit<f32>]>> = (0..pairs.div_ceil(FILTER_BLOCK))
        .map(|_| rows.iter_mut().filter_map(Iterator::next).collect())
        .collect();
    blocks.into_par_iter().enumerate().for_each(|(b, mut dst)| {
        let filters = &weight[b * FILTER_BLOCK * 9..][..dst[0].len() * 9];
        transform_filter_block(filters, &mut dst);
    });
    // SAFETY: the blocks cover every row, and `transform_filter_block` writes all of each.
    unsafe { u.set_len(16 * pairs) };
    u
}

/// Writes `G g Gᵀ` of the (at most [`FILTER_BLOCK`]) filters `g` (`[n, 3, 3]`) into the 16 rows
/// `dst` (`n` values each), as vector operations across the filters.
fn transform_filter_block(filters: &[f32], dst: &mut [&mut [MaybeUninit<f32>]]) {
    let n = filters.len() / 9;
    // The filters' nine taps as planes, then G g (4 rows of 3 columns) as planes.
    let mut taps = [[0.0f32; FILTER_BLOCK]; 9];
    for (p, filter) in filters.chunks_exact(9).enumerate() {
        for (tap, v) in taps.iter_mut().zip(filter) {
            tap[p] = *v;
        }
    }
    let mut gg = [[0.0f32; FILTER_BLOCK]; 12];
    for col in 0..3 {
        apply_g(
            [&taps[col][..n], &taps[3 + col][..n], &taps[6 + col][..n]],
            &mut gg[col..],
            3,
        );
    }
    // (G g) Gᵀ: G applied along each row of G g.
    for row in 0..4 {
        let [a, b, c] = [0, 1, 2].map(|col| &gg[row * 3 + col][..n]);
        for (k, out) in dst[row * 4..row * 4 + 4].iter_mut().enumerate() {
            let out = &mut out[..n];
            match k {
                0 => out.iter_mut().zip(a).for_each(|(o, a)| {
                    o.write(*a);
                }),
                1 => {
                    for (o, (a, (b, c))) in out.iter_mut().zip(a.iter().zip(b.iter().zip(c))) {
                        o.write(0.5 * (a + b + c));
                    }
                }
                2 => {
                    for (o, (a, (b, c))) in out.iter_mut().zip(a.iter().zip(b.iter().zip(c))) {
                        o.write(0.5 * (a - b + c));
                    }
                }
                _ => out.iter_mut().zip(c).for_each(|(o, c)| {
                    o.write(*c);
                }),
            }
        }
    }
}

/// `G [a, b, c]ᵀ` over planes: writes `out[0]`, `out[stride]`, `out[2·stride]`, `out[3·stride]`.
fn apply_g([a, b, c]: [&[f32]; 3], out: &mut [[f32; FILTER_BLOCK]], stride: usize) {
    for (i, ((a, b), c)) in a.iter().zip(b).zip(c).enumerate() {
        out[0][i] = *a;
        out[stride][i] = 0.5 * (a + b + c);
        out[2 * stride][i] = 0.5 * (a - b + c);
        out[3 * stride][i] = *c;
    }
}

/// The convolution's output `[batch, c_out, h, w]` (see [`super::conv_gemm::conv_forward`]).
pub fn conv3x3(g: &ConvGeometry, x: &Stacked, weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let [h, w] = g.in_hw;
    let (tiles_h, tiles_w) = (h.div_ceil(2), w.div_ceil(2));
    let tiles_per_image = tiles_h * tiles_w;
    let plane = h * w;
    let u = transform_filters(weight, g.c_out, g.c_in);
    let per_chunk = g.images_per_chunk(COLUMNS_PER_CHUNK);
    per_chunk_output(
        x,
        per_chunk,
        g.c_out * plane,
        |x_chunk, y_chunk, scratch| {
            let images = x_chunk.images();
            let tiles = images * tiles_per_image;
            let v = resized(&mut scratch.cols, 16 * g.c_in * tiles);
            transform_inputs(g, x_chunk, v, &mut scratch.phases);
            // M[e] = U[e] · V[e]
            let m = resized(&mut scratch.product, 16 * g.c_out * tiles);
            for e in 0..16 {
                let u_e = MatRef::row_major(&u[e * g.c_out * g.c_in..][..g.c_out * g.c_in], g.c_in);
                let v_e = MatRef::row_major(&v[e * g.c_in * tiles..][..g.c_in * tiles], tiles);
                let m_e = &mut m[e * g.c_out * tiles..][..g.c_out * tiles];
                matmul(g.c_out, tiles, g.c_in, m_e, false, u_e, v_e);
            }
            transform_outputs(g, m, images, bias, y_chunk, &mut scratch.phases);
        },
    )
}

/// Fills `v` (`[16, c_in, tiles]`) with `Bᵀ d B` of every input tile `d` of `x` (padding 1,
/// Bᵀ = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]]), one input channel at a time over all
/// tiles of the chunk. Tile (ty, tx) covers input rows 2ty-1..2ty+2 and columns 2tx-1..2tx+2:
/// the odd column 2tx-1 of the previous tile, the even and odd columns 2tx and 2tx+1 of this
/// one, the even column of the next one (and likewise for rows), so the horizontal half is a
/// vector operation on the polyphase components and the vertical half one on its results.
#[inline(always)]
fn transform_inputs_inner(g: &ConvGeometry, x: &Stacked, v: &mut [f32], work: &mut Vec<f32>) {
    let t = Grid::new(g.in_hw, x.images());
    let (n, tw) = (t.len(), t.cols());
    let [first_col, last_col, first_row, last_row] =
        [(0, -1), (0, 1), (-1, 0), (1, 0)].map(|(dr, dc)| t.shift_mask(dr, dc));
    // Phases with one value of slack on each side (for the neighbours across an edge), then
    // the horizontal results of the even and odd input rows with a row of slack.
    let work = resized(work, 4 * (n + 2) + 2 * (n + tw));
    let (phases, rest) = work.split_at_mut(4 * (n + 2));
    let [even_rows, odd_rows] = carve::<2>(rest, n + tw);
    for ci in 0..g.c_in {
        let [p00, p01, p10, p11] = carve::<4>(phases, n + 2);
        t.split(
            |b| x.plane_of(b, ci),
            [
                &mut p00[1..=n],
                &mut p01[1..=n],
                &mut p10[1..=n],
                &mut p11[1..=n],
            ],
        );
        for c in 0..4 {
            // Horizontal half, component c, of the even (into even_rows[..n]) and odd (into
            // odd_rows[tw..]) input rows. `ev`/`od`: even/odd columns with one value of slack.
            for (ev, od, out) in [
                (&*p00, &*p01, &mut even_rows[..n]),
                (&*p10, &*p11, &mut odd_rows[tw..]),
            ] {
                let (ev_here, ev_next) = (&ev[1..=n], &ev[2..]);
                let (od_prev, od_here) = (&od[..n], &od[1..=n]);
                match c {
                    0 => masked_minus(out, od_prev, &first_col, od_here),
                    1 => map2(out, ev_here, od_here, |e, o| e + o),
                    2 => map2(out, ev_here, od_here, |e, o| o - e),
                    _ => minus_masked(out, ev_here, ev_next, &last_col),
                }
            }
            // Vertical half: rows 2ty-1 (previous odd row), 2ty, 2ty+1, 2ty+2 (next even row).
            let (even_here, even_next) = (&even_rows[..n], &even_rows[tw..]);
            let (odd_prev, odd_here) = (&odd_rows[..n], &odd_rows[tw..]);
            let row =
                |k: usize| ((4 * k + c) * g.c_in + ci) * n..((4 * k + c) * g.c_in + ci + 1) * n;
            masked_minus(&mut v[row(0)], odd_prev, &first_row, odd_here);
            map2(&mut v[row(1)], even_here, odd_here, |e, o| e + o);
            map2(&mut v[row(2)], even_here, odd_here, |e, o| o - e);
            minus_masked(&mut v[row(3)], even_here, even_next, &last_row);
        }
    }
}

simd_dispatch!(transform_inputs => transform_inputs_inner(
    g: &ConvGeometry, x: &Stacked, v: &mut [f32], work: &mut Vec<f32>,
));

/// Writes `Aᵀ m A` (plus the bias) of every tile of `m` (`[16, c_out, tiles]`) into `y`
/// (`[images, c_out, h, w]`), Aᵀ = [[1,1,1,0],[0,1,-1,-1]]: per output channel, the vertical
/// half and then the horizontal half as vector operations over the tiles, giving the output's
/// four polyphase components, which are then interleaved into the image rows.
#[inline(always)]
fn transform_outputs_inner(
    g: &ConvGeometry,
    m: &[f32],
    images: usize,
    bias: Option<&[f32]>,
    y: &mut [MaybeUninit<f32>],
    work: &mut Vec<f32>,
) {
    let t = Grid::new(g.in_hw, images);
    let (n, plane) = (t.len(), t.h * t.w);
    let work = resized(work, 8 * n + 4 * n);
    let (sums, phases) = work.split_at_mut(8 * n);
    for co in 0..g.c_out {
        let shift = bias.map_or(0.0, |bias| bias[co]);
        let row_of = |e: usize| &m[(e * g.c_out + co) * n..][..n];
        // sums[i * 4 + j] = (Aᵀ m)[i][j] for every tile.
        let sum_rows = carve::<8>(sums, n);
        let [s00, s01, s02, s03, s10, s11, s12, s13] = sum_rows;
        for (j, (top, bottom)) in [s00, s01, s02, s03]
            .into_iter()
            .zip([s10, s11, s12, s13])
            .enumerate()
        {
            let (m0, m1, m2, m3) = (row_of(j), row_of(4 + j), row_of(8 + j), row_of(12 + j));
            map3(top, m0, m1, m2, |a, b, c| a + b + c);
            map3(bottom, m1, m2, m3, |a, b, c| a - b - c);
        }
        let s = carve::<8>(sums, n);
        let [out00, out01, out10, out11] = carve::<4>(phases, n);
        for (i, (even, odd)) in [(out00, out01), (out10, out11)].into_iter().enumerate() {
            let [a0, a1, a2, a3] = [&*s[4 * i], &*s[4 * i + 1], &*s[4 * i + 2], &*s[4 * i + 3]];
            map3(even, a0, a1, a2, |a, b, c| a + b + c + shift);
            map3(odd, a1, a2, a3, |a, b, c| a - b - c + shift);
        }
        let [p00, p01, p10, p11] = carve::<4>(phases, n);
        t.interleave([p00, p01, p10, p11], &mut y[co * plane..], g.c_out * plane);
    }
}

simd_dispatch!(transform_outputs => transform_outputs_inner(
    g: &ConvGeometry,
    m: &[f32],
    images: usize,
    bias: Option<&[f32]>,
    y: &mut [MaybeUninit<f32>],
    work: &mut Vec<f32>,
));

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
    // Both GEMM operands run along the tiles, so one of them is transposed while the GEMM
    // packs it: accumulating `dUᵀ` instead of `dU` makes that the smaller one.
    let transposed = g.c_in > g.c_out;
    let du = sum_over_chunks(
        &chunks,
        16 * g.c_out * g.c_in,
        |(x_chunk, dy_chunk), du, scratch| {
            let tiles = x_chunk.images() * tiles_per_image;
            let v = resized(&mut scratch.cols, 16 * g.c_in * tiles);
            transform_inputs(g, x_chunk, v, &mut scratch.phases);
            let dm = resized(&mut scratch.product, 16 * g.c_out * tiles);
            transform_output_grads(g, dy_chunk, dm, &mut scratch.phases);
            for e in 0..16 {
                let dm_e = MatRef::row_major(&dm[e * g.c_out * tiles..][..g.c_out * tiles], tiles);
                let v_e = MatRef::row_major(&v[e * g.c_in * tiles..][..g.c_in * tiles], tiles);
                let du_e = &mut du[e * g.c_out * g.c_in..][..g.c_out * g.c_in];
                if transposed {
                    matmul(g.c_in, g.c_out, tiles, du_e, true, v_e, dm_e.transposed());
                } else {
                    matmul(g.c_out, g.c_in, tiles, du_e, true, dm_e, v_e.transposed());
                }
            }
        },
    );
    untransform_filters(&du, g.c_out, g.c_in, transposed)
}

/// Fills `dm` (`[16, c_out, tiles]`) with `A ȳ Aᵀ` of every 2×2 output-gradient tile `ȳ` of `dy`
/// (zero beyond the image): the adjoint of the output transform, A = [[1,0],[1,1],[1,-1],[0,-1]].
/// Per output channel, the tiles' four values are the polyphase components of `dy`.
#[inline(always)]
fn transform_output_grads_inner(
    g: &ConvGeometry,
    dy: &Stacked,
    dm: &mut [f32],
    work: &mut Vec<f32>,
) {
    let t = Grid::new(g.in_hw, dy.images());
    let n = t.len();
    let work = resized(work, 6 * n);
    let (phases, pq) = work.split_at_mut(4 * n);
    for co in 0..g.c_out {
        let [a, b, c, d] = carve::<4>(phases, n);
        t.split(|image| dy.plane_of(image, co), [a, b, c, d]);
        let [a, b, c, d] = carve::<4>(phases, n);
        let [p, q] = carve::<2>(pq, n);
        // Rows of A ȳ: [a, b], [a + c, b + d], [a - c, b - d], [-c, -d]; each row [p, q]
        // times Aᵀ is [p, p + q, p - q, -q].
        for r in 0..4 {
            match r {
                0 => {
                    p.copy_from_slice(a);
                    q.copy_from_slice(b);
                }
                1 => {
                    map2(p, a, c, |a, c| a + c);
                    map2(q, b, d, |b, d| b + d);
                }
                2 => {
                    map2(p, a, c, |a, c| a - c);
                    map2(q, b, d, |b, d| b - d);
                }
                _ => {
                    negate(p, c);
                    negate(q, d);
                }
            }
            let row = |col: usize| {
                let first = ((4 * r + col) * g.c_out + co) * n;
                first..first + n
            };
            dm[row(0)].copy_from_slice(p);
            map2(&mut dm[row(1)], p, q, |p, q| p + q);
            map2(&mut dm[row(2)], p, q, |p, q| p - q);
            negate(&mut dm[row(3)], q);
        }
    }
}

simd_dispatch!(transform_output_grads => transform_output_grads_inner(
    g: &ConvGeometry, dy: &Stacked, dm: &mut [f32], work: &mut Vec<f32>,
));

/// `Gᵀ X G` (3×3) of every 4×4 filter gradient `X` in `du` (`[16, c_out, c_in]`), laid out as a
/// weight `[c_out, c_in, 3, 3]`: the adjoint of [`transform_filters`]. With `transposed`, `du`
/// holds `[16, c_in, c_out]`.
fn untransform_filters(du: &[f32], c_out: usize, c_in: usize, transposed: bool) -> Vec<f32> {
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
    weight
        .par_chunks_exact_mut(9)
        .enumerate()
        .for_each(|(pair, out)| {
            let at = match transposed {
                false => pair,
                true => (pair % c_in) * c_out + pair / c_in,
            };
            let x = |r: usize, c: usize| du[(r * 4 + c) * pairs + at];
            let cols: [[f32; 3]; 4] =
                std::array::from_fn(|c| gt([x(0, c), x(1, c), x(2, c), x(3, c)]));
            for r in 0..3 {
                let row = gt([cols[0][r], cols[1][r], cols[2][r], cols[3][r]]);
                out[r * 3..r * 3 + 3].copy_from_slice(&row);
            }
        });
    weight
}

/// The weight of the convolution that computes a 3×3 stride-1 convolution's input gradient:
/// channels exchanged and the kernel rotated by 180°, `[c_in, c_out, 3, 3]`.
pub fn adjoint_weight(weight: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; weight.len()];
    out.par_chunks_exact_mut(9)
        .enumerate()
        .for_each(|(pair, rotated)| {
            let (ci, co) = (pair / c_out, pair % c_out);
            let filter = &weight[(co * c_in + ci) * 9..][..9];
            for (r, v) in rotated.iter_mut().zip(filter.iter().rev()) {
                *r = *v;
            }
        });
    out
}

/// `out[i] = f(a[i], b[i])`.
#[inline(always)]
pub(super) fn map2(out: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    for (o, (a, b)) in out.iter_mut().zip(a.iter().zip(b)) {
        *o = f(*a, *b);
    }
}

/// `out[i] = -a[i]`.
#[inline(always)]
pub(super) fn negate(out: &mut [f32], a: &[f32]) {
    for (o, a) in out.iter_mut().zip(a) {
        *o = -*a;
    }
}

/// `out[i] = f(a[i], b[i], c[i])`.
#[inline(always)]
pub(super) fn map3(
    out: &mut [f32],
    a: &[f32],
    b: &[f32],
    c: &[f32],
    f: impl Fn(f32, f32, f32) -> f32,
) {
    for (o, (a, (b, c))) in out.iter_mut().zip(a.iter().zip(b.iter().zip(c))) {
        *o = f(*a, *b, *c);
    }
}

/// `out[i] = a[i] - masked(b[i], mask[i])` (a neighbour that may lie across an edge).
#[inline(always)]
pub(super) fn minus_masked(out: &mut [f32], a: &[f32], b: &[f32], mask: &[u32]) {
    for (o, (a, (b, m))) in out.iter_mut().zip(a.iter().zip(b.iter().zip(mask))) {
        *o = *a - masked(*b, *m);
    }
}

/// `out[i] = masked(a[i], mask[i]) - b[i]` (a neighbour that may lie across an edge).
#[inline(always)]
pub(super) fn masked_minus(out: &mut [f32], a: &[f32], mask: &[u32], b: &[f32]) {
    for (o, (a, (m, b))) in out.iter_mut().zip(a.iter().zip(mask.iter().zip(b))) {
        *o = masked(*a, *m) - *b;
    }
}
