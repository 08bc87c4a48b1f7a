//! `flowmatch trajectory`: how samples flow from noise to data, as a strip and a GIF.

use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::Device;
use clap::Args;

use flowmatch::trajectory::{TrajectoryJob, trajectory_to_files};

use crate::common::{ModelArgs, ScheduleArgs, SolverArgs, ToSample};

#[derive(Args)]
pub struct TrajectoryArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Number of samples (rows of the strip).
    #[arg(long, default_value_t = 1)]
    n: usize,
    /// Steps of the fixed-step solvers (ignored by dopri5) [default: the model's own: a shipped
    /// model's, a few-step model's, else 50].
    #[arg(long)]
    steps: Option<usize>,
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
    let (checkpoint, own) = ToSample::load(&args.model, args.steps, args.n, device, args.no_ema)?;
    let job = TrajectoryJob {
        n: args.n,
        steps: own.steps,
        seed: args.seed,
        solver: args.solver.solver()?,
        grid: args.solver.grid_or(own.grid)?,
        schedule: args.schedule.schedule(own.trained),
        class: args.digit,
        guidance: args.guidance,
        guidance_interval: args.schedule.guidance_interval,
        strip: args.out,
        gif: args.gif,
        inputs: vec![checkpoint],
    };
    trajectory_to_files(&own.model, &job, device)?;
    println!("trajectory strip: {}", job.strip.display());
    println!("trajectory GIF:   {}", job.gif.display());
    Ok(())
}
