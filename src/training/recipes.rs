//! Named training recipes: the reference's, and the best measured one for each compute budget
//! on a 2-core CPU (`train --preset NAME`). Each is a complete [`TrainConfig`] for the embedded
//! MNIST digits; the budgets were measured on a 2-core AMD EPYC (Zen 4) with 2 threads, and
//! the curve behind the choices is in `docs/notes/issue-12.md`.

use std::path::{Path, PathBuf};

use super::TrainConfig;
use crate::error::{Error, Result};
use crate::flow::TimeSampling;
use crate::flow::coupling::Coupling;
use crate::flow::objective::Objective;
use crate::lr_schedule::LrSchedule;
use crate::model::{NetworkConfig, ResUNetConfig, UNetConfig};

/// A named recipe.
#[derive(Debug, Clone, Copy)]
pub struct Recipe {
    /// The name `train --preset` takes.
    pub name: &'static str,
    /// What it is, in a line.
    pub summary: &'static str,
    /// Builds the configuration (unconditional, seed 0).
    pub config: fn() -> TrainConfig,
}

/// Every recipe, the reference first.
pub const RECIPES: &[Recipe] = &[
    Recipe {
        name: "reference",
        summary: "the blog post's recipe: SimpleUNet 64/128/256, AdamW lr 1e-4, batch 128, \
                  100 epochs, uniform times, no EMA",
        config: reference,
    },
    Recipe {
        name: "demo",
        summary: "the best unconditional digits in 5 minutes on 2 cores: tiny residual U-Net, \
                  batch 32, lr 2e-3 with warm-up and cosine decay, logit-normal times leaning \
                  to the noise end (std 0.6), the stable target over 2,048 training images, EMA",
        config: demo,
    },
    Recipe {
        name: "tiny-25min",
        summary: "the demo recipe without the stable target, its cosine decay spread over 20,500 steps, \
                  25 minutes on 2 cores (cFID 2.8x the real-data floor at 10 NFE, 1.7x at 50)",
        config: tiny_25min,
    },
    Recipe {
        name: "small-90min",
        summary: "residual U-Net small with dropout 0.1, batch 64, lr 1e-3 \
                  with warm-up and cosine decay over 15,000 steps, logit-normal times, EMA; \
                  90 minutes on 2 cores (cFID 2.1x the real-data floor at 10 NFE, 1.5x at 50)",
        config: small_90min,
    },
    Recipe {
        name: "small-2h",
        summary: "the small-90min recipe with its cosine decay spread over 21,500 steps, \
                  stopped after 2 hours on 2 cores (about 20,000 steps); the best measured: \
                  cFID 1.65x the real-data floor at 10 NFE (1.47x on the shifted grid), 1.2x at 50",
        config: small_2h,
    },
];

/// The recipe called `name`.
pub fn recipe(name: &str) -> Result<TrainConfig> {
    RECIPES
        .iter()
        .find(|r| r.name == name)
        .map(|r| (r.config)())
        .ok_or_else(|| {
            let names: Vec<&str> = RECIPES.iter().map(|r| r.name).collect();
            Error::invalid("preset", format!("'{name}' (known: {})", names.join(", ")))
        })
}

/// What a run asks of a named recipe (`train --preset NAME` with other flags): the data, the
/// classes, the objective, the start, the seed and the run's limits. Everything else (the
/// network's size, the optimiser, the schedule, the time distribution) is the recipe's.
#[derive(Debug, Clone, PartialEq)]
pub struct PresetOverrides {
    /// Classes of a class-conditional model (`None`: unconditional).
    pub classes: Option<usize>,
    /// Shape `[channels, height, width]` of the training images.
    pub image_shape: [usize; 3],
    /// What to learn (a mean-flow objective gives the network its interval input).
    pub objective: Objective,
    /// Start from these weights instead of a fresh network.
    pub init_from: Option<PathBuf>,
    /// Name of the data set.
    pub data: String,
    /// Only the first this many training images.
    pub data_limit: Option<usize>,
    /// Fraction of an image folder held out.
    pub holdout: f64,
    /// Names of the classes of a conditional model, in label order.
    pub class_names: Vec<String>,
    /// Mirror training images left-right (in addition to a recipe that already does).
    pub flip: bool,
    /// Seed of the run.
    pub seed: u64,
    /// Stop after this many steps (`None`: the recipe's limit).
    pub max_steps: Option<u64>,
    /// Stop after this many minutes (`None`: the recipe's limit).
    pub max_minutes: Option<f64>,
    /// Extra checkpoints at these minutes of training time.
    pub checkpoint_minutes: Vec<f64>,
}

impl PresetOverrides {
    /// The recipe `preset` with these overrides applied, validated.
    pub fn apply(&self, preset: TrainConfig) -> Result<TrainConfig> {
        let mean_flow = self.objective.is_mean_flow();
        let config = TrainConfig {
            model: preset
                .model
                .with_classes(self.classes)
                .with_image_shape(self.image_shape)
                .with_interval(mean_flow),
            objective: self.objective.clone(),
            init_from: self.init_from.clone(),
            data: self.data.clone(),
            data_limit: self.data_limit,
            holdout: self.holdout,
            class_names: self.class_names.clone(),
            flip: preset.flip || self.flip,
            seed: self.seed,
            max_steps: self.max_steps.or(preset.max_steps),
            max_minutes: self.max_minutes.or(preset.max_minutes),
            checkpoint_minutes: self.checkpoint_minutes.clone(),
            ..preset
        };
        config.validate()?;
        Ok(config)
    }
}

/// The recipe called `name` with `overrides` applied ([`PresetOverrides::apply`]).
pub fn preset(name: &str, overrides: &PresetOverrides) -> Result<TrainConfig> {
    overrides.apply(recipe(name)?)
}

/// Reads a training configuration from the TOML file at `path` (as each run writes to its
/// `config.toml`) and validates it; every error names the file.
pub fn load_config(path: &Path) -> Result<TrainConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::bad_file(path, format!("cannot read: {e}")))?;
    let config: TrainConfig = toml::from_str(&text).map_err(|e| {
        Error::bad_file(path, format!("bad training configuration: {}", e.message()))
    })?;
    config
        .validate()
        .map_err(|e| Error::bad_file(path, e.to_string()))?;
    Ok(config)
}

fn reference() -> TrainConfig {
    TrainConfig {
        model: NetworkConfig::Simple(UNetConfig::REFERENCE),
        ..TrainConfig::default()
    }
}

/// The demo's network and optimiser with logit-normal times centred on t = 0.5, on which the
/// `small` recipes were measured.
fn tiny_centred() -> TrainConfig {
    TrainConfig {
        model: NetworkConfig::Res(ResUNetConfig::preset("tiny").expect("a known size")),
        epochs: 1000,
        max_steps: Some(3500),
        batch_size: 32,
        lr: 2e-3,
        lr_schedule: LrSchedule::WarmupCosine { warmup_steps: 100 },
        ema_decay: Some(0.999),
        time_sampling: TimeSampling::LogitNormal {
            mean: 0.0,
            std: 1.0,
        },
        coupling: Coupling::Independent,
        checkpoint_every: 0,
        ..TrainConfig::default()
    }
}

/// Short runs favour the noise end: logit-normal times centred on sigmoid(0.5) = 0.62
/// (pilots: mean 0.5 beat 0, 0.3, 0.75, 1 and -0.5 in 5 minutes, and 0 in 25).
fn tiny_noise_end() -> TrainConfig {
    TrainConfig {
        time_sampling: TimeSampling::LogitNormal {
            mean: 0.5,
            std: 1.0,
        },
        ..tiny_centred()
    }
}

/// The noise-end recipe with the stable target over 2,048 training images, which costs no
/// measurable time per step (pilots over two seeds at 10 NFE: 1,024 images 12 % lower cFID
/// than without, 4,096 and 8,000 17 %, but 20 % more time per step, and 3,000 steps with
/// 4,096 images only 6 % lower), and the times drawn closer around their centre: with the
/// stable target, std 0.6 gave 29 % lower cFID than 1 over seeds 0-2 (0.8: 12 %).
fn demo() -> TrainConfig {
    TrainConfig {
        stable_target: Some(2048),
        time_sampling: TimeSampling::LogitNormal {
            mean: 0.5,
            std: 0.6,
        },
        ..tiny_noise_end()
    }
}

/// Measured without the stable target.
fn tiny_25min() -> TrainConfig {
    TrainConfig {
        max_steps: Some(20_500),
        epochs: 10_000,
        ..tiny_noise_end()
    }
}

fn small_90min() -> TrainConfig {
    let mut small = ResUNetConfig::preset("small").expect("a known size");
    small.dropout = 0.1;
    TrainConfig {
        model: NetworkConfig::Res(small),
        epochs: 100_000,
        max_steps: Some(15_000),
        batch_size: 64,
        lr: 1e-3,
        checkpoint_every: 10,
        ..tiny_centred()
    }
}

fn small_2h() -> TrainConfig {
    TrainConfig {
        max_steps: Some(21_500),
        max_minutes: Some(120.0),
        ..small_90min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_recipe_is_valid_and_named_once() {
        for (i, r) in RECIPES.iter().enumerate() {
            (r.config)().validate().unwrap();
            assert!(RECIPES[..i].iter().all(|o| o.name != r.name), "{}", r.name);
            assert!(recipe(r.name).is_ok());
        }
        assert!(recipe("nonsense").is_err());
        assert_eq!(recipe("reference").unwrap(), TrainConfig::default());
    }

    fn overrides() -> PresetOverrides {
        PresetOverrides {
            classes: None,
            image_shape: [1, 28, 28],
            objective: Objective::FlowMatching,
            init_from: None,
            data: "embedded".into(),
            data_limit: None,
            holdout: 0.1,
            class_names: Vec::new(),
            flip: false,
            seed: 0,
            max_steps: None,
            max_minutes: None,
            checkpoint_minutes: Vec::new(),
        }
    }

    #[test]
    fn overrides_keep_the_recipe_and_change_only_the_runs_own_choices() {
        let small = recipe("small-2h").unwrap();
        assert_eq!(preset("small-2h", &overrides()).unwrap(), small);
        let asked = PresetOverrides {
            classes: Some(10),
            image_shape: [3, 32, 32],
            data: "cifar10".into(),
            data_limit: Some(500),
            holdout: 0.2,
            class_names: (0..10).map(|i| i.to_string()).collect(),
            flip: true,
            seed: 7,
            max_steps: Some(40),
            checkpoint_minutes: vec![1.0, 2.0],
            ..overrides()
        };
        let config = preset("small-2h", &asked).unwrap();
        assert_eq!(config.model.num_classes(), Some(10));
        assert_eq!(config.model.image_shape(), [3, 32, 32]);
        assert_eq!(
            (config.data.as_str(), config.data_limit),
            ("cifar10", Some(500))
        );
        assert_eq!((config.holdout, config.flip, config.seed), (0.2, true, 7));
        assert_eq!(config.class_names.len(), 10);
        assert_eq!(config.checkpoint_minutes, vec![1.0, 2.0]);
        // Steps given replace the recipe's; minutes not given keep its limit.
        assert_eq!(
            (config.max_steps, config.max_minutes),
            (Some(40), Some(120.0))
        );
        // The optimiser and the network's size stay the recipe's.
        assert_eq!((config.lr, config.batch_size), (small.lr, small.batch_size));
        assert_eq!(config.lr_schedule, small.lr_schedule);
        assert!(config.model.describe().contains("dropout 0.1"));
    }

    #[test]
    fn a_mean_flow_objective_gives_the_network_its_interval_input() {
        let asked = PresetOverrides {
            objective: Objective::MeanFlow {
                equal_fraction: 0.75,
                epsilon: 1e-5,
            },
            ..overrides()
        };
        let config = preset("small-90min", &asked).unwrap();
        assert!(matches!(config.objective, Objective::MeanFlow { .. }));
        let plain = recipe("small-90min").unwrap().model;
        assert!(config.model.is_mean_flow() && !plain.is_mean_flow());
        assert_eq!(config.model, plain.with_interval(true));
        // The demo's stable target is for flow matching only: the merge is validated.
        assert!(preset("demo", &asked).is_err());
    }

    #[test]
    fn overrides_are_validated() {
        let bad = PresetOverrides {
            classes: Some(1_000_000),
            ..overrides()
        };
        assert!(preset("demo", &bad).is_err());
        assert!(preset("nonsense", &overrides()).is_err());
    }

    #[test]
    fn load_config_reads_a_written_configuration_and_names_the_file_in_errors() {
        let dir =
            std::env::temp_dir().join(format!("flowmatch-load-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        let written = recipe("demo").unwrap();
        std::fs::write(&path, written.to_toml()).unwrap();
        assert_eq!(load_config(&path).unwrap(), written);

        std::fs::write(&path, "model = 3\n").unwrap();
        let err = load_config(&path).unwrap_err().to_string();
        assert!(
            err.contains("config.toml: bad training configuration"),
            "{err}"
        );

        let invalid = TrainConfig {
            batch_size: 0,
            ..written
        };
        std::fs::write(&path, invalid.to_toml()).unwrap();
        let err = load_config(&path).unwrap_err().to_string();
        assert!(err.contains("config.toml: invalid batch size"), "{err}");

        let missing = dir.join("absent.toml");
        let err = load_config(&missing).unwrap_err().to_string();
        assert!(err.contains("absent.toml: cannot read"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
