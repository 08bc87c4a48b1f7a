//! Few-step generation, each method's defining property on a tiny model: reflow pairs are the
//! base model's own endpoints (and their generation resumes); a distilled one-step student
//! lands closer to the teacher's many-step endpoint than the teacher's own one step does;
//! mean flow's objective with an empty interval is flow matching (u(x, t, t) is the
//! instantaneous velocity); and the finite difference standing in for its JVP agrees with an
//! exact JVP computed by reverse-mode autodiff.

mod common;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use flowmatch::flow::gaussian_noise;
use flowmatch::flow::objective::{Objective, finite_difference_jvp, mean_flow_target};
use flowmatch::model::{Network, UNetConfig};
use flowmatch::sampling::solvers::{Solver, TimeGrid, solve};
use flowmatch::sampling::{Generation, from_vec};
use flowmatch::training::lr_schedule::LrSchedule;
use flowmatch::training::pairs::{PairSet, generate_pairs};
use flowmatch::training::{self, TrainConfig};
use rand::SeedableRng;
use rand::rngs::StdRng;

fn teacher() -> Network {
    flowmatch::checkpoint::load(&common::fixture("weights.safetensors"), &Device::flex())
        .unwrap()
        .model
}

#[test]
fn reflow_pairs_are_the_base_models_endpoints_and_resume() {
    let device = Device::flex();
    let model = teacher();
    let dir = common::temp_dir("pairs");
    let generation = Generation {
        solver: Solver::Rk4,
        ..Generation::euler(3)
    };
    let report = generate_pairs(&model, 1100, &generation, 7, &dir, &device, |_, _| {}).unwrap();
    assert_eq!((report.shards.len(), report.reused, report.nfe), (2, 0, 12));
    let pairs = PairSet::read(&dir).unwrap();
    assert_eq!(pairs.len(), 1100);
    // The base model carries each noise to its sample.
    let pick = [0usize, 5, 1099];
    let (x0, x1) = pairs.batch(&pick, &device);
    let solved = solve(&model, Solver::Rk4, x1, 3, TimeGrid::Uniform, |_, _, _| {});
    let err = (solved.x - x0).abs().max().into_scalar::<f32>();
    assert!(err < 1e-4, "{err}");
    // Resumed: the finished shards are kept, a missing one is drawn again identically.
    let first = std::fs::read(&report.shards[1]).unwrap();
    std::fs::remove_file(&report.shards[1]).unwrap();
    let again = generate_pairs(&model, 1100, &generation, 7, &dir, &device, |_, _| {}).unwrap();
    assert_eq!(again.reused, 1);
    assert_eq!(std::fs::read(&report.shards[1]).unwrap(), first);
    // Shards of another sampler (or teacher, or seed) are not taken for this one's.
    let other = generate_pairs(
        &model,
        1100,
        &Generation::euler(2),
        7,
        &dir,
        &device,
        |_, _| {},
    );
    assert_eq!(other.unwrap().reused, 0);
    // Fewer pairs into the same folder: the earlier run's extra shard is not read with them,
    // and a generation that reuses every shard still reports its NFE.
    generate_pairs(&model, 1100, &generation, 7, &dir, &device, |_, _| {}).unwrap();
    let fewer = generate_pairs(&model, 1000, &generation, 7, &dir, &device, |_, _| {}).unwrap();
    assert_eq!((fewer.shards.len(), fewer.nfe), (1, 12));
    assert_eq!(PairSet::read(&dir).unwrap().len(), 1000);
    let resumed = generate_pairs(&model, 1000, &generation, 7, &dir, &device, |_, _| {}).unwrap();
    assert_eq!((resumed.reused, resumed.nfe), (1, 12));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_distilled_one_step_student_lands_closer_to_the_teachers_endpoints() {
    let device = Device::flex();
    let model = teacher();
    let dir = common::temp_dir("distill");
    let pairs_dir = dir.join("pairs");
    let generation = Generation::euler(20);
    generate_pairs(&model, 256, &generation, 3, &pairs_dir, &device, |_, _| {}).unwrap();
    let pairs = PairSet::read(&pairs_dir).unwrap();
    let config = TrainConfig {
        model: model.config(),
        objective: Objective::Distill {
            pairs: pairs_dir.clone(),
            steps: 1,
        },
        init_from: Some(common::fixture("weights.safetensors")),
        epochs: 1000,
        max_steps: Some(120),
        batch_size: 32,
        lr: 2e-3,
        lr_schedule: LrSchedule::WarmupCosine { warmup_steps: 10 },
        ema_decay: None,
        checkpoint_every: 0,
        ..TrainConfig::default()
    };
    let outcome = training::train(&config, &pairs, &dir.join("run"), &device, &mut ()).unwrap();
    let loaded = flowmatch::checkpoint::load(&outcome.checkpoint, &device).unwrap();
    // The checkpoint knows it is made for one step (sample and serve default to it).
    assert_eq!(loaded.objective().unwrap().sampling_steps(), Some(1));
    let student = loaded.model;
    // Fresh noise (not trained on): the teacher's 20 steps are the target.
    let x1 = gaussian_noise(&mut StdRng::seed_from_u64(99), [64, 1, 28, 28], &device);
    let target = solve(
        &model,
        Solver::Euler,
        x1.clone(),
        20,
        TimeGrid::Uniform,
        |_, _, _| {},
    )
    .x;
    let one_step = |m: &Network| {
        solve(
            m,
            Solver::Euler,
            x1.clone(),
            1,
            TimeGrid::Uniform,
            |_, _, _| {},
        )
        .x
    };
    let rms = |x: Tensor<4>| {
        (x - target.clone())
            .square()
            .mean()
            .sqrt()
            .into_scalar::<f32>()
    };
    let (base, distilled) = (rms(one_step(&model)), rms(one_step(&student)));
    println!(
        "one-step distance to the teacher's 20 steps: base {base:.4}, distilled {distilled:.4}"
    );
    assert!(distilled < 0.7 * base, "base {base}, distilled {distilled}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn mean_flow_with_an_empty_interval_is_flow_matching() {
    let device = Device::flex();
    let config = UNetConfig {
        interval: true,
        ..UNetConfig::with_widths([8, 16, 32])
    };
    let model = Network::init(&config.into(), 0, &device).unwrap();
    let x0 = gaussian_noise(&mut StdRng::seed_from_u64(1), [4, 1, 28, 28], &device);
    let x1 = gaussian_noise(&mut StdRng::seed_from_u64(2), [4, 1, 28, 28], &device);
    let t = Tensor::<1>::from_floats([0.2, 0.4, 0.6, 0.8], &device);
    let tb = t.clone().reshape([4, 1, 1, 1]);
    let z = x0.clone() * (tb.clone().neg() + 1.0) + x1.clone() * tb;
    let v = x1 - x0;
    let u = |z: Tensor<4>, s: Tensor<1>| model.forward_interval(z, Some(t.clone()), s, None);
    // The objective: for r = t the target is the path's velocity v, exactly (flow matching).
    let at = u(z.clone(), t.clone());
    let target = mean_flow_target(u, (z.clone(), t.clone(), t.clone()), v.clone(), 1e-5, at);
    assert_eq!((target - v).abs().max().into_scalar::<f32>(), 0.0);
    // The network: u(x, t, t) is what it gives as its velocity at t (what sampling uses for
    // ordinary steps).
    let mean = model.forward_interval(z.clone(), Some(t.clone()), t.clone(), None);
    let plain = model.forward_labeled(z, t, None);
    assert!((mean - plain).abs().max().into_scalar::<f32>() < 1e-6);
}

#[test]
fn the_finite_difference_jvp_agrees_with_an_exact_one() {
    // A small case: an 8x8 mean-flow network, one image, the exact JVP of its 64 outputs in
    // the direction (v, dt = 1) from 64 reverse-mode passes.
    let device = Device::flex().autodiff();
    let config = UNetConfig {
        interval: true,
        image_size: 8,
        ..UNetConfig::with_widths([8, 16, 32])
    };
    let model = Network::init(&config.into(), 3, &device).unwrap();
    let values = |seed| {
        gaussian_noise(&mut StdRng::seed_from_u64(seed), [1, 1, 8, 8], &device)
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap()
    };
    let (z0, v0) = (values(11), values(12));
    let (t0, r0) = (0.6f32, 0.2f32);
    let u = |z: Tensor<4>, t: Tensor<1>| {
        model.forward_interval(z, Some(Tensor::from_floats([r0], &t.device())), t, None)
    };
    let mut exact = vec![0.0f32; 64];
    for (i, e) in exact.iter_mut().enumerate() {
        let z = from_vec(z0.clone(), [1, 1, 8, 8], &device).require_grad();
        let t = Tensor::<1>::from_floats([t0], &device).require_grad();
        let out = u(z.clone(), t.clone()).reshape([64]).narrow(0, i, 1).sum();
        let grads = out.backward();
        let dz = z
            .grad(&grads)
            .unwrap()
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap();
        let dt = t.grad(&grads).unwrap().into_scalar::<f32>();
        *e = dz.iter().zip(&v0).map(|(g, v)| g * v).sum::<f32>() + dt;
    }
    let plain = Device::flex();
    let model = model.valid();
    let u = |z: Tensor<4>, t: Tensor<1>| {
        model.forward_interval(z, Some(Tensor::from_floats([r0], &t.device())), t, None)
    };
    let z = from_vec(z0, [1, 1, 8, 8], &plain);
    let v = Tensor::<4>::from_data(TensorData::new(v0, [1, 1, 8, 8]), &plain);
    let t = Tensor::<1>::from_floats([t0], &plain);
    let scale = exact.iter().map(|e| e.abs()).fold(0.0, f32::max);
    let mut errors = Vec::new();
    for epsilon in [1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6] {
        let at = u(z.clone(), t.clone());
        let fd = finite_difference_jvp(u, (z.clone(), t.clone()), v.clone(), epsilon, at);
        let fd = fd.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        errors.push(common::max_diff(&fd, &exact) / scale);
    }
    // The step: the time embedding's fastest frequency (1000 t) makes the first-order error
    // large above 1e-4; below 3e-6 f32 rounding takes over. 1e-5 (the default) is the best.
    println!(
        "finite-difference JVP, relative error at eps 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6: \
         {errors:?}"
    );
    assert!(
        errors[4] < 0.02 && errors[0] > 5.0 * errors[4],
        "{errors:?}"
    );
}
