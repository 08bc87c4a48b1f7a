//! `flowmatch train`: a new run (from flags, a named recipe or a configuration file), or a
//! run continued where it stopped.

use std::path::{Path, PathBuf};

use anyhow::Result;
use burn::tensor::Device;
use clap::Args;

use flowmatch::data::{ImageSet, Split};
use flowmatch::flow::TimeSampling;
use flowmatch::flow::coupling::Coupling;
use flowmatch::flow::objective::Objective;
use flowmatch::flow::scheduler::{Prediction, Scheduler};
use flowmatch::lr_schedule::LrSchedule;
use flowmatch::training::recipes::{self, PresetOverrides};
use flowmatch::training::{self, TrainConfig};

use crate::common::{DataArgs, NetworkArgs, with_progress};

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Continue the run in this folder exactly where it stopped (its stored settings are used;
    /// of the other training flags only --max-minutes applies, as a new time limit).
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
    /// The path's scheduler: linear (the straight line of rectified flow), cosine, vp,
    /// vp:MIN,MAX, linear-vp or polynomial:N; recorded in the checkpoint.
    #[arg(long, default_value = "linear")]
    scheduler: Scheduler,
    /// What the network predicts: velocity, data (x0) or noise (epsilon); recorded in the
    /// checkpoint, and sampling turns it into the velocity.
    #[arg(long, default_value = "velocity")]
    prediction: Prediction,
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
    /// What to learn: flow-matching (the velocity), or the average velocity over an interval
    /// for one-step sampling (the network gets an interval input): mean-flow (MeanFlow's
    /// identity with a finite-difference JVP) or split-mean-flow (interval splitting's
    /// consistency, no JVP).
    #[arg(long, value_enum, default_value_t = ObjectiveArg::FlowMatching)]
    objective: ObjectiveArg,
    /// Mean flow, split mean flow: fraction of images with an empty interval (plain flow
    /// matching).
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
    SplitMeanFlow,
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

impl TrainArgs {
    fn objective(&self) -> Objective {
        match self.objective {
            ObjectiveArg::FlowMatching => Objective::FlowMatching,
            ObjectiveArg::MeanFlow => Objective::MeanFlow {
                equal_fraction: self.mean_flow_equal,
                epsilon: self.mean_flow_epsilon,
            },
            ObjectiveArg::SplitMeanFlow => Objective::SplitMeanFlow {
                equal_fraction: self.mean_flow_equal,
            },
        }
    }

    /// The run's configuration for training data `data`: the preset's with the flags that
    /// apply to it, or every flag's.
    fn config(&self, data: &ImageSet) -> Result<TrainConfig> {
        let classes = (self.classes > 0).then_some(self.classes);
        let class_names = match classes {
            Some(_) => data.classes.clone(),
            None => Vec::new(),
        };
        if let Some(name) = &self.preset {
            let overrides = PresetOverrides {
                classes,
                image_shape: data.shape(),
                objective: self.objective(),
                init_from: self.init_from.clone(),
                data: self.data.data.clone(),
                data_limit: self.data.limit,
                holdout: self.data.holdout,
                class_names,
                flip: self.flip,
                seed: self.seed,
                max_steps: self.steps,
                max_minutes: self.max_minutes,
                checkpoint_minutes: self.checkpoint_minutes.clone(),
            };
            return Ok(recipes::preset(name, &overrides)?);
        }
        let mean_flow = self.objective().is_mean_flow();
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
            scheduler: self.scheduler,
            prediction: self.prediction,
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

pub fn run(args: TrainArgs, device: &Device) -> Result<()> {
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
            let minutes = args.max_minutes;
            with_progress(|observer| {
                training::resume_with_time_limit(&data, dir, minutes, device, observer)
            })?
        }
        None => {
            let (config, data) = match &args.config {
                Some(path) => {
                    let config = recipes::load_config(path)?;
                    let data = args
                        .data
                        .for_run(&config)
                        .load_for(Split::Train, config.model.image_shape())?;
                    (config, data)
                }
                None => {
                    let network = &args.network;
                    let data =
                        args.data
                            .load(Split::Train, network.image_size, network.channels)?;
                    (args.config(&data)?, data)
                }
            };
            println!(
                "training {} on {} images of {}",
                config.model.describe(),
                data.len(),
                config.data
            );
            with_progress(|observer| training::train(&config, &data, &args.out, device, observer))?
        }
    };
    if outcome.interrupted {
        let dir = outcome.checkpoint.parent().unwrap_or(Path::new("."));
        println!(
            "interrupted after step {}: saved {}; continue with: flowmatch train --resume {}",
            outcome.steps,
            outcome.checkpoint.display(),
            dir.display()
        );
        return Ok(());
    }
    println!("final checkpoint: {}", outcome.checkpoint.display());
    println!("loss curve:       {}", outcome.loss_curve.display());
    println!("metrics:          {}", outcome.metrics.display());
    Ok(())
}
