//! Load a checkpoint, sample, save a grid: `cargo run --release --example sample_checkpoint --
//! runs/demo/final.safetensors` (train one first with `flowmatch demo`).
use burn::tensor::Device;
use flowmatch::checkpoint;
use flowmatch::image_out::{Images, save_grid};
use flowmatch::model::VelocityModel;
use flowmatch::sampling::{sample, solvers::Solver, to_vec};

fn main() -> flowmatch::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or("runs/demo/final.safetensors".into());
    let device = Device::flex();
    let model = checkpoint::load(path.as_ref(), &device)?.model; // its EMA weights, if any
    let samples = sample(&model, 64, Solver::Euler, 20, 0, &device)?;
    let pixels = to_vec(&samples);
    let shape = model
        .sample_shape()
        .try_into()
        .expect("images are [c, h, w]");
    save_grid(
        Images {
            pixels: &pixels,
            shape,
        },
        "grid.png".as_ref(),
    )?;
    println!("64 samples of {path} in grid.png");
    Ok(())
}
