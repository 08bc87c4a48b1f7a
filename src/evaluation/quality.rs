//! Sample quality in a yardstick's feature space (a classifier's, or the Inception features of
//! the standard FID): per (solver, NFE) for unconditional sampling, and class-balanced for
//! conditional sampling at a guidance scale, each against held-out real images, next to the
//! real-data floor (the same metrics between two halves of the held-out images).

use std::time::Instant;

use burn::tensor::Device;
use serde::Serialize;

use super::classifier::{Classifier, Embedding, argmax, embed};
use super::inception::Inception;
use super::metrics::{Quality, inception_quality, quality};
use crate::data::ImageSet;
use crate::error::{Error, Result};
use crate::model::Network;
use crate::sampling::solvers::{Solver, TimeGrid};
use crate::sampling::{ClassPlan, Generation, NoiseSource, Schedule, generate};

/// What sample quality is measured in.
#[derive(Debug, Clone, Copy)]
pub enum Yardstick<'a> {
    /// A classifier's features and class probabilities: classifier-FID, KID, the confident
    /// fraction and the class histogram.
    Classifier(&'a Classifier),
    /// pytorch-fid's Inception features: the standard FID and KID (no class measures).
    Inception(&'a Inception),
}

impl<'a> From<&'a Classifier> for Yardstick<'a> {
    fn from(classifier: &'a Classifier) -> Self {
        Yardstick::Classifier(classifier)
    }
}

impl<'a> From<&'a Inception> for Yardstick<'a> {
    fn from(inception: &'a Inception) -> Self {
        Yardstick::Inception(inception)
    }
}

impl Yardstick<'_> {
    /// Features (and, for a classifier, class probabilities) of `n` images of `shape` given as
    /// row-major values in [-1, 1].
    pub fn embed(&self, pixels: &[f32], shape: [usize; 3], device: &Device) -> Result<Embedding> {
        match self {
            Yardstick::Classifier(c) => Ok(embed(c, pixels, device)),
            Yardstick::Inception(net) => Ok(Embedding {
                features: net.embed(pixels, shape)?,
                probs: Vec::new(),
            }),
        }
    }

    /// The metrics of `samples` against `reference`.
    pub fn quality(&self, samples: &Embedding, reference: &Embedding) -> Quality {
        match self {
            Yardstick::Classifier(_) => quality(samples, reference),
            Yardstick::Inception(_) => inception_quality(&samples.features, &reference.features),
        }
    }

    /// Checks that it reads images of `shape` (the `what`, for the message): a classifier
    /// those it was trained on, the Inception network grey or colour images of any size.
    fn check_shape(&self, shape: [usize; 3], what: &str) -> Result<()> {
        match self {
            Yardstick::Classifier(c) => check_shape(c, shape, what),
            Yardstick::Inception(_) if shape[0] == 1 || shape[0] == 3 => Ok(()),
            Yardstick::Inception(_) => Err(Error::invalid(
                "Inception features",
                format!(
                    "the {what} have {} channels: it reads grey or colour images",
                    shape[0]
                ),
            )),
        }
    }
}

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
    /// How the model's output becomes a velocity, and the scheduler to sample along.
    pub schedule: Schedule,
}

/// Splits the held-out set into a reference half and a floor half of `n` images each.
fn halves(test: &ImageSet, n: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    if n < 2 || 2 * n > test.len() {
        return Err(Error::invalid(
            "sample count",
            format!(
                "{n}: from 2 to {} (the held-out split has {} images, and the floor takes half)",
                test.len() / 2,
                test.len()
            ),
        ));
    }
    Ok((test.values(0, n), test.values(n, n)))
}

/// The real-data floor: the metrics between the two held-out halves, and the reference embedding.
pub fn real_floor<'a>(
    yardstick: impl Into<Yardstick<'a>>,
    test: &ImageSet,
    n: usize,
    device: &Device,
) -> Result<(Quality, Embedding)> {
    let yardstick = yardstick.into();
    yardstick.check_shape(test.shape(), "held-out images")?;
    let (reference, other) = halves(test, n)?;
    let reference = yardstick.embed(&reference, test.shape(), device)?;
    let other = yardstick.embed(&other, test.shape(), device)?;
    Ok((yardstick.quality(&other, &reference), reference))
}

/// Checks that `classifier` reads images of `shape`.
fn check_shape(classifier: &Classifier, shape: [usize; 3], what: &str) -> Result<()> {
    if classifier.shape() == shape {
        return Ok(());
    }
    let [c, h, w] = classifier.shape();
    let [ic, ih, iw] = shape;
    Err(Error::invalid(
        "classifier",
        format!(
            "it reads {c}x{h}x{w} images and the {what} are {ic}x{ih}x{iw} \
             (give --classifier trained on this data, or evaluate on its own data set)"
        ),
    ))
}

/// Samples with every setting of `plan` and measures each against `reference`.
pub fn sample_quality<'a>(
    model: &Network,
    yardstick: impl Into<Yardstick<'a>>,
    reference: &Embedding,
    plan: &EvalPlan,
    device: &Device,
    mut on_row: impl FnMut(&EvalRow),
) -> Result<Vec<EvalRow>> {
    let (yardstick, shape) = (yardstick.into(), model.image_shape());
    yardstick.check_shape(shape, "model's images")?;
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
            guidance_interval: None,
            schedule: plan.schedule,
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
                samples.extend(yardstick.embed(&values, shape, device)?);
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
            quality: yardstick.quality(&samples, reference),
        };
        on_row(&row);
        rows.push(row);
    }
    Ok(rows)
}

/// Class-conditional sampling measured: `per_class` samples of every class (class-balanced) at
/// one guidance scale, their quality against the held-out reference and how often each is
/// classified as the class it was drawn for.
#[derive(Debug, Clone, Serialize)]
pub struct ConditionalQuality {
    /// Guidance scale w (1: plain conditional, no guidance).
    pub guidance: f32,
    /// Euler steps.
    pub steps: usize,
    /// Network evaluations used (both branches counted).
    pub nfe: usize,
    /// Fraction classified as their class, per class (empty in Inception features).
    pub per_class: Vec<f64>,
    /// Mean over classes (NaN, written as `null`, in Inception features).
    pub accuracy: f64,
    /// Metrics against the held-out reference.
    #[serde(flatten)]
    pub quality: Quality,
}

/// Samples `per_class` images of every class with Euler `steps` on `grid` at guidance `scale`
/// (on `guidance_interval` only, when given), and measures them against `reference` (and, with
/// a classifier, how often each is classified as its class).
#[allow(clippy::too_many_arguments)]
pub fn conditional_quality<'a>(
    model: &Network,
    yardstick: impl Into<Yardstick<'a>>,
    reference: &Embedding,
    (scale, guidance_interval, schedule): (f32, Option<(f32, f32)>, Schedule),
    per_class: usize,
    (steps, grid): (usize, TimeGrid),
    seed: u64,
    device: &Device,
) -> Result<ConditionalQuality> {
    let (yardstick, shape) = (yardstick.into(), model.image_shape());
    yardstick.check_shape(shape, "model's images")?;
    let classes = model
        .num_classes()
        .ok_or_else(|| Error::invalid("guidance", "the model is unconditional"))?;
    let plan = ClassPlan::Rows {
        classes: (0..classes).collect(),
        per_class,
    };
    let generation = Generation {
        guidance: scale,
        guidance_interval,
        schedule,
        grid,
        ..Generation::euler(steps)
    };
    let mut samples = Embedding::default();
    let stats = generate(
        model,
        classes * per_class,
        &plan,
        &mut NoiseSource::seeded(seed),
        &generation,
        device,
        |_, values| {
            samples.extend(yardstick.embed(&values, shape, device)?);
            Ok(())
        },
    )?;
    let classified = !samples.probs.is_empty();
    let per_class: Vec<f64> = (0..classes)
        .filter(|_| classified)
        .map(|c| {
            let rows = &samples.probs[c * per_class..(c + 1) * per_class];
            rows.iter().filter(|p| argmax(p) == c).count() as f64 / per_class as f64
        })
        .collect();
    Ok(ConditionalQuality {
        guidance: scale,
        steps,
        nfe: stats.nfe_per_chunk.first().copied().unwrap_or(0),
        accuracy: match classified {
            true => per_class.iter().sum::<f64>() / classes as f64,
            false => f64::NAN,
        },
        per_class,
        quality: yardstick.quality(&samples, reference),
    })
}
