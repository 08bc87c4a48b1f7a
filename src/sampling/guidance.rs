//! Classifier-free guidance (Ho & Salimans 2022) for class-conditional models:
//! `v = v_uncond + w (v_cond - v_uncond)`, both branches in one batched model call; optionally
//! only over an interval of times (Kynkäänniemi et al. 2024), the plain conditional model
//! elsewhere.

use burn::tensor::Tensor;

use crate::error::{Error, Result};
use crate::model::{Condition, VelocityModel, one_hot_labels};
use crate::sampling::solvers::VelocityField;

/// The largest guidance scale accepted, either way (useful ones are below 10).
pub const MAX_GUIDANCE_SCALE: f32 = 100.0;

/// Labels for a grid with one row per class: each of `classes` repeated `per_class` times.
pub fn class_rows(classes: impl IntoIterator<Item = usize>, per_class: usize) -> Vec<usize> {
    classes
        .into_iter()
        .flat_map(|c| std::iter::repeat_n(c, per_class))
        .collect()
}

/// A conditional model guided towards fixed labels with scale `w`.
///
/// `w = 0` is the unconditional model and `w = 1` the plain conditional one (one evaluation per
/// call); any other `w` evaluates both branches (two evaluations per call, counted as such).
pub struct Guided<'a, M> {
    model: &'a M,
    /// One-hot labels: conditional rows, then "no label" rows.
    both: Tensor<2>,
    scale: f32,
    interval: Option<(f32, f32)>,
}

/// Checks a guidance interval `[from, to]`: `0 <= from <= to <= 1`.
pub fn check_interval((from, to): (f32, f32)) -> Result<()> {
    if (0.0..=1.0).contains(&from) && (0.0..=1.0).contains(&to) && from <= to {
        Ok(())
    } else {
        Err(Error::invalid(
            "guidance interval",
            format!("{from},{to}: need 0 <= A <= B <= 1 (times: 0 data, 1 noise)"),
        ))
    }
}

impl<'a, M> Guided<'a, M> {
    /// Guides `model` towards `labels` (one per sample) with scale `scale`.
    pub fn new<const D: usize>(model: &'a M, labels: &[usize], scale: f32) -> Result<Self>
    where
        M: VelocityModel<D>,
    {
        let classes = model.num_classes().ok_or_else(|| {
            Error::invalid(
                "guidance",
                "the checkpoint is an unconditional model (trained without --classes)",
            )
        })?;
        if let Some(bad) = labels.iter().find(|&&l| l >= classes) {
            return Err(Error::invalid(
                "label",
                format!("{bad}: the model knows classes 0..{}", classes - 1),
            ));
        }
        if scale.is_nan() || scale.abs() > MAX_GUIDANCE_SCALE {
            return Err(Error::invalid(
                "guidance scale",
                format!("{scale}: at most {MAX_GUIDANCE_SCALE} either way"),
            ));
        }
        let device = model
            .devices()
            .into_iter()
            .next()
            .unwrap_or_else(burn::tensor::Device::flex);
        let rows: Vec<Option<usize>> = labels
            .iter()
            .map(|&l| Some(l))
            .chain(labels.iter().map(|_| None))
            .collect();
        Ok(Guided {
            model,
            both: one_hot_labels(&rows, classes, &device),
            scale,
            interval: None,
        })
    }

    /// The same guidance applied only at times in `[from, to]` (t = 0 data, t = 1 noise); at
    /// other times the model is the plain conditional one (`w = 1`).
    pub fn with_interval(self, interval: Option<(f32, f32)>) -> Result<Self> {
        interval.map(check_interval).transpose()?;
        Ok(Guided { interval, ..self })
    }

    /// The scale in force at time `t`.
    pub fn scale_at(&self, t: f32) -> f32 {
        match self.interval {
            Some((from, to)) if t < from || t > to => 1.0,
            _ => self.scale,
        }
    }
}

impl<M> Guided<'_, M> {
    /// The guided (average, for a mean-flow model over `[r, t]`) velocity at `x`, `t`.
    fn guided<const D: usize>(&self, x: Tensor<D>, t: f32, r: Option<f32>) -> Tensor<D>
    where
        M: VelocityModel<D>,
    {
        let b = x.dims()[0];
        let [halves, _] = self.both.dims();
        let half = halves / 2;
        let device = x.device();
        let times = |n, t| Tensor::<1>::full([n], t, &device);
        let run = |x, n, labels| {
            let cond = Condition {
                r: r.filter(|_| self.model.is_mean_flow()).map(|r| times(n, r)),
                ..Condition::labels(labels)
            };
            self.model.velocity(x, times(n, t), &cond)
        };
        let scale = self.scale_at(t);
        if scale == 0.0 {
            return run(x, b, self.both.clone().narrow(0, half, half));
        }
        if scale == 1.0 {
            return run(x, b, self.both.clone().narrow(0, 0, half));
        }
        let v = run(Tensor::cat(vec![x.clone(), x], 0), 2 * b, self.both.clone());
        let cond = v.clone().narrow(0, 0, b);
        let uncond = v.narrow(0, b, b);
        uncond.clone() + (cond - uncond) * scale
    }
}

impl<const D: usize, M: VelocityModel<D>> VelocityField<D> for Guided<'_, M> {
    fn velocity(&self, x: Tensor<D>, t: f32) -> Tensor<D> {
        self.guided(x, t, None)
    }

    fn step_velocity(&self, x: Tensor<D>, t: f32, r: f32) -> Tensor<D> {
        self.guided(x, t, Some(r))
    }

    fn evaluations(&self) -> usize {
        if self.scale == 0.0 || self.scale == 1.0 {
            1
        } else {
            2
        }
    }

    fn evaluations_at(&self, t: f32) -> usize {
        let scale = self.scale_at(t);
        if scale == 0.0 || scale == 1.0 { 1 } else { 2 }
    }
}
