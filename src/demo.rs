//! The demonstration run (`flowmatch demo`): the `demo` recipe trained for a few minutes on a
//! CPU, then the pictures a newcomer wants: 64 unconditional samples, the flow from noise to
//! digits as a strip and a GIF, the loss curve, and for a class-conditional run one row per
//! class.

use std::path::PathBuf;

use burn::tensor::Device;

use crate::checkpoint::{self, Weights};
use crate::data::ImageSet;
use crate::error::Result;
use crate::image_out::{self, Images};
use crate::model::Network;
use crate::sampling::solvers::{Solver, TimeGrid};
use crate::sampling::{self, ClassPlan, Generation, NoiseSource, generate};
use crate::training::{self, TrainConfig, TrainObserver, TrainOutcome, recipes};

/// Euler steps of the demo's pictures: fewer than the reference sampler's 50, because the
/// demo's model sees few training times near t = 0 and more steps there leave grey speckle
/// in the background (pinned-classifier cFID at 10 / 20 / 50 steps: 170 / 167 / 189).
pub const DEMO_SAMPLING_STEPS: usize = 20;
/// Time grid of the demo's pictures: steps shifted towards the noise end, where the sampler
/// decides the digit (cFID 170 against 224 on the uniform grid at 10 steps).
pub const DEMO_TIME_GRID: TimeGrid = TimeGrid::Shifted(3.0);
/// Guidance scale of the one-row-per-class grid of a conditional demo.
pub const DEMO_GUIDANCE: f32 = 2.0;

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Output folder.
    pub out: PathBuf,
    /// Optimiser steps (the recipe's when `None`).
    pub steps: Option<u64>,
    /// Classes of a class-conditional model (0: unconditional, as the reference).
    pub classes: usize,
    /// Seed of the run and of the pictures.
    pub seed: u64,
    /// Name of the data set (recorded in the configuration).
    pub data: String,
    /// Euler steps of the pictures ([`DEMO_SAMPLING_STEPS`] by default).
    pub sampling_steps: usize,
}

/// The files a demo wrote.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// The training run (checkpoint, metrics, loss curve).
    pub outcome: TrainOutcome,
    /// The configuration it trained with.
    pub config: TrainConfig,
    /// 64 samples without labels, an 8x8 grid.
    pub samples: PathBuf,
    /// One row per class, guided (conditional runs only).
    pub class_rows: Option<PathBuf>,
    /// The trajectory strip.
    pub trajectory: PathBuf,
    /// The trajectory GIF.
    pub gif: PathBuf,
}

/// The demo's training configuration: the `demo` recipe with the options applied.
pub fn config(options: &DemoOptions) -> TrainConfig {
    let mut config = recipes::recipe("demo").expect("the demo recipe exists");
    config.model = config
        .model
        .with_classes((options.classes > 0).then_some(options.classes));
    if let Some(steps) = options.steps {
        config.max_steps = Some(steps);
    }
    config.seed = options.seed;
    config.data = options.data.clone();
    config
}

/// Trains the demo model on `data` into `options.out`, reporting to `observer`, and writes
/// the pictures. An interrupted run (the observer asked to stop) writes no pictures.
pub fn run(
    options: &DemoOptions,
    data: &ImageSet,
    device: &Device,
    observer: &mut dyn TrainObserver,
) -> Result<DemoReport> {
    let config = config(options);
    let outcome = training::train(&config, data, &options.out, device, observer)?;
    let out = &options.out;
    let report = DemoReport {
        samples: out.join("samples.png"),
        class_rows: (options.classes > 0).then(|| out.join("digits.png")),
        trajectory: out.join("trajectory.png"),
        gif: out.join("trajectory.gif"),
        config,
        outcome,
    };
    if report.outcome.interrupted {
        return Ok(report);
    }
    let model =
        checkpoint::load_weights(&report.outcome.checkpoint, device, Weights::PreferEma)?.model;
    let steps = Generation {
        grid: DEMO_TIME_GRID,
        ..Generation::euler(options.sampling_steps)
    };
    let samples = draw(
        &model,
        64,
        &ClassPlan::Unconditional,
        options.seed,
        &steps,
        device,
    )?;
    image_out::save_grid(images(&model, &samples), &report.samples)?;
    let trajectory = sampling::trajectory(
        &model,
        sampling::initial_noise(&model, 4, options.seed + 1, device)?,
        Solver::Euler,
        options.sampling_steps,
        DEMO_TIME_GRID,
    );
    image_out::save_trajectory_strip(
        &trajectory.key_frames(),
        model.image_shape(),
        &report.trajectory,
    )?;
    image_out::save_trajectory_gif(&trajectory.frames, model.image_shape(), &report.gif)?;
    if let Some(path) = &report.class_rows {
        let per_class = 10;
        let plan = ClassPlan::Rows {
            classes: (0..options.classes).collect(),
            per_class,
        };
        let guided = Generation {
            guidance: DEMO_GUIDANCE,
            ..steps
        };
        let rows = draw(
            &model,
            options.classes * per_class,
            &plan,
            options.seed + 2,
            &guided,
            device,
        )?;
        image_out::save_png(
            &image_out::grid(images(&model, &rows), per_class, 1, 2),
            path,
        )?;
    }
    Ok(report)
}

/// `count` samples of `plan` from the seeded noise of `seed`.
fn draw(
    model: &Network,
    count: usize,
    plan: &ClassPlan,
    seed: u64,
    generation: &Generation,
    device: &Device,
) -> Result<Vec<f32>> {
    let mut values = Vec::new();
    generate(
        model,
        count,
        plan,
        &mut NoiseSource::seeded(seed),
        generation,
        device,
        |_, v| {
            values.extend(v);
            Ok(())
        },
    )?;
    Ok(values)
}

fn images<'a>(model: &Network, values: &'a [f32]) -> Images<'a> {
    Images {
        pixels: values,
        shape: model.image_shape(),
    }
}
