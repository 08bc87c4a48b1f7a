//! Class-conditional training and classifier-free guidance on a synthetic task whose classes a
//! rule can read: class k lights up quadrant k of the image.

use burn::tensor::Device;
use flowmatch::checkpoint;
use flowmatch::data::ImageSet;
use flowmatch::model::{NetworkConfig, UNetConfig};
use flowmatch::sampling::guidance::Guided;
use flowmatch::sampling::solvers::{Solver, TimeGrid, solve};
use flowmatch::sampling::{initial_noise, to_vec};
use flowmatch::training::lr_schedule::LrSchedule;
use flowmatch::training::{self, TrainConfig};

const CLASSES: usize = 4;

fn quadrant_images(n: usize) -> ImageSet {
    let mut pixels = Vec::with_capacity(n * 784);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let k = i % CLASSES;
        for y in 0..28 {
            for x in 0..28 {
                let quadrant = (y / 14) * 2 + x / 14;
                pixels.push(if quadrant == k { 255u8 } else { 0 });
            }
        }
        labels.push(k as u16);
    }
    let classes = (0..CLASSES).map(|c| c.to_string()).collect();
    ImageSet::from_bytes(pixels, labels, [1, 28, 28], classes).unwrap()
}

/// The test classifier: the brightest quadrant.
fn classify(image: &[f32]) -> usize {
    let mut sums = [0.0f32; 4];
    for (i, v) in image.iter().enumerate() {
        let (y, x) = (i / 28, i % 28);
        sums[(y / 14) * 2 + x / 14] += v;
    }
    (0..4).max_by(|a, b| sums[*a].total_cmp(&sums[*b])).unwrap()
}

#[test]
fn guidance_steers_samples_to_the_requested_class() {
    let device = Device::flex();
    let out = std::env::temp_dir().join(format!("flowmatch-guidance-{}", std::process::id()));
    let config = TrainConfig {
        model: NetworkConfig::Simple(UNetConfig {
            num_classes: Some(CLASSES),
            ..UNetConfig::with_widths([8, 16, 32])
        }),
        epochs: 1000,
        max_steps: Some(150),
        batch_size: 32,
        lr: 3e-3,
        lr_schedule: LrSchedule::WarmupCosine { warmup_steps: 10 },
        label_dropout: 0.2,
        checkpoint_every: 0,
        ..TrainConfig::default()
    };
    let outcome = training::train(&config, &quadrant_images(128), &out, &device, &mut ()).unwrap();
    let loaded = checkpoint::load(&outcome.checkpoint, &device).unwrap();
    assert_eq!(loaded.model.config().num_classes(), Some(CLASSES));
    let model = loaded.model;

    let per_class = 8;
    let labels: Vec<usize> = (0..CLASSES).flat_map(|k| vec![k; per_class]).collect();
    let accuracy = |scale: f32| {
        let x1 = initial_noise(&model, labels.len(), 1, &device).unwrap();
        let guided = Guided::new(&model, &labels, scale).unwrap();
        let solution = solve(
            &guided,
            Solver::Euler,
            x1,
            10,
            TimeGrid::Uniform,
            |_, _, _| {},
        );
        let per_eval = if scale == 0.0 || scale == 1.0 { 1 } else { 2 };
        assert_eq!(solution.nfe, 10 * per_eval, "NFE counts both branches");
        let values = to_vec(&solution.x);
        let hits = values
            .chunks(784)
            .zip(&labels)
            .filter(|(img, k)| classify(img) == **k)
            .count();
        hits as f64 / labels.len() as f64
    };
    let (unguided, guided) = (accuracy(0.0), accuracy(2.0));
    println!("class accuracy: unguided {unguided:.2}, guided (w=2) {guided:.2}");
    assert!(guided >= 0.8, "guided accuracy {guided}");
    assert!(
        guided >= unguided + 0.3,
        "guided {guided} vs unguided {unguided}"
    );
    assert!(Guided::new(&model, &[CLASSES], 2.0).is_err());
    for scale in [f32::NAN, f32::INFINITY, 1e38, -101.0] {
        assert!(Guided::new(&model, &[0], scale).is_err(), "{scale}");
    }
    std::fs::remove_dir_all(&out).unwrap();
}
