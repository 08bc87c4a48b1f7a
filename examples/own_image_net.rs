//! Your own image network, trained briefly by flowmatch's loop on the embedded MNIST digits:
//! a small convolutional U-Net with a sinusoidal time embedding, written with burn's layers.
//! Writes `own_image_net.png` (64 samples). `cargo run --release --example own_image_net`
//!
//! After its 800 steps (about a minute on 2 cores) the samples are stroke-like shapes, not
//! yet digits: train longer, or see the built-in networks and recipes (`flowmatch demo` draws
//! digits after five minutes).
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor, activation::silu};
use flowmatch::data::{ImageSource, Split, embedded};
use flowmatch::image_out::{Images, save_grid};
use flowmatch::lr_schedule::LrSchedule;
use flowmatch::model::{Condition, VelocityModel, sinusoidal_embedding};
use flowmatch::sampling::{sample, solvers::Solver, to_vec};
use flowmatch::training::{FitConfig, fit};

/// A small U-Net: two stride-2 convolutions down to 7x7, two transposed ones back up with
/// skip connections; the time embedding shifts the channels at 28x28 and at 7x7.
#[derive(Module, Debug)]
pub struct ConvNet {
    conv_in: Conv2d,
    down: Vec<Conv2d>,
    up: Vec<ConvTranspose2d>,
    conv_out: Conv2d,
    time: Vec<Linear>,
}

impl ConvNet {
    pub fn new(width: usize, device: &Device) -> Self {
        let conv = |i, o, stride| {
            let pad = PaddingConfig2d::Explicit(1, 1, 1, 1);
            let config = Conv2dConfig::new([i, o], [3, 3]).with_padding(pad);
            config.with_stride([stride, stride]).init(device)
        };
        let up = |i, o| {
            let config = ConvTranspose2dConfig::new([i, o], [4, 4]).with_stride([2, 2]);
            config.with_padding([1, 1]).init(device)
        };
        ConvNet {
            conv_in: conv(1, width, 1),
            down: vec![conv(width, 2 * width, 2), conv(2 * width, 2 * width, 2)],
            up: vec![up(2 * width, 2 * width), up(2 * width, width)],
            conv_out: conv(width, 1, 1),
            time: vec![
                LinearConfig::new(32, width).init(device),
                LinearConfig::new(32, 2 * width).init(device),
            ],
        }
    }
}

impl VelocityModel<4> for ConvNet {
    fn velocity(&self, x: Tensor<4>, t: Tensor<1>, _: &Condition) -> Tensor<4> {
        let embedding = sinusoidal_embedding(t * 1000.0, 32);
        let shift = |i: usize| {
            self.time[i]
                .forward(embedding.clone())
                .unsqueeze_dim::<3>(2)
                .unsqueeze_dim::<4>(3)
        };
        let h1 = silu(self.conv_in.forward(x) + shift(0)); // 28x28
        let h2 = silu(self.down[0].forward(h1.clone())); // 14x14
        let h3 = silu(self.down[1].forward(h2.clone()) + shift(1)); // 7x7
        let u2 = silu(self.up[0].forward(h3)) + h2;
        let u1 = silu(self.up[1].forward(u2)) + h1;
        self.conv_out.forward(u1)
    }

    fn sample_shape(&self) -> Vec<usize> {
        vec![1, 28, 28]
    }
}

fn main() -> flowmatch::Result<()> {
    let device = Device::flex();
    let digits = embedded(Split::Train)?;
    let config = FitConfig {
        batch_size: 32,
        lr: 3e-3,
        lr_schedule: LrSchedule::WarmupCosine { warmup_steps: 50 },
        max_steps: Some(800),
        ema_decay: Some(0.99),
        ..FitConfig::default()
    };
    let source = ImageSource {
        set: &digits,
        flip: false,
    };
    let trained = fit(ConvNet::new(24, &device), &source, &config, &device)?;
    println!(
        "{} steps, last epoch's loss {:.3}",
        trained.steps, trained.final_loss
    );
    let samples = sample(trained.sampler(), 64, Solver::Euler, 20, 0, &device)?;
    let pixels = to_vec(&samples);
    save_grid(
        Images {
            pixels: &pixels,
            shape: [1, 28, 28],
        },
        "own_image_net.png".as_ref(),
    )?;
    println!("wrote own_image_net.png");
    Ok(())
}
