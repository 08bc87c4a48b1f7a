//! The flowmatch command line: a thin layer over the library. Each command's arguments, their
//! conversion into the library's values, its one call into the library and its printing are in
//! the command's own file; this one chooses the device and dispatches.

mod bench;
mod classifier;
mod common;
mod curve;
mod demo;
mod eval;
mod export;
mod few_step;
mod info;
mod models;
mod sample;
mod serve;
mod train;
mod trajectory;

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "flowmatch",
    version,
    about = "Train flow-matching image generators and sample from them"
)]
struct Cli {
    /// Worker threads of the CPU backend (default: all cores; also RAYON_NUM_THREADS).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Where tensors live: cpu (burn's flex backend); wgpu, wgpu:cpu, wgpu:discrete:N,
    /// wgpu:integrated:N in a `wgpu` build; cuda / cuda:N in a `cuda` build.
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model on the embedded MNIST subset (or another data set), minutes on a CPU,
    /// then write samples, a trajectory strip + GIF and the loss curve.
    Demo(demo::DemoArgs),
    /// Train a model.
    Train(Box<train::TrainArgs>),
    /// Generate a grid of samples from a checkpoint.
    Sample(sample::SampleArgs),
    /// Show how samples flow from noise (t=1) to data (t=0): a labelled strip and a GIF.
    Trajectory(trajectory::TrajectoryArgs),
    /// Train the evaluation classifier (its features define the quality metrics).
    Classifier(classifier::ClassifierArgs),
    /// Measure sample quality per solver and NFE (classifier-FID, KID, confidence, classes)
    /// against held-out digits, with the real-data floor, and optionally the likelihood.
    Eval(eval::EvalArgs),
    /// Quality against training time of MNIST runs (pinned digit classifier): every timed
    /// checkpoint of the given runs (train --checkpoint-minutes), measured with Euler, as JSON
    /// lines and a plot.
    Curve(curve::CurveArgs),
    /// Measure training and sampling throughput and peak memory (one JSON line per width).
    Bench(bench::BenchArgs),
    /// Reflow a trained model: draw its own (noise, sample) pairs and train a straighter
    /// 2-rectified model on them, starting from its weights (few-step sampling).
    Reflow(few_step::FewStepArgs),
    /// Distil a trained model into a 1- or 2-step sampler on its (noise, sample) pairs.
    Distill(few_step::DistillArgs),
    /// Serve a local web page to generate samples and watch the flow (and a run's loss).
    Serve(serve::ServeArgs),
    /// Print a checkpoint's network shape, progress and training configuration.
    Info(info::InfoArgs),
    /// Reduce a training checkpoint to a model for sampling (optionally float16).
    Export(export::ExportArgs),
    /// List the models shipped with flowmatch (--pretrained NAME): recipe, quality, SHA-256.
    Models,
}

fn main() -> ExitCode {
    set_signal_dispositions();
    flowmatch::device::reuse_freed_memory();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line: what was wrong with which flag (clap's usage hint dropped).
            let rendered = e.render().to_string();
            let mut lines = rendered.lines().map(str::trim).filter(|l| !l.is_empty());
            let mut line = lines.next().unwrap_or("invalid arguments").to_string();
            // "the following required arguments were not provided:" names them on the next
            // line.
            if line.ends_with(':') {
                line = format!("{line} {}", lines.next().unwrap_or_default());
            }
            eprintln!("{line} (see --help)");
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Signals that would otherwise end the program badly:
/// - output piped into a reader that stops early (`flowmatch info CKPT | head -3`) ends the
///   process quietly, as other command-line tools do, instead of a panic in `println!`: SIGPIPE
///   gets its default action back (Rust's runtime ignores it; sockets are not affected, the
///   standard library sends with MSG_NOSIGNAL);
/// - a file-size limit (`ulimit -f`) makes a write fail with an error that is reported, like a
///   full disk, instead of killing the process with SIGXFSZ.
fn set_signal_dispositions() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to a default or to "ignore" has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Some(n) = cli.threads {
        if n == 0 {
            bail!("invalid --threads: must be positive");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("setting the thread count")?;
    }
    let device = flowmatch::device::device_from_name(&cli.device)?;
    // A command runs on one of rayon's worker threads (rayon::scope from outside the pool runs
    // its body there), so that each parallel kernel starts on the calling worker instead of
    // waking the pool from outside and sleeping until it is done: about 6 % less wall time in
    // training. `serve` stays outside: its request loop would hold a worker for good.
    match cli.command {
        Command::Serve(args) => serve::run(args, &device),
        command => rayon::scope(|_| run_command(command, &device)),
    }
}

/// Runs one command on `device`.
fn run_command(command: Command, device: &Device) -> Result<()> {
    match command {
        Command::Demo(args) => demo::run(args, device),
        Command::Train(args) => train::run(*args, device),
        Command::Sample(args) => sample::run(args, device),
        Command::Trajectory(args) => trajectory::run(args, device),
        Command::Classifier(args) => classifier::run(args, device),
        Command::Eval(args) => eval::run(args, device),
        Command::Curve(args) => curve::run(args, device),
        Command::Bench(args) => bench::run(args, device),
        Command::Reflow(args) => few_step::reflow(args, device),
        Command::Distill(args) => few_step::distill(args, device),
        Command::Serve(args) => serve::run(args, device),
        Command::Info(args) => info::run(&args),
        Command::Export(args) => export::run(args, device),
        Command::Models => models::run(device),
    }
}
