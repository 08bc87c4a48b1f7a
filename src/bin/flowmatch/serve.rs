//! `flowmatch serve`: the local web page.

use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::Device;
use clap::Args;

use flowmatch::pretrained;
use flowmatch::serve::{DEFAULT_WORKERS, ServeOptions, Server};

use crate::common::{ModelsArgs, pretrained_path};

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
    let mut checkpoints = args.models.paths()?;
    if checkpoints.is_empty() {
        for model in pretrained::MODELS {
            checkpoints.push(pretrained_path(model.name)?);
        }
    }
    let options = ServeOptions {
        checkpoints,
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
