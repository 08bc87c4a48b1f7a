//! "How good is this model?": sample quality per (solver, NFE) and for class-conditional
//! sampling against held-out real images, with the real-data floor; memorisation of the
//! training set; likelihood of held-out images; straightness of the sampling paths.

pub mod classifier;
pub mod compare;
pub mod curve;
pub mod inception;
pub mod likelihood;
pub mod memorisation;
pub mod metrics;
pub mod quality;
pub use crate::sampling::straightness;

use burn::tensor::Device;
use serde::Serialize;

use crate::data::ImageSet;
use crate::error::{Error, Result};
use crate::image_out::QualityCurve;
use crate::model::Network;
use crate::sampling::{ClassPlan, Generation, NoiseSource, generate};
use classifier::{Classifier, Embedding};
use likelihood::{Divergence, NllReport, nll};
use memorisation::{Memorisation, memorisation};
use metrics::Quality;
pub use quality::Yardstick;
use quality::{
    ConditionalQuality, EvalPlan, EvalRow, conditional_quality, real_floor, sample_quality,
};

/// Everything an evaluation can measure; the sampler settings in `plan` always run.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Unconditional sampling: solvers, NFE budgets, sample count, seed, chunk size.
    pub plan: EvalPlan,
    /// Conditional models: class-balanced quality and per-class accuracy at these scales.
    pub guidance_scales: Vec<f32>,
    /// Guidance only at times in this interval (none: at every time).
    pub guidance_interval: Option<(f32, f32)>,
    /// Euler steps of the conditional sampling (on the plan's time grid).
    pub conditional_steps: usize,
    /// Held-out images whose likelihood is measured, with its integration settings.
    pub likelihood: Option<LikelihoodOptions>,
    /// Measure the straightness of the sampling paths.
    pub straightness: bool,
    /// Run the memorisation check (needs the training set).
    pub memorisation: bool,
}

/// How the likelihood is measured.
#[derive(Debug, Clone, Copy)]
pub struct LikelihoodOptions {
    /// Held-out images.
    pub images: usize,
    /// RK4 steps.
    pub steps: usize,
    /// Exact or Hutchinson divergence.
    pub divergence: Divergence,
}

/// One result, as soon as it is measured (for progress output).
#[derive(Debug, Clone, Copy)]
pub enum EvalEvent<'a> {
    /// The real-data floor.
    Floor(&'a Quality),
    /// One sampler setting.
    Sampler(&'a EvalRow),
    /// Conditional sampling at one guidance scale.
    Conditional(&'a ConditionalQuality),
    /// The likelihood.
    Likelihood(&'a NllReport),
    /// Straightness (0 = straight paths).
    Straightness(f64),
    /// The memorisation check.
    Memorisation(&'a Memorisation),
}

/// Everything measured.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// The real-data floor (when there is a yardstick).
    pub floor: Option<Quality>,
    /// Each sampler setting.
    pub samplers: Vec<EvalRow>,
    /// Each guidance scale.
    pub conditional: Vec<ConditionalQuality>,
    /// The likelihood, when measured.
    pub likelihood: Option<NllReport>,
    /// The straightness, when measured.
    pub straightness: Option<f64>,
    /// The memorisation check, when run.
    pub memorisation: Option<Memorisation>,
}

/// Samples used by the straightness measure.
pub const STRAIGHTNESS_SAMPLES: usize = 100;
/// Euler steps of the straightness measure.
pub const STRAIGHTNESS_STEPS: usize = 20;

/// Measures `model` against the held-out images `test` (and the training images `train`, for
/// the memorisation check), with `yardstick` (a classifier, or the Inception network of the
/// standard FID) as the measure of sample quality (without one, only the measures that need
/// none run), reporting each result to `on_event` as it comes.
pub fn evaluate<'a>(
    model: &Network,
    yardstick: Option<impl Into<Yardstick<'a>>>,
    train: Option<&ImageSet>,
    test: &ImageSet,
    options: &EvalOptions,
    device: &Device,
    mut on_event: impl FnMut(EvalEvent),
) -> Result<EvalReport> {
    let plan = &options.plan;
    if plan.n == 0 {
        return Err(Error::invalid("sample count", "must be positive"));
    }
    let (mut floor, mut samplers, mut conditional) = (None, Vec::new(), Vec::new());
    if let Some(yardstick) = yardstick {
        let yardstick = yardstick.into();
        let (q, reference) = real_floor(yardstick, test, plan.n, device)?;
        on_event(EvalEvent::Floor(&q));
        floor = Some(q);
        samplers = sample_quality(model, yardstick, &reference, plan, device, |row| {
            on_event(EvalEvent::Sampler(row))
        })?;
        conditional =
            conditional_sampling(model, yardstick, &reference, options, device, &mut on_event)?;
    }
    let likelihood = match options.likelihood {
        Some(l) => {
            let report = nll(
                model,
                test,
                l.images,
                l.steps,
                l.divergence,
                plan.seed,
                device,
            )?;
            on_event(EvalEvent::Likelihood(&report));
            Some(report)
        }
        None => None,
    };
    let straightness = options.straightness.then(|| {
        let value = straightness::straightness(
            model,
            STRAIGHTNESS_SAMPLES,
            STRAIGHTNESS_STEPS,
            plan.seed,
            device,
        );
        on_event(EvalEvent::Straightness(value));
        value
    });
    let memorisation = match (options.memorisation, train) {
        (false, _) => None,
        (true, None) => {
            return Err(Error::invalid(
                "memorisation check",
                "needs the training set",
            ));
        }
        (true, Some(_)) if plan.n > test.len() => {
            return Err(Error::invalid(
                "sample count",
                format!(
                    "{}: the memorisation check compares with as many held-out images, \
                     and there are {}",
                    plan.n,
                    test.len()
                ),
            ));
        }
        (true, Some(train)) => {
            let steps = plan.nfe.iter().copied().max().unwrap_or(50);
            let mut samples = Vec::with_capacity(plan.n * test.image_len());
            generate(
                model,
                plan.n,
                &ClassPlan::Unconditional,
                &mut NoiseSource::seeded(plan.seed),
                &Generation {
                    chunk: plan.chunk,
                    ..Generation::euler(steps)
                },
                device,
                |_, values| {
                    samples.extend(values);
                    Ok(())
                },
            )?;
            let held_out = test.values(0, plan.n);
            let m = memorisation(&samples, train, &held_out, device)?;
            on_event(EvalEvent::Memorisation(&m));
            Some(m)
        }
    };
    Ok(EvalReport {
        floor,
        samplers,
        conditional,
        likelihood,
        straightness,
        memorisation,
    })
}

/// Whether the pinned digit classifier measures images of `shape` from `data`: MNIST's digits
/// at their own 28x28 grey (the rule of [`yardstick`] and of `flowmatch eval`).
pub fn pinned_fits(data: &crate::data::DataSource, shape: [usize; 3]) -> bool {
    data.is_mnist() && shape == [1, 28, 28]
}

/// The yardstick of sample quality for data set `data` (named `name`): the pinned digit
/// classifier where it fits ([`pinned_fits`]); for other labelled data a classifier trained on
/// its labels (once: it is kept in `cache_dir/classifiers`), announced through `on_note`; none
/// for unlabelled data.
pub fn yardstick(
    data: &crate::data::DataSource,
    name: &str,
    train: &ImageSet,
    test: &ImageSet,
    cache_dir: &std::path::Path,
    device: &Device,
    mut on_note: impl FnMut(&str),
) -> Result<Option<(Classifier, classifier::ClassifierInfo)>> {
    if pinned_fits(data, train.shape()) {
        return Classifier::pinned(device).map(Some);
    }
    if !train.is_labelled() || train.classes.len() < 2 {
        return Ok(None);
    }
    let key = crate::data::download::sha256_hex(
        format!(
            "{name}\n{:?}\n{:?}\n{}",
            train.shape(),
            train.classes,
            train.len()
        )
        .as_bytes(),
    );
    let path = cache_dir
        .join("classifiers")
        .join(format!("{}.safetensors", &key[..24]));
    if path.is_file() {
        on_note(&format!(
            "classifier: {} (trained on {name}'s labels earlier)",
            path.display()
        ));
        return Classifier::load(&path, device).map(Some);
    }
    let recipe = classifier::recipe_for(train.len(), train.shape());
    on_note(&format!(
        "training a classifier on {name}'s {} labels first ({} epochs; kept in {})",
        train.classes.len(),
        recipe.epochs,
        path.display()
    ));
    let (model, info) = classifier::fit(train, test, &recipe, name, device, |_, _| {})?;
    model.save(&info, &path)?;
    Ok(Some((model, info)))
}

/// Class-balanced conditional sampling at each of the options' guidance scales.
fn conditional_sampling(
    model: &Network,
    yardstick: Yardstick,
    reference: &Embedding,
    options: &EvalOptions,
    device: &Device,
    on_event: &mut impl FnMut(EvalEvent),
) -> Result<Vec<ConditionalQuality>> {
    if options.guidance_scales.is_empty() {
        return Ok(Vec::new());
    }
    let classes = model.num_classes().ok_or_else(|| {
        Error::invalid("guidance scales", "the model is unconditional (no classes)")
    })?;
    let per_class = options.plan.n / classes;
    if per_class == 0 {
        return Err(Error::invalid(
            "sample count",
            format!(
                "{}: class-balanced sampling needs at least one sample per class ({classes})",
                options.plan.n
            ),
        ));
    }
    let mut out = Vec::new();
    for &scale in &options.guidance_scales {
        let q = conditional_quality(
            model,
            yardstick,
            reference,
            (scale, options.guidance_interval, options.plan.schedule),
            per_class,
            (options.conditional_steps, options.plan.grid),
            options.plan.seed,
            device,
        )?;
        on_event(EvalEvent::Conditional(&q));
        out.push(q);
    }
    Ok(out)
}

impl EvalReport {
    /// The results as JSON lines: the floor, each sampler setting, each guidance scale, then
    /// the likelihood, straightness and memorisation when measured.
    pub fn json_lines(&self) -> String {
        let mut lines: Vec<String> = self
            .floor
            .iter()
            .map(|f| {
                serde_json::json!({"solver": "real-data-floor", "nfe": 0, "quality": f}).to_string()
            })
            .collect();
        lines.extend(
            self.samplers
                .iter()
                .map(|r| serde_json::to_string(r).expect("serialises")),
        );
        lines.extend(
            self.conditional
                .iter()
                .map(|c| serde_json::json!({"conditional": c}).to_string()),
        );
        if let Some(l) = &self.likelihood {
            lines.push(serde_json::json!({"likelihood": l}).to_string());
        }
        if let Some(s) = self.straightness {
            lines.push(
                serde_json::json!({"straightness": s, "samples": STRAIGHTNESS_SAMPLES,
                "steps": STRAIGHTNESS_STEPS})
                .to_string(),
            );
        }
        if let Some(m) = &self.memorisation {
            lines.push(serde_json::json!({"memorisation": m}).to_string());
        }
        lines.join("\n") + "\n"
    }

    /// Quality against NFE, one curve per solver (fixed-step and adaptive alike).
    pub fn curves(&self) -> Vec<QualityCurve> {
        let mut curves: Vec<QualityCurve> = Vec::new();
        for row in &self.samplers {
            let point = (row.nfe as f64, row.quality.fid, row.quality.confident);
            match curves.iter_mut().find(|c| c.label == row.solver) {
                Some(curve) => curve.points.push(point),
                None => curves.push(QualityCurve {
                    label: row.solver.clone(),
                    points: vec![point],
                }),
            }
        }
        for curve in &mut curves {
            curve.points.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        curves
    }
}
