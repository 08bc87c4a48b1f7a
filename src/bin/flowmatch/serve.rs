//! `flowmatch serve`: the local web page.

use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::Device;
use clap::Args;

use flowmatch::serve::{DEFAULT_WORKERS, ServeOptions, Server};

#[derive(Args)]
pub struct ServeArgs {
    /// Checkpoint to serve (repeatable: the page offers each).
    #[arg(long, required = true)]
    checkpoint: Vec<PathBuf>,
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
    let options = ServeOptions {
        checkpoints: args.checkpoint,
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
