//! The stable target (Xu et al. 2023, "Stable Target Field for Reduced Variance Score
//! Estimation in Diffusion Models"), on the linear path.
//!
//! Near the noise end one image's target `x1 - x0 = (x_t - x0) / t` is mostly noise: many
//! images could have led to `x_t`, and the velocity the network should learn is the average
//! `(x_t - E[x0 | x_t]) / t`. The stable target estimates that average over a reference batch
//! of training images `r_j` that holds the batch itself: `x0` is replaced by its posterior mean
//! `x̂0 = Σ_j w_j r_j`, `w = softmax_j(-‖x_t - (1 - t) r_j‖² / 2t²)`. Near data the weights
//! fall on the image itself and the target is the usual one; near noise they spread and the
//! target's variance falls, with a bias that shrinks as the reference grows. A conditional
//! model's image averages over the references of its own class only (over all of them when
//! its label was dropped), so the target stays that of the class-conditional field.

use burn::tensor::Tensor;
use burn::tensor::activation::softmax;

use crate::model::per_row;

/// Added to the logit of a reference of another class: its weight is exactly 0.
const OTHER_CLASS: f32 = -1e30;

/// The training images a batch's targets average over.
#[derive(Debug, Clone)]
pub struct Reference {
    /// `[references, values per sample]` (`c * h * w` for images), the rows of the batch's `x0`
    /// among them.
    pub images: Tensor<2>,
    /// Their one-hot labels (`[references, classes + 1]`, none dropped) for a conditional model.
    pub labels: Option<Tensor<2>>,
}

/// The stable target for points `x_t` at times `t` (`[batch]`) drawn from data `x0` and noise
/// `x1`, over `reference`; `labels` are the batch's one-hot labels (the last column: dropped)
/// when the model is conditional.
pub fn stable_target<const D: usize>(
    (x_t, t): (Tensor<D>, Tensor<1>),
    x0: Tensor<D>,
    x1: Tensor<D>,
    reference: Reference,
    labels: Option<Tensor<2>>,
) -> Tensor<D> {
    let dims = x_t.dims();
    let (b, values): (usize, usize) = (dims[0], dims[1..].iter().product());
    let images = reference.images;
    let points = x_t.reshape([b, values]);
    let t = t.reshape([b, 1]);
    let keep = t.clone().neg() + 1.0;
    // -‖x_t - (1-t) r‖² / 2t², less its part that is the same for every r (softmax drops it).
    let norms = images.clone().square().sum_dim(1).transpose();
    let mut logits = (points.matmul(images.clone().transpose()) * keep.clone()
        - norms * keep.square() * 0.5)
        / t.clone().square();
    if let (Some(labels), Some(reference_labels)) = (labels, reference.labels) {
        let [_, width] = labels.dims();
        let dropped = labels.clone().slice([0..b, width - 1..width]);
        let allowed = labels.matmul(reference_labels.transpose()) + dropped;
        logits = logits + (allowed.neg() + 1.0) * OTHER_CLASS;
    }
    let posterior_mean = softmax(logits, 1).matmul(images).reshape(dims);
    // `(x_t - x̂0) / t`, written so that it is exactly `x1 - x0` when the weights are one-hot.
    ((x1 - x0.clone()) + (x0 - posterior_mean) / t.reshape(per_row::<D>(b))).detach()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{gaussian_noise, interpolate};
    use crate::model::one_hot_labels;
    use burn::tensor::{Device, TensorData};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn values(x: Tensor<4>) -> Vec<f32> {
        x.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }

    #[test]
    fn is_the_conditional_target_near_data_and_the_mean_velocity_near_noise() {
        let device = Device::flex();
        let mut rng = StdRng::seed_from_u64(5);
        let x0 = gaussian_noise(&mut rng, [2, 1, 4, 4], &device);
        let x1 = gaussian_noise(&mut rng, [2, 1, 4, 4], &device);
        let others = gaussian_noise(&mut rng, [3, 1, 4, 4], &device);
        let reference = Tensor::cat(vec![x0.clone(), others], 0).reshape([5, 16]);
        let at = |t: f32| {
            let t = Tensor::<1>::full([2], t, &device);
            let x_t = interpolate(x0.clone(), x1.clone(), t.clone());
            let reference = Reference {
                images: reference.clone(),
                labels: None,
            };
            let target = stable_target((x_t.clone(), t), x0.clone(), x1.clone(), reference, None);
            (x_t, target)
        };
        // Near data the posterior falls on the image itself: the conditional target.
        let (_, target) = at(0.01);
        let conditional = values(x1.clone() - x0.clone());
        for (a, b) in values(target).iter().zip(&conditional) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
        // At the noise end every reference is as likely: (x_t - mean of the references) / t.
        let (x_t, target) = at(0.999_99);
        let mean = reference.clone().mean_dim(0).reshape([1, 1, 4, 4]);
        let expected = values((x_t - mean) / 0.999_99);
        for (a, b) in values(target).iter().zip(&expected) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
    }

    #[test]
    fn weights_follow_the_gaussian_likelihood() {
        // One point, two references 0 and 2 in one dimension, t = 1/2: x_t = 1 lies at squared
        // distance 1 from (1 - t) * 0 and 0 from (1 - t) * 2, so w = softmax(-1 / (2 t²), 0).
        let device = Device::flex();
        let x0 = Tensor::<4>::from_data(TensorData::new(vec![0.0f32], [1, 1, 1, 1]), &device);
        let x1 = Tensor::<4>::from_data(TensorData::new(vec![2.0f32], [1, 1, 1, 1]), &device);
        let t = Tensor::<1>::full([1], 0.5, &device);
        let x_t = interpolate(x0.clone(), x1.clone(), t.clone());
        let reference = Tensor::<2>::from_data(TensorData::new(vec![0.0f32, 2.0], [2, 1]), &device);
        let reference = Reference {
            images: reference,
            labels: None,
        };
        let target = values(stable_target((x_t, t), x0, x1, reference, None))[0];
        let w2 = 1.0 / (1.0 + (-2f32).exp());
        let expected = (1.0 - 2.0 * w2) / 0.5;
        assert!((target - expected).abs() < 1e-5, "{target} vs {expected}");
    }

    #[test]
    fn a_labelled_image_averages_over_its_own_class_only() {
        // The image (class 0) and one other (class 1) at the noise end: with its label the
        // posterior is the image itself, with the label dropped the mean of both.
        let device = Device::flex();
        let mut rng = StdRng::seed_from_u64(6);
        let x0 = gaussian_noise(&mut rng, [1, 1, 2, 2], &device);
        let x1 = gaussian_noise(&mut rng, [1, 1, 2, 2], &device);
        let other = gaussian_noise(&mut rng, [1, 1, 2, 2], &device);
        let images = Tensor::cat(vec![x0.clone(), other.clone()], 0).reshape([2, 4]);
        let reference = Reference {
            images,
            labels: Some(one_hot_labels(&[Some(0), Some(1)], 2, &device)),
        };
        let t = Tensor::<1>::full([1], 0.999_99, &device);
        let x_t = interpolate(x0.clone(), x1.clone(), t.clone());
        let target = |label: Option<usize>| {
            let labels = one_hot_labels(&[label], 2, &device);
            let point = (x_t.clone(), t.clone());
            values(stable_target(
                point,
                x0.clone(),
                x1.clone(),
                reference.clone(),
                Some(labels),
            ))
        };
        let own = values((x_t.clone() - x0.clone()) / 0.999_99);
        let both = values((x_t.clone() - (x0.clone() + other) / 2.0) / 0.999_99);
        for (a, b) in target(Some(0)).iter().zip(&own) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
        for (a, b) in target(None).iter().zip(&both) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
    }
}
