//! `flowmatch reflow` and `flowmatch distill`: few-step models from a trained one.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use burn::tensor::Device;
use clap::Args;

use flowmatch::sampling::Generation;
use flowmatch::sampling::solvers::Solver;
use flowmatch::training::few_step::{self, FewStep, FewStepOptions, FewStepTraining};
use flowmatch::training::pairs::SHARD;

use crate::common::{ModelArgs, progress_bar, with_progress};

#[derive(Args)]
pub struct FewStepArgs {
    /// The trained model to start from (unconditional flow matching): --checkpoint PATH or
    /// --pretrained NAME.
    #[command(flatten)]
    model: ModelArgs,
    /// (noise, sample) pairs to draw from it (streamed to OUT/pairs in shards; a second run
    /// resumes).
    #[arg(long, default_value_t = 20000)]
    pairs: usize,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Solver the pairs are drawn with.
    #[arg(long, default_value = "rk4")]
    teacher_solver: Solver,
    /// Steps of that solver.
    #[arg(long, default_value_t = 8)]
    teacher_steps: usize,
    /// Training steps.
    #[arg(long, default_value_t = 3000)]
    train_steps: u64,
    /// Pairs per step.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Peak learning rate (warm-up of 100 steps, cosine decay).
    #[arg(long, default_value_t = 5e-4)]
    lr: f64,
    /// EMA decay (0: none).
    #[arg(long, default_value_t = 0.999)]
    ema_decay: f64,
    /// Stop after this many minutes of training time.
    #[arg(long)]
    max_minutes: Option<f64>,
    /// Seed of the pairs' noise and of the training.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
pub struct DistillArgs {
    #[command(flatten)]
    run: FewStepArgs,
    /// Euler steps of the student (1 or 2 for few-step sampling).
    #[arg(long, default_value_t = 1)]
    student_steps: usize,
}

pub fn reflow(args: FewStepArgs, device: &Device) -> Result<()> {
    run(FewStep::Reflow, args, device)
}

pub fn distill(args: DistillArgs, device: &Device) -> Result<()> {
    if args.student_steps == 0 {
        bail!("invalid --student-steps: must be positive");
    }
    run(FewStep::Distill(args.student_steps), args.run, device)
}

fn run(kind: FewStep, args: FewStepArgs, device: &Device) -> Result<()> {
    if args.teacher_steps == 0 || args.train_steps == 0 || args.batch_size == 0 {
        bail!("invalid --teacher-steps / --train-steps / --batch-size: must be positive");
    }
    let training = FewStepTraining {
        steps: args.train_steps,
        batch_size: args.batch_size,
        lr: args.lr,
        ema_decay: (args.ema_decay > 0.0).then_some(args.ema_decay),
        max_minutes: args.max_minutes,
        seed: args.seed,
    };
    let base = args.model.path()?;
    let options = FewStepOptions {
        base: base.clone(),
        pairs: args.pairs,
        teacher: Generation {
            solver: args.teacher_solver,
            ..Generation::euler(args.teacher_steps)
        },
        seed: args.seed,
        out: args.out.clone(),
        recipe: training.config(),
    };
    println!(
        "{} of {}: drawing {} pairs ({} {} steps), then {} training steps",
        kind.describe(),
        base.display(),
        args.pairs,
        args.teacher_solver,
        args.teacher_steps,
        args.train_steps
    );
    let bar = progress_bar(args.pairs.div_ceil(SHARD) as u64, "shards");
    let started = Instant::now();
    let report = with_progress(|observer| {
        few_step::run(
            kind,
            &options,
            device,
            |done, _| bar.set_position(done as u64),
            observer,
        )
    })?;
    bar.finish_and_clear();
    println!(
        "pairs: {} shard(s) in {} ({} reused), NFE {} per pair",
        report.pairs.shards.len(),
        args.out.join("pairs").display(),
        report.pairs.reused,
        report.pairs.nfe
    );
    println!(
        "straightness (0 = straight): {:.4} before, {:.4} after",
        report.straightness_before, report.straightness_after
    );
    println!(
        "trained {} steps; {:.0} s in all; checkpoint: {}",
        report.outcome.steps,
        started.elapsed().as_secs_f64(),
        report.outcome.checkpoint.display()
    );
    Ok(())
}
