//! `flowmatch trajectory`: how samples flow from noise to data, as a strip and a GIF.

use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::Device;
use clap::Args;

use flowmatch::trajectory::{TrajectoryJob, trajectory_to_files};

use crate::common::{ModelArgs, ScheduleArgs, SolverArgs, check_counts, load_scheduled};

#[derive(Args)]
pub struct TrajectoryArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Number of samples (rows of the strip).
    #[arg(long, default_value_t = 1)]
    n: usize,
    /// Steps of the fixed-step solvers (ignored by dopri5).
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Seed of the starting noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output strip PNG.
    #[arg(long, default_value = "trajectory.png")]
    out: PathBuf,
    /// Output animated GIF of every step.
    #[arg(long, default_value = "trajectory.gif")]
    gif: PathBuf,
    /// Use the raw weights even when the checkpoint holds an EMA.
    #[arg(long)]
    no_ema: bool,
    #[command(flatten)]
    solver: SolverArgs,
    /// Conditional models: every row draws this digit (class).
    #[arg(long)]
    digit: Option<usize>,
    /// Classifier-free guidance scale towards --digit (1: plain conditional).
    #[arg(long, default_value_t = 1.0)]
    guidance: f32,
    #[command(flatten)]
    schedule: ScheduleArgs,
}

pub fn run(args: TrajectoryArgs, device: &Device) -> Result<()> {
    let checkpoint = args.model.path()?;
    let (model, trained) = load_scheduled(&checkpoint, device, args.no_ema)?;
    check_counts(args.n, args.steps)?;
    let job = TrajectoryJob {
        n: args.n,
        steps: args.steps,
        seed: args.seed,
        solver: args.solver.solver()?,
        grid: args.solver.grid()?,
        schedule: args.schedule.schedule(trained),
        class: args.digit,
        guidance: args.guidance,
        guidance_interval: args.schedule.guidance_interval,
        strip: args.out,
        gif: args.gif,
        inputs: vec![checkpoint],
    };
    trajectory_to_files(&model, &job, device)?;
    println!("trajectory strip: {}", job.strip.display());
    println!("trajectory GIF:   {}", job.gif.display());
    Ok(())
}
