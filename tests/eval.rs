//! Evaluation: the metrics rank sample sets as a person would, the classifier round-trips, and
//! the trajectory view works with every solver.

use burn::tensor::Device;
use flowmatch::data::{DataOptions, DataSource, ImageSet, Split};
use flowmatch::evaluation::classifier::{
    Classifier, ClassifierInfo, ClassifierRecipe, embed, train_classifier,
};
use flowmatch::evaluation::memorisation::memorisation;
use flowmatch::evaluation::metrics::quality;
use flowmatch::evaluation::quality::{self, EvalPlan};
use flowmatch::evaluation::{self, EvalOptions};
use flowmatch::model::{Network, UNetConfig};
use flowmatch::sampling::solvers::{Solver, TimeGrid};
use flowmatch::sampling::{initial_noise, trajectory};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn embedded(split: Split) -> ImageSet {
    ImageSet::load(&DataSource::Embedded, split, &DataOptions::default()).unwrap()
}

/// 3x3 box blur of 28x28 images.
fn blur(pixels: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0; pixels.len()];
    for (img_in, img_out) in pixels.chunks(784).zip(out.chunks_mut(784)) {
        for y in 0..28i32 {
            for x in 0..28i32 {
                let (mut sum, mut n) = (0.0, 0.0);
                for dy in -2..=2 {
                    for dx in -2..=2 {
                        let (yy, xx) = (y + dy, x + dx);
                        if (0..28).contains(&yy) && (0..28).contains(&xx) {
                            sum += img_in[(yy * 28 + xx) as usize];
                            n += 1.0;
                        }
                    }
                }
                img_out[(y * 28 + x) as usize] = sum / n;
            }
        }
    }
    out
}

#[test]
fn metrics_rank_real_below_blurred_below_noise() {
    let device = Device::flex();
    let train = embedded(Split::Train).take(3000);
    let test = embedded(Split::Test);
    let recipe = ClassifierRecipe {
        epochs: 2,
        augment: None,
        ..ClassifierRecipe::PINNED
    };
    let (classifier, accuracy) =
        train_classifier(&train, &test, &recipe, &device, |_, _| {}).unwrap();
    assert!(accuracy > 0.8, "classifier accuracy {accuracy}");

    // Save and load keep the weights and the record.
    let path = std::env::temp_dir().join(format!(
        "flowmatch-classifier-{}.safetensors",
        std::process::id()
    ));
    let info = ClassifierInfo {
        data: "embedded".into(),
        recipe,
        test_accuracy: accuracy,
        test_images: test.len(),
        shape: [1, 28, 28],
        classes: train.classes.clone(),
    };
    classifier.save(&info, &path).unwrap();
    let (loaded, loaded_info) = Classifier::load(&path, &device).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(loaded_info, info);

    let n = 400;
    let len = 784;
    let reference = embed(&loaded, &test.values(0, n), &device);
    let real = test.values(n, n);
    let blurred = blur(&real);
    let mut rng = StdRng::seed_from_u64(0);
    let noise: Vec<f32> = (0..n * len)
        .map(|_| rng.random::<f32>() * 2.0 - 1.0)
        .collect();
    let q = |pixels: &[f32]| quality(&embed(&loaded, pixels, &device), &reference);
    let (q_real, q_blur, q_noise) = (q(&real), q(&blurred), q(&noise));
    println!(
        "cFID real {:.2} blurred {:.2} noise {:.2}",
        q_real.fid, q_blur.fid, q_noise.fid
    );
    println!(
        "KID real {:.3} blurred {:.3} noise {:.3}",
        q_real.kid, q_blur.kid, q_noise.kid
    );
    assert!(q_real.fid < q_blur.fid && q_blur.fid < q_noise.fid);
    assert!(q_real.kid < q_blur.kid && q_blur.kid < q_noise.kid);
    assert!(q_real.confident > q_noise.confident);
    assert!(
        q_real.class_entropy_bits > 3.0,
        "real digits cover the classes"
    );
    assert_eq!(q_real.histogram.iter().sum::<usize>(), n);
}

#[test]
fn trajectories_work_with_every_solver() {
    let device = Device::flex();
    let model = Network::init(&UNetConfig::with_widths([8, 16, 32]).into(), 0, &device).unwrap();
    for solver in ["euler", "midpoint", "heun", "rk4", "dopri5"] {
        let solver: Solver = solver.parse().unwrap();
        let solver = match solver {
            Solver::Dopri5 { .. } => Solver::Dopri5 {
                rtol: 1e-2,
                atol: 1e-2,
            },
            s => s,
        };
        let x1 = initial_noise(&model, 2, 0, &device).unwrap();
        let traj = trajectory(&model, x1, solver, 6, TimeGrid::Shifted(0.5));
        assert_eq!(traj.frames.len(), traj.solution.steps + 1, "{solver}");
        assert_eq!(traj.frames[0].t, 1.0);
        assert_eq!(traj.frames.last().unwrap().t, 0.0);
        assert!(
            traj.frames.windows(2).all(|w| w[1].t < w[0].t),
            "{solver}: times decrease"
        );
        let keys = traj.key_frames();
        assert!(keys.len() >= 2 && keys.last().unwrap().t == 0.0);
        if let Some(stages) = solver.stages() {
            assert_eq!(traj.solution.nfe, 6 * stages);
        }
    }
}

#[test]
fn quality_does_not_depend_on_the_chunk_size() {
    let device = Device::flex();
    let model = Network::init(&UNetConfig::with_widths([8, 16, 32]).into(), 0, &device).unwrap();
    let classifier = Classifier::build(
        &mut flowmatch::model::RandomInit::new(1),
        [1, 28, 28],
        10,
        &device,
    )
    .unwrap();
    let (_, reference) =
        quality::real_floor(&classifier, &embedded(Split::Test), 40, &device).unwrap();
    let rows = |chunk| {
        let plan = EvalPlan {
            solvers: vec![Solver::Euler],
            nfe: vec![2],
            dopri_tolerances: vec![],
            grid: TimeGrid::Uniform,
            n: 40,
            seed: 3,
            chunk,
            schedule: Default::default(),
        };
        quality::sample_quality(&model, &classifier, &reference, &plan, &device, |_| {}).unwrap()
    };
    let (whole, chunked) = (rows(40), rows(7));
    assert_eq!(whole.len(), 1);
    assert_eq!(whole[0].nfe, 2);
    assert_eq!(whole[0].quality.n, 40);
    assert!((whole[0].quality.fid - chunked[0].quality.fid).abs() < 1e-3 * whole[0].quality.fid);
    assert_eq!(whole[0].quality.histogram, chunked[0].quality.histogram);

    // A model of other images than the classifier reads is an error, not scrambled digits.
    let wide = UNetConfig {
        image_size: 32,
        ..UNetConfig::with_widths([8, 16, 32])
    };
    let model = Network::init(&wide.into(), 0, &device).unwrap();
    let plan = EvalPlan {
        solvers: vec![Solver::Euler],
        nfe: vec![1],
        dopri_tolerances: vec![],
        grid: TimeGrid::Uniform,
        n: 40,
        seed: 3,
        chunk: 40,
        schedule: Default::default(),
    };
    let err = quality::sample_quality(&model, &classifier, &reference, &plan, &device, |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("1x28x28") && err.contains("1x32x32"), "{err}");
}

#[test]
fn memorisation_check_tells_copies_from_new_images() {
    let device = Device::flex();
    let (train, test) = (embedded(Split::Train), embedded(Split::Test));
    let held_out = &test.values(0, 400);
    // Training images themselves: every one is a copy.
    let copies = &train.values(1000, 200);
    let m = memorisation(copies, &train, held_out, &device).unwrap();
    assert_eq!(m.samples, 200);
    assert!(m.sample_distances.median < 1e-2, "{:?}", m.sample_distances);
    assert_eq!(m.near_copies, 1.0);
    // New real images are as far from the training set as the held-out yardstick.
    let fresh = &test.values(1000, 400);
    let m = memorisation(fresh, &train, held_out, &device).unwrap();
    assert!(m.near_copies < 0.05, "{}", m.near_copies);
    let ratio = m.sample_distances.median / m.held_out_distances.median;
    assert!((0.9..1.1).contains(&ratio), "{ratio}");
}

#[test]
fn the_evaluation_driver_reports_every_measure() {
    let device = Device::flex();
    let config = UNetConfig {
        num_classes: Some(10),
        ..UNetConfig::with_widths([8, 16, 32])
    };
    let model = Network::init(&config.into(), 0, &device).unwrap();
    let classifier = Classifier::build(
        &mut flowmatch::model::RandomInit::new(1),
        [1, 28, 28],
        10,
        &device,
    )
    .unwrap();
    let (train, test) = (embedded(Split::Train).take(500), embedded(Split::Test));
    let options = EvalOptions {
        plan: EvalPlan {
            solvers: vec![Solver::Euler, Solver::Midpoint],
            nfe: vec![2, 4],
            dopri_tolerances: vec![],
            grid: TimeGrid::Uniform,
            n: 120,
            seed: 0,
            chunk: 50,
            schedule: Default::default(),
        },
        guidance_interval: None,
        guidance_scales: vec![1.0, 2.0],
        conditional_steps: 3,
        likelihood: None,
        straightness: true,
        memorisation: true,
    };
    let mut events = 0;
    let report = evaluation::evaluate(
        &model,
        Some(&classifier),
        Some(&train),
        &test,
        &options,
        &device,
        |_| events += 1,
    )
    .unwrap();
    // Euler at 2 and 4, midpoint at 4 (2 steps) and 2 (1 step); two scales; straightness;
    // memorisation; the floor.
    assert_eq!(report.samplers.len(), 4);
    assert_eq!(events, 1 + 4 + 2 + 1 + 1);
    let nfe: Vec<usize> = report.conditional.iter().map(|c| c.nfe).collect();
    assert_eq!(nfe, vec![3, 6], "w = 2 evaluates both branches");
    assert!(
        report
            .conditional
            .iter()
            .all(|c| c.per_class.len() == 10 && c.quality.n == 120)
    );
    assert!(report.memorisation.is_some() && report.straightness.is_some());
    assert_eq!(report.json_lines().lines().count(), 1 + 4 + 2 + 1 + 1);
    // The class-balanced rows follow the plan's time grid too.
    let shifted = EvalOptions {
        plan: EvalPlan {
            grid: TimeGrid::Shifted(3.0),
            ..options.plan.clone()
        },
        guidance_scales: vec![1.0],
        straightness: false,
        memorisation: false,
        ..options.clone()
    };
    let again = evaluation::evaluate(
        &model,
        Some(&classifier),
        None,
        &test,
        &shifted,
        &device,
        |_| {},
    )
    .unwrap();
    let (uniform, on_shifted) = (&report.conditional[0], &again.conditional[0]);
    assert_eq!(on_shifted.nfe, uniform.nfe);
    assert_ne!(on_shifted.quality.fid, uniform.quality.fid);
}
