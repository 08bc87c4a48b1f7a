//! `flowmatch bench`: training and sampling throughput and peak memory, one JSON line per
//! network (the default widths each in a process of their own).

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use clap::Args;

use flowmatch::bench::{self, BenchConfig, SWEEP_WIDTHS};

use crate::common::{ArchArg, NetworkArgs};

#[derive(Args)]
pub struct BenchArgs {
    /// The network to measure (default: SimpleUNet at the reference widths 64,128,256 and the
    /// half 32,64,128, each in its own process so that peak memory is per width).
    #[command(flatten)]
    network: NetworkArgs,
    /// Shorter runs (1 warm-up, 2 timed steps, 1 sampling run), for a quick look.
    #[arg(long)]
    quick: bool,
    /// Images per training step.
    #[arg(long, default_value_t = 128)]
    train_batch: usize,
    /// Images per sampling run.
    #[arg(long, default_value_t = 64)]
    sample_batch: usize,
}

pub fn run(args: BenchArgs, device: &Device) -> Result<()> {
    if args.network.arch == ArchArg::Simple && args.network.widths.is_none() {
        // One process per width, so that each peak-memory figure is its own.
        let exe = std::env::current_exe().context("locating the flowmatch executable")?;
        for widths in SWEEP_WIDTHS {
            let mut cmd = std::process::Command::new(&exe);
            cmd.arg("bench")
                .arg("--widths")
                .arg(format!("{},{},{}", widths[0], widths[1], widths[2]));
            if args.quick {
                cmd.arg("--quick");
            }
            let status = cmd.status().context("running the benchmark")?;
            if !status.success() {
                bail!("benchmark for widths {widths:?} failed ({status})");
            }
        }
        return Ok(());
    }
    if args.train_batch == 0 || args.sample_batch == 0 {
        bail!("invalid --train-batch / --sample-batch: must be positive");
    }
    let mut config = BenchConfig::for_network(args.network.config(None)?);
    config.train_batch = args.train_batch;
    config.sample_batch = args.sample_batch;
    if args.quick {
        config = config.quick();
    }
    let result = bench::run(&config, device)?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}
