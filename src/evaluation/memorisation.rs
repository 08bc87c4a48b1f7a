//! Does a model copy its training set? Nearest-neighbour distances of samples and of held-out
//! images to the training images.

use burn::tensor::{Device, Tensor, TensorData};
use serde::Serialize;

use crate::data::ImageSet;
use crate::error::{Error, Result};

/// Quantiles of a set of distances.
#[derive(Debug, Clone, Serialize)]
pub struct Quantiles {
    /// Smallest.
    pub min: f64,
    /// 1st percentile.
    pub p01: f64,
    /// 5th percentile.
    pub p05: f64,
    /// Median.
    pub median: f64,
}

impl Quantiles {
    fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
        Quantiles {
            min: values[0],
            p01: at(0.01),
            p05: at(0.05),
            median: at(0.5),
        }
    }
}

/// Does the model copy its training set? Each sample's pixel-space (L2, [-1, 1] scale)
/// distance to its nearest training image, against the same for held-out images, which the
/// model never saw: a model that generalises draws samples no closer to the training set than
/// new real images are.
#[derive(Debug, Clone, Serialize)]
pub struct Memorisation {
    /// Samples measured.
    pub samples: usize,
    /// Training images searched.
    pub training_images: usize,
    /// Nearest-training-image distances of the samples.
    pub sample_distances: Quantiles,
    /// Nearest-training-image distances of held-out images.
    pub held_out_distances: Quantiles,
    /// Fraction of samples closer to a training image than all but 1 % of held-out images are
    /// (about 0.01 for a model that does not copy; near 1 for one that does).
    pub near_copies: f64,
}

/// Images of the training set compared at a time.
const TRAIN_CHUNK: usize = 4096;

/// Distances from each of `queries` (`[n, d]` row-major values) to its nearest image of
/// `train`, through matrix products over chunks of both: `|q - x|^2 = |q|^2 + |x|^2 - 2 q.x`.
fn nearest_distances(queries: &[f32], train: &ImageSet, device: &Device) -> Vec<f64> {
    let d = train.image_len();
    let norms = |rows: &[f32]| -> Vec<f32> {
        rows.chunks(d)
            .map(|r| r.iter().map(|v| v * v).sum())
            .collect()
    };
    let mut best = vec![f32::INFINITY; queries.len() / d];
    for start in (0..train.len()).step_by(TRAIN_CHUNK) {
        let m = TRAIN_CHUNK.min(train.len() - start);
        let rows = train.values(start, m);
        let train_norms = norms(&rows);
        let train_t = Tensor::<2>::from_data(TensorData::new(rows, [m, d]), device).transpose();
        for (c, chunk) in queries.chunks(256 * d).enumerate() {
            let n = chunk.len() / d;
            let q = Tensor::<2>::from_data(TensorData::new(chunk.to_vec(), [n, d]), device);
            let dots = q
                .matmul(train_t.clone())
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .expect("f32 products");
            for (i, (row, q_norm)) in dots.chunks(m).zip(norms(chunk)).enumerate() {
                let nearest = row
                    .iter()
                    .zip(&train_norms)
                    .map(|(dot, t)| q_norm + t - 2.0 * dot)
                    .fold(f32::INFINITY, f32::min);
                let slot = &mut best[c * 256 + i];
                *slot = slot.min(nearest);
            }
        }
    }
    best.into_iter()
        .map(|b| (b.max(0.0) as f64).sqrt())
        .collect()
}

/// The memorisation check for `samples` (`[n, c, h, w]` values) against the training set,
/// with `held_out` real images (at least 100, values) as the yardstick.
pub fn memorisation(
    samples: &[f32],
    train: &ImageSet,
    held_out: &[f32],
    device: &Device,
) -> Result<Memorisation> {
    let d = train.image_len();
    if samples.len() < d || held_out.len() < 100 * d {
        return Err(Error::invalid(
            "memorisation check",
            "needs samples and at least 100 held-out images",
        ));
    }
    let sample_distances = nearest_distances(samples, train, device);
    let held_out_distances = nearest_distances(held_out, train, device);
    let held = Quantiles::of(held_out_distances);
    let near_copies = sample_distances.iter().filter(|&&x| x < held.p01).count() as f64
        / sample_distances.len() as f64;
    Ok(Memorisation {
        samples: sample_distances.len(),
        training_images: train.len(),
        sample_distances: Quantiles::of(sample_distances),
        held_out_distances: held,
        near_copies,
    })
}
