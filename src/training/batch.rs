//! The ingredients of a training batch besides the data: labels with classifier-free dropout,
//! the stable target's reference items, and the noise paired with the data.

use burn::tensor::{Device, Tensor, TensorData};
use rand::Rng;
use rand::rngs::StdRng;

use crate::data::BatchSource;
use crate::error::Result;
use crate::flow;
use crate::flow::coupling::{Coupling, ot_assignment, reorder_rows};
use crate::flow::stable_target::Reference;
use crate::model::one_hot_labels;

/// One-hot labels with each replaced by "no label" with probability `dropout`.
pub fn dropped_labels(
    labels: &[usize],
    classes: usize,
    dropout: f32,
    rng: &mut StdRng,
    device: &Device,
) -> Tensor<2> {
    let kept: Vec<Option<usize>> = labels
        .iter()
        .map(|&l| (rng.random::<f32>() >= dropout).then_some(l))
        .collect();
    one_hot_labels(&kept, classes, device)
}

/// The stable target's reference: the batch `x0` (labelled `labels`) and `size - batch` items
/// drawn from `source` at random, with their labels when `classes` is some.
pub fn reference_batch<const D: usize, S: BatchSource<D> + ?Sized>(
    source: &S,
    (x0, labels): (&Tensor<D>, Option<&[usize]>),
    size: usize,
    classes: Option<usize>,
    rng: &mut StdRng,
) -> Result<Reference> {
    let dims = x0.dims();
    let (batch, values): (usize, usize) = (dims[0], dims[1..].iter().product());
    let device = x0.device();
    let extra: Vec<usize> = (0..size.saturating_sub(batch))
        .map(|_| rng.random_range(0..source.len()))
        .collect();
    let drawn = source.batch(&extra, None, &device)?;
    let extra_labels = drawn.labels.unwrap_or_default();
    let labels = classes.map(|classes| {
        let all: Vec<Option<usize>> = labels
            .unwrap_or_default()
            .iter()
            .chain(&extra_labels)
            .map(|&l| Some(l))
            .collect();
        one_hot_labels(&all, classes, &device)
    });
    Ok(Reference {
        images: Tensor::cat(
            vec![
                x0.clone().reshape([batch, values]),
                drawn.x0.reshape([extra.len(), values]),
            ],
            0,
        ),
        labels,
    })
}

/// Fresh noise for the data `x0`, paired by `coupling`.
pub fn noise_for<const D: usize>(
    x0: &Tensor<D>,
    coupling: Coupling,
    rng: &mut StdRng,
) -> Tensor<D> {
    let device = x0.device();
    let batch = x0.dims()[0];
    match coupling {
        Coupling::Independent => flow::gaussian_noise(rng, x0.dims(), &device),
        Coupling::MinibatchOt => {
            let dim = x0.dims()[1..].iter().product();
            let noise = flow::gaussian_values(rng, batch * dim);
            let data = x0
                .to_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .expect("f32 data");
            let paired = reorder_rows(&noise, &ot_assignment(&data, &noise, dim), dim);
            Tensor::from_data(TensorData::new(paired, x0.dims()), &device)
        }
    }
}
