//! `flowmatch classifier train`: the evaluation classifier, whose features define the quality
//! metrics.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use burn::tensor::Device;
use clap::{Args, Subcommand};

use flowmatch::data::Split;
use flowmatch::evaluation::classifier::{self, ClassifierRecipe};

use crate::common::DataArgs;

#[derive(Args)]
pub struct ClassifierArgs {
    #[command(subcommand)]
    command: ClassifierCommand,
}

#[derive(Subcommand)]
enum ClassifierCommand {
    /// Train on the training split, report accuracy on the held-out split, save weights + accuracy.
    Train {
        #[command(flatten)]
        data: DataArgs,
        /// Training epochs.
        #[arg(long, default_value_t = ClassifierRecipe::PINNED.epochs)]
        epochs: usize,
        /// Peak learning rate (warm-up, then cosine decay).
        #[arg(long, default_value_t = ClassifierRecipe::PINNED.lr)]
        lr: f64,
        /// Train on the images as they are, without random rotations, scalings and shifts.
        #[arg(long)]
        no_augment: bool,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output weights.
        #[arg(long, default_value = "runs/classifier.safetensors")]
        out: PathBuf,
    },
}

pub fn run(args: ClassifierArgs, device: &Device) -> Result<()> {
    let ClassifierCommand::Train {
        data,
        epochs,
        lr,
        no_augment,
        seed,
        out,
    } = args.command;
    let train = data.load(Split::Train, None, None)?;
    let test = data.load_for(Split::Test, train.shape())?;
    let recipe =
        classifier::training_recipe(train.len(), train.shape(), epochs, lr, !no_augment, seed);
    println!(
        "training the evaluation classifier on {} images ({}), {epochs} epochs{}",
        train.len(),
        data.data,
        if no_augment { "" } else { ", augmented" }
    );
    let started = Instant::now();
    let (model, info) =
        classifier::fit(&train, &test, &recipe, &data.data, device, |epoch, loss| {
            println!(
                "epoch {:>2}: mean loss {loss:.4} ({:.0} s)",
                epoch + 1,
                started.elapsed().as_secs_f64()
            );
        })?;
    model.save(&info, &out)?;
    println!(
        "held-out accuracy: {:.2}% on {} images",
        100.0 * info.test_accuracy,
        test.len()
    );
    println!("classifier: {}", out.display());
    Ok(())
}
