//! burn's own `Dataset` and `Batcher` as a flowmatch [`BatchSource`] (cargo feature
//! `learner`): a burn user's data pipeline trains with flowmatch's loop as it is.

use std::marker::PhantomData;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::tensor::Device;
use rand::rngs::StdRng;

use super::source::{BatchSource, DataBatch};
use crate::error::{Error, Result};

/// A burn [`Dataset`] of items `I` and a [`Batcher`] that turns items into a [`DataBatch`].
pub struct DatasetSource<I, T, B> {
    dataset: T,
    batcher: B,
    sample_shape: Vec<usize>,
    classes: Option<usize>,
    item: PhantomData<fn() -> I>,
}

impl<I, T, B> DatasetSource<I, T, B> {
    /// `dataset`'s items, batched by `batcher`, each of shape `sample_shape` (no batch
    /// dimension).
    pub fn new(dataset: T, batcher: B, sample_shape: Vec<usize>) -> Self {
        DatasetSource {
            dataset,
            batcher,
            sample_shape,
            classes: None,
            item: PhantomData,
        }
    }

    /// The same source, its batches labelled with `classes` classes.
    pub fn with_classes(self, classes: usize) -> Self {
        DatasetSource {
            classes: Some(classes),
            ..self
        }
    }
}

impl<const D: usize, I, T, B> BatchSource<D> for DatasetSource<I, T, B>
where
    T: Dataset<I>,
    B: Batcher<I, DataBatch<D>>,
{
    fn len(&self) -> usize {
        self.dataset.len()
    }

    fn sample_shape(&self) -> Vec<usize> {
        self.sample_shape.clone()
    }

    fn classes(&self) -> Option<usize> {
        self.classes
    }

    fn batch(
        &self,
        indices: &[usize],
        _: Option<&mut StdRng>,
        device: &Device,
    ) -> Result<DataBatch<D>> {
        let items = indices
            .iter()
            .map(|&i| {
                self.dataset
                    .get(i)
                    .map_err(|e| Error::invalid("data set item", format!("{i}: {e}")))
            })
            .collect::<Result<Vec<I>>>()?;
        Ok(self.batcher.batch(items, device))
    }
}
