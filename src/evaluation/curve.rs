//! Quality against training time: every timed checkpoint of one or more runs
//! (`minutes-*.safetensors`, written by `train --checkpoint-minutes`, and `final.safetensors`)
//! measured at the same sampler settings, for the recipe-per-budget curve.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::classifier::Classifier;
use super::metrics::Quality;
use super::quality::{EvalPlan, real_floor, sample_quality};
use crate::checkpoint::{self, Weights};
use crate::data::{DataOptions, DataSource, ImageSet, Split};
use crate::error::{Error, Result};
use crate::image_out::{self, QualityCurve};
use crate::sampling::solvers::Solver;
use crate::training::recipes::load_config;

/// One checkpoint measured at one NFE.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CurvePoint {
    /// The run (its folder's name).
    pub run: String,
    /// The checkpoint file.
    pub checkpoint: PathBuf,
    /// Training minutes when it was written (CPU time per worker thread).
    pub minutes: f64,
    /// Optimiser steps when it was written.
    pub steps: u64,
    /// Euler NFE of the sampling.
    pub nfe: usize,
    /// Seed of the starting noise (0 in files written before it was recorded).
    #[serde(default)]
    pub seed: u64,
    /// Metrics against the held-out reference.
    #[serde(flatten)]
    pub quality: Quality,
}

/// The timed checkpoints of `run` (and its final one), with their training minutes and steps,
/// in time order.
pub fn timed_checkpoints(run: &Path) -> Result<Vec<(PathBuf, f64, u64)>> {
    let entries = std::fs::read_dir(run).map_err(|e| Error::io(run, e))?;
    let mut found = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(run, e))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let Some(name) = name else { continue };
        if (name.starts_with("minutes-") || name == "final.safetensors")
            && name.ends_with(".safetensors")
        {
            let loaded = checkpoint::load_weights(&path, &Device::flex(), Weights::Raw)?;
            let progress = loaded
                .progress()
                .map_err(|e| Error::bad_file(&path, e.to_string()))?
                .ok_or_else(|| Error::bad_file(&path, "no training progress recorded"))?;
            found.push((path, progress.budget_seconds / 60.0, progress.step));
        }
    }
    found.sort_by(|a, b| a.1.total_cmp(&b.1));
    // A final checkpoint written right at the last mark adds nothing.
    found.dedup_by(|b, a| b.2 == a.2);
    if found.is_empty() {
        return Err(Error::bad_file(
            run,
            "no minutes-*.safetensors or final.safetensors (train with --checkpoint-minutes)",
        ));
    }
    Ok(found)
}

/// Measures every timed checkpoint of every run with Euler at each of `nfe`, `n` samples
/// against `n` held-out images; returns the real-data floor and the points, each reported to
/// `on_point` as it is measured. A point of `known` for the same checkpoint (file and step),
/// NFE, `n` and `seed` is taken as it is instead of measured again.
#[allow(clippy::too_many_arguments)]
pub fn training_curve(
    runs: &[PathBuf],
    classifier: &Classifier,
    test: &ImageSet,
    (nfe, n, seed): (&[usize], usize, u64),
    known: &[CurvePoint],
    device: &Device,
    mut on_point: impl FnMut(&CurvePoint),
) -> Result<(Quality, Vec<CurvePoint>)> {
    let (floor, reference) = real_floor(classifier, test, n, device)?;
    let mut points = Vec::new();
    for run in runs {
        let name = run.file_name().map_or(run.display().to_string(), |n| {
            n.to_string_lossy().into_owned()
        });
        for (path, minutes, steps) in timed_checkpoints(run)? {
            let find = |nfe: usize| {
                known.iter().find(|p| {
                    (p.checkpoint == path && p.steps == steps && p.nfe == nfe)
                        && (p.quality.n == n && p.seed == seed)
                })
            };
            let missing: Vec<usize> = nfe.iter().copied().filter(|k| find(*k).is_none()).collect();
            let mut measured = Vec::new();
            if !missing.is_empty() {
                let loaded = checkpoint::load_weights(&path, device, Weights::PreferEma)?;
                let trained = loaded
                    .parametrisation()
                    .map_err(|e| crate::error::Error::bad_file(&path, e.to_string()))?;
                let model = loaded.model;
                let plan = EvalPlan {
                    solvers: vec![Solver::Euler],
                    nfe: missing,
                    dopri_tolerances: Vec::new(),
                    grid: crate::sampling::solvers::TimeGrid::Uniform,
                    n,
                    seed,
                    chunk: crate::sampling::DEFAULT_CHUNK,
                    schedule: crate::sampling::Schedule {
                        trained,
                        along: None,
                    },
                };
                measured = sample_quality(&model, classifier, &reference, &plan, device, |_| {})?;
            }
            for &k in nfe {
                let point = match find(k) {
                    Some(p) => CurvePoint {
                        run: name.clone(),
                        minutes,
                        ..p.clone()
                    },
                    None => CurvePoint {
                        run: name.clone(),
                        checkpoint: path.clone(),
                        minutes,
                        steps,
                        nfe: k,
                        seed,
                        quality: measured
                            .iter()
                            .find(|row| row.nfe == k)
                            .expect("every missing NFE measured")
                            .quality
                            .clone(),
                    },
                };
                on_point(&point);
                points.push(point);
            }
        }
    }
    Ok((floor, points))
}

/// The points of a curve's JSON lines file (as `flowmatch curve` writes it; the real-data
/// floor's line is skipped).
pub fn read_points(path: &Path) -> Result<Vec<CurvePoint>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut points = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::bad_file(path, format!("line {}: {e}", i + 1)))?;
        if value.get("floor").is_some() {
            continue;
        }
        let point = serde_json::from_value(value)
            .map_err(|e| Error::bad_file(path, format!("line {}: {e}", i + 1)))?;
        points.push(point);
    }
    Ok(points)
}

/// Writes the curve's JSON lines file atomically: the real-data floor, then `points`, then
/// the points of `kept` whose run is not among `points`' (runs measured before and not this
/// time, which stay as they were). Returns every point written.
pub fn write_points(
    path: &Path,
    floor: &Quality,
    points: &[CurvePoint],
    kept: &[CurvePoint],
) -> Result<Vec<CurvePoint>> {
    let measured = |run: &str| points.iter().any(|p| p.run == run);
    let all: Vec<CurvePoint> = points
        .iter()
        .chain(kept.iter().filter(|p| !measured(&p.run)))
        .cloned()
        .collect();
    let mut lines = vec![serde_json::json!({ "floor": floor }).to_string()];
    for p in &all {
        lines.push(serde_json::to_string(p).map_err(|e| Error::bad_file(path, e.to_string()))?);
    }
    crate::tensor_file::write_atomic(path, (lines.join("\n") + "\n").as_bytes())?;
    Ok(all)
}

/// The points as one curve per (run, NFE), against minutes.
pub fn curves(points: &[CurvePoint]) -> Vec<QualityCurve> {
    let mut curves: Vec<QualityCurve> = Vec::new();
    for p in points {
        let label = format!("{}, {} NFE", p.run, p.nfe);
        let point = (p.minutes, p.quality.fid, p.quality.confident);
        match curves.iter_mut().find(|c| c.label == label) {
            Some(c) => c.points.push(point),
            None => curves.push(QualityCurve {
                label,
                points: vec![point],
            }),
        }
    }
    curves
}

/// A training curve to measure (`flowmatch curve`) and where it goes.
#[derive(Debug, Clone)]
pub struct CurveOptions {
    /// Run folders, each with `minutes-*.safetensors` and/or `final.safetensors`.
    pub runs: Vec<PathBuf>,
    /// Euler NFE budgets.
    pub nfe: Vec<usize>,
    /// Samples per point (and held-out images of the reference).
    pub n: usize,
    /// Seed of the starting noise.
    pub seed: u64,
    /// The JSON lines file.
    pub out: PathBuf,
    /// The plot (PNG).
    pub plot: PathBuf,
    /// Keep the points already in `out` for the same checkpoint, NFE, `n` and `seed`, and
    /// measure only the others; the points of runs not given stay in `out` and in the plot.
    pub reuse: bool,
}

/// What measuring a curve reports as it goes.
#[derive(Debug, Clone, Copy)]
pub enum CurveEvent<'a> {
    /// The runs were checked and the classifier and reference loaded: points follow.
    Measuring,
    /// One point, measured or reused.
    Point(&'a CurvePoint),
    /// The real-data floor, after the points.
    Floor(&'a Quality),
}

/// Errors when a run's `config.toml` says it trained on other data than MNIST's digits, which
/// the pinned digit classifier measures; a run without a readable one passes.
pub fn check_mnist_runs(runs: &[PathBuf]) -> Result<()> {
    for run in runs {
        if let Ok(config) = load_config(&run.join("config.toml"))
            && !DataSource::parse(&config.data).is_mnist()
        {
            return Err(Error::bad_file(
                run,
                format!(
                    "trained on '{}'; curve measures MNIST runs, with the pinned digit \
                     classifier (use eval --data for other data)",
                    config.data
                ),
            ));
        }
    }
    Ok(())
}

/// Measures the curve of `options`' runs ([`training_curve`]) with the pinned digit classifier
/// against the embedded held-out digits, reporting to `on_event`; writes the JSON lines
/// ([`write_points`]) and the plot, and returns every point written.
pub fn measure(
    options: &CurveOptions,
    device: &Device,
    mut on_event: impl FnMut(CurveEvent),
) -> Result<Vec<CurvePoint>> {
    check_mnist_runs(&options.runs)?;
    let (classifier, _) = Classifier::pinned(device)?;
    let test = ImageSet::load(&DataSource::Embedded, Split::Test, &DataOptions::default())?;
    on_event(CurveEvent::Measuring);
    let known = match options.reuse && options.out.exists() {
        true => read_points(&options.out)?,
        false => Vec::new(),
    };
    let (floor, points) = training_curve(
        &options.runs,
        &classifier,
        &test,
        (&options.nfe, options.n, options.seed),
        &known,
        device,
        |p| on_event(CurveEvent::Point(p)),
    )?;
    on_event(CurveEvent::Floor(&floor));
    let written = write_points(&options.out, &floor, &points, &known)?;
    image_out::budget_plot(&curves(&written), floor.fid, floor.confident, &options.plot)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::training::TrainConfig;

    #[test]
    fn only_runs_recorded_on_other_data_than_mnist_are_refused() {
        let dir = std::env::temp_dir().join(format!("flowmatch-curve-runs-{}", std::process::id()));
        let run = |name: &str, data: Option<&str>| {
            let run = dir.join(name);
            std::fs::create_dir_all(&run).unwrap();
            if let Some(data) = data {
                let config = TrainConfig {
                    data: data.into(),
                    ..TrainConfig::default()
                };
                std::fs::write(run.join("config.toml"), config.to_toml()).unwrap();
            }
            run
        };
        let (digits, full, bare) = (
            run("digits", Some("embedded")),
            run("full", Some("mnist")),
            run("bare", None),
        );
        check_mnist_runs(&[digits.clone(), full, bare]).unwrap();
        let other = run("other", Some("cifar10"));
        let err = check_mnist_runs(&[digits, other]).unwrap_err().to_string();
        assert!(
            err.contains("other") && err.contains("'cifar10'") && err.contains("MNIST runs"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
