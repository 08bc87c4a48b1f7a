//! Where the training loop takes its batches from: the [`BatchSource`] interface, an in-memory
//! implementation for data of any rank ([`InMemory`], e.g. `[n, features]` vectors), and the
//! built-in image sets ([`ImageSource`]).
//!
//! A source only hands out the items at given indices; the loop chooses the indices (a seeded
//! shuffle per epoch), so a run's data order follows from its seed and step alone and exact
//! resume works with any source.

use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::StdRng;

use super::ImageSet;
use crate::error::{Error, Result};

/// One batch as a source hands it out.
#[derive(Debug, Clone)]
pub struct DataBatch<const D: usize> {
    /// The data `x0` (`[batch, ...]`), at t = 0 of the path.
    pub x0: Tensor<D>,
    /// The class of each item, for labelled data.
    pub labels: Option<Vec<usize>>,
    /// The noise each item was drawn from, for a source of (noise, sample) pairs (reflow,
    /// distillation); `None`: the loop draws fresh noise.
    pub x1: Option<Tensor<D>>,
}

/// Items the training loop can draw batches of; `D` is the rank of a batch.
pub trait BatchSource<const D: usize> {
    /// Number of items (one epoch).
    fn len(&self) -> usize;

    /// Whether the source is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shape of one item, without the batch dimension.
    fn sample_shape(&self) -> Vec<usize>;

    /// The number of classes of labelled data (`None`: no labels).
    fn classes(&self) -> Option<usize> {
        None
    }

    /// Whether the items are (noise, sample) pairs that carry their own noise.
    fn is_pairs(&self) -> bool {
        false
    }

    /// The items at `indices` on `device`. With `augment`, a source that augments (random
    /// flips, ...) draws its choices from it; without, it returns the items as stored. An
    /// error (a source that reads files, say) stops the run.
    fn batch(
        &self,
        indices: &[usize],
        augment: Option<&mut StdRng>,
        device: &Device,
    ) -> Result<DataBatch<D>>;
}

/// Items held in memory as one row-major buffer: vectors `[n, features]`, images
/// `[n, c, h, w]`, or any other rank, with optional class labels.
#[derive(Debug, Clone)]
pub struct InMemory<const D: usize> {
    values: Vec<f32>,
    shape: [usize; D],
    labels: Option<(Vec<usize>, usize)>,
}

impl<const D: usize> InMemory<D> {
    /// `shape[0]` items of shape `shape[1..]` from row-major `values`.
    pub fn new(values: Vec<f32>, shape: [usize; D]) -> Result<Self> {
        if D < 2 || shape.contains(&0) {
            return Err(Error::invalid(
                "data shape",
                format!("{shape:?}: need a batch dimension and a non-empty item shape"),
            ));
        }
        if values.len() != shape.iter().product::<usize>() {
            return Err(Error::invalid(
                "data",
                format!(
                    "{} values for shape {shape:?} ({} needed)",
                    values.len(),
                    shape.iter().product::<usize>()
                ),
            ));
        }
        if let Some(v) = values.iter().find(|v| !v.is_finite()) {
            return Err(Error::invalid(
                "data",
                format!("holds a non-finite value ({v})"),
            ));
        }
        Ok(InMemory {
            values,
            shape,
            labels: None,
        })
    }

    /// The same items labelled with `labels` (one per item) out of `classes` classes.
    pub fn with_labels(mut self, labels: Vec<usize>, classes: usize) -> Result<Self> {
        if labels.len() != self.shape[0] {
            return Err(Error::invalid(
                "labels",
                format!("{} labels for {} items", labels.len(), self.shape[0]),
            ));
        }
        if let Some(bad) = labels.iter().find(|&&l| l >= classes) {
            return Err(Error::invalid(
                "labels",
                format!("label {bad} is not below the {classes} classes"),
            ));
        }
        self.labels = Some((labels, classes));
        Ok(self)
    }

    /// The values of item `i`.
    pub fn item(&self, i: usize) -> &[f32] {
        let len = self.item_len();
        &self.values[i * len..(i + 1) * len]
    }

    fn item_len(&self) -> usize {
        self.shape[1..].iter().product()
    }
}

impl<const D: usize> BatchSource<D> for InMemory<D> {
    fn len(&self) -> usize {
        self.shape[0]
    }

    fn sample_shape(&self) -> Vec<usize> {
        self.shape[1..].to_vec()
    }

    fn classes(&self) -> Option<usize> {
        self.labels.as_ref().map(|(_, classes)| *classes)
    }

    fn batch(
        &self,
        indices: &[usize],
        _: Option<&mut StdRng>,
        device: &Device,
    ) -> Result<DataBatch<D>> {
        let mut values = Vec::with_capacity(indices.len() * self.item_len());
        for &i in indices {
            values.extend_from_slice(self.item(i));
        }
        let mut shape = self.shape;
        shape[0] = indices.len();
        Ok(DataBatch {
            x0: Tensor::from_data(TensorData::new(values, shape), device),
            labels: self
                .labels
                .as_ref()
                .map(|(labels, _)| indices.iter().map(|&i| labels[i]).collect()),
            x1: None,
        })
    }
}

/// An image set as a batch source, optionally mirroring each image left-right with
/// probability 1/2 (when the loop asks for augmentation).
#[derive(Debug, Clone, Copy)]
pub struct ImageSource<'a> {
    /// The images.
    pub set: &'a ImageSet,
    /// Mirror images at random.
    pub flip: bool,
}

impl BatchSource<4> for ImageSource<'_> {
    fn len(&self) -> usize {
        self.set.len()
    }

    fn sample_shape(&self) -> Vec<usize> {
        self.set.shape().to_vec()
    }

    fn classes(&self) -> Option<usize> {
        self.set.is_labelled().then_some(self.set.classes.len())
    }

    fn batch(
        &self,
        indices: &[usize],
        augment: Option<&mut StdRng>,
        device: &Device,
    ) -> Result<DataBatch<4>> {
        let (x0, labels) = match (augment, self.flip) {
            (Some(rng), true) => self.set.batch_flipped(indices, rng, device),
            _ => self.set.batch(indices, device),
        };
        Ok(DataBatch {
            x0,
            labels: self
                .set
                .is_labelled()
                .then(|| labels.into_iter().map(usize::from).collect()),
            x1: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_memory_batches_gather_rows_and_labels() {
        let values: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let set = InMemory::new(values, [6, 2])
            .unwrap()
            .with_labels(vec![0, 1, 0, 1, 0, 1], 2)
            .unwrap();
        assert_eq!(
            (set.len(), set.sample_shape(), set.classes()),
            (6, vec![2], Some(2))
        );
        let batch = set.batch(&[4, 1], None, &Device::flex()).unwrap();
        assert_eq!(batch.x0.dims(), [2, 2]);
        let got = batch
            .x0
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap();
        assert_eq!(got, vec![8.0, 9.0, 2.0, 3.0]);
        assert_eq!(batch.labels, Some(vec![0, 1]));
    }

    #[test]
    fn in_memory_rejects_bad_input() {
        assert!(InMemory::new(vec![0.0; 5], [3, 2]).is_err());
        assert!(InMemory::new(vec![f32::NAN, 0.0], [1, 2]).is_err());
        assert!(InMemory::new(vec![], [0, 2]).is_err());
        let set = InMemory::new(vec![0.0; 4], [2, 2]).unwrap();
        assert!(set.clone().with_labels(vec![0], 2).is_err());
        assert!(set.with_labels(vec![0, 2], 2).is_err());
    }
}
