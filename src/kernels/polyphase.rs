//! Planes split into their four polyphase components (even/odd rows × even/odd columns). Each
//! component is a grid of ⌈h/2⌉×⌈w/2⌉ values, and the grids of all images of a chunk are
//! numbered together, image by image and row by row, so that per-pixel work on them runs as
//! long vector loops; a neighbour in such a vector that lies across an image's edge is cleared
//! by a bit mask. The Winograd transforms work on these grids, and so do the column gathers of
//! stride-2 convolutions: with stride 2 the kernel tap `k` reads input `2o + k - padding`, the
//! same polyphase component at a shift of at most one position for every output `o`. The grid
//! itself ([`Grid`]) is in `base`, shared with `winograd`; this file has the gathers.

use std::mem::MaybeUninit;

use super::base::{ConvGeometry, Grid, Stacked, carve, masked, resized, shifted_range};

/// `out[t] = src[t + offset]` where `mask[t]` is set, else 0.
#[inline(always)]
fn shifted_copy(out: &mut [f32], src: &[f32], offset: isize, mask: &[u32]) {
    let range = shifted_range(out.len(), offset);
    out[..range.start].fill(0.0);
    out[range.end..].fill(0.0);
    let from = (range.start as isize + offset) as usize;
    let src = &src[from..from + range.len()];
    for (o, (s, m)) in out[range.clone()]
        .iter_mut()
        .zip(src.iter().zip(&mask[range]))
    {
        *o = masked(*s, *m);
    }
}

/// `out[t] += src[t + offset]` where `mask[t]` is set.
#[inline(always)]
fn shifted_add(out: &mut [f32], src: &[f32], offset: isize, mask: &[u32]) {
    let range = shifted_range(out.len(), offset);
    let from = (range.start as isize + offset) as usize;
    let src = &src[from..from + range.len()];
    for (o, (s, m)) in out[range.clone()]
        .iter_mut()
        .zip(src.iter().zip(&mask[range]))
    {
        *o += masked(*s, *m);
    }
}

/// Whether a convolution's column gathers can run on polyphase grids: stride 2, an output the
/// size of the grid, and every kernel tap within one grid position of its output.
pub(super) fn applies(g: &ConvGeometry) -> bool {
    let grid = Grid::new(g.in_hw, 1);
    g.stride == 2
        && g.out_hw() == [grid.rows(), grid.cols()]
        && g.padding <= 2
        && g.kernel <= g.padding + 4
}

/// Phase and grid shift of kernel tap `k`: input `2o + k - padding = 2(o + shift) + phase`.
fn tap(g: &ConvGeometry, k: usize) -> (usize, isize) {
    let q = k as isize - g.padding as isize;
    (q.rem_euclid(2) as usize, q.div_euclid(2))
}

/// The masks of the nine shifts by -1, 0 or 1 position, indexed by [`mask_index`].
fn shift_masks(grid: &Grid) -> Vec<Vec<u32>> {
    (-1..=1)
        .flat_map(|dr| (-1..=1).map(move |dc| grid.shift_mask(dr, dc)))
        .collect()
}

fn mask_index(dr: isize, dc: isize) -> usize {
    ((dr + 1) * 3 + dc + 1) as usize
}

/// `im2col` of a stride-2 convolution (see [`applies`]): each row of `cols`
/// (`[c_in·k·k, images·out_plane]`) is one polyphase component of an input channel, shifted.
#[inline(always)]
fn im2col_inner(g: &ConvGeometry, x: &Stacked, cols: &mut [f32], work: &mut Vec<f32>) {
    let grid = Grid::new(g.in_hw, x.images());
    let (n, k) = (grid.len(), g.kernel);
    let masks = shift_masks(&grid);
    let work = resized(work, 4 * n);
    for ci in 0..g.c_in {
        grid.split(|b| x.plane_of(b, ci), carve::<4>(work, n));
        for kh in 0..k {
            let (a, dr) = tap(g, kh);
            for kw in 0..k {
                let (c, dc) = tap(g, kw);
                let row = &mut cols[((ci * k + kh) * k + kw) * n..][..n];
                let phase = &work[(2 * a + c) * n..][..n];
                let offset = dr * grid.cols() as isize + dc;
                shifted_copy(row, phase, offset, &masks[mask_index(dr, dc)]);
            }
        }
    }
}

simd_dispatch!(pub(super) im2col => im2col_inner(
    g: &ConvGeometry, x: &Stacked, cols: &mut [f32], work: &mut Vec<f32>,
));

/// The adjoint of [`im2col`]: writes into `dx` (`images` input images, every pixel) the
/// sum of the columns that read each pixel.
#[inline(always)]
fn col2im_inner(
    g: &ConvGeometry,
    cols: &[f32],
    images: usize,
    dx: &mut [MaybeUninit<f32>],
    work: &mut Vec<f32>,
) {
    let grid = Grid::new(g.in_hw, images);
    let (n, k) = (grid.len(), g.kernel);
    let masks = shift_masks(&grid);
    let work = resized(work, 4 * n);
    // Taps as (index, component, row shift, column shift), the unshifted ones first: each
    // covers every position of its component, so a component's first tap is copied instead of
    // added to zeros.
    let mut taps: Vec<(usize, usize, isize, isize)> = (0..k * k)
        .map(|t| {
            let ((a, dr), (c, dc)) = (tap(g, t / k), tap(g, t % k));
            (t, 2 * a + c, dr, dc)
        })
        .collect();
    taps.sort_by_key(|&(_, _, dr, dc)| (dr, dc) != (0, 0));
    for ci in 0..g.c_in {
        let mut started = [false; 4];
        for &(t, p, dr, dc) in &taps {
            let row = &cols[(ci * k * k + t) * n..][..n];
            let phase = &mut work[p * n..][..n];
            if !started[p] && (dr, dc) == (0, 0) {
                phase.copy_from_slice(row);
            } else {
                if !started[p] {
                    phase.fill(0.0);
                }
                let offset = dr * grid.cols() as isize + dc;
                shifted_add(phase, row, -offset, &masks[mask_index(-dr, -dc)]);
            }
            started[p] = true;
        }
        for (p, started) in started.iter().enumerate() {
            if !started {
                work[p * n..(p + 1) * n].fill(0.0);
            }
        }
        let [p00, p01, p10, p11] = carve::<4>(work, n);
        grid.interleave(
            [p00, p01, p10, p11],
            &mut dx[ci * g.in_plane()..],
            g.c_in * g.in_plane(),
        );
    }
}

simd_dispatch!(pub(super) col2im => col2im_inner(
    g: &ConvGeometry,
    cols: &[f32],
    images: usize,
    dx: &mut [MaybeUninit<f32>],
    work: &mut Vec<f32>,
));
