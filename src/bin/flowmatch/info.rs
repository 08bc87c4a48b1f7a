//! `flowmatch info`: a checkpoint's network, weights, progress and training configuration.

use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::Device;
use clap::Args;

use flowmatch::checkpoint;

use crate::common::ModelArgs;

#[derive(Args)]
pub struct InfoArgs {
    /// The checkpoint (.safetensors).
    #[arg(required_unless_present = "pretrained", conflicts_with = "pretrained")]
    checkpoint: Option<PathBuf>,
    /// A model shipped with flowmatch instead (`flowmatch models` lists them).
    #[arg(long, value_name = "NAME")]
    pretrained: Option<String>,
}

pub fn run(args: &InfoArgs) -> Result<()> {
    let model = ModelArgs {
        checkpoint: args.checkpoint.clone(),
        pretrained: args.pretrained.clone(),
    };
    let path = &model.path()?;
    let loaded = checkpoint::load(path, &Device::flex())?;
    let params = loaded.model.parameter_count();
    println!("checkpoint: {}", path.display());
    println!(
        "network:    {}, {params} parameters",
        loaded.model.config().describe()
    );
    let in_file = |e: flowmatch::Error| anyhow::anyhow!("{}: {e}", path.display());
    match loaded.ema_info().map_err(in_file)? {
        Some(e) => println!(
            "weights:    EMA (decay {}, {} updates) and raw",
            e.decay, e.updates
        ),
        None => match loaded.metadata.get(checkpoint::META_EXPORTED) {
            Some(e) if e.contains("\"ema\"") => println!("weights:    the EMA (exported)"),
            Some(_) => println!("weights:    raw (exported)"),
            None => println!("weights:    raw (no EMA)"),
        },
    }
    match loaded.progress().map_err(in_file)? {
        Some(p) => {
            let loss = p
                .last_epoch_loss
                .map_or("none yet".into(), |l| format!("{l:.5}"));
            println!(
                "progress:   {} epochs, {} steps, last epoch loss {loss}",
                p.epoch, p.step
            )
        }
        None => println!("progress:   not recorded (e.g. a PyTorch export)"),
    }
    if let Some(toml) = loaded.metadata.get(checkpoint::META_TRAIN_CONFIG) {
        println!("training configuration:\n{toml}");
    }
    Ok(())
}
