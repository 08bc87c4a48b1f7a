//! Argument groups shared by several commands (data, network, solver), their conversion into
//! the library's values, and the progress display.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};
use burn::tensor::Device;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use flowmatch::Error;
use flowmatch::checkpoint::{self, Weights};
use flowmatch::data::{DataOptions, DataSource, ImageSet, LoadNote, Split, default_cache_dir};
use flowmatch::flow::scheduler::{Parametrisation, Scheduler};
use flowmatch::model::{Network, NetworkConfig, ResUNetConfig, UNetConfig};
use flowmatch::pretrained;
use flowmatch::sampling::{self, Schedule, solvers::Solver, solvers::TimeGrid};
use flowmatch::serve::api::parse_interval;
use flowmatch::training::{EpochReport, StepReport, TrainConfig, TrainObserver};

#[derive(Args)]
pub struct DataArgs {
    /// Data set: embedded (10k MNIST digits, offline), mnist, fashion-mnist, cifar10, or a
    /// folder (of IDX files, of CIFAR-10 batches, or of PNG/JPEG images, one sub-folder per
    /// class or none).
    #[arg(long, default_value = "embedded")]
    pub data: String,
    /// Cache folder for downloaded and decoded data sets [default: ~/.cache/flowmatch].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Mirror to download from instead of the built-in ones (repeatable).
    #[arg(long)]
    pub mirror: Vec<String>,
    /// Use only the first N training images.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Fraction of an image folder held out as its test split.
    #[arg(long, default_value_t = 0.1)]
    pub holdout: f64,
}

impl DataArgs {
    /// The data set asked for.
    pub fn source(&self) -> DataSource {
        DataSource::parse(&self.data)
    }

    /// How to reach it, its images brought to `size` x `size` and `channels` where given.
    pub fn options(&self, size: Option<usize>, channels: Option<usize>) -> Result<DataOptions> {
        if self.limit == Some(0) {
            bail!("invalid --limit: must be positive");
        }
        Ok(DataOptions {
            cache_dir: self.cache_dir.clone().unwrap_or_else(default_cache_dir),
            mirrors: self.mirror.clone(),
            image_size: size,
            channels,
            holdout: self.holdout,
            limit: self.limit,
        })
    }

    /// Loads `split`, brought to `size` x `size` and `channels` where given, printing what
    /// the user should know about how it was read.
    pub fn load(
        &self,
        split: Split,
        size: Option<usize>,
        channels: Option<usize>,
    ) -> Result<ImageSet> {
        let options = self.options(size, channels)?;
        Ok(ImageSet::load_noted(
            &self.source(),
            split,
            &options,
            print_load_note,
        )?)
    }

    /// Loads `split` in the shape of a model's images.
    pub fn load_for(&self, split: Split, [c, h, _]: [usize; 3]) -> Result<ImageSet> {
        self.load(split, Some(h), Some(c))
    }

    /// These options with a stored run's data set.
    pub fn for_run(&self, config: &TrainConfig) -> DataArgs {
        DataArgs {
            data: config.data.clone(),
            limit: config.data_limit,
            holdout: config.holdout,
            cache_dir: self.cache_dir.clone(),
            mirror: self.mirror.clone(),
        }
    }
}

/// Prints what loading a data set has to say (on stderr).
pub fn print_load_note(note: LoadNote) {
    match note {
        LoadNote::Download { source, cache_dir } => eprintln!(
            "data: {source} (downloaded and verified into {} on first use)",
            cache_dir.display()
        ),
        LoadNote::Warning(note) => eprintln!("warning: {note}"),
    }
}

/// The network's architecture and shape.
#[derive(Args)]
pub struct NetworkArgs {
    /// Network architecture.
    #[arg(long, value_enum, default_value_t = ArchArg::Simple)]
    pub arch: ArchArg,
    /// SimpleUNet: channel widths of the three levels, e.g. 64,128,256 (each a multiple of 8)
    /// [default: 64,128,256, the reference].
    #[arg(long, value_parser = parse_widths)]
    pub widths: Option<[usize; 3]>,
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
    pub image_size: Option<usize>,
    /// Image channels to bring the images to: 1 (grey) or 3 (colour) [default: the data set's
    /// own; 1 for `bench`].
    #[arg(long)]
    pub channels: Option<usize>,
}

impl NetworkArgs {
    /// The network asked for, for 28x28 grey images unless --image-size / --channels say
    /// otherwise (training brings it to the data's shape with `with_image_shape`).
    pub fn config(&self, classes: Option<usize>) -> Result<NetworkConfig> {
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
pub enum ArchArg {
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

#[derive(Args)]
pub struct SolverArgs {
    /// ODE solver: euler (the reference), midpoint, heun, rk4, dopri5 (adaptive).
    #[arg(long, default_value = "euler")]
    solver: Solver,
    /// Relative and absolute tolerance of dopri5.
    #[arg(long, default_value_t = 1e-5)]
    tol: f32,
    #[command(flatten)]
    grid: GridArgs,
}

impl SolverArgs {
    pub fn solver(&self) -> Result<Solver> {
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

    /// The time grid asked for, else `own`.
    pub fn grid_or(&self, own: TimeGrid) -> Result<TimeGrid> {
        self.grid.grid_or(own)
    }
}

/// The time grid of the fixed-step solvers.
#[derive(Args)]
pub struct GridArgs {
    /// Time grid of the fixed-step solvers: uniform, or shifted (towards one end, by
    /// --grid-shift) [default: uniform; a shipped model's own in sample and trajectory].
    #[arg(long, value_enum)]
    time_grid: Option<GridArg>,
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

impl GridArgs {
    /// The time grid asked for, else `own`.
    pub fn grid_or(&self, own: TimeGrid) -> Result<TimeGrid> {
        Ok(match self.time_grid {
            None => own,
            Some(GridArg::Uniform) => TimeGrid::Uniform,
            Some(GridArg::Shifted) if self.grid_shift > 0.0 => TimeGrid::Shifted(self.grid_shift),
            Some(GridArg::Shifted) => bail!("invalid --grid-shift: must be positive"),
        })
    }
}

/// Rejects a sample count of 0 and a step count out of range.
pub fn check_counts(n: usize, steps: usize) -> Result<()> {
    if n == 0 {
        bail!("invalid --n: must be positive");
    }
    if sampling::check_steps(steps).is_err() {
        bail!("invalid --steps: from 1 to {}", sampling::MAX_STEPS);
    }
    Ok(())
}

/// The model a command takes: a checkpoint file or a model shipped with flowmatch.
#[derive(Args)]
pub struct ModelArgs {
    /// Checkpoint (.safetensors; flowmatch's or a PyTorch state_dict export).
    #[arg(
        long,
        required_unless_present = "pretrained",
        conflicts_with = "pretrained"
    )]
    pub checkpoint: Option<PathBuf>,
    /// A model shipped with flowmatch instead (`flowmatch models` lists them).
    #[arg(long, value_name = "NAME")]
    pub pretrained: Option<String>,
}

impl ModelArgs {
    /// The checkpoint's path (a shipped model's hash-checked copy in the cache).
    pub fn path(&self) -> Result<PathBuf> {
        match (&self.checkpoint, &self.pretrained) {
            (Some(path), _) => Ok(path.clone()),
            (None, Some(name)) => pretrained_path(name),
            (None, None) => bail!("give --checkpoint PATH or --pretrained NAME"),
        }
    }
}

/// Several models side by side: checkpoint files and shipped models.
#[derive(Args)]
pub struct ModelsArgs {
    /// Model checkpoint (repeatable).
    #[arg(long)]
    pub checkpoint: Vec<PathBuf>,
    /// A model shipped with flowmatch (repeatable; `flowmatch models` lists them).
    #[arg(long, value_name = "NAME")]
    pub pretrained: Vec<String>,
}

impl ModelsArgs {
    /// The checkpoints' paths, then the shipped models' (hash-checked copies in the cache).
    pub fn paths(&self) -> Result<Vec<PathBuf>> {
        let mut paths = self.checkpoint.clone();
        for name in &self.pretrained {
            paths.push(pretrained_path(name)?);
        }
        Ok(paths)
    }
}

/// The hash-checked file of the shipped model `name` in the cache.
pub fn pretrained_path(name: &str) -> Result<PathBuf> {
    Ok(pretrained::find(name)?.file_in(&default_cache_dir())?)
}

/// The weights --no-ema asks for.
pub fn weights(no_ema: bool) -> Weights {
    if no_ema {
        Weights::Raw
    } else {
        Weights::PreferEma
    }
}

/// A model to sample: the network, the path and prediction it was trained with, and the
/// sampler it is made for.
pub struct ToSample {
    pub model: Network,
    pub trained: Parametrisation,
    /// Steps: the command's, else a shipped model's own, a few-step model's (from its training
    /// objective), else 50.
    pub steps: usize,
    /// Time grid when the command names none: a shipped model's own, else uniform.
    pub grid: TimeGrid,
}

impl ToSample {
    /// Loads the model `model_args` names, for `n` samples with the command's `steps` or else
    /// the model's own; also gives the checkpoint's path.
    pub fn load(
        model_args: &ModelArgs,
        steps: Option<usize>,
        n: usize,
        device: &Device,
        no_ema: bool,
    ) -> Result<(PathBuf, Self)> {
        let path = model_args.path()?;
        let loaded = checkpoint::load_weights(&path, device, weights(no_ema))?;
        let in_file = |e: Error| Error::bad_file(&path, e.to_string());
        let trained = loaded.parametrisation().map_err(in_file)?;
        let (own_steps, grid) = match &model_args.pretrained {
            Some(name) => {
                let shipped = pretrained::find(name)?;
                (shipped.steps, shipped.grid)
            }
            None => (loaded.sampling_steps().map_err(in_file)?, TimeGrid::Uniform),
        };
        let steps = steps.unwrap_or(own_steps);
        check_counts(n, steps)?;
        let model = loaded.model;
        Ok((
            path,
            ToSample {
                model,
                trained,
                steps,
                grid,
            },
        ))
    }
}

/// Re-timing and guidance on an interval of times, as `sample` and `eval` take them.
#[derive(Args, Debug, Clone)]
pub struct ScheduleArgs {
    /// Sample along this scheduler instead of the one the model was trained with (re-timing
    /// without retraining): linear, cosine, vp, vp:MIN,MAX, linear-vp, polynomial:N.
    #[arg(long)]
    pub scheduler: Option<Scheduler>,
    /// Conditional models: classifier-free guidance only for times t in [A, B] (t = 0 data,
    /// t = 1 noise), the plain conditional model elsewhere.
    #[arg(long, value_parser = parse_interval)]
    pub guidance_interval: Option<(f32, f32)>,
}

impl ScheduleArgs {
    /// The schedule of a model trained with `trained`.
    pub fn schedule(&self, trained: Parametrisation) -> Schedule {
        Schedule {
            trained,
            along: self.scheduler,
        }
    }
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
pub fn with_progress<T>(
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

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress_bar(len: u64, unit: &str) -> ProgressBar {
    ProgressBar::new(len).with_style(
        ProgressStyle::with_template(&format!(
            "{{bar:30}} {{pos}}/{{len}} {unit} [{{elapsed_precise}}<{{eta_precise}}]"
        ))
        .expect("valid template"),
    )
}
