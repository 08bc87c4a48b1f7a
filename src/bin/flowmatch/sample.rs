//! `flowmatch sample`: a grid of samples from a checkpoint (and every sample in a tensor file).

use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::Device;
use clap::Args;

use flowmatch::model::MAX_CLASSES;
use flowmatch::sampling::solvers::TimeGrid;
use flowmatch::sampling::to_files::{SampleJob, sample_to_files};
use flowmatch::sampling::{self, ClassPlan, Generation};

use crate::common::{ModelArgs, ScheduleArgs, SolverArgs, ToSample, progress_bar};

#[derive(Args)]
pub struct SampleArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Number of samples.
    #[arg(long, default_value_t = 64)]
    n: usize,
    /// Steps of the fixed-step solvers (ignored by dopri5) [default: the model's own: a shipped
    /// model's, a few-step model's, else 50].
    #[arg(long)]
    steps: Option<usize>,
    /// Seed of the starting noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output grid PNG (of at most the first 1024 samples; with more, all of them also go to a
    /// tensor file: --save-tensor, or the grid's name with .safetensors).
    #[arg(long, default_value = "samples.png")]
    out: PathBuf,
    /// Read the starting noise from this safetensors file (tensor `x1`, [N,1,28,28] f32).
    #[arg(long)]
    init_noise: Option<PathBuf>,
    /// Also write the raw final samples (tensor `x0`, before clamping) to this safetensors file.
    #[arg(long)]
    save_tensor: Option<PathBuf>,
    /// Use the raw weights even when the checkpoint holds an EMA.
    #[arg(long)]
    no_ema: bool,
    /// Images generated per network call: peak memory depends on this, not on --n.
    #[arg(long, default_value_t = sampling::DEFAULT_CHUNK)]
    batch_size: usize,
    #[command(flatten)]
    solver: SolverArgs,
    /// Conditional models: generate this digit (class).
    #[arg(long, conflicts_with = "digits")]
    digit: Option<usize>,
    /// Conditional models: one row per class, e.g. 0-9 or 1,3,7 (--n samples per row).
    #[arg(long, value_parser = parse_digits)]
    digits: Option<Digits>,
    /// Classifier-free guidance scale w: v = v_uncond + w (v_cond - v_uncond); 1 is plain conditional.
    #[arg(long, default_value_t = 1.0)]
    guidance: f32,
    #[command(flatten)]
    schedule: ScheduleArgs,
}

/// Classes given as a range (`0-9`) or a list (`1,3,7`).
#[derive(Debug, Clone)]
struct Digits(Vec<usize>);

fn parse_digits(s: &str) -> std::result::Result<Digits, String> {
    let bad = || {
        format!(
            "'{s}': expected a range like 0-9 or a list like 1,3,7 (at most {MAX_CLASSES} classes)"
        )
    };
    if let Some((a, b)) = s.split_once('-') {
        let (a, b) = (
            a.trim().parse::<usize>().map_err(|_| bad())?,
            b.trim().parse::<usize>().map_err(|_| bad())?,
        );
        return if a <= b && b - a < MAX_CLASSES {
            Ok(Digits((a..=b).collect()))
        } else {
            Err(bad())
        };
    }
    s.split(',')
        .map(|p| p.trim().parse::<usize>().map_err(|_| bad()))
        .collect::<std::result::Result<_, _>>()
        .map(Digits)
}

pub fn run(args: SampleArgs, device: &Device) -> Result<()> {
    let (checkpoint, own) = ToSample::load(&args.model, args.steps, args.n, device, args.no_ema)?;
    // Class labels per sample (conditional models) and the grid's columns.
    let (classes, grid_columns) = match (args.digit, &args.digits) {
        (Some(d), _) => (
            ClassPlan::Rows {
                classes: vec![d],
                per_class: args.n,
            },
            None,
        ),
        (None, Some(Digits(rows))) => (
            ClassPlan::Rows {
                classes: rows.clone(),
                per_class: args.n,
            },
            Some(args.n),
        ),
        (None, None) => (ClassPlan::Unconditional, None),
    };
    let job = SampleJob {
        n: args.n,
        classes,
        init_noise: args.init_noise.clone(),
        seed: args.seed,
        generation: Generation {
            solver: args.solver.solver()?,
            steps: own.steps,
            grid: args.solver.grid_or(own.grid)?,
            guidance: args.guidance,
            chunk: args.batch_size,
            guidance_interval: args.schedule.guidance_interval,
            schedule: args.schedule.schedule(own.trained),
        },
        grid: args.out.clone(),
        grid_columns,
        tensor: args.save_tensor.clone(),
        inputs: vec![checkpoint.clone()],
    };
    let bar = progress_bar(0, "samples");
    let report = sample_to_files(&own.model, &job, device, |k, total| {
        bar.set_length(total as u64);
        bar.inc(k as u64)
    })?;
    bar.finish_and_clear();
    let (low, high) = report.nfe;
    let nfe = if low == high {
        low.to_string()
    } else {
        format!("{low}-{high} (per chunk)")
    };
    let count = report.count;
    let grid = match job.generation.grid {
        TimeGrid::Uniform => String::new(),
        shifted => format!(" (time grid {shifted})"),
    };
    println!(
        "{count} samples, {}, {} steps{grid}, NFE {nfe}, {:.1} s ({:.1} img/s)",
        job.generation.solver,
        report.steps,
        report.seconds,
        count as f64 / report.seconds
    );
    if report.in_grid < count {
        println!(
            "grid (the first {} of {count} samples): {}",
            report.in_grid,
            args.out.display()
        );
    } else {
        println!("grid: {}", args.out.display());
    }
    if let Some(path) = &report.tensor {
        println!("raw samples (tensor x0, all {count}): {}", path.display());
    }
    Ok(())
}
