//! `flowmatch curve`: quality against training time of MNIST runs.

use std::path::PathBuf;

use anyhow::{Result, bail};
use burn::tensor::Device;
use clap::Args;

use flowmatch::evaluation::curve::{CurveEvent, CurveOptions, measure};

#[derive(Args)]
pub struct CurveArgs {
    /// Run folders (repeatable), each with minutes-*.safetensors and/or final.safetensors.
    #[arg(long, required = true)]
    run: Vec<PathBuf>,
    /// Euler NFE budgets.
    #[arg(long, value_delimiter = ',', default_value = "10,50")]
    nfe: Vec<usize>,
    /// Samples per point (and held-out images of the reference).
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// Seed of the starting noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// JSON lines output.
    #[arg(long, default_value = "curve.jsonl")]
    out: PathBuf,
    /// The plot (PNG).
    #[arg(long, default_value = "curve.png")]
    plot: PathBuf,
    /// Keep the points already in --out for the same checkpoint, NFE, --n and --seed, and
    /// measure only the others (new checkpoints of a run still training, another run); the
    /// points of runs not given stay in --out and in the plot.
    #[arg(long)]
    reuse: bool,
}

pub fn run(args: CurveArgs, device: &Device) -> Result<()> {
    if args.nfe.is_empty() || args.nfe.contains(&0) {
        bail!("invalid --nfe: values must be positive");
    }
    let options = CurveOptions {
        runs: args.run,
        nfe: args.nfe,
        n: args.n,
        seed: args.seed,
        out: args.out,
        plot: args.plot,
        reuse: args.reuse,
    };
    measure(&options, device, |event| match event {
        CurveEvent::Measuring => println!(
            "{:<24} {:>8} {:>7} {:>4} {:>9} {:>9}",
            "run", "minutes", "steps", "NFE", "cFID", "confident"
        ),
        CurveEvent::Point(p) => println!(
            "{:<24} {:>8.2} {:>7} {:>4} {:>9.2} {:>9.3}",
            p.run, p.minutes, p.steps, p.nfe, p.quality.fid, p.quality.confident
        ),
        CurveEvent::Floor(floor) => println!(
            "real-data floor: cFID {:.2}, confident {:.3}",
            floor.fid, floor.confident
        ),
    })?;
    println!(
        "results: {}\nplot: {}",
        options.out.display(),
        options.plot.display()
    );
    Ok(())
}
