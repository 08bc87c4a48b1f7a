//! `flowmatch demo`: the few-minute demonstration run and its pictures.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use burn::tensor::Device;
use clap::Args;

use flowmatch::data::Split;
use flowmatch::demo::{self, DEMO_GUIDANCE, DEMO_SAMPLING_STEPS, DEMO_TIME_GRID, DemoOptions};
use flowmatch::sampling::solvers::TimeGrid;

use crate::common::{DataArgs, with_progress};

#[derive(Args)]
pub struct DemoArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Output folder.
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
    /// Optimiser steps [default: the demo recipe's, about 5 minutes on 2 CPU cores].
    #[arg(long)]
    steps: Option<u64>,
    /// Train a class-conditional model with this many classes instead (labels dropped 10% of
    /// the time, so it samples without labels too); it also writes a guided grid with one row
    /// per class. 0, the default, trains an unconditional model, as the reference.
    #[arg(long, default_value_t = 0)]
    classes: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Height and width to bring the images to [default: the data set's own].
    #[arg(long)]
    image_size: Option<usize>,
    /// Image channels to bring the images to, 1 or 3 [default: the data set's own].
    #[arg(long)]
    channels: Option<usize>,
}

pub fn run(args: DemoArgs, device: &Device) -> Result<()> {
    let data = args
        .data
        .load(Split::Train, args.image_size, args.channels)?;
    let options = DemoOptions {
        out: args.out.clone(),
        steps: args.steps,
        classes: args.classes,
        seed: args.seed,
        data: args.data.data.clone(),
        sampling_steps: DEMO_SAMPLING_STEPS,
    };
    let config = demo::config(&options);
    println!(
        "demo: training {} for {} steps (batch {}, lr {}) on {} images ({}); about 5 minutes on \
         2 CPU cores with AVX-512, 7-11 without",
        config.model.describe(),
        config.max_steps.unwrap_or(0),
        config.batch_size,
        config.lr,
        data.len(),
        args.data.data
    );
    let started = Instant::now();
    let report = with_progress(|observer| demo::run(&options, &data, device, observer))?;
    let checkpoint = report.outcome.checkpoint.display();
    if report.outcome.interrupted {
        println!("interrupted: saved {checkpoint}");
        return Ok(());
    }
    println!(
        "trained {} steps, final loss {:.4}; {:.0} s in all",
        report.outcome.steps,
        report.outcome.final_loss,
        started.elapsed().as_secs_f64()
    );
    let steps = DEMO_SAMPLING_STEPS;
    println!(
        "samples (64, {steps} Euler steps, time grid {DEMO_TIME_GRID}, no labels): {}",
        report.samples.display()
    );
    if let Some(path) = &report.class_rows {
        println!(
            "one row per class (guidance {DEMO_GUIDANCE}, {steps} Euler steps): {}",
            path.display()
        );
    }
    println!("trajectory strip: {}", report.trajectory.display());
    println!("trajectory GIF:   {}", report.gif.display());
    println!("loss curve:       {}", report.outcome.loss_curve.display());
    println!("checkpoint:       {checkpoint}");
    // The commands that look further at the demo's model.
    let data = match args.data.data.as_str() {
        "embedded" => String::new(),
        other => format!(" --data {other}"),
    };
    let grid = match DEMO_TIME_GRID {
        TimeGrid::Uniform => String::new(),
        TimeGrid::Shifted(s) => format!(" --time-grid shifted --grid-shift {s}"),
    };
    println!(
        "quality:          flowmatch eval --checkpoint {checkpoint}{data} --solvers euler --nfe 10,{steps} --n 1000{grid}"
    );
    println!(
        "watch the flow:   flowmatch serve --checkpoint {checkpoint}   (then open http://127.0.0.1:8000/)"
    );
    Ok(())
}
