//! What the kernel files share, so that none of them imports another in a circle: convolution
//! geometry, activations as channel blocks, polyphase grids, the chunked parallel loops with
//! their per-thread scratch buffers, the GEMM wrapper, the writers of uninitialised outputs and
//! the `flex` tensor conversions of the burn extensions. This file imports no other kernel
//! file; the specialised kernels (`polyphase`, `winograd`) import only it, and the dispatcher
//! (`conv_gemm`) imports them.

use std::borrow::Cow;
use std::mem::MaybeUninit;

use burn::backend::flex::FlexTensor;
use burn::tensor::TensorData;
use gemm::Parallelism;
use rayon::prelude::*;

/// Shape of a 2-D convolution with a square kernel and equal stride/padding on both axes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Images in the batch.
    pub batch: usize,
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Input height and width.
    pub in_hw: [usize; 2],
    /// Kernel size.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub padding: usize,
}

/// GEMM columns (output pixels) per chunk for the output and input-gradient products and the
/// Winograd path: small
/// enough that a chunk's `im2col` matrix stays in cache until the GEMM reads it (measured best
/// on the reference model's sampling among 512/1024/2048/4096).
pub(super) const COLUMNS_PER_CHUNK: usize = 1024;

impl ConvGeometry {
    /// Output height and width (PyTorch's formula).
    pub fn out_hw(&self) -> [usize; 2] {
        self.in_hw
            .map(|n| (n + 2 * self.padding - self.kernel) / self.stride + 1)
    }

    /// Pixels of one input plane.
    pub(super) fn in_plane(&self) -> usize {
        self.in_hw[0] * self.in_hw[1]
    }

    /// Pixels of one output plane.
    pub(super) fn out_plane(&self) -> usize {
        let [h, w] = self.out_hw();
        h * w
    }

    /// Rows of the `im2col` matrix: one per (input channel, kernel row, kernel column).
    pub(super) fn patch_len(&self) -> usize {
        self.c_in * self.kernel * self.kernel
    }

    /// Images per chunk: at most about `columns` GEMM columns and at least two chunks per
    /// worker thread when the batch allows it, preferably a size that splits the batch into
    /// equal chunks, as many for every thread (no thread then waits for another at the end).
    pub(super) fn images_per_chunk(&self, columns: usize) -> usize {
        let threads = rayon::current_num_threads();
        let by_size = columns.div_ceil(self.out_plane()).max(1);
        let by_threads = self.batch.div_ceil(2 * threads).max(1);
        let most = by_size.min(by_threads);
        (1..=most)
            .rev()
            .find(|&n| self.batch.is_multiple_of(n) && (self.batch / n).is_multiple_of(threads))
            .unwrap_or(most)
    }

    /// Panics unless `input` has this convolution's input shape and `output` its output shape.
    pub(super) fn check_sizes(&self, input: &Stacked, output: &Stacked) {
        assert_eq!(
            (input.images, input.plane, input.channels()),
            (self.batch, self.in_plane(), self.c_in),
            "input size"
        );
        assert_eq!(
            (output.images, output.plane, output.channels()),
            (self.batch, self.out_plane(), self.c_out),
            "output size"
        );
    }

    /// Output positions `o` with `0 <= o·stride + offset - padding < n_in`, as a range.
    pub(super) fn valid_outputs(
        &self,
        offset: usize,
        n_in: usize,
        n_out: usize,
    ) -> std::ops::Range<usize> {
        let (s, p) = (self.stride, self.padding);
        let first = p.saturating_sub(offset).div_ceil(s);
        let last = (n_in + p).saturating_sub(offset).div_ceil(s).min(n_out);
        first..last.max(first)
    }
}

/// Working buffers of one worker thread, kept between calls so that no step allocates (and
/// zeroes) them again.
#[derive(Default)]
pub(super) struct Scratch {
    /// The right-hand matrix of a GEMM (`im2col` columns, transformed tiles).
    pub(super) cols: Vec<f32>,
    /// A GEMM's product or a reordered left-hand matrix.
    pub(super) product: Vec<f32>,
    /// Intermediate results of the Winograd transforms.
    pub(super) phases: Vec<f32>,
}

thread_local! {
    /// This thread's [`Scratch`].
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// Runs `f` with this thread's scratch buffers (`f` must not start parallel work itself).
pub(super) fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|scratch| f(&mut scratch.borrow_mut()))
}

/// An output of `per_image` values for each image of `input`, computed in parallel chunks of
/// `per_chunk` images: `fill(input_chunk, output_chunk, scratch)` (`scratch` this thread's
/// buffers) must write every value of its output chunk.
pub(super) fn per_chunk_output(
    input: &Stacked,
    per_chunk: usize,
    per_image: usize,
    fill: impl Fn(&Stacked, &mut [MaybeUninit<f32>], &mut Scratch) + Sync,
) -> Vec<f32> {
    let chunks = input.chunks(per_chunk);
    // SAFETY: every `fill` writes its whole output chunk (the contract above).
    let (out, _) = unsafe {
        par_written(input.images * per_image, per_chunk * per_image, |i, out| {
            with_scratch(|scratch| fill(&chunks[i], out, scratch))
        })
    };
    out
}

/// `buf` resized to `len` (contents unspecified: every user overwrites it).
pub(super) fn resized(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

/// `len` zeros, written explicitly: the pages are then touched by writes first, which avoids the
/// copy-on-write faults (and cross-core TLB flushes) of accumulating into fresh zero pages.
fn zeros(len: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    v.resize(len, 0.0);
    v
}

/// A read-only matrix view: element `(i, j)` is `data[i·row_stride + j·col_stride]`.
#[derive(Clone, Copy)]
pub(super) struct MatRef<'a> {
    data: &'a [f32],
    row_stride: usize,
    col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major `[rows, cols]` matrix.
    pub(super) fn row_major(data: &'a [f32], cols: usize) -> Self {
        MatRef {
            data,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose, without copying.
    pub(super) fn transposed(self) -> Self {
        MatRef {
            data: self.data,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// Panics unless a `rows`×`cols` matrix fits in the data.
    fn check(&self, rows: usize, cols: usize) {
        if rows > 0 && cols > 0 {
            let last = (rows - 1) * self.row_stride + (cols - 1) * self.col_stride;
            assert!(last < self.data.len(), "matrix view out of bounds");
        }
    }
}

/// `dst[m×n] (row-major) = a[m×k] · b[k×n]`, or `+=` when `accumulate`.
pub(super) fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    a: MatRef,
    b: MatRef,
) {
    assert!(dst.len() >= m * n, "destination too small");
    a.check(m, k);
    b.check(k, n);
    // SAFETY: every index the GEMM touches is within the slices (checked above); `dst` does not
    // alias `a` or `b` (it is borrowed mutably).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// Activations of the same images given as one or two channel blocks (`[images, c_i, plane]`
/// each), seen as their concatenation along channels: a U-Net skip connection without copying
/// it together.
#[derive(Debug, Clone, Copy)]
pub struct Stacked<'a> {
    blocks: [&'a [f32]; 2],
    pub(super) images: usize,
    pub(super) plane: usize,
}

impl<'a> Stacked<'a> {
    /// `blocks` (the second may be empty) of `images` images of `plane` pixels each.
    pub fn new(blocks: [&'a [f32]; 2], images: usize, plane: usize) -> Self {
        for block in blocks {
            assert!(
                images > 0 && block.len() % (images * plane) == 0,
                "block size is not images x channels x plane"
            );
        }
        Stacked {
            blocks,
            images,
            plane,
        }
    }

    /// One block.
    pub fn single(x: &'a [f32], images: usize, plane: usize) -> Self {
        Self::new([x, &[]], images, plane)
    }

    /// Channels of each block.
    pub fn block_channels(&self) -> [usize; 2] {
        self.blocks.map(|b| b.len() / (self.images * self.plane))
    }

    /// Number of images.
    pub fn images(&self) -> usize {
        self.images
    }

    /// Channels of all blocks together.
    pub fn channels(&self) -> usize {
        self.block_channels().iter().sum()
    }

    /// Channel `c` (of the concatenation) of image `b`.
    pub(super) fn plane_of(&self, b: usize, c: usize) -> &'a [f32] {
        let [first, second] = self.block_channels();
        let (block, channels, c) = if c < first {
            (self.blocks[0], first, c)
        } else {
            (self.blocks[1], second, c - first)
        };
        &block[(b * channels + c) * self.plane..][..self.plane]
    }

    /// Runs of at most `per_chunk` images.
    pub(super) fn chunks(&self, per_chunk: usize) -> Vec<Self> {
        (0..self.images)
            .step_by(per_chunk)
            .map(|first| {
                let count = per_chunk.min(self.images - first);
                let blocks = self.blocks.map(|block| {
                    let per_image = block.len() / self.images;
                    &block[first * per_image..(first + count) * per_image]
                });
                Stacked {
                    blocks,
                    images: count,
                    plane: self.plane,
                }
            })
            .collect()
    }
}

/// The runs of chunks summed in parallel by [`sum_over_chunks`] and
/// [`per_chunk_output_and_sum`]: two per worker thread, a fixed split.
fn chunks_per_run(chunks: usize) -> usize {
    let runs = chunks.min(2 * rayon::current_num_threads()).max(1);
    chunks.div_ceil(runs).max(1)
}

/// The sum of `partials` added in order (`len` zeros if there are none), in parallel slices.
fn add_in_order(partials: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let mut partials = partials.into_iter();
    let mut total = partials.next().unwrap_or_else(|| zeros(len));
    let rest: Vec<Vec<f32>> = partials.collect();
    const SLICE: usize = 4096;
    total.par_chunks_mut(SLICE).enumerate().for_each(|(i, t)| {
        for partial in &rest {
            t.iter_mut()
                .zip(&partial[i * SLICE..])
                .for_each(|(t, p)| *t += p);
        }
    });
    total
}

/// An output of `per_image` values per image of the chunks (as [`per_chunk_output`]) and a sum
/// of `len` values over them (as [`sum_over_chunks`]), computed together:
/// `fill(chunk, output_chunk, sum, scratch)` writes every value of its output chunk and adds
/// its part to `sum`.
pub(super) fn per_chunk_output_and_sum(
    chunks: &[(Stacked, Stacked)],
    per_image: usize,
    len: usize,
    fill: impl Fn(&(Stacked, Stacked), &mut [MaybeUninit<f32>], &mut [f32], &mut Scratch) + Sync,
) -> (Vec<f32>, Vec<f32>) {
    let per_run = chunks_per_run(chunks.len());
    let per_chunk = chunks.first().map_or(1, |(a, _)| a.images);
    let images: usize = chunks.iter().map(|(a, _)| a.images).sum();
    // SAFETY: every `fill` writes its whole output chunk, and the chunks of a run cover it.
    let (out, partials) = unsafe {
        par_written(
            images * per_image,
            per_run * per_chunk * per_image,
            |r, out| {
                let mut sum = zeros(len);
                with_scratch(|scratch| {
                    let run = chunks.iter().skip(r * per_run).take(per_run);
                    for (chunk, out) in run.zip(out.chunks_mut(per_chunk * per_image)) {
                        fill(chunk, out, &mut sum, scratch);
                    }
                });
                sum
            },
        )
    };
    (out, add_in_order(partials, len))
}

/// `Σ add(chunk)` over `chunks`, each `add` accumulating into a `len`-long sum (with this
/// thread's scratch buffers). The chunks are split into a fixed number of runs (two per worker
/// thread) summed in parallel, and the runs' sums are added in order: the result does not depend
/// on scheduling.
pub(super) fn sum_over_chunks<T: Sync>(
    chunks: &[T],
    len: usize,
    add: impl Fn(&T, &mut [f32], &mut Scratch) + Sync,
) -> Vec<f32> {
    let partials: Vec<Vec<f32>> = chunks
        .par_chunks(chunks_per_run(chunks.len()))
        .map(|run| {
            let mut sum = zeros(len);
            with_scratch(|scratch| run.iter().for_each(|chunk| add(chunk, &mut sum, scratch)));
            sum
        })
        .collect();
    add_in_order(partials, len)
}

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

/// `N` consecutive buffers of `len` values carved from `buf`.
pub(super) fn carve<const N: usize>(buf: &mut [f32], len: usize) -> [&mut [f32]; N] {
    let mut parts = buf.chunks_exact_mut(len);
    std::array::from_fn(|_| parts.next().expect("buffer holds N parts"))
}

/// The range of `t` in `0..len` for which `t + offset` is in `0..len`.
pub(super) fn shifted_range(len: usize, offset: isize) -> std::ops::Range<usize> {
    let first = offset.min(0).unsigned_abs().min(len);
    first..(len as isize - offset.max(0)).max(first as isize) as usize
}

/// A vector of `len` values computed in parallel: `fill(i, chunk)` receives the `i`-th run of
/// `chunk_len` values (the last may be shorter), uninitialised, and returns a value per run,
/// collected in order. No pass zeroes the output before the kernels overwrite it.
///
/// # Safety
/// `fill` must initialise every value of its run.
pub(crate) unsafe fn par_written<T: Send>(
    len: usize,
    chunk_len: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) -> T + Sync,
) -> (Vec<f32>, Vec<T>) {
    let mut out = Vec::with_capacity(len);
    let results = out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk_len.max(1))
        .enumerate()
        .map(|(i, chunk)| fill(i, chunk))
        .collect();
    // SAFETY: the runs cover `0..len` and `fill` initialised each (the caller's promise).
    unsafe { out.set_len(len) };
    (out, results)
}

/// `values` after every one of them was written.
///
/// # Safety
/// Every value must be initialised.
pub(crate) unsafe fn assume_written(values: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32` and the values are initialised.
    unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<f32>(), values.len()) }
}

/// `values`, every one set to `value`.
pub(crate) fn write_all(values: &mut [MaybeUninit<f32>], value: f32) -> &mut [f32] {
    values.fill(MaybeUninit::new(value));
    // SAFETY: every value was written just above.
    unsafe { assume_written(values) }
}

/// `values` with a copy of `src` (of the same length) written into them.
pub(crate) fn write_copy<'a>(values: &'a mut [MaybeUninit<f32>], src: &[f32]) -> &'a mut [f32] {
    values.write_copy_of_slice(src)
}

/// The `f32` values of `t` in row-major order (borrowed when it is contiguous). A strided
/// view made of long contiguous runs (a channel slice of a batch, say) is gathered in
/// parallel, run by run; `flex` copies other layouts.
pub(super) fn values(t: &FlexTensor) -> Cow<'_, [f32]> {
    if let Some(slice) = t.as_slice::<f32>() {
        return Cow::Borrowed(slice);
    }
    let layout = t.layout();
    let blocks = layout.strided_blocks();
    let run = blocks.block_len();
    if layout.has_positive_strides() && run >= 1024 {
        let starts: Vec<usize> = blocks.block_starts().collect();
        let src = t.storage::<f32>();
        // SAFETY: each run is one copy of `run` values.
        let (out, _) = unsafe {
            par_written(starts.len() * run, run, |i, dst| {
                write_copy(dst, &src[starts[i]..starts[i] + run]);
            })
        };
        return Cow::Owned(out);
    }
    let data = t.to_contiguous().into_data();
    Cow::Owned(data.try_into_vec::<f32>().expect("an f32 tensor"))
}

/// A `flex` tensor of `values` with `shape`.
pub(super) fn flex_tensor<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}
