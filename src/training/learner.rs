//! flowmatch's flow-matching objective as a step of burn's `Learner` (cargo feature `learner`):
//! wrap your model in a [`FlowMatchingStep`] and train it with burn-train's supervised
//! training, its metrics and checkpointing. flowmatch's own loop ([`super::fit`]) adds the
//! other objectives, global clipping, the EMA and exact resume.

use std::marker::PhantomData;

use burn::module::{Module, ModuleDisplay};
use burn::tensor::{Device, Tensor};
use burn::train::{InferenceStep, RegressionOutput, TrainOutput, TrainStep};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::batch::dropped_labels;
use crate::data::DataBatch;
use crate::flow::{LinearPath, ProbPath, TimeSampling, gaussian_noise, velocity_loss};
use crate::model::{Condition, VelocityModel};

/// The rank `D` of a [`FlowMatchingStep`]'s batches, as a type.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rank<const D: usize>;

/// A velocity model trained by burn's `Learner` on flow matching's loss (the linear path,
/// fresh noise, times from `times`, labels dropped with probability `label_dropout` for a
/// conditional model). Noise and times come from the thread's random generator: a `Learner`
/// run is not reproducible step for step, as flowmatch's own loop is.
#[derive(Module, Debug)]
pub struct FlowMatchingStep<M: Module, R: Clone + Send + std::fmt::Debug + 'static> {
    /// The model being trained.
    pub model: M,
    /// How training times are drawn.
    #[module(skip)]
    pub times: TimeSampling,
    /// Probability of replacing a label by "no label".
    #[module(skip)]
    pub label_dropout: f32,
    #[module(skip)]
    rank: PhantomData<R>,
}

impl<const D: usize, M: VelocityModel<D>> FlowMatchingStep<M, Rank<D>> {
    /// `model` with uniform training times and 10 % label dropout, as `flowmatch train`.
    pub fn new(model: M) -> Self {
        FlowMatchingStep {
            model,
            times: TimeSampling::Uniform,
            label_dropout: 0.1,
            rank: PhantomData,
        }
    }

    /// The loss on `batch`, with the predicted and target velocities flattened per item.
    pub fn regression(&self, batch: DataBatch<D>) -> RegressionOutput {
        let mut rng = StdRng::from_rng(&mut rand::rng());
        let device: Device = batch.x0.device();
        let n = batch.x0.dims()[0];
        let x1 = match batch.x1 {
            Some(x1) => x1,
            None => gaussian_noise(&mut rng, batch.x0.dims(), &device),
        };
        let t = self.times.sample(&mut rng, n, &device);
        let point = LinearPath.sample(batch.x0, x1, t);
        let labels = self
            .model
            .num_classes()
            .zip(batch.labels)
            .map(|(classes, labels)| {
                dropped_labels(&labels, classes, self.label_dropout, &mut rng, &device)
            });
        let cond = Condition {
            labels,
            r: None,
            train_seed: Some(rng.random()),
        };
        let predicted = self.model.velocity(point.x_t, point.t, &cond);
        let flat = |x: Tensor<D>| x.reshape([n as i32, -1]);
        RegressionOutput {
            loss: velocity_loss(predicted.clone(), point.target.clone()),
            output: flat(predicted),
            targets: flat(point.target),
        }
    }
}

impl<const D: usize, M: VelocityModel<D> + ModuleDisplay + 'static> TrainStep
    for FlowMatchingStep<M, Rank<D>>
{
    type Input = DataBatch<D>;
    type Output = RegressionOutput;

    fn step(&self, batch: DataBatch<D>) -> TrainOutput<RegressionOutput> {
        let output = self.regression(batch);
        TrainOutput::new(self, output.loss.backward(), output)
    }
}

impl<const D: usize, M: VelocityModel<D> + ModuleDisplay + 'static> InferenceStep
    for FlowMatchingStep<M, Rank<D>>
{
    type Input = DataBatch<D>;
    type Output = RegressionOutput;

    fn step(&self, batch: DataBatch<D>) -> RegressionOutput {
        self.regression(batch)
    }
}
