//! The `wgpu` backend (feature `wgpu`) against the CPU: the reference parity fixture, both
//! architectures, a few training steps with AdamW and clipping, EMA, every solver, guidance
//! and the likelihood. Without a GPU, Mesa's software Vulkan driver (lavapipe, Debian's
//! `mesa-vulkan-drivers`) gives wgpu its adapter: `.ci/run` installs it and runs
//! `cargo test --profile gpu-test --features wgpu --test wgpu`. The adapter is `wgpu:cpu` unless
//! `FLOWMATCH_WGPU_DEVICE` names another (`wgpu` for the best one, e.g. on a GPU machine).
#![cfg(feature = "wgpu")]

mod common;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use flowmatch::checkpoint;
use flowmatch::data::{DataOptions, DataSource, ImageSet, Split};
use flowmatch::device::device_from_name;
use flowmatch::evaluation::likelihood::{Divergence, log_density};
use flowmatch::flow::gaussian_noise;
use flowmatch::model::{Network, ResUNetConfig, UNetConfig};
use flowmatch::sampling::guidance::Guided;
use flowmatch::sampling::solvers::{Solver, TimeGrid, solve};
use flowmatch::tensor_file::TensorFile;
use flowmatch::training::ema::Ema;
use flowmatch::training::lr_schedule::LrSchedule;
use flowmatch::training::{self, TrainConfig};
use rand::SeedableRng;
use rand::rngs::StdRng;

fn gpu() -> Device {
    let name = std::env::var("FLOWMATCH_WGPU_DEVICE").unwrap_or_else(|_| "wgpu:cpu".into());
    device_from_name(&name).unwrap()
}

fn values(x: Tensor<4>) -> Vec<f32> {
    x.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

#[test]
fn the_parity_fixture_matches_the_reference_on_wgpu() {
    let device = gpu();
    let model = checkpoint::load(&common::fixture("weights.safetensors"), &device)
        .unwrap()
        .model;
    let path = common::fixture("cases.safetensors");
    let cases = TensorFile::read(&path).unwrap();
    let tensor = |name: &str| {
        let t = cases.get(name, &path).unwrap();
        Tensor::<4>::from_data(TensorData::new(t.values.clone(), [4, 1, 28, 28]), &device)
    };
    for (steps, name) in [(1, "x0_steps1"), (10, "x0_steps10")] {
        let x = solve(
            &model,
            Solver::Euler,
            tensor("x1"),
            steps,
            TimeGrid::Uniform,
            |_, _, _| {},
        )
        .x;
        let err = common::max_diff(&values(x), &values(tensor(name)));
        println!("wgpu parity {name}: max abs error {err:e}");
        assert!(err <= 1e-3, "{name}: {err}");
    }
}

#[test]
fn both_architectures_every_solver_guidance_and_the_likelihood_match_the_cpu() {
    let (cpu, gpu) = (Device::flex(), gpu());
    let res = ResUNetConfig {
        channels: 8,
        channel_mult: vec![1, 2],
        attention: vec![14],
        head_channels: 8,
        num_classes: Some(3),
        ..ResUNetConfig::preset("tiny").unwrap()
    };
    let simple = UNetConfig {
        num_classes: Some(3),
        ..UNetConfig::with_widths([8, 16, 32])
    };
    for config in [simple.into(), res.into()] {
        let on_cpu = Network::init(&config, 1, &cpu).unwrap();
        // The ResUNet's zero-initialised layers are given weights, so that every path shows.
        let on_cpu = on_cpu.map(&mut Jitter(StdRng::seed_from_u64(3)));
        let on_gpu = on_cpu.clone().to_device(&gpu);
        let x1 = gaussian_noise(&mut StdRng::seed_from_u64(2), [3, 1, 28, 28], &cpu);
        for solver in [
            Solver::Euler,
            Solver::Midpoint,
            Solver::Heun,
            Solver::Rk4,
            Solver::Dopri5 {
                rtol: 1e-2,
                atol: 1e-2,
            },
        ] {
            let a = solve(
                &on_cpu,
                solver,
                x1.clone(),
                3,
                TimeGrid::Uniform,
                |_, _, _| {},
            );
            let b = solve(
                &on_gpu,
                solver,
                x1.clone().to_device(&gpu),
                3,
                TimeGrid::Uniform,
                |_, _, _| {},
            );
            let err = common::max_diff(&values(a.x), &values(b.x));
            assert!(err < 1e-3, "{} {solver}: {err}", config.arch());
            assert_eq!(a.nfe, b.nfe);
        }
        let guided = |model: &Network, device: &Device| {
            let field = Guided::new(model, &[0, 1, 2], 2.0).unwrap();
            let x = x1.clone().to_device(device);
            values(solve(&field, Solver::Euler, x, 4, TimeGrid::Uniform, |_, _, _| {}).x)
        };
        let err = common::max_diff(&guided(&on_cpu, &cpu), &guided(&on_gpu, &gpu));
        assert!(err < 1e-3, "{} guided: {err}", config.arch());
        let density = |model: &Network, device: &Device| {
            let ad = device.clone().autodiff();
            let model = model.clone().to_device(&ad).no_grad();
            let x0 = x1.clone().to_device(&ad) * 0.3;
            let (d, _) = log_density(
                &model,
                x0,
                4,
                Divergence::Hutchinson,
                &mut StdRng::seed_from_u64(5),
            );
            d
        };
        let (a, b) = (density(&on_cpu, &cpu), density(&on_gpu, &gpu));
        for (x, y) in a.iter().zip(&b) {
            assert!(
                (x - y).abs() < 1e-3 * x.abs().max(1.0),
                "{} likelihood {x} vs {y}",
                config.arch()
            );
        }
    }
}

/// Replaces every parameter by random values of a similar scale.
struct Jitter(StdRng);

impl burn::module::ModuleMapper for Jitter {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<D>>,
    ) -> burn::module::Param<Tensor<D>> {
        use rand::Rng;
        let rng = &mut self.0;
        param.map(|t| {
            let shape = t.dims();
            let n: usize = shape.iter().product();
            let values: Vec<f32> = (0..n).map(|_| rng.random_range(-0.3..0.3)).collect();
            Tensor::from_data(TensorData::new(values, shape), &t.device())
        })
    }
}

#[test]
fn a_few_training_steps_and_the_ema_match_the_cpu_run() {
    let data = ImageSet::load(&DataSource::Embedded, Split::Train, &DataOptions::default())
        .unwrap()
        .take(96);
    let run = |device: &Device, name: &str| {
        let dir = common::temp_dir(name);
        let config = TrainConfig {
            model: UNetConfig::with_widths([8, 16, 32]).into(),
            epochs: 10,
            max_steps: Some(5),
            batch_size: 32,
            lr: 1e-3,
            lr_schedule: LrSchedule::WarmupCosine { warmup_steps: 2 },
            ema_decay: Some(0.9),
            checkpoint_every: 0,
            ..TrainConfig::default()
        };
        training::train(&config, &data, &dir, device, &mut ()).unwrap();
        let losses: Vec<f64> = std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["loss"].as_f64())
            .collect();
        let weights = checkpoint::load(&dir.join("final.safetensors"), &Device::flex())
            .unwrap()
            .model
            .named_parameters();
        std::fs::remove_dir_all(&dir).unwrap();
        (losses, weights)
    };
    let (cpu_losses, cpu_ema) = run(&Device::flex(), "wgpu-train-cpu");
    let (gpu_losses, gpu_ema) = run(&gpu(), "wgpu-train-gpu");
    println!("losses cpu {cpu_losses:?}\nlosses wgpu {gpu_losses:?}");
    assert_eq!(cpu_losses.len(), 5);
    for (a, b) in cpu_losses.iter().zip(&gpu_losses) {
        assert!((a - b).abs() < 1e-3 * a, "loss {a} on the CPU, {b} on wgpu");
    }
    // Adam normalises each gradient by its running scale, so a parameter whose gradient is
    // nearly zero (a bias before a GroupNorm) can move by up to the learning rate on either
    // side of it: the weights agree on average, and everywhere to a few learning rates.
    let (mut worst, mut total, mut count) = (0.0f32, 0.0f64, 0usize);
    for (a, b) in cpu_ema.iter().zip(&gpu_ema) {
        worst = worst.max(common::max_diff(&a.values, &b.values));
        total += a
            .values
            .iter()
            .zip(&b.values)
            .map(|(x, y)| (x - y).abs() as f64)
            .sum::<f64>();
        count += a.values.len();
    }
    let mean = total / count as f64;
    println!("EMA weights: largest difference {worst:e}, mean {mean:e}");
    assert!(worst < 5e-3 && mean < 1e-5, "largest {worst}, mean {mean}");
    // The EMA itself on the device.
    let device = gpu();
    let model = Network::init(&UNetConfig::with_widths([8, 16, 32]).into(), 0, &device).unwrap();
    let mut ema = Ema::new(&model, 0.5);
    ema.update(&model);
    assert_eq!(ema.updates(), 1);
}
