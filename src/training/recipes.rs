//! Named training recipes: the reference's, and the best measured one for each compute budget
//! on a 2-core CPU (`train --preset NAME`). Each is a complete [`TrainConfig`] for the embedded
//! MNIST digits; the budgets were measured on a 2-core AMD EPYC (Zen 4) with 2 threads, and
//! the curve behind the choices is in `docs/notes/issue-12.md`.

use super::TrainConfig;
use crate::error::{Error, Result};
use crate::flow::TimeSampling;
use crate::flow::coupling::Coupling;
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
}
