//! Training on tiny models: outputs, determinism, divergence handling, global gradient clipping.

use std::path::PathBuf;

use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use flowmatch::Error;
use flowmatch::checkpoint;
use flowmatch::data::{DataOptions, DataSource, ImageSet, Split};
use flowmatch::flow;
use flowmatch::model::{Network, UNetConfig};
use flowmatch::tensor_file::TensorFile;
use flowmatch::training::{self, TrainConfig, clip_factor, global_grad_norm, scale_grads};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flowmatch-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn tiny_data(n: usize) -> ImageSet {
    ImageSet::load(&DataSource::Embedded, Split::Train, &DataOptions::default())
        .unwrap()
        .take(n)
}

fn tiny_config() -> TrainConfig {
    TrainConfig {
        model: UNetConfig::with_widths([8, 16, 32]).into(),
        epochs: 2,
        batch_size: 32,
        lr: 1e-3,
        checkpoint_every: 1,
        seed: 3,
        ..TrainConfig::default()
    }
}

#[test]
fn a_tiny_run_writes_checkpoints_metrics_and_curve() {
    let out = temp_dir("outputs");
    let outcome = training::train(
        &tiny_config(),
        &tiny_data(64),
        &out,
        &Device::flex(),
        &mut (),
    )
    .unwrap();
    assert_eq!(outcome.steps, 4);
    assert!(outcome.final_loss.is_finite());
    for name in [
        "epoch-0001.safetensors",
        "epoch-0002.safetensors",
        "final.safetensors",
        "loss_curve.png",
    ] {
        assert!(out.join(name).is_file(), "{name}");
    }
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&outcome.metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.iter().filter(|l| l.get("loss").is_some()).count(), 4);
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.get("mean_loss").is_some())
            .count(),
        2
    );
    let loaded = checkpoint::load(&outcome.checkpoint, &Device::flex()).unwrap();
    let progress = loaded.progress().unwrap().unwrap();
    assert_eq!((progress.epoch, progress.step), (2, 4));
    let stored: TrainConfig =
        toml::from_str(&loaded.metadata[checkpoint::META_TRAIN_CONFIG]).unwrap();
    assert_eq!(stored, tiny_config());
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn training_is_reproducible_from_the_seed() {
    let (a, b) = (temp_dir("repro-a"), temp_dir("repro-b"));
    let config = TrainConfig {
        epochs: 1,
        ..tiny_config()
    };
    let data = tiny_data(64);
    for dir in [&a, &b] {
        training::train(&config, &data, dir, &Device::flex(), &mut ()).unwrap();
    }
    let read = |dir: &PathBuf| {
        TensorFile::read(&dir.join("final.safetensors"))
            .unwrap()
            .tensors
    };
    let (ta, tb) = (read(&a), read(&b));
    for (name, t) in &ta {
        assert_eq!(t.values, tb[name].values, "{name}");
    }
    for dir in [a, b] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn divergence_stops_with_an_error_and_keeps_the_last_checkpoint() {
    let out = temp_dir("diverge");
    // One step per epoch; an absurd learning rate blows the weights up after the first step.
    let config = TrainConfig {
        batch_size: 64,
        epochs: 5,
        lr: 1e30,
        grad_clip: None,
        ..tiny_config()
    };
    let err = training::train(&config, &tiny_data(64), &out, &Device::flex(), &mut ()).unwrap_err();
    let Error::Diverged { step, loss } = err else {
        panic!("expected divergence, got {err}");
    };
    assert!(step >= 2 && !loss.is_finite());
    let kept = out.join(format!("epoch-{:04}.safetensors", step - 1));
    let loaded = checkpoint::load(&kept, &Device::flex()).unwrap();
    assert_eq!(loaded.progress().unwrap().unwrap().step, step - 1);
    assert!(!out.join("final.safetensors").exists());
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn gradient_clipping_uses_the_global_norm() {
    let device = Device::flex().autodiff();
    let model = Network::init(&UNetConfig::with_widths([8, 16, 32]).into(), 0, &device).unwrap();
    let data = tiny_data(4);
    let (x0, _) = data.batch(&[0, 1, 2, 3], &device);
    let x1 = Tensor::<4>::ones(x0.dims(), &device);
    let tuple = flow::training_tuple(x0, x1, Tensor::from_floats([0.1, 0.4, 0.6, 0.9], &device));
    let loss = flow::velocity_loss(model.forward(tuple.x_t, tuple.t), tuple.target);
    let grads = loss.backward();
    let mut params = GradientsParams::from_grads(grads, &model);

    // The norm over all parameters together, computed by hand from each parameter's gradient.
    let by_hand = |params: &GradientsParams| -> f32 {
        let ids: Vec<_> = collect_ids(&model);
        ids.iter()
            .map(|&(id, rank)| match rank {
                1 => params
                    .get::<1>(id)
                    .unwrap()
                    .square()
                    .sum()
                    .into_scalar::<f32>(),
                2 => params
                    .get::<2>(id)
                    .unwrap()
                    .square()
                    .sum()
                    .into_scalar::<f32>(),
                _ => params
                    .get::<4>(id)
                    .unwrap()
                    .square()
                    .sum()
                    .into_scalar::<f32>(),
            })
            .sum::<f32>()
            .sqrt()
    };
    let norm = global_grad_norm(&model, &params);
    assert!((norm - by_hand(&params)).abs() <= 1e-4 * norm);
    let max_norm = norm / 4.0;
    let factor = clip_factor(norm, max_norm);
    assert!((factor - 0.25).abs() < 1e-4);
    scale_grads(&model, &mut params, factor);
    let clipped = global_grad_norm(&model, &params);
    assert!(
        (clipped - max_norm).abs() <= 1e-3 * max_norm,
        "{clipped} vs {max_norm}"
    );
    assert_eq!(clip_factor(0.5, 1.0), 1.0);
}

fn collect_ids(model: &Network) -> Vec<(burn::module::ParamId, usize)> {
    use burn::module::{Module, ModuleVisitor, Param};
    struct Ids(Vec<(burn::module::ParamId, usize)>);
    impl ModuleVisitor for Ids {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push((param.id, D));
        }
    }
    let mut ids = Ids(Vec::new());
    model.visit(&mut ids);
    ids.0
}

#[test]
fn the_stable_target_trains_both_kinds_of_model_and_is_refused_where_it_cannot_apply() {
    let data = tiny_data(64);
    for classes in [None, Some(10)] {
        let out = temp_dir(&format!("stable-{}", classes.unwrap_or(0)));
        let base = tiny_config();
        let config = TrainConfig {
            model: base.model.clone().with_classes(classes),
            epochs: 1,
            stable_target: Some(48),
            ..base
        };
        let outcome = training::train(&config, &data, &out, &Device::flex(), &mut ()).unwrap();
        assert_eq!(outcome.steps, 2);
        assert!(outcome.final_loss.is_finite(), "{classes:?}");
        std::fs::remove_dir_all(&out).unwrap();
    }
    let smaller_than_the_batch = TrainConfig {
        stable_target: Some(16),
        ..tiny_config()
    };
    let distillation = TrainConfig {
        stable_target: Some(64),
        objective: flowmatch::flow::objective::Objective::Distill {
            pairs: "pairs".into(),
            steps: 1,
        },
        ..tiny_config()
    };
    for config in [smaller_than_the_batch, distillation] {
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("stable"), "{err}");
    }
}
