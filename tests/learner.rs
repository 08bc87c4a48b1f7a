//! flowmatch's objective inside burn's own `Learner` (cargo feature `learner`), fed by burn's
//! `Dataset` and `Batcher`: the loss falls, and the same data trains with flowmatch's loop.
#![cfg(feature = "learner")]

use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::InMemDataset;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::AdamWConfig;
use burn::tensor::{Device, Tensor, TensorData};
use burn::train::{Learner, SupervisedTraining};
use flowmatch::data::DataBatch;
use flowmatch::data::burn_dataset::DatasetSource;
use flowmatch::model::{Condition, VelocityModel};
use flowmatch::training::learner::{FlowMatchingStep, Rank};
use flowmatch::training::{FitConfig, fit};

#[derive(Module, Debug)]
struct Mlp {
    hidden: Linear,
    out: Linear,
}

impl VelocityModel<2> for Mlp {
    fn velocity(&self, x: Tensor<2>, t: Tensor<1>, _: &Condition) -> Tensor<2> {
        let h = self
            .hidden
            .forward(Tensor::cat(vec![x, t.unsqueeze_dim(1)], 1));
        self.out.forward(burn::tensor::activation::silu(h))
    }
    fn sample_shape(&self) -> Vec<usize> {
        vec![2]
    }
}

/// Points `[x, y]` into a `[batch, 2]` data batch.
#[derive(Clone)]
struct Points;

impl Batcher<[f32; 2], DataBatch<2>> for Points {
    fn batch(&self, items: Vec<[f32; 2]>, device: &Device) -> DataBatch<2> {
        let n = items.len();
        let x0 = Tensor::from_data(TensorData::new(items.concat(), [n, 2]), device);
        DataBatch {
            x0,
            labels: None,
            x1: None,
        }
    }
}

fn points() -> Vec<[f32; 2]> {
    (0..256)
        .map(|i| {
            let a = i as f32 * 0.1;
            [a.cos() * 2.0, a.sin() * 2.0]
        })
        .collect()
}

fn mlp(device: &Device) -> Mlp {
    Mlp {
        hidden: LinearConfig::new(3, 32).init(device),
        out: LinearConfig::new(32, 2).init(device),
    }
}

#[test]
fn burns_learner_trains_flowmatchings_objective() {
    let device = Device::flex();
    let dir = std::env::temp_dir().join(format!("flowmatch-learner-{}", std::process::id()));
    let loader = |seed| {
        DataLoaderBuilder::new(Points)
            .batch_size(32)
            .shuffle(seed)
            .build(InMemDataset::new(points()))
    };
    // The loss over all points, averaged over 16 draws of noise and times.
    let mean_loss = |step: &FlowMatchingStep<Mlp, Rank<2>>, device: &Device| {
        let batch = || Points.batch(points(), device);
        let draws = (0..16).map(|_| step.regression(batch()).loss.into_scalar::<f32>());
        draws.sum::<f32>() / 16.0
    };
    let step = FlowMatchingStep::new(mlp(&device.clone().autodiff()));
    let before = mean_loss(&step, &device.clone().autodiff());
    let learner = Learner::new(step, AdamWConfig::new().init(), 1e-2);
    let training = SupervisedTraining::new(&dir, loader(0), loader(1)).num_epochs(30);
    let after = mean_loss(&training.launch(learner).model, &device);
    let _ = std::fs::remove_dir_all(&dir);

    // The same Dataset and Batcher feed flowmatch's own loop for as many steps (240).
    let source = DatasetSource::new(InMemDataset::new(points()), Points, vec![2]);
    let config = FitConfig {
        batch_size: 32,
        lr: 1e-2,
        epochs: 30,
        grad_clip: None,
        ..FitConfig::default()
    };
    let own = fit(mlp(&device), &source, &config, &device).unwrap();
    assert_eq!(own.steps, 240);
    let own = mean_loss(&FlowMatchingStep::new(own.model), &device);
    // The loss has a floor (the conditional target's own variance): the Learner's run gets as
    // close to it as flowmatch's loop does.
    assert!(after < before * 0.95, "Learner: loss {before} -> {after}");
    assert!(
        after < own * 1.05,
        "Learner {after}, flowmatch's loop {own} (from {before})"
    );
}
