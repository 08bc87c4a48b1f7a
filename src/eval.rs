//! "How good is this model?": sample quality per (solver, NFE) against held-out real digits,
//! with the real-data floor, and the likelihood of held-out digits.

use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;

use crate::classifier::{Classifier, Embedding, argmax, embed};
use crate::data::ImageSet;
use crate::error::{Error, Result};
use crate::likelihood::{Divergence, bits_per_dim, dequantize, log_density, to_bytes};
use crate::metrics::{Quality, quality};
use crate::model::Network;
use crate::sampling::{ClassPlan, Generation, NoiseSource, generate, initial_noise, to_vec};
use crate::solver::{Solver, TimeGrid, solve};

/// One evaluated sampler setting.
#[derive(Debug, Clone, Serialize)]
pub struct EvalRow {
    /// Solver name.
    pub solver: String,
    /// Steps taken.
    pub steps: usize,
    /// Velocity evaluations actually used.
    pub nfe: usize,
    /// Tolerance (adaptive solvers only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tol: Option<f32>,
    /// Wall time of sampling in seconds.
    pub seconds: f64,
    /// Metrics against the held-out reference half.
    #[serde(flatten)]
    pub quality: Quality,
}

/// The sampler settings to evaluate.
#[derive(Debug, Clone)]
pub struct EvalPlan {
    /// Fixed-step solvers, each run at every NFE budget of `nfe`.
    pub solvers: Vec<Solver>,
    /// NFE budgets (steps = budget / evaluations per step).
    pub nfe: Vec<usize>,
    /// Tolerances for dopri5 (rtol = atol), when it is among the solvers.
    pub dopri_tolerances: Vec<f32>,
    /// Fixed-step time grid.
    pub grid: TimeGrid,
    /// Samples per setting (and size of the real floor's halves).
    pub n: usize,
    /// Seed of the starting noise (the same noise for every setting).
    pub seed: u64,
    /// Images per network call (memory is bounded by this, not by `n`).
    pub chunk: usize,
}

/// Splits the held-out set into a reference half and a floor half of `n` images each.
fn halves(test: &ImageSet, n: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    let len = test.image_len();
    if 2 * n > test.len() {
        return Err(Error::invalid(
            "sample count",
            format!(
                "{n}: the held-out split has {} images, at most {} can be used",
                test.len(),
                test.len() / 2
            ),
        ));
    }
    Ok((
        test.pixels[..n * len].to_vec(),
        test.pixels[n * len..2 * n * len].to_vec(),
    ))
}

/// The real-data floor: the metrics between the two held-out halves, and the reference embedding.
pub fn real_floor(
    classifier: &Classifier,
    test: &ImageSet,
    n: usize,
    device: &Device,
) -> Result<(Quality, Embedding)> {
    let (reference, other) = halves(test, n)?;
    let reference = embed(classifier, &reference, device);
    let floor = quality(&embed(classifier, &other, device), &reference);
    Ok((floor, reference))
}

/// Samples with every setting of `plan` and measures each against `reference`.
pub fn sample_quality(
    model: &Network,
    classifier: &Classifier,
    reference: &Embedding,
    plan: &EvalPlan,
    device: &Device,
    mut on_row: impl FnMut(&EvalRow),
) -> Result<Vec<EvalRow>> {
    let mut settings: Vec<(Solver, usize, Option<f32>)> = Vec::new();
    for &solver in &plan.solvers {
        match solver.stages() {
            Some(stages) => {
                for &budget in &plan.nfe {
                    if budget / stages > 0 {
                        settings.push((solver, budget / stages, None));
                    }
                }
            }
            None => {
                for &tol in &plan.dopri_tolerances {
                    settings.push((
                        Solver::Dopri5 {
                            rtol: tol,
                            atol: tol,
                        },
                        0,
                        Some(tol),
                    ));
                }
            }
        }
    }
    let mut rows = Vec::new();
    for (solver, steps, tol) in settings {
        let started = Instant::now();
        let generation = Generation {
            solver,
            steps,
            grid: plan.grid,
            guidance: 1.0,
            chunk: plan.chunk,
        };
        // The same starting noise for every setting.
        let mut noise = NoiseSource::seeded(plan.seed);
        let mut samples = Embedding::default();
        let stats = generate(
            model,
            plan.n,
            &ClassPlan::Unconditional,
            &mut noise,
            &generation,
            device,
            |_, values| {
                samples.extend(embed(classifier, &values, device));
                Ok(())
            },
        )?;
        let seconds = started.elapsed().as_secs_f64();
        let row = EvalRow {
            solver: solver.to_string(),
            steps: stats.steps,
            nfe: stats.nfe_per_chunk.iter().max().copied().unwrap_or(0),
            tol,
            seconds,
            quality: quality(&samples, reference),
        };
        on_row(&row);
        rows.push(row);
    }
    Ok(rows)
}

/// Likelihood of held-out images.
#[derive(Debug, Clone, Serialize)]
pub struct NllReport {
    /// Images measured.
    pub images: usize,
    /// Mean bits per dimension (8-bit scale, uniform dequantisation).
    pub bits_per_dim: f64,
    /// Standard error of the mean.
    pub std_error: f64,
    /// RK4 steps of the integration.
    pub steps: usize,
    /// Velocity evaluations per batch.
    pub nfe: usize,
    /// "exact" or "hutchinson".
    pub divergence: String,
}

/// Bits/dim of the first `images` held-out digits (dequantised with `seed`), in batches.
pub fn nll(
    model: &Network,
    test: &ImageSet,
    images: usize,
    steps: usize,
    divergence: Divergence,
    seed: u64,
    device: &Device,
) -> Result<NllReport> {
    if images == 0 || images > test.len() || steps == 0 {
        return Err(Error::invalid(
            "likelihood",
            format!("{images} images, {steps} steps"),
        ));
    }
    let ad = device.clone().autodiff();
    let model = model.clone().to_device(&ad).no_grad();
    let mut rng = StdRng::seed_from_u64(seed);
    let dims = test.image_len();
    let bytes = to_bytes(&test.pixels[..images * dims]);
    let mut bpd = Vec::new();
    let mut nfe = 0;
    let batch = match divergence {
        Divergence::Exact { .. } => 1,
        Divergence::Hutchinson => 32,
    };
    for chunk in bytes.chunks(batch * dims) {
        let n = chunk.len() / dims;
        let z = dequantize(chunk, &mut rng);
        let x0 = Tensor::<4>::from_data(TensorData::new(z, [n, 1, test.height, test.width]), &ad);
        let (densities, used) = log_density(&model, x0, steps, divergence, &mut rng);
        nfe = used;
        bpd.extend(densities.into_iter().map(|d| bits_per_dim(d, dims)));
    }
    let mean = bpd.iter().sum::<f64>() / bpd.len() as f64;
    let var = bpd.iter().map(|b| (b - mean).powi(2)).sum::<f64>() / (bpd.len().max(2) - 1) as f64;
    Ok(NllReport {
        images,
        bits_per_dim: mean,
        std_error: (var / bpd.len() as f64).sqrt(),
        steps,
        nfe,
        divergence: match divergence {
            Divergence::Exact { .. } => "exact".into(),
            Divergence::Hutchinson => "hutchinson".into(),
        },
    })
}

/// How often guided samples of each class are classified as that class.
#[derive(Debug, Clone, Serialize)]
pub struct GuidedAccuracy {
    /// Guidance scale w.
    pub guidance: f32,
    /// Network evaluations used (both branches counted).
    pub nfe: usize,
    /// Accuracy per class.
    pub per_class: Vec<f64>,
    /// Mean over classes.
    pub mean: f64,
}

/// Samples `per_class` images of every class with Euler `steps` at guidance `scale` and
/// classifies them.
pub fn guided_accuracy(
    model: &Network,
    classifier: &Classifier,
    scale: f32,
    per_class: usize,
    steps: usize,
    seed: u64,
    device: &Device,
) -> Result<GuidedAccuracy> {
    let classes = model
        .num_classes()
        .ok_or_else(|| Error::invalid("guidance", "the model is unconditional"))?;
    let plan = ClassPlan::Rows {
        classes: (0..classes).collect(),
        per_class,
    };
    let generation = Generation {
        guidance: scale,
        ..Generation::euler(steps)
    };
    let mut probs = Vec::new();
    let stats = generate(
        model,
        classes * per_class,
        &plan,
        &mut NoiseSource::seeded(seed),
        &generation,
        device,
        |_, values| {
            probs.extend(embed(classifier, &values, device).probs);
            Ok(())
        },
    )?;
    let per_class: Vec<f64> = (0..classes)
        .map(|c| {
            let rows = &probs[c * per_class..(c + 1) * per_class];
            rows.iter().filter(|p| argmax(p) == c).count() as f64 / per_class as f64
        })
        .collect();
    Ok(GuidedAccuracy {
        guidance: scale,
        nfe: stats.nfe_per_chunk.first().copied().unwrap_or(0),
        mean: per_class.iter().sum::<f64>() / classes as f64,
        per_class,
    })
}

/// Straightness of the sampling paths: with Euler velocities `v_i` over `steps` uniform steps
/// and the net velocity `v = x(t=1) - x(t=0)`, the mean over samples of
/// `mean_i |v_i - v|^2 / |v|^2`. Zero for straight paths travelled at constant speed.
pub fn straightness(model: &Network, n: usize, steps: usize, seed: u64, device: &Device) -> f64 {
    let x1 = initial_noise(model, n, seed, device);
    let mut states = vec![to_vec(&x1)];
    let solution = solve(
        model,
        Solver::Euler,
        x1,
        steps,
        TimeGrid::Uniform,
        |i, _, x| {
            if i > 0 {
                states.push(to_vec(x));
            }
        },
    );
    states.push(to_vec(&solution.x));
    let dim = states[0].len() / n;
    let dt = 1.0 / steps as f64;
    let mut total = 0.0;
    for s in 0..n {
        let row = |k: usize| &states[k][s * dim..(s + 1) * dim];
        let net: Vec<f64> = row(0)
            .iter()
            .zip(row(steps))
            .map(|(a, b)| (a - b) as f64)
            .collect();
        let net_sq: f64 = net.iter().map(|v| v * v).sum();
        let deviation: f64 = (0..steps)
            .map(|i| {
                row(i)
                    .iter()
                    .zip(row(i + 1))
                    .zip(&net)
                    .map(|((a, b), v)| ((a - b) as f64 / dt - v).powi(2))
                    .sum::<f64>()
            })
            .sum::<f64>()
            / steps as f64;
        total += deviation / net_sq.max(1e-12);
    }
    total / n as f64
}
