//! The library with a user's own model: bad outputs are typed errors naming the step, runs in
//! a folder resume exactly, and checkpoints load back into the user's module.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};
use flowmatch::Error;
use flowmatch::checkpoint::{Weights, load_into};
use flowmatch::data::InMemory;
use flowmatch::model::{Condition, VelocityModel, named_parameters};
use flowmatch::training::{FitConfig, TrainObserver, fit, fit_in, fit_resume};

/// A linear velocity model of 3-D vectors; `bad` makes it misbehave.
#[derive(Module, Debug)]
struct Tiny {
    layer: Linear,
    bad: usize,
}

/// How the model misbehaves (a plain number, as burn modules keep constants).
struct Bad;

impl Bad {
    const NO: usize = 0;
    const SHAPE: usize = 1;
    const NOT_FINITE: usize = 2;
}

impl VelocityModel<2> for Tiny {
    fn velocity(&self, x: Tensor<2>, t: Tensor<1>, _: &Condition) -> Tensor<2> {
        let v = self
            .layer
            .forward(Tensor::cat(vec![x, t.unsqueeze_dim(1)], 1));
        match self.bad {
            Bad::SHAPE => v.narrow(1, 0, 2),
            Bad::NOT_FINITE => v / 0.0,
            _ => v,
        }
    }

    fn sample_shape(&self) -> Vec<usize> {
        vec![3]
    }
}

fn tiny(bad: usize, device: &Device) -> Tiny {
    Tiny {
        layer: LinearConfig::new(4, 3).init(device),
        bad,
    }
}

fn data() -> InMemory<2> {
    let values = (0..48).map(|i| (i as f32 * 0.37).sin()).collect();
    InMemory::new(values, [16, 3]).unwrap()
}

fn config(steps: u64) -> FitConfig {
    FitConfig {
        batch_size: 4,
        lr: 1e-2,
        max_steps: Some(steps),
        ema_decay: Some(0.9),
        checkpoint_every: 1,
        ..FitConfig::default()
    }
}

fn values<M: Module>(model: &M) -> Vec<f32> {
    named_parameters(model)
        .into_iter()
        .flat_map(|t| t.values)
        .collect()
}

#[test]
fn bad_model_outputs_are_errors_naming_the_step() {
    let device = Device::flex();
    match fit(tiny(Bad::SHAPE, &device), &data(), &config(3), &device) {
        Err(Error::ModelOutput { step: 1, reason }) => {
            assert!(reason.contains("[4, 2]"), "{reason}")
        }
        other => panic!("expected a model-output error at step 1, got {other:?}"),
    }
    match fit(tiny(Bad::NOT_FINITE, &device), &data(), &config(3), &device) {
        Err(Error::Diverged { step: 1, .. }) => {}
        other => panic!("expected divergence at step 1, got {other:?}"),
    }
    // Data of another shape is refused before any step.
    let other = InMemory::new(vec![0.0; 8], [4, 2]).unwrap();
    assert!(matches!(
        fit(tiny(Bad::NO, &device), &other, &config(3), &device),
        Err(Error::Invalid { .. })
    ));
}

/// Stops the run after `at` steps.
struct StopAt(u64, u64);

impl TrainObserver for StopAt {
    fn on_step(&mut self, report: &flowmatch::training::StepReport) {
        self.1 = report.step;
    }
    fn should_stop(&mut self) -> bool {
        self.1 >= self.0
    }
}

#[test]
fn a_users_run_resumes_exactly_and_loads_back() {
    let device = Device::flex();
    let dir = std::env::temp_dir().join(format!("flowmatch-library-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let init = tiny(Bad::NO, &device);
    let straight = fit(init.clone(), &data(), &config(9), &device).unwrap();
    assert_eq!(straight.steps, 9);

    let stopped = fit_in(init, &data(), &config(9), &dir, &device, &mut StopAt(5, 0)).unwrap();
    assert!(stopped.interrupted && stopped.steps == 5);
    let resumed = fit_resume(tiny(Bad::NO, &device), &data(), &dir, &device, &mut ()).unwrap();
    assert_eq!(resumed.steps, 9);
    assert_eq!(values(&resumed.model), values(&straight.model));
    assert_eq!(values(resumed.sampler()), values(straight.sampler()));

    // The final checkpoint loads into a fresh module: the EMA by default, the raw weights on request.
    let file = resumed.files.unwrap().checkpoint;
    let ema = load_into(tiny(Bad::NO, &device), &file, Weights::PreferEma).unwrap();
    assert!(ema.is_ema);
    assert_eq!(values(&ema.model), values(straight.sampler()));
    let raw = load_into(tiny(Bad::NO, &device), &file, Weights::Raw).unwrap();
    assert_eq!(values(&raw.model), values(&straight.model));
    // A module of another shape is refused, naming the file.
    let wider = Tiny {
        layer: LinearConfig::new(4, 5).init(&device),
        bad: Bad::NO,
    };
    let error = load_into(wider, &file, Weights::Raw)
        .unwrap_err()
        .to_string();
    assert!(error.contains("final.safetensors"), "{error}");
    std::fs::remove_dir_all(&dir).unwrap();
}
