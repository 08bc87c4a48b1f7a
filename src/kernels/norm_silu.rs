//! The tail of every U-Net block in one pass: add a per-(image, channel) shift (the time
//! embedding's projection), GroupNorm with its affine map, then SiLU (or no activation, as
//! before attention) — forward and backward, on contiguous `[batch, channels, plane]` `f32`
//! buffers.
//!
//! With `u = h + shift`, `z = (u - mean_g) / sqrt(var_g + eps)` over each group `g` of channels
//! of one image, `a = gamma·z + beta` and `y = a·sigmoid(a)` (or `y = a` without SiLU):
//!
//! - `da = dy · sigmoid(a) · (1 + a·(1 - sigmoid(a)))` (or `dy`), `dgamma = Σ da·z`, `dbeta = Σ da`
//! - `dh = rstd · (dz - mean_g(dz) - z · mean_g(dz·z))` with `dz = gamma·da`, `dshift = Σ_plane dh`
//!
//! Groups run in parallel. The inner loops are written to vectorise (an exponential by range
//! reduction and a polynomial instead of the scalar libm call) and are compiled for AVX-512 and
//! AVX2 as well, chosen at run time.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::base::{assume_written, par_written};
use super::simd::{madd, sum};

/// Layout of a GroupNorm input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NormShape {
    /// Images.
    pub batch: usize,
    /// Channels per image (a multiple of `groups`).
    pub channels: usize,
    /// Pixels per channel.
    pub plane: usize,
    /// Channel groups.
    pub groups: usize,
}

impl NormShape {
    fn group_channels(&self) -> usize {
        self.channels / self.groups
    }

    fn group_len(&self) -> usize {
        self.group_channels() * self.plane
    }
}

/// Parameters shared by the forward and backward passes.
#[derive(Debug, Clone, Copy)]
pub struct NormParams<'a> {
    /// Per-(image, channel) shift added before normalising, `[batch, channels]`.
    pub shift: &'a [f32],
    /// GroupNorm scale, `[channels]`, or `[batch, channels]` for a per-image (modulated) scale.
    pub gamma: &'a [f32],
    /// GroupNorm offset, of the same shape as `gamma`.
    pub beta: &'a [f32],
    /// Variance epsilon.
    pub eps: f32,
    /// Whether SiLU follows the affine map.
    pub silu: bool,
}

/// Gradients of the fused op.
#[derive(Debug, Clone)]
pub struct NormGrads {
    /// With respect to the input, `[batch, channels, plane]`.
    pub input: Vec<f32>,
    /// With respect to the shift, `[batch, channels]`.
    pub shift: Vec<f32>,
    /// With respect to gamma (of its shape).
    pub gamma: Vec<f32>,
    /// With respect to beta (of its shape).
    pub beta: Vec<f32>,
}

/// `e^x` to about 2e-7 relative error, in a form the compiler vectorises.
#[inline(always)]
fn exp<const FMA: bool>(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5·2^23: adding it rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    let shifted = madd::<FMA>(x, std::f32::consts::LOG2_E, ROUND);
    let n = shifted - ROUND;
    // The integer n sits in the low mantissa bits of `shifted`: 2^n without a float-to-int cast
    // (whose saturating semantics would not vectorise).
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let two_to_n = f32::from_bits(n_bits.wrapping_add(127) << 23);
    let r = madd::<FMA>(-n, 1.428_606_8e-6, madd::<FMA>(-n, 0.693_145_75, x));
    // Taylor polynomial of degree 6 (Horner).
    let mut p = 1.0 / 720.0;
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = madd::<FMA>(p, r, c);
    }
    two_to_n * p
}

/// `1/d` for `d` in `[1, 1e38]` to about 1e-7 relative error without a division (a vector
/// division costs as much as the rest of the fused pass): an estimate from the bits of `d`
/// (within 12 %), then three Newton steps, each squaring the relative error.
#[inline(always)]
fn recip<const FMA: bool>(d: f32) -> f32 {
    let mut r = f32::from_bits(0x7EF3_11C7u32.wrapping_sub(d.to_bits()));
    for _ in 0..3 {
        r *= madd::<FMA>(-d, r, 2.0);
    }
    r
}

/// `1 / (1 + e^-a)`; below `a = -80` (where it is under 2e-35) as at -80.
#[inline(always)]
fn sigmoid<const FMA: bool>(a: f32) -> f32 {
    recip::<FMA>(1.0 + exp::<FMA>(-a.max(-80.0)))
}

/// `Σ (x + offset)²`, vectorised like [`sum`](super::simd::sum).
#[inline(always)]
fn sum_squares(xs: &[f32], offset: f32) -> f32 {
    let mut acc = [0.0f32; 16];
    let chunks = xs.chunks_exact(16);
    let rest: f32 = chunks
        .remainder()
        .iter()
        .map(|x| (x + offset) * (x + offset))
        .sum();
    for chunk in chunks {
        for (a, x) in acc.iter_mut().zip(chunk) {
            *a += (x + offset) * (x + offset);
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// `Σ a·b`, vectorised like [`sum`].
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let rest: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (ca, cb) in ca.zip(cb) {
        for ((acc, a), b) in acc.iter_mut().zip(ca).zip(cb) {
            *acc += a * b;
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// Mean and reciprocal standard deviation of `h + shift` over one group.
#[inline(always)]
fn group_stats(h: &[f32], shift: &[f32], plane: usize, eps: f32) -> (f32, f32) {
    // Plain loops: a generic iterator adaptor (`map(..).sum()`) would be compiled outside this
    // function's instruction set.
    let n = h.len() as f64;
    let mut total = 0.0f64;
    for (c, t) in h.chunks_exact(plane).zip(shift) {
        total += sum(c) as f64 + *t as f64 * plane as f64;
    }
    let mean = (total / n) as f32;
    let mut squares = 0.0f64;
    for (c, t) in h.chunks_exact(plane).zip(shift) {
        squares += sum_squares(c, t - mean) as f64;
    }
    (mean, 1.0 / ((squares / n) as f32 + eps).sqrt())
}

/// Per channel `c` of a group (`h`: `[group_channels, plane]`; `shift`, `gamma`, `beta`: this
/// group's channels), the affine map `(scale, offset)` that takes `h` to `a = gamma·z + beta`.
#[inline(always)]
fn channel_affine<'a>(
    h: &[f32],
    shift: &'a [f32],
    gamma: &'a [f32],
    beta: &'a [f32],
    eps: f32,
) -> impl Fn(usize) -> (f32, f32) + use<'a> {
    let (mean, rstd) = group_stats(h, shift, h.len() / shift.len(), eps);
    move |c| {
        let scale = rstd * gamma[c];
        (scale, (shift[c] - mean) * scale + beta[c])
    }
}

/// `silu(h·scale + offset)`.
#[inline(always)]
fn affine_silu<const FMA: bool>(h: f32, scale: f32, offset: f32) -> f32 {
    let a = madd::<FMA>(h, scale, offset);
    a * sigmoid::<FMA>(a)
}

/// `h·scale + offset`, then SiLU if `silu`: the output of one value.
#[inline(always)]
fn activate<const FMA: bool>(silu: bool, h: f32, scale: f32, offset: f32) -> f32 {
    match silu {
        true => affine_silu::<FMA>(h, scale, offset),
        false => madd::<FMA>(h, scale, offset),
    }
}

/// Forward pass over one group: `y` from `h` (`[group_channels, plane]` each; `shift`, `gamma`,
/// `beta`: this group's channels), every value written.
#[inline(always)]
fn group_forward<const FMA: bool>(
    h: &[f32],
    y: &mut [MaybeUninit<f32>],
    shift: &[f32],
    gamma: &[f32],
    beta: &[f32],
    (eps, silu): (f32, bool),
) {
    assert_eq!(h.len(), y.len(), "group sizes");
    let plane = h.len() / shift.len();
    let affine = channel_affine(h, shift, gamma, beta, eps);
    for (c, (h, y)) in h
        .chunks_exact(plane)
        .zip(y.chunks_exact_mut(plane))
        .enumerate()
    {
        let (scale, offset) = affine(c);
        for (h, y) in h.iter().zip(y) {
            y.write(activate::<FMA>(silu, *h, scale, offset));
        }
    }
}

/// [`group_forward`] in place (`hy` holds `h` and receives `y`).
#[inline(always)]
fn group_forward_in_place<const FMA: bool>(
    hy: &mut [f32],
    shift: &[f32],
    gamma: &[f32],
    beta: &[f32],
    (eps, silu): (f32, bool),
) {
    let plane = hy.len() / shift.len();
    let affine = channel_affine(hy, shift, gamma, beta, eps);
    for (c, hy) in hy.chunks_exact_mut(plane).enumerate() {
        let (scale, offset) = affine(c);
        for v in hy {
            *v = activate::<FMA>(silu, *v, scale, offset);
        }
    }
}

/// Backward pass over one group: writes every value of `dh` and this group's per-channel
/// `dshift`, `dgamma`, `dbeta` contributions.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn group_backward<const FMA: bool>(
    h: &[f32],
    dy: &[f32],
    dh: &mut [MaybeUninit<f32>],
    shift: &[f32],
    gamma: &[f32],
    beta: &[f32],
    (eps, silu): (f32, bool),
    sums: (&mut [f32], &mut [f32], &mut [f32]),
) {
    let plane = h.len() / shift.len();
    assert!(
        h.len() == plane * shift.len() && dh.len() == h.len() && dy.len() == h.len(),
        "group sizes"
    );
    let (dshift, dgamma, dbeta) = sums;
    let n = h.len() as f32;
    let (mean, rstd) = group_stats(h, shift, plane, eps);
    // Pass 1: da into dh, and the per-channel sums Σda, Σda·z (z = h·rstd + z_shift).
    let (mut sum_dz, mut sum_dz_z) = (0.0f32, 0.0f32);
    for (c, ((h, dy), da)) in h
        .chunks_exact(plane)
        .zip(dy.chunks_exact(plane))
        .zip(dh.chunks_exact_mut(plane))
        .enumerate()
    {
        let z_shift = (shift[c] - mean) * rstd;
        let (scale, offset) = (gamma[c] * rstd, gamma[c] * z_shift + beta[c]);
        if silu {
            for ((h, dy), da) in h.iter().zip(dy).zip(da.iter_mut()) {
                let a = madd::<FMA>(*h, scale, offset);
                let s = sigmoid::<FMA>(a);
                da.write(dy * s * (1.0 + a * (1.0 - s)));
            }
        } else {
            da.write_copy_of_slice(dy);
        }
        // SAFETY: every value of this channel was written just above.
        let da = unsafe { assume_written(da) };
        dbeta[c] = sum(da);
        dgamma[c] = rstd * dot(da, h) + z_shift * dbeta[c];
        sum_dz += gamma[c] * dbeta[c];
        sum_dz_z += gamma[c] * dgamma[c];
    }
    // SAFETY: pass 1 wrote every channel of `dh` (the sizes are equal).
    let dh = unsafe { assume_written(dh) };
    // Pass 2: dh = rstd·(dz - mean(dz) - z·mean(dz·z)), dz = gamma·da.
    let (mean_dz, mean_dz_z) = (sum_dz / n, sum_dz_z / n);
    for (c, (h, dh)) in h
        .chunks_exact(plane)
        .zip(dh.chunks_exact_mut(plane))
        .enumerate()
    {
        let (z_shift, g) = ((shift[c] - mean) * rstd, gamma[c]);
        for (h, dh) in h.iter().zip(dh.iter_mut()) {
            let z = h * rstd + z_shift;
            *dh = rstd * (g * *dh - mean_dz - z * mean_dz_z);
        }
        dshift[c] = sum(dh);
    }
}

simd_dispatch!(group_forward_simd => group_forward::<FMA>(
    h: &[f32],
    y: &mut [MaybeUninit<f32>],
    shift: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps_silu: (f32, bool),
));

simd_dispatch!(group_forward_in_place_simd => group_forward_in_place::<FMA>(
    hy: &mut [f32], shift: &[f32], gamma: &[f32], beta: &[f32], eps_silu: (f32, bool),
));

simd_dispatch!(group_backward_simd => group_backward::<FMA>(
    h: &[f32],
    dy: &[f32],
    dh: &mut [MaybeUninit<f32>],
    shift: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps_silu: (f32, bool),
    sums: (&mut [f32], &mut [f32], &mut [f32]),
));

/// The fused forward pass: `silu(group_norm(h + shift))` (without `silu` if `p.silu` is off).
pub fn forward(s: &NormShape, h: &[f32], p: &NormParams) -> Vec<f32> {
    assert_eq!(h.len(), s.batch * s.channels * s.plane, "input size");
    per_image(s, p);
    // SAFETY: `group_forward` writes every value of its group.
    let (y, _) = unsafe {
        par_written(h.len(), s.group_len(), |i, y| {
            let h = &h[i * s.group_len()..][..s.group_len()];
            let (shift, gamma, beta) = group_params(s, p, i);
            group_forward_simd(h, y, shift, gamma, beta, (p.eps, p.silu));
        })
    };
    y
}

/// [`forward`] in place: `hy` holds `h` and receives the output (no new buffer to fill).
pub fn forward_in_place(s: &NormShape, hy: &mut [f32], p: &NormParams) {
    assert_eq!(hy.len(), s.batch * s.channels * s.plane, "input size");
    per_image(s, p);
    hy.par_chunks_mut(s.group_len())
        .enumerate()
        .for_each(|(i, hy)| {
            let (shift, gamma, beta) = group_params(s, p, i);
            group_forward_in_place_simd(hy, shift, gamma, beta, (p.eps, p.silu));
        });
}

/// Whether `p` holds a gamma and beta per image (`[batch, channels]`) rather than per channel;
/// panics on any other length.
fn per_image(s: &NormShape, p: &NormParams) -> bool {
    let per_image = p.gamma.len() == s.batch * s.channels && s.batch != 1;
    assert!(
        (per_image || p.gamma.len() == s.channels) && p.beta.len() == p.gamma.len(),
        "gamma / beta sizes"
    );
    assert_eq!(p.shift.len(), s.batch * s.channels, "shift size");
    per_image
}

/// The shift, gamma and beta of group `i` (image `i / groups`).
fn group_params<'a>(
    s: &NormShape,
    p: &NormParams<'a>,
    i: usize,
) -> (&'a [f32], &'a [f32], &'a [f32]) {
    let cg = s.group_channels();
    let (b, c0) = (i / s.groups, (i % s.groups) * cg);
    let row = b * s.channels + c0;
    let affine = if p.gamma.len() == s.channels { c0 } else { row };
    (
        &p.shift[row..][..cg],
        &p.gamma[affine..][..cg],
        &p.beta[affine..][..cg],
    )
}

/// The fused backward pass, given the output gradient `dy`.
pub fn backward(s: &NormShape, h: &[f32], p: &NormParams, dy: &[f32]) -> NormGrads {
    assert_eq!(h.len(), s.batch * s.channels * s.plane, "input size");
    assert_eq!(dy.len(), h.len(), "output gradient size");
    let per_image = per_image(s, p);
    let cg = s.group_channels();
    // Per group: the input gradient, and the group's channels' sums for shift, gamma and beta.
    // SAFETY: `group_backward` writes every value of `dh` (its first pass).
    let (input, sums) = unsafe {
        par_written(h.len(), s.group_len(), |i, dh| {
            let (h, dy) = (
                &h[i * s.group_len()..][..s.group_len()],
                &dy[i * s.group_len()..][..s.group_len()],
            );
            let (t, gamma, beta) = group_params(s, p, i);
            let mut sums = vec![0.0f32; 3 * cg];
            let (dshift, rest) = sums.split_at_mut(cg);
            let (dgamma, dbeta) = rest.split_at_mut(cg);
            let eps_silu = (p.eps, p.silu);
            group_backward_simd(h, dy, dh, t, gamma, beta, eps_silu, (dshift, dgamma, dbeta));
            sums
        })
    };
    let part = |k: usize| -> Vec<f32> {
        sums.iter()
            .flat_map(|group| group[k * cg..(k + 1) * cg].iter().copied())
            .collect()
    };
    let (shift, gamma_parts, beta_parts) = (part(0), part(1), part(2));
    let per_channel = |parts: &[f32]| {
        let mut total = vec![0.0f32; s.channels];
        for image in parts.chunks_exact(s.channels) {
            total.iter_mut().zip(image).for_each(|(t, v)| *t += v);
        }
        total
    };
    // Per-image parameters keep their per-image sums; shared ones sum over the images.
    let (gamma, beta) = match per_image {
        true => (gamma_parts, beta_parts),
        false => (per_channel(&gamma_parts), per_channel(&beta_parts)),
    };
    NormGrads {
        input,
        shift,
        gamma,
        beta,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectorisable_exp_is_accurate() {
        for i in -2000..=2000 {
            let x = i as f32 * 0.04;
            let (fast, exact) = (exp::<false>(x), x.exp());
            assert!(
                (exp::<true>(x) - exact).abs() <= 4e-7 * exact,
                "fused exp({x})"
            );
            assert!(
                (fast - exact).abs() <= 4e-7 * exact,
                "exp({x}): {fast} vs {exact}"
            );
        }
    }

    #[test]
    fn division_free_sigmoid_is_accurate() {
        for i in -2000..=2000 {
            let a = i as f32 * 0.04;
            let exact = 1.0 / (1.0 + (-a as f64).exp());
            for fast in [sigmoid::<false>(a) as f64, sigmoid::<true>(a) as f64] {
                assert!(
                    (fast - exact).abs() <= 1e-6 * exact,
                    "sigmoid({a}): {fast} vs {exact}"
                );
            }
        }
        for d in [1.0f32, 1.5, 2.0, 3.7, 1e3, 123_456.8, 1e20, 1e38] {
            assert!((recip::<false>(d) * d - 1.0).abs() < 5e-7, "1/{d}");
            assert!((recip::<true>(d) * d - 1.0).abs() < 5e-7, "1/{d}");
        }
    }
}
