//! Small random affine distortions of images (rotation, scaling, shift), the variation of
//! handwriting, used to train a classifier that generalises from a few thousand digits.

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Ranges of the random distortion, each drawn uniformly per image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Augment {
    /// Largest rotation, in degrees, either way.
    pub rotation_deg: f32,
    /// Largest relative change of scale (0.1: 90 % to 110 %).
    pub scale: f32,
    /// Largest shift in pixels, along each axis.
    pub shift: f32,
}

impl Augment {
    /// The distortions used for the pinned evaluation classifier of handwritten digits.
    pub const DIGITS: Augment = Augment {
        rotation_deg: 12.0,
        scale: 0.1,
        shift: 2.5,
    };

    /// Milder distortions for photographs (no rotation: black corners would be a tell).
    pub const NATURAL: Augment = Augment {
        rotation_deg: 0.0,
        scale: 0.05,
        shift: 2.0,
    };

    /// Distorts each `[channels, height, width]` image of `pixels` (values in [-1, 1],
    /// background -1) in place, with bilinear interpolation, every channel alike.
    pub fn apply<R: Rng>(&self, pixels: &mut [f32], shape: [usize; 3], rng: &mut R) {
        let [channels, height, width] = shape;
        let plane = height * width;
        let mut source = vec![0.0f32; plane];
        for image in pixels.chunks_exact_mut(channels * plane) {
            let angle = rng.random_range(-1.0..=1.0f32) * self.rotation_deg.to_radians();
            let scale = 1.0 + rng.random_range(-1.0..=1.0f32) * self.scale;
            let (dx, dy) = (
                rng.random_range(-1.0..=1.0f32) * self.shift,
                rng.random_range(-1.0..=1.0f32) * self.shift,
            );
            for channel in image.chunks_exact_mut(plane) {
                source.copy_from_slice(channel);
                warp(&source, channel, height, width, angle, scale, (dx, dy));
            }
        }
    }
}

/// `out(p) = src(A^-1 (p - c - d) + c)`: rotation by `angle` and scaling by `scale` about the
/// centre `c`, then the shift `d`; points outside the source read the background (-1).
fn warp(
    src: &[f32],
    out: &mut [f32],
    height: usize,
    width: usize,
    angle: f32,
    scale: f32,
    (dx, dy): (f32, f32),
) {
    let (cy, cx) = ((height as f32 - 1.0) / 2.0, (width as f32 - 1.0) / 2.0);
    let (sin, cos) = angle.sin_cos();
    let at = |y: isize, x: isize| {
        if y < 0 || x < 0 || y >= height as isize || x >= width as isize {
            -1.0
        } else {
            src[y as usize * width + x as usize]
        }
    };
    for y in 0..height {
        for x in 0..width {
            let (py, px) = (y as f32 - cy - dy, x as f32 - cx - dx);
            // The inverse of rotation-then-scale.
            let sy = (cos * py - sin * px) / scale + cy;
            let sx = (sin * py + cos * px) / scale + cx;
            let (y0, x0) = (sy.floor(), sx.floor());
            let (fy, fx) = (sy - y0, sx - x0);
            let (y0, x0) = (y0 as isize, x0 as isize);
            let top = at(y0, x0) * (1.0 - fx) + at(y0, x0 + 1) * fx;
            let bottom = at(y0 + 1, x0) * (1.0 - fx) + at(y0 + 1, x0 + 1) * fx;
            out[y * width + x] = top * (1.0 - fy) + bottom * fy;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn identity_keeps_and_shift_moves_the_image() {
        let (h, w) = (6, 5);
        let src: Vec<f32> = (0..h * w).map(|i| i as f32 / 30.0).collect();
        let mut out = vec![0.0; h * w];
        warp(&src, &mut out, h, w, 0.0, 1.0, (0.0, 0.0));
        assert!(src.iter().zip(&out).all(|(a, b)| (a - b).abs() < 1e-6));
        // One pixel right: column x reads column x - 1; the first column is background.
        warp(&src, &mut out, h, w, 0.0, 1.0, (1.0, 0.0));
        for y in 0..h {
            assert_eq!(out[y * w], -1.0);
            for x in 1..w {
                assert!((out[y * w + x] - src[y * w + x - 1]).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn a_quarter_turn_rotates_the_grid() {
        let n = 5;
        let src: Vec<f32> = (0..n * n).map(|i| i as f32).collect();
        let mut out = vec![0.0; n * n];
        warp(
            &src,
            &mut out,
            n,
            n,
            std::f32::consts::FRAC_PI_2,
            1.0,
            (0.0, 0.0),
        );
        // out(y, x) = src(x', y') of the inverse rotation: a permutation of the pixels.
        let mut sorted = out.clone();
        sorted.sort_by(f32::total_cmp);
        assert!(sorted.iter().zip(&src).all(|(a, b)| (a - b).abs() < 1e-3));
        assert!((out[12] - src[12]).abs() < 1e-4, "the centre stays");
    }

    #[test]
    fn augmented_values_stay_in_range() {
        let mut pixels: Vec<f32> = (0..3 * 28 * 28)
            .map(|i| ((i % 7) as f32 / 3.0) - 1.0)
            .collect();
        Augment::DIGITS.apply(&mut pixels, [1, 28, 28], &mut StdRng::seed_from_u64(0));
        assert!(pixels.iter().all(|v| (-1.0..=1.0001).contains(v)));
    }
}
