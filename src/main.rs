//! The flowmatch command line: a thin layer over the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use flowmatch::bench::{self, BenchConfig};
use flowmatch::checkpoint::{self, Weights};
use flowmatch::data::download::sha256_file;
use flowmatch::data::{DataOptions, DataSource, ImageSet, Split, default_cache_dir};
use flowmatch::demo::DemoOptions;
use flowmatch::device::device_from_name;
use flowmatch::evaluation::classifier::{self, Classifier, ClassifierRecipe};
use flowmatch::evaluation::inception::{self, Inception};
use flowmatch::evaluation::likelihood::Divergence;
use flowmatch::evaluation::metrics::Quality;
use flowmatch::evaluation::quality::EvalPlan;
use flowmatch::evaluation::{self, EvalEvent, EvalOptions, LikelihoodOptions, Yardstick};
use flowmatch::flow::TimeSampling;
use flowmatch::flow::coupling::Coupling;
use flowmatch::flow::objective::Objective;
use flowmatch::image_out;
use flowmatch::model::{MAX_CLASSES, Network, NetworkConfig, ResUNetConfig, UNetConfig};
use flowmatch::sampling::solvers::{Solver, TimeGrid};
use flowmatch::sampling::to_files::{SampleJob, sample_to_files};
use flowmatch::sampling::{self, ClassPlan, Generation};
use flowmatch::serve::{ServeOptions, Server};
use flowmatch::tensor_file::refuse_to_replace;
use flowmatch::training::few_step::{self, FewStep, FewStepOptions};
use flowmatch::training::lr_schedule::LrSchedule;
use flowmatch::training::{self, EpochReport, StepReport, TrainConfig, TrainObserver, recipes};

#[derive(Parser)]
#[command(
    name = "flowmatch",
    version,
    about = "Train flow-matching image generators and sample from them"
)]
struct Cli {
    /// Worker threads of the CPU backend (default: all cores; also RAYON_NUM_THREADS).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Where tensors live: cpu (burn's flex backend); wgpu, wgpu:cpu, wgpu:discrete:N,
    /// wgpu:integrated:N in a `wgpu` build; cuda / cuda:N in a `cuda` build.
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model on the embedded MNIST subset (or another data set), minutes on a CPU,
    /// then write samples, a trajectory strip + GIF and the loss curve.
    Demo(DemoArgs),
    /// Train a model.
    Train(Box<TrainArgs>),
    /// Generate a grid of samples from a checkpoint.
    Sample(SampleArgs),
    /// Show how samples flow from noise (t=1) to data (t=0): a labelled strip and a GIF.
    Trajectory(TrajectoryArgs),
    /// Train the evaluation classifier (its features define the quality metrics).
    Classifier(ClassifierArgs),
    /// Measure sample quality per solver and NFE (classifier-FID, KID, confidence, classes)
    /// against held-out digits, with the real-data floor, and optionally the likelihood.
    Eval(EvalArgs),
    /// Quality against training time of MNIST runs (pinned digit classifier): every timed
    /// checkpoint of the given runs (train --checkpoint-minutes), measured with Euler, as JSON
    /// lines and a plot.
    Curve(CurveArgs),
    /// Measure training and sampling throughput and peak memory (one JSON line per width).
    Bench(BenchArgs),
    /// Reflow a trained model: draw its own (noise, sample) pairs and train a straighter
    /// 2-rectified model on them, starting from its weights (few-step sampling).
    Reflow(FewStepArgs),
    /// Distil a trained model into a 1- or 2-step sampler on its (noise, sample) pairs.
    Distill(DistillArgs),
    /// Serve a local web page to generate samples and watch the flow (and a run's loss).
    Serve(ServeArgs),
    /// Print a checkpoint's network shape, progress and training configuration.
    Info {
        /// The checkpoint (.safetensors).
        checkpoint: PathBuf,
    },
}

#[derive(Args)]
struct CurveArgs {
    /// Run folders (repeatable), each with minutes-*.safetensors and/or final.safetensors.
    #[arg(long, required = true)]
    run: Vec<PathBuf>,
    /// Euler NFE budgets.
    #[arg(long, value_delimiter = ',', default_value = "10,50")]
    nfe: Vec<usize>,
    /// Samples per point (and held-out images of the reference).
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// Seed of the starting noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// JSON lines output.
    #[arg(long, default_value = "curve.jsonl")]
    out: PathBuf,
    /// The plot (PNG).
    #[arg(long, default_value = "curve.png")]
    plot: PathBuf,
    /// Keep the points already in --out for the same checkpoint, NFE, --n and --seed, and
    /// measure only the others (new checkpoints of a run still training, another run); the
    /// points of runs not given stay in --out and in the plot.
    #[arg(long)]
    reuse: bool,
}

#[derive(Args)]
struct FewStepArgs {
    /// The trained model to start from (unconditional flow matching).
    #[arg(long)]
    checkpoint: PathBuf,
    /// (noise, sample) pairs to draw from it (streamed to OUT/pairs in shards; a second run
    /// resumes).
    #[arg(long, default_value_t = 20000)]
    pairs: usize,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Solver the pairs are drawn with.
    #[arg(long, default_value = "rk4")]
    teacher_solver: Solver,
    /// Steps of that solver.
    #[arg(long, default_value_t = 8)]
    teacher_steps: usize,
    /// Training steps.
    #[arg(long, default_value_t = 3000)]
    train_steps: u64,
    /// Pairs per step.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Peak learning rate (warm-up of 100 steps, cosine decay).
    #[arg(long, default_value_t = 5e-4)]
    lr: f64,
    /// EMA decay (0: none).
    #[arg(long, default_value_t = 0.999)]
    ema_decay: f64,
    /// Stop after this many minutes of training time.
    #[arg(long)]
    max_minutes: Option<f64>,
    /// Seed of the pairs' noise and of the training.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
struct DistillArgs {
    #[command(flatten)]
    run: FewStepArgs,
    /// Euler steps of the student (1 or 2 for few-step sampling).
    #[arg(long, default_value_t = 1)]
    student_steps: usize,
}

#[derive(Args)]
struct ServeArgs {
    /// Checkpoint to serve (repeatable: the page offers each).
    #[arg(long, required = true)]
    checkpoint: Vec<PathBuf>,
    /// Address to listen on (only this machine by default).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free one).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// A training run folder whose loss the page plots while `train` writes it.
    #[arg(long)]
    run: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct DataArgs {
    /// Data set: embedded (10k MNIST digits, offline), mnist, fashion-mnist, cifar10, or a
    /// folder (of IDX files, of CIFAR-10 batches, or of PNG/JPEG images, one sub-folder per
    /// class or none).
    #[arg(long, default_value = "embedded")]
    data: String,
    /// Cache folder for downloaded and decoded data sets [default: ~/.cache/flowmatch].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Mirror to download from instead of the built-in ones (repeatable).
    #[arg(long)]
    mirror: Vec<String>,
    /// Use only the first N training images.
    #[arg(long)]
    limit: Option<usize>,
    /// Fraction of an image folder held out as its test split.
    #[arg(long, default_value_t = 0.1)]
    holdout: f64,
}

impl DataArgs {
    /// Loads `split`, brought to `size` x `size` and `channels` where given, printing what
    /// the user should know about how it was read.
    fn load(&self, split: Split, size: Option<usize>, channels: Option<usize>) -> Result<ImageSet> {
        if self.limit == Some(0) {
            bail!("invalid --limit: must be positive");
        }
        let source = DataSource::parse(&self.data);
        let options = DataOptions {
            cache_dir: self.cache_dir.clone().unwrap_or_else(default_cache_dir),
            mirrors: self.mirror.clone(),
            image_size: size,
            channels,
            holdout: self.holdout,
            limit: self.limit,
        };
        if matches!(
            source,
            DataSource::Mnist | DataSource::FashionMnist | DataSource::Cifar10
        ) {
            eprintln!(
                "data: {source} (downloaded and verified into {} on first use)",
                options.cache_dir.display()
            );
        }
        let set = ImageSet::load(&source, split, &options)?;
        for note in &set.notes {
            eprintln!("warning: {note}");
        }
        Ok(set)
    }

    /// Loads `split` in the shape of a model's images.
    fn load_for(&self, split: Split, [c, h, _]: [usize; 3]) -> Result<ImageSet> {
        self.load(split, Some(h), Some(c))
    }

    /// These options with a stored run's data set.
    fn for_run(&self, config: &TrainConfig) -> DataArgs {
        DataArgs {
            data: config.data.clone(),
            limit: config.data_limit,
            holdout: config.holdout,
            cache_dir: self.cache_dir.clone(),
            mirror: self.mirror.clone(),
        }
    }
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Continue the run in this folder exactly where it stopped (its stored settings are used;
    /// the other training flags are ignored).
    #[arg(long, conflicts_with = "config")]
    resume: Option<PathBuf>,
    /// Read every training choice from this TOML file (as written to each run's config.toml);
    /// the other training flags are ignored.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output folder (checkpoints, metrics.jsonl, loss_curve.png).
    #[arg(long, default_value = "runs/train")]
    out: PathBuf,
    /// Train with a named recipe (reference, demo, ...: `flowmatch train --list-presets`); of
    /// the other flags only the data, --classes, --flip, --objective, --init-from, --seed,
    /// --steps, --max-minutes and --checkpoint-minutes apply.
    #[arg(long, conflicts_with = "config")]
    preset: Option<String>,
    /// List the named recipes and exit.
    #[arg(long)]
    list_presets: bool,
    /// Passes over the training data.
    #[arg(long, default_value_t = 100)]
    epochs: usize,
    /// Stop after this many optimiser steps.
    #[arg(long)]
    steps: Option<u64>,
    /// Stop after this many minutes of training time (CPU time per thread; the schedule still
    /// follows --steps / --epochs).
    #[arg(long)]
    max_minutes: Option<f64>,
    /// Images per step.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Learning-rate schedule: constant (the reference) or cosine (linear warm-up, cosine decay to 0).
    #[arg(long, value_enum, default_value_t = ScheduleArg::Constant)]
    lr_schedule: ScheduleArg,
    /// Warm-up steps of the cosine schedule.
    #[arg(long, default_value_t = 100)]
    warmup_steps: u64,
    /// Training-time distribution: uniform (the reference) or logit-normal.
    #[arg(long, value_enum, default_value_t = TimeArg::Uniform)]
    time_sampling: TimeArg,
    /// Mean and standard deviation of the logit-normal time distribution.
    #[arg(long, num_args = 2, value_names = ["MEAN", "STD"], default_values_t = [0.0, 1.0])]
    logit_normal: Vec<f32>,
    /// Pairing of data and noise in a batch: independent (the reference) or minibatch-ot.
    #[arg(long, value_enum, default_value_t = CouplingArg::Independent)]
    coupling: CouplingArg,
    /// Average each image's target over a reference batch of this many training images (the
    /// batch among them; those of its class for a conditional model): the stable target, less
    /// noisy near t = 1.
    #[arg(long, value_name = "IMAGES")]
    stable_target: Option<usize>,
    /// Decay of the EMA of the weights, used for sampling (0 disables it).
    #[arg(long, default_value_t = 0.999)]
    ema_decay: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f32,
    /// Global gradient-norm clip (0 disables).
    #[arg(long, default_value_t = 1.0)]
    grad_clip: f32,
    #[command(flatten)]
    network: NetworkArgs,
    /// Train a class-conditional model with this many classes (10 for digits; 0: unconditional).
    #[arg(long, default_value_t = 0)]
    classes: usize,
    /// Probability of dropping a label during conditional training (for classifier-free guidance).
    #[arg(long, default_value_t = 0.1)]
    label_dropout: f32,
    /// Seed of initialisation, data order and noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Save a checkpoint every N epochs (0: only the final one).
    #[arg(long, default_value_t = 10)]
    checkpoint_every: usize,
    /// Also save a checkpoint when training time reaches each of these minutes, e.g. 2,5,10,30.
    #[arg(long, value_delimiter = ',')]
    checkpoint_minutes: Vec<f64>,
    /// Mirror each training image left-right with probability 1/2 (not for digits).
    #[arg(long)]
    flip: bool,
    /// What to learn: flow-matching (the velocity), or mean-flow (the average velocity over an
    /// interval, for one-step sampling; the network gets an interval input).
    #[arg(long, value_enum, default_value_t = ObjectiveArg::FlowMatching)]
    objective: ObjectiveArg,
    /// Mean flow: fraction of steps with an empty interval (plain flow matching).
    #[arg(long, default_value_t = 0.75)]
    mean_flow_equal: f32,
    /// Mean flow: step of the finite difference that stands in for the Jacobian-vector product
    /// (1e-5: the smallest error, 0.4 %, against an exact JVP; see tests/few_step.rs).
    #[arg(long, default_value_t = 1e-5)]
    mean_flow_epsilon: f32,
    /// Start from these weights (a checkpoint of the same network) instead of a fresh network.
    #[arg(long)]
    init_from: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ObjectiveArg {
    FlowMatching,
    MeanFlow,
}

impl TrainArgs {
    fn objective(&self) -> Objective {
        match self.objective {
            ObjectiveArg::FlowMatching => Objective::FlowMatching,
            ObjectiveArg::MeanFlow => Objective::MeanFlow {
                equal_fraction: self.mean_flow_equal,
                epsilon: self.mean_flow_epsilon,
            },
        }
    }

    /// The run's configuration for training data `data`.
    fn config(&self, data: &ImageSet) -> Result<TrainConfig> {
        let mean_flow = matches!(self.objective, ObjectiveArg::MeanFlow);
        let classes = (self.classes > 0).then_some(self.classes);
        let class_names = match classes {
            Some(_) => data.classes.clone(),
            None => Vec::new(),
        };
        if let Some(name) = &self.preset {
            let mut config = recipes::recipe(name)?;
            config.model = config
                .model
                .with_classes(classes)
                .with_image_shape(data.shape())
                .with_interval(mean_flow);
            config.objective = self.objective();
            config.init_from = self.init_from.clone();
            config.data = self.data.data.clone();
            config.data_limit = self.data.limit;
            config.holdout = self.data.holdout;
            config.class_names = class_names;
            config.flip |= self.flip;
            config.seed = self.seed;
            config.max_steps = self.steps.or(config.max_steps);
            config.max_minutes = self.max_minutes.or(config.max_minutes);
            config.checkpoint_minutes = self.checkpoint_minutes.clone();
            config.validate()?;
            return Ok(config);
        }
        Ok(TrainConfig {
            model: self
                .network
                .config(classes)?
                .with_image_shape(data.shape())
                .with_interval(mean_flow),
            objective: self.objective(),
            init_from: self.init_from.clone(),
            label_dropout: self.label_dropout,
            data: self.data.data.clone(),
            data_limit: self.data.limit,
            holdout: self.data.holdout,
            class_names,
            flip: self.flip,
            epochs: self.epochs,
            max_steps: self.steps,
            max_minutes: self.max_minutes,
            batch_size: self.batch_size,
            lr: self.lr,
            lr_schedule: match self.lr_schedule {
                ScheduleArg::Constant => LrSchedule::Constant,
                ScheduleArg::Cosine => LrSchedule::WarmupCosine {
                    warmup_steps: self.warmup_steps,
                },
            },
            ema_decay: (self.ema_decay > 0.0).then_some(self.ema_decay),
            coupling: match self.coupling {
                CouplingArg::Independent => Coupling::Independent,
                CouplingArg::MinibatchOt => Coupling::MinibatchOt,
            },
            stable_target: self.stable_target,
            time_sampling: match self.time_sampling {
                TimeArg::Uniform => TimeSampling::Uniform,
                TimeArg::LogitNormal => TimeSampling::LogitNormal {
                    mean: self.logit_normal[0],
                    std: self.logit_normal[1],
                },
            },
            weight_decay: self.weight_decay,
            grad_clip: (self.grad_clip > 0.0).then_some(self.grad_clip),
            seed: self.seed,
            checkpoint_every: self.checkpoint_every,
            checkpoint_minutes: self.checkpoint_minutes.clone(),
            ..TrainConfig::default()
        })
    }
}

/// The network's architecture and shape.
#[derive(Args)]
struct NetworkArgs {
    /// Network architecture.
    #[arg(long, value_enum, default_value_t = ArchArg::Simple)]
    arch: ArchArg,
    /// SimpleUNet: channel widths of the three levels, e.g. 64,128,256 (each a multiple of 8)
    /// [default: 64,128,256, the reference].
    #[arg(long, value_parser = parse_widths)]
    widths: Option<[usize; 3]>,
    /// SimpleUNet: size of the time embedding.
    #[arg(long, default_value_t = 32)]
    time_dim: usize,
    /// Residual U-Net: its size, tiny, small or base.
    #[arg(long, default_value = "small")]
    size: String,
    /// Residual U-Net: width of the first level (overrides the size's).
    #[arg(long)]
    base_channels: Option<usize>,
    /// Residual U-Net: width multiplier per level, e.g. 1,2,2.
    #[arg(long, value_parser = parse_list)]
    channel_mult: Option<List>,
    /// Residual U-Net: residual blocks per level.
    #[arg(long)]
    res_blocks: Option<usize>,
    /// Residual U-Net: resolutions with self-attention, e.g. 14,7 (or none).
    #[arg(long, value_parser = parse_list)]
    attention: Option<List>,
    /// Residual U-Net: channels per attention head.
    #[arg(long)]
    head_channels: Option<usize>,
    /// Residual U-Net: dropout in the residual blocks.
    #[arg(long, default_value_t = 0.0)]
    dropout: f32,
    /// Height and width to bring the images to (resized, centre-cropped) [default: the data
    /// set's own; 28 for `bench`].
    #[arg(long)]
    image_size: Option<usize>,
    /// Image channels to bring the images to: 1 (grey) or 3 (colour) [default: the data set's
    /// own; 1 for `bench`].
    #[arg(long)]
    channels: Option<usize>,
}

impl NetworkArgs {
    /// The network asked for, for 28x28 grey images unless --image-size / --channels say
    /// otherwise (training brings it to the data's shape with `with_image_shape`).
    fn config(&self, classes: Option<usize>) -> Result<NetworkConfig> {
        let config = match self.arch {
            ArchArg::Simple => NetworkConfig::Simple(UNetConfig {
                widths: self.widths.unwrap_or(UNetConfig::REFERENCE.widths),
                time_dim: self.time_dim,
                num_classes: classes,
                image_size: self.image_size.unwrap_or(28),
                in_channels: self.channels.unwrap_or(1),
                interval: false,
            }),
            ArchArg::Resunet => {
                let mut c = ResUNetConfig::preset(&self.size)?;
                if let Some(channels) = self.base_channels {
                    c.channels = channels;
                }
                if let Some(List(mult)) = &self.channel_mult {
                    c.channel_mult = mult.clone();
                }
                if let Some(blocks) = self.res_blocks {
                    c.res_blocks = blocks;
                }
                if let Some(h) = self.head_channels {
                    c.head_channels = h;
                }
                c.dropout = self.dropout;
                c.num_classes = classes;
                c.in_channels = self.channels.unwrap_or(1);
                // The size's attention moves with the image size; --attention is as given.
                let mut c = c.with_image_size(self.image_size.unwrap_or(28));
                if let Some(List(attention)) = &self.attention {
                    c.attention = attention.clone();
                }
                NetworkConfig::Res(c)
            }
        };
        config.validate()?;
        Ok(config)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ArchArg {
    /// The reference SimpleUNet (--widths, --time-dim).
    Simple,
    /// The residual U-Net with attention (--size and its overrides).
    Resunet,
}

/// A comma-separated list of whole numbers (`none`: empty).
#[derive(Debug, Clone)]
struct List(Vec<usize>);

fn parse_list(s: &str) -> std::result::Result<List, String> {
    if s == "none" {
        return Ok(List(Vec::new()));
    }
    s.split(',')
        .map(|p| p.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .map(List)
        .map_err(|_| format!("'{s}': expected integers like 1,2,2 (or none)"))
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CouplingArg {
    Independent,
    MinibatchOt,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TimeArg {
    Uniform,
    LogitNormal,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ScheduleArg {
    Constant,
    Cosine,
}

#[derive(Args)]
struct DemoArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Output folder.
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
    /// Optimiser steps [default: the demo recipe's, about 5 minutes on 2 CPU cores].
    #[arg(long)]
    steps: Option<u64>,
    /// Train a class-conditional model with this many classes instead (labels dropped 10% of
    /// the time, so it samples without labels too); it also writes a guided grid with one row
    /// per class. 0, the default, trains an unconditional model, as the reference.
    #[arg(long, default_value_t = 0)]
    classes: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Height and width to bring the images to [default: the data set's own].
    #[arg(long)]
    image_size: Option<usize>,
    /// Image channels to bring the images to, 1 or 3 [default: the data set's own].
    #[arg(long)]
    channels: Option<usize>,
}

#[derive(Args)]
struct SolverArgs {
    /// ODE solver: euler (the reference), midpoint, heun, rk4, dopri5 (adaptive).
    #[arg(long, default_value = "euler")]
    solver: Solver,
    /// Relative and absolute tolerance of dopri5.
    #[arg(long, default_value_t = 1e-5)]
    tol: f32,
    /// Time grid of the fixed-step solvers: uniform, or shifted (towards one end, by --grid-shift).
    #[arg(long, value_enum, default_value_t = GridArg::Uniform)]
    time_grid: GridArg,
    /// Shift s of the shifted grid, t = s u / (1 + (s - 1) u): s < 1 puts more steps near t = 0
    /// (data), s > 1 near t = 1 (noise).
    #[arg(long, default_value_t = 0.5)]
    grid_shift: f32,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum GridArg {
    Uniform,
    Shifted,
}

impl SolverArgs {
    fn solver(&self) -> Result<Solver> {
        if self.tol.is_nan() || self.tol <= 0.0 {
            bail!("invalid --tol: must be positive");
        }
        Ok(match self.solver {
            Solver::Dopri5 { .. } => Solver::Dopri5 {
                rtol: self.tol,
                atol: self.tol,
            },
            other => other,
        })
    }

    fn grid(&self) -> Result<TimeGrid> {
        Ok(match self.time_grid {
            GridArg::Uniform => TimeGrid::Uniform,
            GridArg::Shifted if self.grid_shift > 0.0 => TimeGrid::Shifted(self.grid_shift),
            GridArg::Shifted => bail!("invalid --grid-shift: must be positive"),
        })
    }
}

#[derive(Args)]
struct ClassifierArgs {
    #[command(subcommand)]
    command: ClassifierCommand,
}

#[derive(Subcommand)]
enum ClassifierCommand {
    /// Train on the training split, report accuracy on the held-out split, save weights + accuracy.
    Train {
        #[command(flatten)]
        data: DataArgs,
        /// Training epochs.
        #[arg(long, default_value_t = ClassifierRecipe::PINNED.epochs)]
        epochs: usize,
        /// Peak learning rate (warm-up, then cosine decay).
        #[arg(long, default_value_t = ClassifierRecipe::PINNED.lr)]
        lr: f64,
        /// Train on the images as they are, without random rotations, scalings and shifts.
        #[arg(long)]
        no_augment: bool,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output weights.
        #[arg(long, default_value = "runs/classifier.safetensors")]
        out: PathBuf,
    },
}

/// What `eval` measures sample quality in, and against what.
#[derive(Args)]
struct FeatureArgs {
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
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Features {
    Classifier,
    Inception,
}

impl FeatureArgs {
    /// The Inception network when --features inception, from --inception-weights or the cache.
    fn inception(&self, data: &DataArgs, device: &Device) -> Result<Option<(Inception, PathBuf)>> {
        if self.features != Features::Inception {
            if self.inception_weights.is_some() {
                bail!("--inception-weights is for --features inception");
            }
            return Ok(None);
        }
        let cache = data.cache_dir.clone().unwrap_or_else(default_cache_dir);
        let cached = cache.join("inception").join(inception::WEIGHTS_FILE);
        let path = match self.inception_weights.as_deref() {
            Some("download") => {
                eprintln!(
                    "inception: {} (downloaded and verified into {} unless already there)",
                    inception::WEIGHTS_URL,
                    cached.display()
                );
                let (url, sha) = (inception::WEIGHTS_URL, inception::WEIGHTS_SHA256);
                inception::ensure_weights(&cache, url, sha)?
            }
            Some(path) => {
                let path = PathBuf::from(path);
                if sha256_file(&path)? != inception::WEIGHTS_SHA256 {
                    eprintln!(
                        "warning: {} is not pytorch-fid's published weights file (another \
                         SHA-256): these are not the standard FID's features",
                        path.display()
                    );
                }
                path
            }
            None if !cached.is_file() => bail!(
                "--features inception needs pytorch-fid's weights: give --inception-weights \
                 PATH, or --inception-weights download to fetch them into {}",
                cached.display()
            ),
            None if sha256_file(&cached)? != inception::WEIGHTS_SHA256 => bail!(
                "{} is damaged (its SHA-256 is not pytorch-fid's): --inception-weights \
                 download fetches it again",
                cached.display()
            ),
            None => cached,
        };
        Ok(Some((Inception::load(&path, device)?, path)))
    }

    /// The images measured against: every image of --reference at `shape`, or the data set's
    /// held-out split.
    fn reference_images(&self, data: &DataArgs, shape: [usize; 3]) -> Result<ImageSet> {
        let Some(dir) = &self.reference else {
            return data.load_for(Split::Test, shape);
        };
        let folder = DataArgs {
            data: dir.display().to_string(),
            holdout: 0.0,
            limit: None,
            ..data.clone()
        };
        folder.load_for(Split::Train, shape)
    }
}

#[derive(Args)]
struct EvalArgs {
    /// Model checkpoint (repeatable: the models are measured side by side, on the same noise
    /// and reference, and plotted together).
    #[arg(long, required = true)]
    checkpoint: Vec<PathBuf>,
    /// Classifier written by `flowmatch classifier train` [default: the pinned digit classifier
    /// shipped with flowmatch, for MNIST data].
    #[arg(long)]
    classifier: Option<PathBuf>,
    #[command(flatten)]
    features: FeatureArgs,
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
    /// Time grid of the fixed-step solvers: uniform, or shifted (towards one end, by --grid-shift).
    #[arg(long, value_enum, default_value_t = GridArg::Uniform)]
    time_grid: GridArg,
    /// Shift s of the shifted grid, t = s u / (1 + (s - 1) u): s < 1 puts more steps near t = 0
    /// (data), s > 1 near t = 1 (noise).
    #[arg(long, default_value_t = 0.5)]
    grid_shift: f32,
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
    /// Euler steps of the conditional sampling.
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

#[derive(Args)]
struct SampleArgs {
    /// Checkpoint (.safetensors; flowmatch's or a PyTorch state_dict export).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Number of samples.
    #[arg(long, default_value_t = 64)]
    n: usize,
    /// Steps of the fixed-step solvers (ignored by dopri5).
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Seed of the starting noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output grid PNG (of at most the first 1024 samples; with more, all of them also go to a
    /// tensor file: --save-tensor, or the grid's name with .safetensors).
    #[arg(long, default_value = "samples.png")]
    out: PathBuf,
    /// Read the starting noise from this safetensors file (tensor `x1`, [N,1,28,28] f32).
    #[arg(long)]
    init_noise: Option<PathBuf>,
    /// Also write the raw final samples (tensor `x0`, before clamping) to this safetensors file.
    #[arg(long)]
    save_tensor: Option<PathBuf>,
    /// Use the raw weights even when the checkpoint holds an EMA.
    #[arg(long)]
    no_ema: bool,
    /// Images generated per network call: peak memory depends on this, not on --n.
    #[arg(long, default_value_t = sampling::DEFAULT_CHUNK)]
    batch_size: usize,
    #[command(flatten)]
    solver: SolverArgs,
    /// Conditional models: generate this digit (class).
    #[arg(long, conflicts_with = "digits")]
    digit: Option<usize>,
    /// Conditional models: one row per class, e.g. 0-9 or 1,3,7 (--n samples per row).
    #[arg(long, value_parser = parse_digits)]
    digits: Option<Digits>,
    /// Classifier-free guidance scale w: v = v_uncond + w (v_cond - v_uncond); 1 is plain conditional.
    #[arg(long, default_value_t = 1.0)]
    guidance: f32,
}

/// Classes given as a range (`0-9`) or a list (`1,3,7`).
#[derive(Debug, Clone)]
struct Digits(Vec<usize>);

fn parse_digits(s: &str) -> std::result::Result<Digits, String> {
    parse_digit_list(s).map(Digits)
}

fn parse_digit_list(s: &str) -> std::result::Result<Vec<usize>, String> {
    let bad = || {
        format!(
            "'{s}': expected a range like 0-9 or a list like 1,3,7 (at most {MAX_CLASSES} classes)"
        )
    };
    if let Some((a, b)) = s.split_once('-') {
        let (a, b) = (
            a.trim().parse::<usize>().map_err(|_| bad())?,
            b.trim().parse::<usize>().map_err(|_| bad())?,
        );
        return if a <= b && b - a < MAX_CLASSES {
            Ok((a..=b).collect())
        } else {
            Err(bad())
        };
    }
    s.split(',')
        .map(|p| p.trim().parse::<usize>().map_err(|_| bad()))
        .collect()
}

#[derive(Args)]
struct TrajectoryArgs {
    /// Checkpoint (.safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Number of samples (rows of the strip).
    #[arg(long, default_value_t = 1)]
    n: usize,
    /// Steps of the fixed-step solvers (ignored by dopri5).
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Seed of the starting noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output strip PNG.
    #[arg(long, default_value = "trajectory.png")]
    out: PathBuf,
    /// Output animated GIF of every step.
    #[arg(long, default_value = "trajectory.gif")]
    gif: PathBuf,
    /// Use the raw weights even when the checkpoint holds an EMA.
    #[arg(long)]
    no_ema: bool,
    #[command(flatten)]
    solver: SolverArgs,
}

/// Most samples a trajectory view shows (it keeps every frame of each in memory).
const MAX_TRAJECTORY_ROWS: usize = 64;
/// Most values the frames of a trajectory may hold (1 GiB of f32).
const MAX_TRAJECTORY_FLOATS: usize = 1 << 28;

#[derive(Args)]
struct BenchArgs {
    /// The network to measure (default: SimpleUNet at the reference widths 64,128,256 and the
    /// half 32,64,128, each in its own process so that peak memory is per width).
    #[command(flatten)]
    network: NetworkArgs,
    /// Shorter runs (1 warm-up, 2 timed steps, 1 sampling run), for a quick look.
    #[arg(long)]
    quick: bool,
    /// Images per training step.
    #[arg(long, default_value_t = 128)]
    train_batch: usize,
    /// Images per sampling run.
    #[arg(long, default_value_t = 64)]
    sample_batch: usize,
}

fn parse_widths(s: &str) -> std::result::Result<[usize; 3], String> {
    let parts: Vec<usize> = s
        .split(',')
        .map(|p| p.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| format!("'{s}': expected three integers like 64,128,256"))?;
    let widths: [usize; 3] = parts
        .try_into()
        .map_err(|_| format!("'{s}': expected exactly three widths"))?;
    UNetConfig::with_widths(widths)
        .validate()
        .map_err(|e| e.to_string())?;
    Ok(widths)
}

fn main() -> ExitCode {
    set_signal_dispositions();
    flowmatch::device::reuse_freed_memory();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line: what was wrong with which flag (clap's usage hint dropped).
            let rendered = e.render().to_string();
            eprintln!(
                "{} (see --help)",
                rendered.lines().next().unwrap_or("invalid arguments")
            );
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Signals that would otherwise end the program badly:
/// - output piped into a reader that stops early (`flowmatch info CKPT | head -3`) ends the
///   process quietly, as other command-line tools do, instead of a panic in `println!`: SIGPIPE
///   gets its default action back (Rust's runtime ignores it; sockets are not affected, the
///   standard library sends with MSG_NOSIGNAL);
/// - a file-size limit (`ulimit -f`) makes a write fail with an error that is reported, like a
///   full disk, instead of killing the process with SIGXFSZ.
fn set_signal_dispositions() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to a default or to "ignore" has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Some(n) = cli.threads {
        if n == 0 {
            bail!("invalid --threads: must be positive");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("setting the thread count")?;
    }
    let device = device_from_name(&cli.device)?;
    // A command runs on one of rayon's worker threads (rayon::scope from outside the pool runs
    // its body there), so that each parallel kernel starts on the calling worker instead of
    // waking the pool from outside and sleeping until it is done: about 6 % less wall time in
    // training. `serve` stays outside: its request loop would hold a worker for good.
    match cli.command {
        Command::Serve(_) => run_command(cli.command, &device),
        command => rayon::scope(|_| run_command(command, &device)),
    }
}

/// Runs one command on `device`.
fn run_command(command: Command, device: &Device) -> Result<()> {
    match command {
        Command::Demo(args) => demo(args, device),
        Command::Train(args) => {
            if args.list_presets {
                let width = recipes::RECIPES.iter().map(|r| r.name.len()).max();
                for r in recipes::RECIPES {
                    println!("{:<w$} {}", r.name, r.summary, w = width.unwrap_or(0));
                }
                return Ok(());
            }
            let outcome = match &args.resume {
                Some(dir) => {
                    let config = training::resume_config(dir)?;
                    let data = args
                        .data
                        .for_run(&config)
                        .load_for(Split::Train, config.model.image_shape())?;
                    println!(
                        "resuming {} ({} steps planned)",
                        dir.display(),
                        config.max_steps.map_or("all".into(), |s| s.to_string())
                    );
                    with_progress(|observer| training::resume(&data, dir, device, observer))?
                }
                None => {
                    let (config, data) = match &args.config {
                        Some(path) => {
                            let config = read_config(path)?;
                            let data = args
                                .data
                                .for_run(&config)
                                .load_for(Split::Train, config.model.image_shape())?;
                            (config, data)
                        }
                        None => {
                            let network = &args.network;
                            let data = args.data.load(
                                Split::Train,
                                network.image_size,
                                network.channels,
                            )?;
                            (args.config(&data)?, data)
                        }
                    };
                    println!(
                        "training {} on {} images of {}",
                        config.model.describe(),
                        data.len(),
                        config.data
                    );
                    with_progress(|observer| {
                        training::train(&config, &data, &args.out, device, observer)
                    })?
                }
            };
            if outcome.interrupted {
                println!(
                    "interrupted after step {}: saved {}; continue with: flowmatch train --resume {}",
                    outcome.steps,
                    outcome.checkpoint.display(),
                    outcome
                        .checkpoint
                        .parent()
                        .unwrap_or(Path::new("."))
                        .display()
                );
                return Ok(());
            }
            println!("final checkpoint: {}", outcome.checkpoint.display());
            println!("loss curve:       {}", outcome.loss_curve.display());
            println!("metrics:          {}", outcome.metrics.display());
            Ok(())
        }
        Command::Sample(args) => sample(args, device),
        Command::Trajectory(args) => {
            let model = load_model(&args.checkpoint, device, args.no_ema)?;
            check_counts(args.n, args.steps)?;
            if args.n > MAX_TRAJECTORY_ROWS {
                bail!(
                    "invalid --n: a trajectory keeps every frame of every sample; at most \
                     {MAX_TRAJECTORY_ROWS} rows (use `sample` for many samples)"
                );
            }
            let floats = (args.steps + 1) * args.n * model.image_shape().iter().product::<usize>();
            if floats > MAX_TRAJECTORY_FLOATS {
                bail!(
                    "invalid --steps / --n: a trajectory keeps every frame in memory; \
                     {} steps of {} samples need {} MB (at most {} MB: fewer steps or samples)",
                    args.steps,
                    args.n,
                    (floats * 4) >> 20,
                    (MAX_TRAJECTORY_FLOATS * 4) >> 20
                );
            }
            refuse_to_replace(&args.checkpoint, &[&args.out, &args.gif])?;
            let x1 = sampling::initial_noise(&model, args.n, args.seed, device)?;
            let (solver, grid) = (args.solver.solver()?, args.solver.grid()?);
            write_trajectory(&model, x1, solver, args.steps, grid, &args.out, &args.gif)
        }
        Command::Bench(args) => run_bench(args, device),
        Command::Classifier(args) => classifier(args, device),
        Command::Eval(args) => evaluate(args, device),
        Command::Curve(args) => curve(args, device),
        Command::Info { checkpoint } => info(&checkpoint),
        Command::Reflow(args) => few_step(FewStep::Reflow, args, device),
        Command::Distill(args) => {
            if args.student_steps == 0 {
                bail!("invalid --student-steps: must be positive");
            }
            few_step(FewStep::Distill(args.student_steps), args.run, device)
        }
        Command::Serve(args) => {
            let server = Server::bind(
                &ServeOptions {
                    checkpoints: args.checkpoint,
                    host: args.host,
                    port: args.port,
                    run: args.run,
                    workers: 4,
                },
                device,
            )?;
            println!(
                "serving {} on {} (Ctrl-C to stop)",
                server.model_names().join(", "),
                server.url()
            );
            server.run();
            Ok(())
        }
    }
}

fn read_config(path: &Path) -> Result<TrainConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let config: TrainConfig = toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: bad training configuration: {}",
            path.display(),
            e.message()
        )
    })?;
    config
        .validate()
        .with_context(|| path.display().to_string())?;
    Ok(config)
}

fn check_counts(n: usize, steps: usize) -> Result<()> {
    if n == 0 {
        bail!("invalid --n: must be positive");
    }
    if sampling::check_steps(steps).is_err() {
        bail!("invalid --steps: from 1 to {}", sampling::MAX_STEPS);
    }
    Ok(())
}

fn load_model(path: &Path, device: &Device, no_ema: bool) -> Result<Network> {
    let weights = if no_ema {
        Weights::Raw
    } else {
        Weights::PreferEma
    };
    Ok(checkpoint::load_weights(path, device, weights)?.model)
}

struct ProgressObserver {
    bar: ProgressBar,
    stop: Arc<AtomicBool>,
}

impl TrainObserver for ProgressObserver {
    fn on_start(&mut self, total_steps: u64, done_steps: u64) {
        self.bar.set_length(total_steps);
        self.bar.set_position(done_steps);
        self.bar.reset_eta();
    }
    fn on_step(&mut self, r: &StepReport) {
        self.bar.set_message(format!(
            "epoch {} loss {:.4} {:.0} img/s",
            r.epoch + 1,
            r.loss,
            r.img_s
        ));
        self.bar.inc(1);
    }
    fn on_epoch(&mut self, r: &EpochReport) {
        self.bar.println(format!(
            "epoch {:>3}: mean loss {:.4} ({:.1} s)",
            r.epoch + 1,
            r.mean_loss,
            r.seconds
        ));
    }
    fn on_checkpoint(&mut self, path: &Path) {
        self.bar.println(format!("checkpoint: {}", path.display()));
    }
    fn should_stop(&mut self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// Runs `train` with a progress bar; Ctrl-C or SIGTERM asks it to save and stop.
fn with_progress<T>(
    train: impl FnOnce(&mut dyn TrainObserver) -> flowmatch::Result<T>,
) -> Result<T> {
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .expect("valid template"),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // Only the first handler can be installed; later runs in the same process share it.
    let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    let mut observer = ProgressObserver { bar, stop };
    let outcome = train(&mut observer);
    observer.bar.finish_and_clear();
    Ok(outcome?)
}

fn sample(args: SampleArgs, device: &Device) -> Result<()> {
    let model = load_model(&args.checkpoint, device, args.no_ema)?;
    check_counts(args.n, args.steps)?;
    // Class labels per sample (conditional models) and the grid's columns.
    let (classes, grid_columns) = match (args.digit, &args.digits) {
        (Some(d), _) => (
            ClassPlan::Rows {
                classes: vec![d],
                per_class: args.n,
            },
            None,
        ),
        (None, Some(Digits(rows))) => (
            ClassPlan::Rows {
                classes: rows.clone(),
                per_class: args.n,
            },
            Some(args.n),
        ),
        (None, None) => (ClassPlan::Unconditional, None),
    };
    let job = SampleJob {
        n: args.n,
        classes,
        init_noise: args.init_noise.clone(),
        seed: args.seed,
        generation: Generation {
            solver: args.solver.solver()?,
            steps: args.steps,
            grid: args.solver.grid()?,
            guidance: args.guidance,
            chunk: args.batch_size,
        },
        grid: args.out.clone(),
        grid_columns,
        tensor: args.save_tensor.clone(),
        inputs: vec![args.checkpoint.clone()],
    };
    let bar = progress_bar(0, "samples");
    let report = sample_to_files(&model, &job, device, |k, total| {
        bar.set_length(total as u64);
        bar.inc(k as u64)
    })?;
    bar.finish_and_clear();
    let (low, high) = report.nfe;
    let nfe = if low == high {
        low.to_string()
    } else {
        format!("{low}-{high} (per chunk)")
    };
    let count = report.count;
    println!(
        "{count} samples, {}, {} steps, NFE {nfe}, {:.1} s ({:.1} img/s)",
        job.generation.solver,
        report.steps,
        report.seconds,
        count as f64 / report.seconds
    );
    if report.in_grid < count {
        println!(
            "grid (the first {} of {count} samples): {}",
            report.in_grid,
            args.out.display()
        );
    } else {
        println!("grid: {}", args.out.display());
    }
    if let Some(path) = &report.tensor {
        println!("raw samples (tensor x0, all {count}): {}", path.display());
    }
    Ok(())
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
fn progress_bar(len: u64, unit: &str) -> ProgressBar {
    ProgressBar::new(len).with_style(
        ProgressStyle::with_template(&format!(
            "{{bar:30}} {{pos}}/{{len}} {unit} [{{elapsed_precise}}<{{eta_precise}}]"
        ))
        .expect("valid template"),
    )
}

fn write_trajectory(
    model: &Network,
    x1: burn::tensor::Tensor<4>,
    solver: Solver,
    steps: usize,
    grid: TimeGrid,
    strip: &Path,
    gif: &Path,
) -> Result<()> {
    let trajectory = sampling::trajectory(model, x1, solver, steps, grid);
    image_out::save_trajectory_strip(&trajectory.key_frames(), model.image_shape(), strip)?;
    image_out::save_trajectory_gif(&trajectory.frames, model.image_shape(), gif)?;
    println!("trajectory strip: {}", strip.display());
    println!("trajectory GIF:   {}", gif.display());
    Ok(())
}

fn demo(args: DemoArgs, device: &Device) -> Result<()> {
    let data = args
        .data
        .load(Split::Train, args.image_size, args.channels)?;
    let options = DemoOptions {
        out: args.out.clone(),
        steps: args.steps,
        classes: args.classes,
        seed: args.seed,
        data: args.data.data.clone(),
        sampling_steps: flowmatch::demo::DEMO_SAMPLING_STEPS,
    };
    let config = flowmatch::demo::config(&options);
    println!(
        "demo: training {} for {} steps (batch {}, lr {}) on {} images ({}); about 5 minutes on \
         2 CPU cores with AVX-512, 7-11 without",
        config.model.describe(),
        config.max_steps.unwrap_or(0),
        config.batch_size,
        config.lr,
        data.len(),
        args.data.data
    );
    let started = Instant::now();
    let report = with_progress(|observer| flowmatch::demo::run(&options, &data, device, observer))?;
    if report.outcome.interrupted {
        println!("interrupted: saved {}", report.outcome.checkpoint.display());
        return Ok(());
    }
    println!(
        "trained {} steps, final loss {:.4}; {:.0} s in all",
        report.outcome.steps,
        report.outcome.final_loss,
        started.elapsed().as_secs_f64()
    );
    let steps = flowmatch::demo::DEMO_SAMPLING_STEPS;
    println!(
        "samples (64, {steps} Euler steps, time grid {}, no labels): {}",
        flowmatch::demo::DEMO_TIME_GRID,
        report.samples.display()
    );
    if let Some(path) = &report.class_rows {
        println!(
            "one row per class (guidance {}, {steps} Euler steps): {}",
            flowmatch::demo::DEMO_GUIDANCE,
            path.display()
        );
    }
    println!("trajectory strip: {}", report.trajectory.display());
    println!("trajectory GIF:   {}", report.gif.display());
    println!("loss curve:       {}", report.outcome.loss_curve.display());
    println!("checkpoint:       {}", report.outcome.checkpoint.display());
    let data = match args.data.data.as_str() {
        "embedded" => String::new(),
        other => format!(" --data {other}"),
    };
    let grid = match flowmatch::demo::DEMO_TIME_GRID {
        TimeGrid::Uniform => String::new(),
        TimeGrid::Shifted(s) => format!(" --time-grid shifted --grid-shift {s}"),
    };
    println!(
        "quality:          flowmatch eval --checkpoint {}{data} --solvers euler --nfe 10,{steps} --n 1000{grid}",
        report.outcome.checkpoint.display()
    );
    println!(
        "watch the flow:   flowmatch serve --checkpoint {}   (then open http://127.0.0.1:8000/)",
        report.outcome.checkpoint.display()
    );
    Ok(())
}

fn run_bench(args: BenchArgs, device: &Device) -> Result<()> {
    if args.network.arch == ArchArg::Simple && args.network.widths.is_none() {
        // One process per width, so that each peak-memory figure is its own.
        let exe = std::env::current_exe().context("locating the flowmatch executable")?;
        for widths in [[64, 128, 256], [32, 64, 128]] {
            let mut cmd = std::process::Command::new(&exe);
            cmd.arg("bench")
                .arg("--widths")
                .arg(format!("{},{},{}", widths[0], widths[1], widths[2]));
            if args.quick {
                cmd.arg("--quick");
            }
            let status = cmd.status().context("running the benchmark")?;
            if !status.success() {
                bail!("benchmark for widths {widths:?} failed ({status})");
            }
        }
        return Ok(());
    }
    if args.train_batch == 0 || args.sample_batch == 0 {
        bail!("invalid --train-batch / --sample-batch: must be positive");
    }
    let mut config = BenchConfig::for_network(args.network.config(None)?);
    config.train_batch = args.train_batch;
    config.sample_batch = args.sample_batch;
    if args.quick {
        config.train_warmup = 1;
        config.train_min_steps = 2;
        config.train_min_time = std::time::Duration::ZERO;
        config.sample_warmup = 0;
        config.sample_min_runs = 1;
        config.sample_min_time = std::time::Duration::ZERO;
    }
    let result = bench::run(&config, device)?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

fn info(path: &Path) -> Result<()> {
    let loaded = checkpoint::load(path, &Device::flex())?;
    let config = loaded.model.config();
    let params: usize = loaded
        .model
        .named_parameters()
        .iter()
        .map(|t| t.values.len())
        .sum();
    println!("checkpoint: {}", path.display());
    println!("network:    {}, {params} parameters", config.describe());
    let in_file = |e: flowmatch::Error| anyhow::anyhow!("{}: {e}", path.display());
    match loaded.ema_info().map_err(in_file)? {
        Some(e) => println!(
            "weights:    EMA (decay {}, {} updates) and raw",
            e.decay, e.updates
        ),
        None => println!("weights:    raw (no EMA)"),
    }
    match loaded.progress().map_err(in_file)? {
        Some(p) => {
            let loss = p
                .last_epoch_loss
                .map_or("none yet".into(), |l| format!("{l:.5}"));
            println!(
                "progress:   {} epochs, {} steps, last epoch loss {loss}",
                p.epoch, p.step
            )
        }
        None => println!("progress:   not recorded (e.g. a PyTorch export)"),
    }
    if let Some(toml) = loaded.metadata.get(checkpoint::META_TRAIN_CONFIG) {
        println!("training configuration:\n{toml}");
    }
    Ok(())
}

fn classifier(args: ClassifierArgs, device: &Device) -> Result<()> {
    let ClassifierCommand::Train {
        data,
        epochs,
        lr,
        no_augment,
        seed,
        out,
    } = args.command;
    let train = data.load(Split::Train, None, None)?;
    let test = data.load_for(Split::Test, train.shape())?;
    let recipe = ClassifierRecipe {
        epochs,
        lr,
        // Rotations for grey digits, flips and shifts for colour pictures.
        augment: classifier::recipe_for(train.len(), train.shape())
            .augment
            .filter(|_| !no_augment),
        seed,
        ..ClassifierRecipe::PINNED
    };
    println!(
        "training the evaluation classifier on {} images ({}), {epochs} epochs{}",
        train.len(),
        data.data,
        if no_augment { "" } else { ", augmented" }
    );
    let started = Instant::now();
    let (model, info) =
        classifier::fit(&train, &test, &recipe, &data.data, device, |epoch, loss| {
            println!(
                "epoch {:>2}: mean loss {loss:.4} ({:.0} s)",
                epoch + 1,
                started.elapsed().as_secs_f64()
            );
        })?;
    model.save(&info, &out)?;
    println!(
        "held-out accuracy: {:.2}% on {} images",
        100.0 * info.test_accuracy,
        test.len()
    );
    println!("classifier: {}", out.display());
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

fn evaluate(args: EvalArgs, device: &Device) -> Result<()> {
    let models = args
        .checkpoint
        .iter()
        .map(|path| load_model(path, device, args.no_ema))
        .collect::<Result<Vec<_>>>()?;
    let shape = models[0].image_shape();
    if let Some(i) = models.iter().position(|m| m.image_shape() != shape) {
        bail!(
            "{}: its images are {:?}, those of {} {shape:?}: models are compared on one data set",
            args.checkpoint[i].display(),
            models[i].image_shape(),
            args.checkpoint[0].display()
        );
    }
    let source = DataSource::parse(&args.data.data);
    if args.features.features == Features::Inception && args.classifier.is_some() {
        bail!("--classifier is for --features classifier");
    }
    let inception = args.features.inception(&args.data, device)?;
    let test = args.features.reference_images(&args.data, shape)?;
    // The pinned classifier reads MNIST's 28x28 digits; other shapes train one on the labels.
    let pinned_fits = source.is_mnist() && shape == [1, 28, 28];
    let needs_classifier = inception.is_none();
    let needs_train =
        args.memorisation || (needs_classifier && args.classifier.is_none() && !pinned_fits);
    let train = match needs_train {
        true => Some(args.data.load_for(Split::Train, shape)?),
        false => None,
    };
    let (classifier, classifier_name) = match (&args.classifier, &train) {
        _ if !needs_classifier => (None, String::new()),
        (Some(path), _) => (
            Some(Classifier::load(path, device)?),
            path.display().to_string(),
        ),
        (None, Some(train)) if !pinned_fits => {
            let cache = args
                .data
                .cache_dir
                .clone()
                .unwrap_or_else(default_cache_dir);
            let found = evaluation::yardstick(
                &source,
                &args.data.data,
                train,
                &test,
                &cache,
                device,
                |note| println!("{note}"),
            )?;
            (
                found,
                format!("classifier trained on {}'s labels", args.data.data),
            )
        }
        _ => (
            Some(Classifier::pinned(device)?),
            "pinned digit classifier".to_string(),
        ),
    };
    let grid = SolverArgs {
        solver: Solver::Euler,
        tol: 1e-5,
        time_grid: args.time_grid,
        grid_shift: args.grid_shift,
    }
    .grid()?;
    if args.batch_size == 0 || args.conditional_steps == 0 {
        bail!("invalid --batch-size / --conditional-steps: must be positive");
    }
    if args.nfe.contains(&0) || args.dopri_tols.iter().any(|t| t.is_nan() || *t <= 0.0) {
        bail!("invalid --nfe / --dopri-tols: values must be positive");
    }
    let options = EvalOptions {
        plan: EvalPlan {
            solvers: args.solvers.clone(),
            nfe: args.nfe.clone(),
            dopri_tolerances: args.dopri_tols.clone(),
            grid,
            n: args.n,
            seed: args.seed,
            chunk: args.batch_size,
        },
        guidance_scales: args.guidance_scales.clone(),
        conditional_steps: args.conditional_steps,
        likelihood: (args.nll_images > 0).then_some(LikelihoodOptions {
            images: args.nll_images,
            steps: args.nll_steps,
            divergence: match args.nll_exact {
                true => Divergence::Exact { chunk: 112 },
                false => Divergence::Hutchinson,
            },
        }),
        straightness: args.straightness,
        memorisation: args.memorisation,
    };
    let held_out = match &args.features.reference {
        Some(dir) => format!("images of {}", dir.display()),
        None => "held-out images".to_string(),
    };
    match (&inception, &classifier) {
        (Some((_, path)), _) => println!(
            "features: pytorch-fid's Inception ({}); {} samples per setting vs {} {held_out}",
            path.display(),
            args.n,
            args.n
        ),
        (None, Some((_, info))) => println!(
            "classifier: {classifier_name} ({:.2}% held-out accuracy); {} samples per setting \
             vs {} held-out images",
            100.0 * info.test_accuracy,
            args.n,
            args.n
        ),
        (None, None) => println!(
            "{}: no labels, so no classifier: cFID, KID, confidence and class accuracy cannot \
             be measured; measured without one: memorisation (--memorisation), likelihood \
             (--nll-images), straightness (--straightness)",
            args.data.data
        ),
    }
    match inception {
        Some(_) => println!("{:<18} {:>5} {:>9} {:>20}", "solver", "NFE", "FID", "KID"),
        None => println!(
            "{:<18} {:>5} {:>9} {:>20} {:>9} {:>8}",
            "solver", "NFE", "cFID", "KID", "confident", "H(bits)"
        ),
    }
    let yardstick: Option<Yardstick> = match (&inception, &classifier) {
        (Some((net, _)), _) => Some(net.into()),
        (None, Some((c, _))) => Some(c.into()),
        (None, None) => None,
    };
    let (mut lines, mut curves, mut floor) = (String::new(), Vec::new(), None);
    for (model, path) in models.iter().zip(&args.checkpoint) {
        let name = model_name(path);
        if models.len() > 1 {
            println!("{name} ({})", path.display());
        }
        let report = evaluation::evaluate(
            model,
            yardstick,
            train.as_ref(),
            &test,
            &options,
            device,
            |event| {
                // The floor is the same for every model: shown once.
                if floor.is_none() || !matches!(event, EvalEvent::Floor(_)) {
                    print_event(event)
                }
            },
        )?;
        for line in report.json_lines().lines() {
            let mut value: serde_json::Value = serde_json::from_str(line)?;
            value["model"] = name.clone().into();
            if inception.is_some() {
                value["features"] = "inception".into();
            }
            lines.push_str(&format!("{value}\n"));
        }
        for mut curve in report.curves() {
            if models.len() > 1 {
                curve.label = format!("{name} {}", curve.label);
            }
            curves.push(curve);
        }
        floor = floor.or(report.floor);
    }
    flowmatch::tensor_file::write_atomic(&args.out, lines.as_bytes())?;
    println!("results: {}", args.out.display());
    if let (Some(plot), Some(floor)) = (&args.plot, &floor) {
        image_out::quality_plot(&curves, floor.fid, floor.confident, plot)?;
        println!("plot: {}", plot.display());
    }
    Ok(())
}

/// A short name for a checkpoint in tables and legends: its folder for `final.safetensors`,
/// else its file name.
fn model_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map_or(String::new(), |s| s.to_string_lossy().into_owned());
    match (stem.as_str(), path.parent().and_then(|p| p.file_name())) {
        ("final" | "last", Some(dir)) => dir.to_string_lossy().into_owned(),
        _ => stem,
    }
}

fn few_step(kind: FewStep, args: FewStepArgs, device: &Device) -> Result<()> {
    if args.teacher_steps == 0 || args.train_steps == 0 || args.batch_size == 0 {
        bail!("invalid --teacher-steps / --train-steps / --batch-size: must be positive");
    }
    let options = FewStepOptions {
        base: args.checkpoint.clone(),
        pairs: args.pairs,
        teacher: Generation {
            solver: args.teacher_solver,
            ..Generation::euler(args.teacher_steps)
        },
        seed: args.seed,
        out: args.out.clone(),
        recipe: TrainConfig {
            epochs: 100_000,
            max_steps: Some(args.train_steps),
            max_minutes: args.max_minutes,
            batch_size: args.batch_size,
            lr: args.lr,
            lr_schedule: LrSchedule::WarmupCosine { warmup_steps: 100 },
            ema_decay: (args.ema_decay > 0.0).then_some(args.ema_decay),
            seed: args.seed,
            checkpoint_every: 0,
            ..TrainConfig::default()
        },
    };
    let what = match kind {
        FewStep::Reflow => "reflow (2-rectified flow)".to_string(),
        FewStep::Distill(k) => format!("distillation into a {k}-step Euler sampler"),
    };
    println!(
        "{what} of {}: drawing {} pairs ({} {} steps), then {} training steps",
        args.checkpoint.display(),
        args.pairs,
        args.teacher_solver,
        args.teacher_steps,
        args.train_steps
    );
    let bar = progress_bar(
        args.pairs.div_ceil(flowmatch::training::pairs::SHARD) as u64,
        "shards",
    );
    let started = Instant::now();
    let report = with_progress(|observer| {
        few_step::run(
            kind,
            &options,
            device,
            |done, _| bar.set_position(done as u64),
            observer,
        )
    })?;
    bar.finish_and_clear();
    println!(
        "pairs: {} shard(s) in {} ({} reused), NFE {} per pair",
        report.pairs.shards.len(),
        args.out.join("pairs").display(),
        report.pairs.reused,
        report.pairs.nfe
    );
    println!(
        "straightness (0 = straight): {:.4} before, {:.4} after",
        report.straightness_before, report.straightness_after
    );
    println!(
        "trained {} steps; {:.0} s in all; checkpoint: {}",
        report.outcome.steps,
        started.elapsed().as_secs_f64(),
        report.outcome.checkpoint.display()
    );
    Ok(())
}

fn curve(args: CurveArgs, device: &Device) -> Result<()> {
    if args.nfe.is_empty() || args.nfe.contains(&0) {
        bail!("invalid --nfe: values must be positive");
    }
    for run in &args.run {
        let config = run.join("config.toml");
        if let Ok(config) = read_config(&config)
            && !DataSource::parse(&config.data).is_mnist()
        {
            bail!(
                "{}: trained on '{}'; curve measures MNIST runs, with the pinned digit \
                 classifier (use eval --data for other data)",
                run.display(),
                config.data
            );
        }
    }
    let (classifier, _) = Classifier::pinned(device)?;
    let test = ImageSet::load(&DataSource::Embedded, Split::Test, &DataOptions::default())?;
    println!(
        "{:<24} {:>8} {:>7} {:>4} {:>9} {:>9}",
        "run", "minutes", "steps", "NFE", "cFID", "confident"
    );
    let known = match args.reuse && args.out.exists() {
        true => evaluation::curve::read_points(&args.out)?,
        false => Vec::new(),
    };
    let (floor, points) = evaluation::curve::training_curve(
        &args.run,
        &classifier,
        &test,
        (&args.nfe, args.n, args.seed),
        &known,
        device,
        |p| {
            println!(
                "{:<24} {:>8.2} {:>7} {:>4} {:>9.2} {:>9.3}",
                p.run, p.minutes, p.steps, p.nfe, p.quality.fid, p.quality.confident
            )
        },
    )?;
    println!(
        "real-data floor: cFID {:.2}, confident {:.3}",
        floor.fid, floor.confident
    );
    let written = evaluation::curve::write_points(&args.out, &floor, &points, &known)?;
    let curves = evaluation::curve::curves(&written);
    image_out::budget_plot(&curves, floor.fid, floor.confident, &args.plot)?;
    println!(
        "results: {}\nplot: {}",
        args.out.display(),
        args.plot.display()
    );
    Ok(())
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
            "likelihood: {:.3} ± {:.3} bits/dim on {} held-out images ({} divergence, RK4 {} steps, \
             uniform dequantisation)",
            r.bits_per_dim, r.std_error, r.images, r.divergence, r.steps
        ),
        EvalEvent::Straightness(value) => println!(
            "straightness (mean |v_i - v|^2 / |v|^2 along {} Euler steps; 0 = straight): {value:.4}",
            evaluation::STRAIGHTNESS_STEPS
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
