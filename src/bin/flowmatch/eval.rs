//! `flowmatch eval`: sample quality of one or more checkpoints per solver and NFE, and the
//! other measures, side by side.

use std::path::PathBuf;

use anyhow::{Result, bail};
use burn::tensor::Device;
use clap::Args;

use flowmatch::data::default_cache_dir;
use flowmatch::evaluation::compare::{CompareEvent, CompareOptions, compare};
use flowmatch::evaluation::inception::{self, WeightsChoice};
use flowmatch::evaluation::likelihood::Divergence;
use flowmatch::evaluation::metrics::Quality;
use flowmatch::evaluation::quality::EvalPlan;
use flowmatch::evaluation::{EvalEvent, EvalOptions, LikelihoodOptions, STRAIGHTNESS_STEPS};
use flowmatch::sampling;
use flowmatch::sampling::solvers::{Solver, TimeGrid};

use crate::common::{DataArgs, GridArgs, ModelsArgs, ScheduleArgs, print_load_note, weights};

#[derive(Args)]
pub struct EvalArgs {
    /// The models (repeatable, either flag: they are measured side by side, on the same noise
    /// and reference, and plotted together).
    #[command(flatten)]
    models: ModelsArgs,
    /// Classifier written by `flowmatch classifier train` [default: the pinned digit classifier
    /// shipped with flowmatch, for MNIST data].
    #[arg(long)]
    classifier: Option<PathBuf>,
    /// Features of the quality metrics: the classifier's (cFID, KID, confidence, classes) or
    /// pytorch-fid's Inception network (the standard FID and KID).
    #[arg(long, value_enum, default_value_t = Features::Classifier)]
    features: Features,
    /// pytorch-fid's Inception weights (pt_inception-2015-12-05-6726825d.pth), or `download`
    /// to fetch them from pytorch-fid's release into the cache, SHA-256 checked [default: the
    /// cached copy].
    #[arg(long, value_name = "PATH|download")]
    inception_weights: Option<String>,
    /// A folder of images to measure against instead of the data set's held-out split (the
    /// floor compares two halves of it).
    #[arg(long)]
    reference: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
    /// Solvers to compare.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "euler,midpoint,heun,rk4,dopri5"
    )]
    solvers: Vec<Solver>,
    /// NFE budgets of the fixed-step solvers.
    #[arg(long, value_delimiter = ',', default_value = "4,8,16,32,64")]
    nfe: Vec<usize>,
    /// Tolerances (rtol = atol) at which dopri5 is run.
    #[arg(long, value_delimiter = ',', default_value = "1e-2,1e-3,1e-4")]
    dopri_tols: Vec<f32>,
    /// Samples per setting (at most half the held-out split).
    #[arg(long, default_value_t = 500)]
    n: usize,
    /// Seed of the starting noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    grid: GridArgs,
    /// JSON lines output.
    #[arg(long, default_value = "eval.jsonl")]
    out: PathBuf,
    /// Also write a PNG of quality against NFE (to this path).
    #[arg(long, num_args = 0..=1, default_missing_value = "eval.png")]
    plot: Option<PathBuf>,
    /// Held-out images whose likelihood (bits/dim) is measured (0: none).
    #[arg(long, default_value_t = 0)]
    nll_images: usize,
    /// RK4 steps of the likelihood integration.
    #[arg(long, default_value_t = 16)]
    nll_steps: usize,
    /// Exact divergence (one VJP per dimension; slow) instead of Hutchinson's estimate.
    #[arg(long)]
    nll_exact: bool,
    /// Conditional models: class-balanced sampling (--n samples in all) at these guidance
    /// scales (1: plain conditional), with quality and per-class accuracy.
    #[arg(long, value_delimiter = ',')]
    guidance_scales: Vec<f32>,
    #[command(flatten)]
    schedule: ScheduleArgs,
    /// Euler steps of the conditional sampling (on --time-grid).
    #[arg(long, default_value_t = 10)]
    conditional_steps: usize,
    /// Also check whether samples copy training images (nearest-neighbour distances).
    #[arg(long)]
    memorisation: bool,
    /// Measure the raw weights even when a checkpoint holds an EMA.
    #[arg(long)]
    no_ema: bool,
    /// Also measure the straightness of the sampling paths (100 samples, 20 Euler steps).
    #[arg(long)]
    straightness: bool,
    /// Images generated per network call (memory depends on this, not on --n).
    #[arg(long, default_value_t = sampling::DEFAULT_CHUNK)]
    batch_size: usize,
}

/// What sample quality is measured in.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Features {
    Classifier,
    Inception,
}

impl EvalArgs {
    /// The Inception weights when --features inception, from --inception-weights or the cache.
    fn inception(&self) -> Result<Option<PathBuf>> {
        if self.features != Features::Inception {
            if self.inception_weights.is_some() {
                bail!("--inception-weights is for --features inception");
            }
            return Ok(None);
        }
        if self.classifier.is_some() {
            bail!("--classifier is for --features classifier");
        }
        let choice = match self.inception_weights.as_deref() {
            Some(text) => WeightsChoice::parse(text),
            None => WeightsChoice::Cached,
        };
        let cache = self
            .data
            .cache_dir
            .clone()
            .unwrap_or_else(default_cache_dir);
        if choice == WeightsChoice::Download {
            eprintln!(
                "inception: {} (downloaded and verified into {} unless already there)",
                inception::WEIGHTS_URL,
                cache.join("inception").display()
            );
        }
        let (path, published) = match choice.locate(&cache) {
            // No cached copy: say it in the command's flags (a damaged one keeps its own error).
            Err(flowmatch::Error::Invalid { .. }) if choice == WeightsChoice::Cached => bail!(
                "--features inception needs pytorch-fid's weights: give --inception-weights \
                 PATH, or --inception-weights download to fetch them into {}",
                cache.join("inception").display()
            ),
            other => other?,
        };
        if !published {
            eprintln!(
                "warning: {} is not pytorch-fid's published weights file (another SHA-256): \
                 these are not the standard FID's features",
                path.display()
            );
        }
        Ok(Some(path))
    }

    /// The measurements asked for.
    fn eval_options(&self) -> Result<EvalOptions> {
        let grid = self.grid.grid_or(TimeGrid::Uniform)?;
        if self.batch_size == 0 || self.conditional_steps == 0 {
            bail!("invalid --batch-size / --conditional-steps: must be positive");
        }
        if self.nfe.contains(&0) || self.dopri_tols.iter().any(|t| t.is_nan() || *t <= 0.0) {
            bail!("invalid --nfe / --dopri-tols: values must be positive");
        }
        Ok(EvalOptions {
            plan: EvalPlan {
                solvers: self.solvers.clone(),
                nfe: self.nfe.clone(),
                dopri_tolerances: self.dopri_tols.clone(),
                grid,
                n: self.n,
                seed: self.seed,
                chunk: self.batch_size,
                // The trained path of each checkpoint is read from it.
                schedule: self.schedule.schedule(Default::default()),
            },
            guidance_scales: self.guidance_scales.clone(),
            guidance_interval: self.schedule.guidance_interval,
            conditional_steps: self.conditional_steps,
            likelihood: (self.nll_images > 0).then_some(LikelihoodOptions {
                images: self.nll_images,
                steps: self.nll_steps,
                divergence: match self.nll_exact {
                    true => Divergence::EXACT,
                    false => Divergence::Hutchinson,
                },
            }),
            straightness: self.straightness,
            memorisation: self.memorisation,
        })
    }
}

pub fn run(args: EvalArgs, device: &Device) -> Result<()> {
    let options = CompareOptions {
        eval: args.eval_options()?,
        weights: weights(args.no_ema),
        classifier: args.classifier.clone(),
        inception: args.inception()?,
        reference: args.reference.clone(),
        data: args.data.source(),
        data_name: args.data.data.clone(),
        data_options: args.data.options(None, None)?,
        out: args.out.clone(),
        plot: args.plot.clone(),
        checkpoints: args.models.paths()?,
    };
    let against = match &args.reference {
        Some(dir) => format!("images of {}", dir.display()),
        None => "held-out images".to_string(),
    };
    compare(&options, device, |event| match event {
        CompareEvent::Data(note) => print_load_note(note),
        CompareEvent::Note(note) => println!("{note}"),
        CompareEvent::Classifier(chosen) => {
            match chosen {
                Some((name, info)) => println!(
                    "classifier: {name} ({:.2}% held-out accuracy); {} samples per setting vs \
                     {} {against}",
                    100.0 * info.test_accuracy,
                    args.n,
                    args.n
                ),
                None => println!(
                    "{}: no labels, so no classifier: cFID, KID, confidence and class accuracy \
                     cannot be measured; measured without one: memorisation (--memorisation), \
                     likelihood (--nll-images), straightness (--straightness)",
                    args.data.data
                ),
            }
            println!(
                "{:<18} {:>5} {:>9} {:>20} {:>9} {:>8}",
                "solver", "NFE", "cFID", "KID", "confident", "H(bits)"
            );
        }
        CompareEvent::Inception(path) => {
            println!(
                "features: pytorch-fid's Inception ({}); {} samples per setting vs {} {against}",
                path.display(),
                args.n,
                args.n
            );
            println!("{:<18} {:>5} {:>9} {:>20}", "solver", "NFE", "FID", "KID");
        }
        CompareEvent::Model { name, path } => println!("{name} ({})", path.display()),
        CompareEvent::Result(event) => print_event(event),
        CompareEvent::Results(path) => println!("results: {}", path.display()),
        CompareEvent::Plot(path) => println!("plot: {}", path.display()),
    })?;
    Ok(())
}

fn print_quality_row(name: &str, nfe: &str, q: &Quality) {
    // Inception features have no classes: no confidence or class entropy.
    let classes = match q.confident.is_nan() {
        true => String::new(),
        false => format!(" {:>9.3} {:>8.3}", q.confident, q.class_entropy_bits),
    };
    println!(
        "{name:<18} {nfe:>5} {:>9.3} {:>9.4} ± {:<7.4}{classes}",
        q.fid, q.kid, q.kid_std
    );
}

/// Prints one evaluation result as it comes.
fn print_event(event: EvalEvent) {
    match event {
        EvalEvent::Floor(q) => print_quality_row("real data (floor)", "-", q),
        EvalEvent::Sampler(row) => {
            let name = match row.tol {
                Some(tol) => format!("{} tol={tol:.0e}", row.solver),
                None => row.solver.clone(),
            };
            print_quality_row(&name, &row.nfe.to_string(), &row.quality);
        }
        EvalEvent::Conditional(c) => {
            let per: Vec<String> = c.per_class.iter().map(|a| format!("{a:.2}")).collect();
            print_quality_row(
                &format!("labels, w={}", c.guidance),
                &c.nfe.to_string(),
                &c.quality,
            );
            if !c.per_class.is_empty() {
                println!(
                    "{:<24} accuracy {:.3}, per class [{}]",
                    "",
                    c.accuracy,
                    per.join(" ")
                );
            }
        }
        EvalEvent::Likelihood(r) => println!(
            "likelihood: {:.3} ± {:.3} bits/dim on {} held-out images ({} divergence, RK4 {} \
             steps, uniform dequantisation)",
            r.bits_per_dim, r.std_error, r.images, r.divergence, r.steps
        ),
        EvalEvent::Straightness(value) => println!(
            "straightness (mean |v_i - v|^2 / |v|^2 along {STRAIGHTNESS_STEPS} Euler steps; 0 = \
             straight): {value:.4}"
        ),
        EvalEvent::Memorisation(m) => println!(
            "memorisation: nearest training image at median {:.2} (5% {:.2}, min {:.2}) for {} \
             samples, {:.2} (5% {:.2}, min {:.2}) for held-out images; {:.1}% of samples closer \
             than 99% of held-out images ({})",
            m.sample_distances.median,
            m.sample_distances.p05,
            m.sample_distances.min,
            m.samples,
            m.held_out_distances.median,
            m.held_out_distances.p05,
            m.held_out_distances.min,
            100.0 * m.near_copies,
            if m.near_copies < 0.05 {
                "no sign of copying"
            } else {
                "the model copies training images"
            }
        ),
    }
}
