//! `flowmatch serve`: the local web page.

use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::Device;
use clap::Args;

use flowmatch::pretrained;
use flowmatch::serve::{DEFAULT_WORKERS, ServeOptions, Server};

use crate::common::ModelsArgs;

#[derive(Args)]
pub struct ServeArgs {
    /// The models to serve (repeatable, either flag: the page offers each) [default: every
    /// model shipped with flowmatch].
    #[command(flatten)]
    models: ModelsArgs,
    /// Address to listen on (only this machine by default).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free one).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// A training run folder whose loss the page plots while `train` writes it.
    #[arg(long)]
    run: Option<PathBuf>,
}

pub fn run(args: ServeArgs, device: &Device) -> Result<()> {
    let checkpoints = args.models.checkpoint;
    let mut shipped = args
        .models
        .pretrained
        .iter()
        .map(|name| pretrained::find(name))
        .collect::<flowmatch::Result<Vec<_>>>()?;
    if checkpoints.is_empty() && shipped.is_empty() {
        shipped = pretrained::MODELS.iter().collect();
    }
    let options = ServeOptions {
        checkpoints,
        shipped,
        host: args.host,
        port: args.port,
        run: args.run,
        workers: DEFAULT_WORKERS,
    };
    let server = Server::bind(&options, device)?;
    println!(
        "serving {} on {} (Ctrl-C to stop)",
        server.model_names().join(", "),
        server.url()
    );
    server.run();
    Ok(())
}
