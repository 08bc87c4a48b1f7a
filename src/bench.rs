//! Throughput and memory of training and sampling, measured as the PyTorch reference benchmark
//! (../shared/bench/bench.py) does: a full training step at batch 128 (AdamW, global clipping),
//! and 64 images x 50 Euler steps; warm-up first, then at least a minimum count and time.

use std::time::{Duration, Instant};

use burn::tensor::{Device, Distribution, Tensor};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;

use crate::error::Result;
use crate::flow::objective::Batch;
use crate::model::{Network, NetworkConfig, UNetConfig};
use crate::sampling::initial_noise;
use crate::sampling::solvers::euler;
use crate::training::{TrainConfig, adamw, train_step};

/// What to measure and for how long.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The network measured.
    pub network: NetworkConfig,
    /// Training batch size (reference: 128).
    pub train_batch: usize,
    /// Untimed training steps first (reference: 3).
    pub train_warmup: usize,
    /// At least this many timed steps (reference: 10)...
    pub train_min_steps: usize,
    /// ...and at least this long (reference: 10 s).
    pub train_min_time: Duration,
    /// Images per sampling run (reference: 64).
    pub sample_batch: usize,
    /// Euler steps per sampling run (reference: 50).
    pub sample_steps: usize,
    /// Untimed sampling runs first (reference: 1).
    pub sample_warmup: usize,
    /// At least this many timed runs (reference: 2)...
    pub sample_min_runs: usize,
    /// ...and at least this long (reference: 10 s).
    pub sample_min_time: Duration,
}

/// The widths `flowmatch bench` measures by default, each in its own process: the reference
/// SimpleUNet (64, 128, 256) and its half.
pub const SWEEP_WIDTHS: [[usize; 3]; 2] = [[64, 128, 256], [32, 64, 128]];

impl BenchConfig {
    /// These settings made short, for a quick look: 1 warm-up and 2 timed training steps, 1
    /// timed sampling run, no minimum time.
    pub fn quick(self) -> Self {
        BenchConfig {
            train_warmup: 1,
            train_min_steps: 2,
            train_min_time: Duration::ZERO,
            sample_warmup: 0,
            sample_min_runs: 1,
            sample_min_time: Duration::ZERO,
            ..self
        }
    }

    /// The reference benchmark's settings for a SimpleUNet of the given widths.
    pub fn reference(widths: [usize; 3]) -> Self {
        Self::for_network(NetworkConfig::Simple(UNetConfig::with_widths(widths)))
    }

    /// The reference benchmark's settings for any network.
    pub fn for_network(network: NetworkConfig) -> Self {
        BenchConfig {
            network,
            train_batch: 128,
            train_warmup: 3,
            train_min_steps: 10,
            train_min_time: Duration::from_secs(10),
            sample_batch: 64,
            sample_steps: 50,
            sample_warmup: 1,
            sample_min_runs: 2,
            sample_min_time: Duration::from_secs(10),
        }
    }
}

/// One benchmark result, with the field names of the PyTorch reference benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// Implementation tag.
    #[serde(rename = "impl")]
    pub implementation: &'static str,
    /// Architecture (`simple` or `resunet`).
    pub arch: &'static str,
    /// The network measured, in words.
    pub network: String,
    /// The device, as burn names it.
    pub device: String,
    /// Images per training step.
    pub train_batch: usize,
    /// Images per sampling run.
    pub sample_batch: usize,
    /// Training images per second.
    pub train_img_s: f64,
    /// Sampled images per second.
    pub sample_img_s: f64,
    /// Peak resident memory of the process in MB (VmHWM).
    pub peak_rss_mb: f64,
    /// Trainable parameters.
    pub params: usize,
    /// Timed training steps.
    pub train_steps_timed: usize,
    /// Timed sampling runs.
    pub sample_runs_timed: usize,
    /// Worker threads of the CPU backend.
    pub threads: usize,
}

fn timed<F: FnMut()>(
    warmup: usize,
    min_count: usize,
    min_time: Duration,
    mut work: F,
) -> (usize, f64) {
    for _ in 0..warmup {
        work();
    }
    let start = Instant::now();
    let mut count = 0;
    while count < min_count || start.elapsed() < min_time {
        work();
        count += 1;
    }
    (count, start.elapsed().as_secs_f64())
}

/// Runs the benchmark on `device`.
pub fn run(config: &BenchConfig, device: &Device) -> Result<BenchResult> {
    let train_config = TrainConfig {
        model: config.network.clone(),
        ..TrainConfig::default()
    };
    let ad_device = device.clone().autodiff();
    let mut model = Some(Network::init(&train_config.model, 0, &ad_device)?);
    let params = model.as_ref().map_or(0, Network::parameter_count);
    let fit_config = train_config.fit_config();
    let mut optimizer = adamw(&fit_config);
    let [c, h, w] = config.network.image_shape();
    let x0 = Tensor::<4>::random(
        [config.train_batch, c, h, w],
        Distribution::Uniform(-1.0, 1.0),
        &ad_device,
    );
    let mut rng = StdRng::seed_from_u64(0);
    let (train_steps, train_secs) = timed(
        config.train_warmup,
        config.train_min_steps,
        config.train_min_time,
        || {
            let current = model.take().expect("model present between steps");
            let batch = Batch {
                x0: x0.clone(),
                x1: None,
                labels: None,
                reference: None,
            };
            let (next, _, _) = train_step(
                current,
                &mut optimizer,
                batch,
                &mut rng,
                train_config.lr,
                &fit_config,
            )
            .expect("random-data training step stays finite");
            model = Some(next);
        },
    );
    drop((model, optimizer));

    let sampler = Network::init(&train_config.model, 0, device)?;
    let x1 = initial_noise(&sampler, config.sample_batch, 0, device)?;
    let (sample_runs, sample_secs) = timed(
        config.sample_warmup,
        config.sample_min_runs,
        config.sample_min_time,
        || {
            let solution = euler(&sampler, x1.clone(), config.sample_steps, |_, _, _| {});
            let _ = solution.x.into_data();
        },
    );

    Ok(BenchResult {
        implementation: "flowmatch",
        arch: config.network.arch(),
        network: config.network.describe(),
        device: format!("{device:?}"),
        train_batch: config.train_batch,
        sample_batch: config.sample_batch,
        train_img_s: round2(config.train_batch as f64 * train_steps as f64 / train_secs),
        sample_img_s: round2(config.sample_batch as f64 * sample_runs as f64 / sample_secs),
        peak_rss_mb: peak_rss_mb(),
        params,
        train_steps_timed: train_steps,
        sample_runs_timed: sample_runs,
        threads: rayon::current_num_threads(),
    })
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Peak resident set size of this process in MB (Linux `VmHWM`; 0 where unavailable).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| (kb / 1024.0 * 10.0).round() / 10.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_shortens_the_timing_and_keeps_what_is_measured() {
        let full = BenchConfig::reference([8, 16, 32]);
        let quick = full.clone().quick();
        assert_eq!((quick.train_warmup, quick.train_min_steps), (1, 2));
        assert_eq!((quick.sample_warmup, quick.sample_min_runs), (0, 1));
        assert_eq!(quick.train_min_time + quick.sample_min_time, Duration::ZERO);
        assert_eq!(quick.network, full.network);
        assert_eq!(
            (quick.train_batch, quick.sample_batch, quick.sample_steps),
            (full.train_batch, full.sample_batch, full.sample_steps)
        );
    }
}
