//! Quality against training time: every timed checkpoint of one or more runs
//! (`minutes-*.safetensors`, written by `train --checkpoint-minutes`, and `final.safetensors`)
//! measured at the same sampler settings, for the recipe-per-budget curve.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde::Serialize;

use super::classifier::Classifier;
use super::metrics::Quality;
use super::quality::{EvalPlan, real_floor, sample_quality};
use crate::checkpoint::{self, Weights};
use crate::data::ImageSet;
use crate::error::{Error, Result};
use crate::image_out::QualityCurve;
use crate::sampling::solvers::Solver;

/// One checkpoint measured at one NFE.
#[derive(Debug, Clone, Serialize)]
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
/// `on_point` as it is measured.
#[allow(clippy::too_many_arguments)]
pub fn training_curve(
    runs: &[PathBuf],
    classifier: &Classifier,
    test: &ImageSet,
    nfe: &[usize],
    n: usize,
    seed: u64,
    device: &Device,
    mut on_point: impl FnMut(&CurvePoint),
) -> Result<(Quality, Vec<CurvePoint>)> {
    let (floor, reference) = real_floor(classifier, test, n, device)?;
    let plan = EvalPlan {
        solvers: vec![Solver::Euler],
        nfe: nfe.to_vec(),
        dopri_tolerances: Vec::new(),
        grid: crate::sampling::solvers::TimeGrid::Uniform,
        n,
        seed,
        chunk: crate::sampling::DEFAULT_CHUNK,
    };
    let mut points = Vec::new();
    for run in runs {
        let name = run.file_name().map_or(run.display().to_string(), |n| {
            n.to_string_lossy().into_owned()
        });
        for (path, minutes, steps) in timed_checkpoints(run)? {
            let model = checkpoint::load_weights(&path, device, Weights::PreferEma)?.model;
            for row in sample_quality(&model, classifier, &reference, &plan, device, |_| {})? {
                let point = CurvePoint {
                    run: name.clone(),
                    checkpoint: path.clone(),
                    minutes,
                    steps,
                    nfe: row.nfe,
                    quality: row.quality,
                };
                on_point(&point);
                points.push(point);
            }
        }
    }
    Ok((floor, points))
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
