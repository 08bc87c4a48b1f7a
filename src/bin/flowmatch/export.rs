//! `flowmatch export`: a training checkpoint reduced to a model for sampling (the chosen
//! weights, no optimiser state), optionally stored as float16, checked to sample as the original.

use std::path::PathBuf;

use anyhow::{Result, bail};
use burn::tensor::Device;
use clap::Args;

use flowmatch::checkpoint::{self, Weights};
use flowmatch::data::download::sha256_file;
use flowmatch::sampling::sample_difference;
use flowmatch::tensor_file::{Storage, TensorFile, refuse_to_replace};

use crate::common::weights;

#[derive(Args)]
pub struct ExportArgs {
    /// The training checkpoint.
    #[arg(long)]
    checkpoint: PathBuf,
    /// The model file to write (.safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Store the weights as float16 (half the size).
    #[arg(long)]
    f16: bool,
    /// Export the raw weights even when the checkpoint holds an EMA.
    #[arg(long)]
    no_ema: bool,
    /// Euler steps of the check that the exported model samples as the checkpoint (64
    /// samples).
    #[arg(long, default_value_t = 10)]
    check_steps: usize,
}

pub fn run(args: ExportArgs, device: &Device) -> Result<()> {
    if args.check_steps == 0 {
        bail!("invalid --check-steps: must be positive");
    }
    refuse_to_replace(&args.checkpoint, &[&args.out])?;
    let chosen = weights(args.no_ema);
    let file = TensorFile::read(&args.checkpoint)?;
    let exported = checkpoint::export(&file, &args.checkpoint, chosen)?;
    let storage = match args.f16 {
        true => Storage::F16,
        false => Storage::F32,
    };
    exported.write_as(&args.out, storage)?;
    let original = checkpoint::model_from_file(&file, &args.checkpoint, device, chosen)?;
    let copy = checkpoint::load_weights(&args.out, device, Weights::PreferEma)?;
    let (n, seed) = (64, 0);
    let diff = sample_difference(
        &original.model,
        &copy.model,
        n,
        args.check_steps,
        seed,
        device,
    )?;
    let bytes = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    println!(
        "exported {} weights of {} to {} ({:.2} MB, {}; SHA-256 {})",
        if original.is_ema {
            "the EMA"
        } else {
            "the raw"
        },
        args.checkpoint.display(),
        args.out.display(),
        bytes as f64 / 1e6,
        if args.f16 { "float16" } else { "float32" },
        sha256_file(&args.out)?
    );
    println!(
        "check: {n} samples at {} Euler steps (seed {seed}) differ from the checkpoint's by \
         {:.1e} on average, {:.1e} at most (values in [-1, 1])",
        args.check_steps, diff.mean, diff.max
    );
    Ok(())
}
