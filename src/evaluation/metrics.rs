//! Sample-quality metrics in a classifier's feature space: Fréchet distance (classifier-FID),
//! kernel inception distance (KID, with its standard deviation over subsets), the fraction of
//! confidently classified samples, and the class histogram with its entropy; or in the
//! Inception features of the standard FID: FID and KID.

use nalgebra::{DMatrix, DVector, SymmetricEigen};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::index::sample;
use serde::{Deserialize, Serialize};

use crate::evaluation::classifier::{Embedding, argmax};

/// Probability above which a sample counts as confidently classified.
pub const CONFIDENT: f32 = 0.9;

/// Quality of one set of samples against a reference set. A metric that is not finite (the
/// samples of a diverged model; the class measures in Inception features, which have no
/// classes) is written to JSON as `null` and read back as NaN.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Quality {
    /// Samples measured.
    pub n: usize,
    /// Fréchet distance between Gaussian fits of the features.
    #[serde(deserialize_with = "nan_if_null")]
    pub fid: f64,
    /// Kernel inception distance (unbiased MMD^2, cubic polynomial kernel), mean over 10
    /// subsets of half the samples (at most 1000).
    #[serde(deserialize_with = "nan_if_null")]
    pub kid: f64,
    /// Standard deviation of KID over the subsets.
    #[serde(deserialize_with = "nan_if_null")]
    pub kid_std: f64,
    /// Fraction of samples whose top class probability is at least 0.9.
    #[serde(deserialize_with = "nan_if_null")]
    pub confident: f64,
    /// Samples per predicted class.
    pub histogram: Vec<usize>,
    /// Entropy of the predicted-class histogram in bits (log2(10) = 3.32 when balanced).
    #[serde(deserialize_with = "nan_if_null")]
    pub class_entropy_bits: f64,
}

/// A number, or NaN for the `null` that serde_json writes for a non-finite one.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

fn matrix(rows: &[Vec<f32>]) -> DMatrix<f64> {
    let d = rows.first().map_or(0, Vec::len);
    DMatrix::from_fn(rows.len(), d, |i, j| rows[i][j] as f64)
}

fn mean_cov(x: &DMatrix<f64>) -> (DVector<f64>, DMatrix<f64>) {
    let n = x.nrows() as f64;
    let mean = x.row_mean().transpose();
    let mut centered = x.clone();
    for mut row in centered.row_iter_mut() {
        row -= mean.transpose();
    }
    let cov = centered.transpose() * &centered / (n - 1.0).max(1.0);
    (mean, cov)
}

/// A factor `F` (d x r) with `F F^T = m` for a symmetric positive semi-definite `m`, from the
/// eigenvalues above the rank tolerance only. The others (a dead feature's) are rounding
/// noise, on which nalgebra's eigensolver can return `inf` (dimforge/nalgebra#379).
fn psd_factor(m: DMatrix<f64>) -> DMatrix<f64> {
    let tolerance = m.nrows() as f64 * f64::EPSILON;
    let eig = SymmetricEigen::new(m);
    let largest = eig.eigenvalues.iter().cloned().fold(0.0, f64::max);
    let kept: Vec<usize> = (0..eig.eigenvalues.len())
        .filter(|&i| eig.eigenvalues[i] > tolerance * largest)
        .collect();
    DMatrix::from_fn(eig.eigenvectors.nrows(), kept.len(), |row, k| {
        eig.eigenvectors[(row, kept[k])] * eig.eigenvalues[kept[k]].sqrt()
    })
}

/// Fréchet distance `|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))` between Gaussian fits.
/// With fewer samples than features (500 samples of Inception's 2,048 features) it is computed
/// from the samples themselves, without a features x features matrix; otherwise from the
/// covariances.
pub fn frechet_distance(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    let d = a.first().map_or(0, Vec::len);
    match a.len().min(b.len()) <= d {
        true => frechet_from_samples(&matrix(a), &matrix(b)),
        false => frechet_from_covariances(&matrix(a), &matrix(b)),
    }
}

/// [`frechet_distance`] through the covariance matrices (`d` x `d`).
fn frechet_from_covariances(a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
    let (mu_a, s_a) = mean_cov(a);
    let (mu_b, s_b) = mean_cov(b);
    // With S_a = F F^T, Tr((S_a S_b)^(1/2)) = Tr((F^T S_b F)^(1/2)), a symmetric form.
    let factor = psd_factor(s_a.clone());
    let middle = factor.transpose() * &s_b * &factor;
    let middle = (&middle + middle.transpose()) / 2.0;
    // S_a = 0 (every sample the same) leaves an empty factor and a root of 0.
    let tr_root = if middle.is_empty() {
        0.0
    } else {
        SymmetricEigen::new(middle)
            .eigenvalues
            .iter()
            .map(|v| v.max(0.0).sqrt())
            .sum::<f64>()
    };
    (mu_a - mu_b).norm_squared() + s_a.trace() + s_b.trace() - 2.0 * tr_root
}

/// [`frechet_distance`] through the samples (`n_a` x `n_b` matrices): with `C` the centred
/// samples divided by `sqrt(n - 1)`, `S = C^T C`, so `Tr(S) = |C|_F^2` and
/// `Tr((S_a S_b)^(1/2)) = Tr(((C_a C_b^T)(C_a C_b^T)^T)^(1/2))`, the sum of the singular values
/// of `C_a C_b^T`.
fn frechet_from_samples(a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
    let centred = |x: &DMatrix<f64>| {
        let mean = x.row_mean();
        let mut c = x.clone();
        for mut row in c.row_iter_mut() {
            row -= &mean;
        }
        (mean, c / ((x.nrows() as f64 - 1.0).max(1.0)).sqrt())
    };
    let (mu_a, c_a) = centred(a);
    let (mu_b, c_b) = centred(b);
    let tr_root: f64 = (&c_a * c_b.transpose()).singular_values().iter().sum();
    (mu_a - mu_b).norm_squared() + c_a.norm_squared() + c_b.norm_squared() - 2.0 * tr_root
}

/// Unbiased MMD^2 with the kernel `k(x, y) = (x.y / d + 1)^3` (Binkowski et al. 2018).
fn mmd2(a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
    let d = a.ncols() as f64;
    let kernel =
        |x: &DMatrix<f64>, y: &DMatrix<f64>| (x * y.transpose()).map(|v| (v / d + 1.0).powi(3));
    let (kaa, kbb, kab) = (kernel(a, a), kernel(b, b), kernel(a, b));
    let (m, n) = (a.nrows() as f64, b.nrows() as f64);
    let off_diag = |k: &DMatrix<f64>| k.sum() - k.trace();
    off_diag(&kaa) / (m * (m - 1.0)) + off_diag(&kbb) / (n * (n - 1.0)) - 2.0 * kab.sum() / (m * n)
}

/// KID: mean and standard deviation of MMD^2 over `subsets` random subsets of `subset_size`
/// rows of each set (all rows when fewer). Both sets are divided by the root mean square of
/// `b`'s features first, so that the cubic kernel sees values of order one whatever the
/// classifier's feature scale (Inception features, for which the kernel was chosen, are).
pub fn kid(
    a: &[Vec<f32>],
    b: &[Vec<f32>],
    subsets: usize,
    subset_size: usize,
    seed: u64,
) -> (f64, f64) {
    let count = b.iter().map(Vec::len).sum::<usize>().max(1) as f64;
    let squares: f64 = b.iter().flatten().map(|&v| (v as f64).powi(2)).sum();
    let scale = 1.0 / (squares / count).sqrt().max(1e-12);
    kid_scaled(a, b, subsets, subset_size, seed, scale)
}

/// [`kid`] on the features as they are, as KID is defined (Binkowski et al. 2018) and
/// computed on Inception features (torch-fidelity, clean-fid): no rescaling.
pub fn kid_unscaled(
    a: &[Vec<f32>],
    b: &[Vec<f32>],
    subsets: usize,
    subset_size: usize,
    seed: u64,
) -> (f64, f64) {
    kid_scaled(a, b, subsets, subset_size, seed, 1.0)
}

/// [`kid`] of the features multiplied by `scale`.
fn kid_scaled(
    a: &[Vec<f32>],
    b: &[Vec<f32>],
    subsets: usize,
    subset_size: usize,
    seed: u64,
    scale: f64,
) -> (f64, f64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let size = subset_size.min(a.len()).min(b.len());
    let pick = |rows: &[Vec<f32>], rng: &mut StdRng| {
        let idx = sample(rng, rows.len(), size);
        matrix(&idx.iter().map(|i| rows[i].clone()).collect::<Vec<_>>()) * scale
    };
    let values: Vec<f64> = (0..subsets.max(1))
        .map(|_| {
            let (x, y) = (pick(a, &mut rng), pick(b, &mut rng));
            mmd2(&x, &y)
        })
        .collect();
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
    (mean, var.sqrt())
}

/// All metrics of `samples` against `reference`.
pub fn quality(samples: &Embedding, reference: &Embedding) -> Quality {
    let n = samples.features.len();
    let fid = frechet_distance(&samples.features, &reference.features);
    let subset = (n / 2).clamp(2, 1000);
    let (kid, kid_std) = kid(&samples.features, &reference.features, 10, subset, 0);
    let confident = samples
        .probs
        .iter()
        .filter(|p| p.iter().cloned().fold(0.0, f32::max) >= CONFIDENT)
        .count();
    let classes = samples.probs.first().map_or(0, Vec::len);
    let mut histogram = vec![0usize; classes];
    for p in &samples.probs {
        histogram[argmax(p)] += 1;
    }
    let class_entropy_bits = -histogram
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n as f64;
            p * p.log2()
        })
        .sum::<f64>();
    Quality {
        n,
        fid,
        kid,
        kid_std,
        confident: confident as f64 / n.max(1) as f64,
        histogram,
        class_entropy_bits,
    }
}

/// FID and KID of `samples` against `reference` in Inception features: KID on the features
/// as they are ([`kid_unscaled`]; 10 subsets of half the samples, at most 1000), and no class
/// measures (`confident` and `class_entropy_bits` NaN, an empty histogram).
pub fn inception_quality(samples: &[Vec<f32>], reference: &[Vec<f32>]) -> Quality {
    let n = samples.len();
    let subset = (n / 2).clamp(2, 1000);
    let (kid, kid_std) = kid_unscaled(samples, reference, 10, subset, 0);
    Quality {
        n,
        fid: frechet_distance(samples, reference),
        kid,
        kid_std,
        confident: f64::NAN,
        histogram: Vec::new(),
        class_entropy_bits: f64::NAN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_distr::{Distribution, Normal};

    fn gaussian(n: usize, d: usize, mean: f32, std: f32, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = StdRng::seed_from_u64(seed);
        let dist = Normal::new(mean, std).unwrap();
        (0..n)
            .map(|_| (0..d).map(|_| dist.sample(&mut rng)).collect())
            .collect()
    }

    #[test]
    fn frechet_distance_of_known_gaussians() {
        // N(0, I) vs N(1, 4 I) in 4 dims: |mu|^2 = 4, trace term = 4 (1 + 4 - 2*2) = 4.
        let a = gaussian(20000, 4, 0.0, 1.0, 1);
        let b = gaussian(20000, 4, 1.0, 2.0, 2);
        let fd = frechet_distance(&a, &b);
        assert!((fd - 8.0).abs() < 0.3, "{fd}");
        let same = frechet_distance(&a, &gaussian(20000, 4, 0.0, 1.0, 3));
        assert!(same < 0.01, "{same}");
    }

    /// Keeps the first `k` features of each row and zeroes the rest, as dead ReLUs do.
    fn dead_after(rows: Vec<Vec<f32>>, k: usize) -> Vec<Vec<f32>> {
        rows.into_iter()
            .map(|r| {
                r.iter()
                    .enumerate()
                    .map(|(i, &v)| if i < k { v } else { 0.0 })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn frechet_distance_counts_features_that_vary_in_one_set_only() {
        // Only a's first 8 of 32 features vary: the other 24 add Tr(S_b) = 24 there.
        let a = dead_after(gaussian(4000, 32, 0.0, 1.0, 1), 8);
        let b = gaussian(4000, 32, 0.0, 1.0, 2);
        let fd = frechet_distance(&a, &b);
        assert!((fd - 24.0).abs() < 1.0, "{fd}");
    }

    #[test]
    fn frechet_distance_of_a_barely_trained_models_features() {
        // 20 samples of a 4-step model (99 of 128 features dead) and 20 digits, as f32: the
        // eigensolver returned inf on them before the rank cut. NumPy's eigh: 11556.06.
        let bytes = include_bytes!("../../tests/fixtures/fid-dead-features.f32");
        let values: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let rows: Vec<Vec<f32>> = values.chunks(128).map(<[f32]>::to_vec).collect();
        let fd = frechet_distance(&rows[..20], &rows[20..]);
        assert!((fd - 11556.06).abs() < 0.01, "{fd}");
    }

    #[test]
    fn both_routes_of_the_frechet_distance_agree() {
        // Fewer samples than features, and more, with a shift and a different spread.
        for (n, d) in [(12, 40), (60, 8)] {
            let a = matrix(&gaussian(n, d, 0.0, 1.0, 1));
            let b = matrix(&gaussian(n + 3, d, 0.5, 1.5, 2));
            let (s, c) = (
                frechet_from_samples(&a, &b),
                frechet_from_covariances(&a, &b),
            );
            assert!((s - c).abs() <= 1e-9 * c, "{n}x{d}: {s} vs {c}");
        }
    }

    #[test]
    fn frechet_distance_of_identical_samples_is_the_other_sets_spread() {
        // A collapsed model: S_a = 0, so the distance is |mu_a - mu_b|^2 + Tr(S_b).
        let a = vec![vec![0.0f32; 4]; 10];
        let b = gaussian(20000, 4, 0.0, 1.0, 2);
        let fd = frechet_distance(&a, &b);
        assert!((fd - 4.0).abs() < 0.2, "{fd}");
    }

    #[test]
    fn a_non_finite_metric_survives_json() {
        let q = Quality {
            n: 2,
            fid: f64::NEG_INFINITY,
            kid: f64::NAN,
            kid_std: 0.5,
            confident: 1.0,
            histogram: vec![2],
            class_entropy_bits: 0.0,
        };
        let text = serde_json::to_string(&q).unwrap();
        assert!(text.contains("\"fid\":null"), "{text}");
        let back: Quality = serde_json::from_str(&text).unwrap();
        assert!(back.fid.is_nan() && back.kid.is_nan() && back.kid_std == 0.5);
        // Inception features: no class measures.
        let rows = gaussian(6, 3, 0.0, 1.0, 1);
        let text = serde_json::to_string(&inception_quality(&rows, &rows)).unwrap();
        assert!(text.contains("\"confident\":null"), "{text}");
        let back: Quality = serde_json::from_str(&text).unwrap();
        assert!(back.confident.is_nan() && back.class_entropy_bits.is_nan());
        assert!(back.fid.abs() < 1e-9 && back.histogram.is_empty());
    }

    #[test]
    fn kid_is_near_zero_for_one_distribution_and_grows_with_the_shift() {
        let a = gaussian(400, 8, 0.0, 1.0, 1);
        let (same, _) = kid(&a, &gaussian(400, 8, 0.0, 1.0, 2), 5, 200, 0);
        let (near, _) = kid(&a, &gaussian(400, 8, 0.3, 1.0, 3), 5, 200, 0);
        let (far, _) = kid(&a, &gaussian(400, 8, 1.0, 1.0, 4), 5, 200, 0);
        assert!(same.abs() < 0.02, "{same}");
        assert!(same < near && near < far, "{same} {near} {far}");
    }
}
