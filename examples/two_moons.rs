//! flowmatch's "hello world": your own burn model, trained by flowmatch's loop on 2-D points
//! (two moons) and sampled with its solvers; writes `two_moons.png` (data, samples and the
//! paths of a few points from noise to data). `cargo run --release --example two_moons`
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor, activation::silu};
use flowmatch::data::InMemory;
use flowmatch::image_out::{PointSet, paths_2d, points_2d, scatter_plot};
use flowmatch::model::{Condition, VelocityModel};
use flowmatch::sampling::solvers::{Solver, TimeGrid};
use flowmatch::sampling::{initial_noise, sample, to_vec, trajectory};
use flowmatch::training::{FitConfig, fit};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// The velocity network: (x, y, t) in, a 2-D velocity out.
#[derive(Module, Debug)]
pub struct Mlp {
    layers: Vec<Linear>,
}

impl VelocityModel<2> for Mlp {
    fn velocity(&self, x: Tensor<2>, t: Tensor<1>, _: &Condition) -> Tensor<2> {
        let mut h = Tensor::cat(vec![x, t.unsqueeze_dim(1)], 1);
        for layer in &self.layers[..3] {
            h = silu(layer.forward(h));
        }
        self.layers[3].forward(h)
    }

    fn sample_shape(&self) -> Vec<usize> {
        vec![2]
    }
}

/// `n` points on two interleaved half circles, ±0.05 noise; the label says which moon.
pub fn two_moons(n: usize, seed: u64) -> (Vec<[f32; 2]>, Vec<usize>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut noisy = |v: f32| v + rng.random_range(-0.05..0.05);
    let mut point = |i: usize, a: f32| match i % 2 {
        0 => [noisy(a.cos() - 0.5), noisy(a.sin() * 1.5 - 0.375)],
        _ => [noisy(0.5 - a.cos()), noisy(0.375 - a.sin() * 1.5)],
    };
    let angles: Vec<f32> = (0..n)
        .map(|i| (i / 2) as f32 * std::f32::consts::TAU / n as f32)
        .collect();
    (0..n).map(|i| (point(i, angles[i]), i % 2)).unzip()
}

type Points = Vec<[f32; 2]>;

/// Trains for `steps` steps; returns the data, 1,000 samples and the paths of 12 points.
pub fn run(steps: u64, seed: u64) -> flowmatch::Result<(Points, Points, Vec<Points>)> {
    let device = Device::flex();
    let (data, _) = two_moons(4096, seed);
    let points = InMemory::new(data.concat(), [data.len(), 2])?;
    let sizes = [3, 128, 128, 128, 2].windows(2);
    let layers = sizes
        .map(|s| LinearConfig::new(s[0], s[1]).init(&device))
        .collect();
    let config = FitConfig {
        batch_size: 256,
        lr: 5e-3,
        max_steps: Some(steps),
        seed,
        ..FitConfig::default()
    };
    let model = fit(Mlp { layers }, &points, &config, &device)?.model;
    let samples = sample(&model, 1000, Solver::Euler, 50, seed + 1, &device)?;
    let flow = trajectory(
        &model,
        initial_noise(&model, 12, seed + 2, &device)?,
        Solver::Euler,
        50,
        TimeGrid::Uniform,
    );
    Ok((data, points_2d(&to_vec(&samples)), paths_2d(&flow.frames)))
}

fn main() -> flowmatch::Result<()> {
    let (data, samples, paths) = run(3000, 0)?;
    let set = |label: &str, color, points| PointSet {
        label: label.into(),
        color,
        points,
    };
    let sets = [
        set("data", [70, 110, 200], data),
        set("samples", [220, 80, 40], samples),
    ];
    scatter_plot(
        "two moons: data and flowmatch samples",
        &sets,
        &paths,
        "two_moons.png".as_ref(),
    )
}
