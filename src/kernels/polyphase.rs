//! Planes split into their four polyphase components (even/odd rows × even/odd columns). Each
//! component is a grid of ⌈h/2⌉×⌈w/2⌉ values, and the grids of all images of a chunk are
//! numbered together, image by image and row by row, so that per-pixel work on them runs as
//! long vector loops; a neighbour in such a vector that lies across an image's edge is cleared
//! by a bit mask. The Winograd transforms work on these grids, and so do the column gathers of
//! stride-2 convolutions: with stride 2 the kernel tap `k` reads input `2o + k - padding`, the
//! same polyphase component at a shift of at most one position for every output `o`.

use std::mem::MaybeUninit;

use super::conv_gemm::{ConvGeometry, Stacked, resized};

/// The polyphase grid of `images` planes of `h`×`w` pixels.
#[derive(Debug, Clone, Copy)]
pub(super) struct Grid {
    /// Plane height.
    pub h: usize,
    /// Plane width.
    pub w: usize,
    /// Planes (images) in the grid.
    pub images: usize,
}

impl Grid {
    /// The grid of `images` planes of size `[h, w]`.
    pub fn new([h, w]: [usize; 2], images: usize) -> Self {
        Grid { h, w, images }
    }

    /// Rows of one image's grid.
    pub fn rows(&self) -> usize {
        self.h.div_ceil(2)
    }

    /// Columns of one image's grid.
    pub fn cols(&self) -> usize {
        self.w.div_ceil(2)
    }

    /// Positions of one image's grid.
    pub fn per_image(&self) -> usize {
        self.rows() * self.cols()
    }

    /// Positions of all images.
    pub fn len(&self) -> usize {
        self.images * self.per_image()
    }

    /// Per position `(m, n)`, all bits set if `(m + dr, n + dc)` lies in the same image's grid.
    pub fn shift_mask(&self, dr: isize, dc: isize) -> Vec<u32> {
        let (rows, cols) = (
            shifted_range(self.rows(), dr),
            shifted_range(self.cols(), dc),
        );
        let mut mask = vec![0; self.len()];
        for image in mask.chunks_exact_mut(self.per_image()) {
            for row in image
                .chunks_exact_mut(self.cols())
                .take(rows.end)
                .skip(rows.start)
            {
                row[cols.clone()].fill(u32::MAX);
            }
        }
        mask
    }

    /// Splits the planes `plane(b)` into `phases[2a + c][(b, m, n)] = plane(b)[2m + a][2n + c]`
    /// (zero beyond the plane).
    #[inline(always)]
    pub fn split<'p>(&self, plane: impl Fn(usize) -> &'p [f32], phases: [&mut [f32]; 4]) {
        let [p00, p01, p10, p11] = phases;
        let cols = self.cols();
        for b in 0..self.images {
            for (y, row) in plane(b).chunks_exact(self.w).enumerate() {
                let at = b * self.per_image() + (y / 2) * cols;
                let (even, odd) = match y % 2 {
                    0 => (&mut p00[at..at + cols], &mut p01[at..at + cols]),
                    _ => (&mut p10[at..at + cols], &mut p11[at..at + cols]),
                };
                deinterleave(row, even, odd);
                if self.w % 2 == 1 {
                    odd[cols - 1] = 0.0;
                }
            }
            if self.h % 2 == 1 {
                let last_row = b * self.per_image() + (self.rows() - 1) * cols;
                p10[last_row..last_row + cols].fill(0.0);
                p11[last_row..last_row + cols].fill(0.0);
            }
        }
    }

    /// The inverse of [`Grid::split`]: writes (every pixel of) the planes, plane `b` at
    /// `out[b * image_stride..][..h * w]`.
    #[inline(always)]
    pub fn interleave(
        &self,
        phases: [&[f32]; 4],
        out: &mut [MaybeUninit<f32>],
        image_stride: usize,
    ) {
        let [p00, p01, p10, p11] = phases;
        let cols = self.cols();
        for b in 0..self.images {
            let plane = &mut out[b * image_stride..][..self.h * self.w];
            for (y, row) in plane.chunks_exact_mut(self.w).enumerate() {
                let at = b * self.per_image() + (y / 2) * cols;
                let (even, odd) = match y % 2 {
                    0 => (&p00[at..at + cols], &p01[at..at + cols]),
                    _ => (&p10[at..at + cols], &p11[at..at + cols]),
                };
                let mut pairs = row.chunks_exact_mut(2);
                for (pair, (e, o)) in (&mut pairs).zip(even.iter().zip(odd)) {
                    pair[0].write(*e);
                    pair[1].write(*o);
                }
                if let [last] = pairs.into_remainder() {
                    last.write(even[cols - 1]);
                }
            }
        }
    }
}

/// Splits `src` into its even-indexed values (written to `even`) and odd-indexed ones (`odd`).
#[inline(always)]
fn deinterleave(src: &[f32], even: &mut [f32], odd: &mut [f32]) {
    let pairs = src.chunks_exact(2);
    if let [last] = pairs.remainder() {
        even[src.len() / 2] = *last;
    }
    for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(pairs) {
        *e = pair[0];
        *o = pair[1];
    }
}

/// `x` with its bits cleared where `mask` is 0.
#[inline(always)]
pub(super) fn masked(x: f32, mask: u32) -> f32 {
    f32::from_bits(x.to_bits() & mask)
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

/// `N` consecutive buffers of `len` values carved from `buf`.
pub(super) fn carve<const N: usize>(buf: &mut [f32], len: usize) -> [&mut [f32]; N] {
    let mut parts = buf.chunks_exact_mut(len);
    std::array::from_fn(|_| parts.next().expect("buffer holds N parts"))
}

/// The range of `t` in `0..len` for which `t + offset` is in `0..len`.
fn shifted_range(len: usize, offset: isize) -> std::ops::Range<usize> {
    let first = offset.min(0).unsigned_abs().min(len);
    first..(len as isize - offset.max(0)).max(first as isize) as usize
}

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
