//! The one interface every piece of flowmatch takes: a [`VelocityModel`].
//!
//! A velocity model is a burn [`Module`] that predicts the velocity `v(x_t, t)` of the flow at
//! points `x_t` of any rank (`[batch, features]` for vectors, `[batch, c, h, w]` for images) and
//! times `t` (`[batch]`, t = 0 data, t = 1 noise). A class-conditional model also reads one-hot
//! labels, and a mean-flow model a second time `r` (its output is then the average velocity over
//! `[r, t]`). Everything else (the path and the losses, the training loop, guidance, the
//! solvers, chunked generation, evaluation) is generic over this trait; flowmatch's own
//! networks ([`Network`](super::Network)) are two implementations of it.
//!
//! ```
//! use burn::module::Module;
//! use burn::nn::{Linear, LinearConfig};
//! use burn::tensor::{Device, Tensor, activation::silu};
//! use flowmatch::model::{Condition, VelocityModel};
//!
//! /// A small MLP for 2-D points: input (x, y, t), output a 2-D velocity.
//! #[derive(Module, Debug)]
//! struct Mlp {
//!     hidden: Linear,
//!     out: Linear,
//! }
//!
//! impl VelocityModel<2> for Mlp {
//!     fn velocity(&self, x: Tensor<2>, t: Tensor<1>, _: &Condition) -> Tensor<2> {
//!         let input = Tensor::cat(vec![x, t.unsqueeze_dim(1)], 1);
//!         self.out.forward(silu(self.hidden.forward(input)))
//!     }
//!     fn sample_shape(&self) -> Vec<usize> {
//!         vec![2]
//!     }
//! }
//!
//! let device = Device::flex();
//! let model = Mlp {
//!     hidden: LinearConfig::new(3, 32).init(&device),
//!     out: LinearConfig::new(32, 2).init(&device),
//! };
//! let v = model.velocity(Tensor::zeros([4, 2], &device), Tensor::ones([4], &device), &Condition::none());
//! assert_eq!(v.dims(), [4, 2]);
//! ```

use std::collections::HashMap;

use burn::module::Module;
use burn::tensor::Tensor;

use super::Network;
use super::resunet::Dropout;

/// What a model may be conditioned on besides the point and its time.
#[derive(Debug, Clone, Default)]
pub struct Condition {
    /// One-hot class labels `[batch, classes + 1]`; the last column is "no label" (classifier-free
    /// guidance trains it by dropping labels). `None` for an unconditional call.
    pub labels: Option<Tensor<2>>,
    /// The start `r` (`[batch]`) of the interval `[r, t]` of a mean-flow model; `None` means
    /// `r = t` (the instantaneous velocity).
    pub r: Option<Tensor<1>>,
    /// During a training step, the seed of the step's random layers (dropout); `None` at
    /// inference.
    pub train_seed: Option<u64>,
}

impl Condition {
    /// No labels, no interval, inference.
    pub fn none() -> Self {
        Condition::default()
    }

    /// One-hot `labels` (see [`one_hot_labels`](super::one_hot_labels)).
    pub fn labels(labels: Tensor<2>) -> Self {
        Condition {
            labels: Some(labels),
            ..Condition::default()
        }
    }
}

/// A network that predicts the velocity of a flow; rank `D` is that of its data batches.
///
/// Implement [`velocity`](Self::velocity) and [`sample_shape`](Self::sample_shape); override
/// the others when the model has classes or an interval input, or wants extra metadata in its
/// checkpoints.
pub trait VelocityModel<const D: usize>: Module {
    /// The velocity at points `x` (`[batch, ...]`) and times `t` (`[batch]`, in [0, 1]), with
    /// labels and interval start in `cond`. Must return the shape of `x`.
    fn velocity(&self, x: Tensor<D>, t: Tensor<1>, cond: &Condition) -> Tensor<D>;

    /// The shape of one sample, without the batch dimension (`D - 1` values): `[2]` for 2-D
    /// points, `[channels, height, width]` for images.
    fn sample_shape(&self) -> Vec<usize>;

    /// The number of classes of a class-conditional model (`None`: unconditional).
    fn num_classes(&self) -> Option<usize> {
        None
    }

    /// Whether the model takes an interval `[r, t]` (a mean-flow model).
    fn is_mean_flow(&self) -> bool {
        false
    }

    /// Extra metadata for the model's checkpoints (flowmatch's networks record their shape, so
    /// a checkpoint rebuilds its network without flags).
    fn checkpoint_metadata(&self) -> HashMap<String, String> {
        HashMap::new()
    }
}

impl VelocityModel<4> for Network {
    fn velocity(&self, x: Tensor<4>, t: Tensor<1>, cond: &Condition) -> Tensor<4> {
        let (r, labels) = (cond.r.clone(), cond.labels.clone());
        match (self, cond.train_seed) {
            (Network::Res(m), Some(seed)) => {
                m.forward(x, (r, t), labels, Some(&mut Dropout::new(seed)))
            }
            _ => self.forward_interval(x, r, t, labels),
        }
    }

    fn sample_shape(&self) -> Vec<usize> {
        self.image_shape().to_vec()
    }

    fn num_classes(&self) -> Option<usize> {
        Network::num_classes(self)
    }

    fn is_mean_flow(&self) -> bool {
        Network::is_mean_flow(self)
    }

    fn checkpoint_metadata(&self) -> HashMap<String, String> {
        let network = serde_json::to_string(&self.config()).expect("config serialises");
        HashMap::from([(super::META_NETWORK.to_string(), network)])
    }
}

/// `[n, 1, ..., 1]`: the shape that broadcasts one value per batch row over rank `D`.
pub fn per_row<const D: usize>(n: usize) -> [usize; D] {
    let mut shape = [1; D];
    shape[0] = n;
    shape
}

/// `[n, sample_shape...]` as a rank-`D` shape, or `None` when the lengths disagree.
pub fn batch_shape<const D: usize>(n: usize, sample_shape: &[usize]) -> Option<[usize; D]> {
    if sample_shape.len() + 1 != D {
        return None;
    }
    let mut shape = [n; D];
    shape[1..].copy_from_slice(sample_shape);
    Some(shape)
}
