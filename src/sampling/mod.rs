//! Generating samples from any [`VelocityModel`]: seeded starting noise, chunked sampling in
//! bounded memory, and trajectory capture; the ODE solvers ([`solvers`]) and classifier-free
//! guidance ([`guidance`]) they use.

pub mod guidance;
pub mod schedule;
pub mod solvers;
pub mod straightness;
pub mod to_files;

use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::error::{Error, Result};
use crate::flow::scheduler::{Parametrisation, Scheduler};
use crate::flow::{gaussian_noise, gaussian_values};
use crate::image_out::TrajectoryFrame;
use crate::model::{VelocityModel, batch_shape};
use crate::sampling::guidance::Guided;
use crate::sampling::schedule::{AsVelocity, Retimed};
use crate::sampling::solvers::{Solution, Solver, TimeGrid, VelocityField, solve};

/// The frames the reference's trajectory view captures for 50 steps.
pub const REFERENCE_CAPTURE: [usize; 7] = [0, 5, 10, 20, 30, 40, 49];

/// Starting noise (t = 1) for `n` samples of `model`, reproducible from `seed`.
pub fn initial_noise<const D: usize, M: VelocityModel<D>>(
    model: &M,
    n: usize,
    seed: u64,
    device: &Device,
) -> Result<Tensor<D>> {
    let shape = model_batch_shape(model, n)?;
    Ok(gaussian_noise(
        &mut StdRng::seed_from_u64(seed),
        shape,
        device,
    ))
}

/// `[n, sample_shape...]` of `model`, or an error when its sample shape does not have rank
/// `D - 1` (a model whose `sample_shape` disagrees with its tensors).
pub fn model_batch_shape<const D: usize, M: VelocityModel<D>>(
    model: &M,
    n: usize,
) -> Result<[usize; D]> {
    let sample = model.sample_shape();
    batch_shape(n, &sample).ok_or_else(|| {
        Error::invalid(
            "model",
            format!(
                "its sample shape {sample:?} has {} dimensions, its batches have {D}",
                sample.len()
            ),
        )
    })
}

/// `n` samples of `model` from seeded noise, integrated with `solver` over `steps` uniform
/// steps (the simplest way to sample; [`generate`] works in bounded memory with labels and
/// guidance).
///
/// ```
/// # use burn::module::Module;
/// # use burn::nn::{Linear, LinearConfig};
/// # use burn::tensor::{Device, Tensor};
/// # use flowmatch::model::{Condition, VelocityModel};
/// # #[derive(Module, Debug)]
/// # struct Mlp { layer: Linear }
/// # impl VelocityModel<2> for Mlp {
/// #     fn velocity(&self, x: Tensor<2>, t: Tensor<1>, _: &Condition) -> Tensor<2> {
/// #         self.layer.forward(Tensor::cat(vec![x, t.unsqueeze_dim(1)], 1))
/// #     }
/// #     fn sample_shape(&self) -> Vec<usize> { vec![2] }
/// # }
/// use flowmatch::sampling::{sample, solvers::Solver};
///
/// let device = Device::flex();
/// let model = Mlp { layer: LinearConfig::new(3, 2).init(&device) };
/// let points = sample(&model, 100, Solver::Euler, 20, 0, &device).unwrap();
/// assert_eq!(points.dims(), [100, 2]);
/// ```
pub fn sample<const D: usize, M: VelocityModel<D>>(
    model: &M,
    n: usize,
    solver: Solver,
    steps: usize,
    seed: u64,
    device: &Device,
) -> Result<Tensor<D>> {
    check_steps(steps)?;
    let x1 = initial_noise(model, n, seed, device)?;
    Ok(solve(model, solver, x1, steps, TimeGrid::Uniform, |_, _, _| {}).x)
}

/// How far two models' samples from the same noise lie apart.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleDifference {
    /// The largest difference of one value (pixel or coordinate); NaN when either model
    /// gave NaN.
    pub max: f32,
    /// The mean absolute difference over all values.
    pub mean: f32,
}

/// The differences between the samples of `a` and `b` from the same `n` noises (`seed`) with
/// Euler `steps`: how far a changed copy of a model (its weights stored as float16, say)
/// samples from the original.
pub fn sample_difference<const D: usize, M: VelocityModel<D>>(
    a: &M,
    b: &M,
    n: usize,
    steps: usize,
    seed: u64,
    device: &Device,
) -> Result<SampleDifference> {
    let x = sample(a, n, Solver::Euler, steps, seed, device)?;
    let y = sample(b, n, Solver::Euler, steps, seed, device)?;
    let values = (x - y)
        .abs()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap_or_default();
    // NaN anywhere (a broken copy) is reported as such, not hidden by the maximum.
    let max = values
        .iter()
        .fold(0.0f32, |m, &v| match v.is_nan() || m.is_nan() {
            true => f32::NAN,
            false => m.max(v),
        });
    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / values.len().max(1) as f64;
    Ok(SampleDifference {
        max,
        mean: mean as f32,
    })
}

/// The most steps a fixed-step solver is asked for (each keeps its time points in memory).
pub const MAX_STEPS: usize = 100_000;

/// Steps of a model not made for a number of its own (the reference sampler's).
pub const DEFAULT_STEPS: usize = 50;

/// Checks a fixed-step solver's step count: from 1 to [`MAX_STEPS`].
pub fn check_steps(steps: usize) -> Result<()> {
    if (1..=MAX_STEPS).contains(&steps) {
        Ok(())
    } else {
        Err(Error::invalid(
            "steps",
            format!("{steps}: from 1 to {MAX_STEPS}"),
        ))
    }
}

/// Checks that user-supplied starting noise has the shape `model` expects.
pub fn check_noise_shape<const D: usize, M: VelocityModel<D>>(
    model: &M,
    shape: &[usize],
) -> Result<[usize; D]> {
    let sample = model.sample_shape();
    match shape.split_first() {
        Some((&n, rest)) if n > 0 && rest == sample.as_slice() => {
            batch_shape(n, rest).ok_or_else(|| Error::invalid("initial noise", "rank"))
        }
        _ => Err(Error::invalid(
            "initial noise",
            format!(
                "shape {shape:?}, expected [N, {}] with N > 0",
                sample
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// Images generated per network call when the caller does not say: large enough to keep the
/// CPU kernels busy, small enough that the reference-width model stays well under 2 GB.
pub const DEFAULT_CHUNK: usize = 256;

/// Where starting noise comes from, chunk after chunk.
pub enum NoiseSource<'a> {
    /// A seeded normal stream: the first `k` images are the same whatever the chunk size (and
    /// the same as [`initial_noise`] with this seed).
    Seeded(Box<StdRng>),
    /// Values given by the caller (`[n, c, h, w]` row-major), consumed in order.
    Given(&'a [f32]),
}

impl NoiseSource<'_> {
    /// The seeded stream of `seed`.
    pub fn seeded(seed: u64) -> Self {
        NoiseSource::Seeded(Box::new(StdRng::seed_from_u64(seed)))
    }

    /// The next `count` images of `image_len` values each (fewer when given values run out).
    pub fn take(&mut self, count: usize, image_len: usize) -> Vec<f32> {
        match self {
            NoiseSource::Seeded(rng) => gaussian_values(rng.as_mut(), count * image_len),
            NoiseSource::Given(values) => {
                let (head, rest) = values.split_at((count * image_len).min(values.len()));
                *values = rest;
                head.to_vec()
            }
        }
    }
}

/// Which class each sample is drawn for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassPlan {
    /// No labels (an unconditional model, or the unconditional branch of a conditional one).
    Unconditional,
    /// `per_class` samples of each class in turn (one grid row per class).
    Rows {
        /// The classes, in row order.
        classes: Vec<usize>,
        /// Samples of each.
        per_class: usize,
    },
}

impl ClassPlan {
    /// The label of sample `i` (`None` when unconditional).
    pub fn label(&self, i: usize) -> Option<usize> {
        match self {
            ClassPlan::Unconditional => None,
            ClassPlan::Rows { classes, per_class } => Some(classes[i / per_class]),
        }
    }
}

/// How to generate: solver, steps, time grid, guidance scale and chunk size.
#[derive(Debug, Clone, Copy)]
pub struct Generation {
    /// The ODE solver.
    pub solver: Solver,
    /// Steps of a fixed-step solver.
    pub steps: usize,
    /// Time grid of a fixed-step solver.
    pub grid: TimeGrid,
    /// Classifier-free guidance scale (conditional plans only; 1 is plain conditional).
    pub guidance: f32,
    /// Images per network call; peak memory is set by this, not by the number of samples.
    pub chunk: usize,
    /// Guidance only at times in this interval (t = 0 data, t = 1 noise), the plain
    /// conditional model elsewhere; none: at every time.
    pub guidance_interval: Option<(f32, f32)>,
    /// What the model was trained to predict on which path, and the scheduler to sample along.
    pub schedule: Schedule,
}

/// How a model's output becomes the velocity the solvers follow.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Schedule {
    /// The path and prediction the model was trained with (a checkpoint's training
    /// configuration says; flow matching's own by default).
    pub trained: Parametrisation,
    /// Sample along this scheduler instead (re-timing, [`schedule::Retimed`]); none: the
    /// trained one.
    pub along: Option<Scheduler>,
}

impl Generation {
    /// Euler with `steps` uniform steps, no guidance, default chunk.
    pub fn euler(steps: usize) -> Self {
        Generation {
            solver: Solver::Euler,
            steps,
            grid: TimeGrid::Uniform,
            guidance: 1.0,
            chunk: DEFAULT_CHUNK,
            guidance_interval: None,
            schedule: Schedule::default(),
        }
    }
}

/// What a chunked generation did.
#[derive(Debug, Clone, Default)]
pub struct GenerationStats {
    /// Velocity evaluations of each chunk (equal for fixed-step solvers).
    pub nfe_per_chunk: Vec<usize>,
    /// Accepted steps of the last chunk.
    pub steps: usize,
}

/// Generates `count` samples from `model` in chunks of `generation.chunk`, starting from
/// `noise` and drawn for `classes`; `sink(start, values)` receives each chunk's final states
/// (`[len, c, h, w]` row-major) as soon as it is done, so memory stays bounded by the chunk.
pub fn generate<const D: usize, M: VelocityModel<D>>(
    model: &M,
    count: usize,
    classes: &ClassPlan,
    noise: &mut NoiseSource,
    generation: &Generation,
    device: &Device,
    mut sink: impl FnMut(usize, Vec<f32>) -> Result<()>,
) -> Result<GenerationStats> {
    if generation.chunk == 0 {
        return Err(Error::invalid("batch size", "must be positive"));
    }
    if generation.solver.stages().is_some() {
        check_steps(generation.steps)?;
    }
    if *classes == ClassPlan::Unconditional && generation.guidance != 1.0 {
        return Err(Error::invalid(
            "guidance",
            "a guidance scale needs class labels (--digit or --digits)",
        ));
    }
    let image_len: usize = model.sample_shape().iter().product();
    let mut stats = GenerationStats::default();
    let mut start = 0;
    while start < count {
        let len = generation.chunk.min(count - start);
        let values = noise.take(len, image_len);
        if values.len() != len * image_len {
            return Err(Error::invalid(
                "initial noise",
                format!("holds fewer than the {count} samples asked for"),
            ));
        }
        let x1 = from_vec(values, model_batch_shape(model, len)?, device);
        let (solver, steps, grid) = (generation.solver, generation.steps, generation.grid);
        let guided;
        let field: &dyn VelocityField<D> = match classes {
            ClassPlan::Unconditional => model,
            plan => {
                let labels: Vec<usize> = (start..start + len)
                    .map(|i| plan.label(i).expect("conditional plan"))
                    .collect();
                guided = Guided::new(model, &labels, generation.guidance)?
                    .with_interval(generation.guidance_interval)?;
                &guided
            }
        };
        let solution = solve_scheduled(field, generation.schedule, solver, x1, (steps, grid));
        stats.nfe_per_chunk.push(solution.nfe);
        stats.steps = solution.steps;
        sink(start, to_vec(&solution.x))?;
        start += len;
    }
    Ok(stats)
}

/// Integrates `field` as `schedule` says: its output turned into a velocity, along the
/// scheduler asked for (plain [`solve`] for flow matching's own).
pub fn solve_scheduled<const D: usize>(
    field: &dyn VelocityField<D>,
    schedule: Schedule,
    solver: Solver,
    x1: Tensor<D>,
    (steps, grid): (usize, TimeGrid),
) -> Solution<D> {
    let trained = schedule.trained;
    let as_velocity = AsVelocity::new(field, trained);
    let along = schedule.along.unwrap_or(trained.scheduler);
    let retimed = Retimed::new(&as_velocity, trained.scheduler, along);
    solve(&retimed, solver, x1, steps, grid, |_, _, _| {})
}

/// The state indices captured for a trajectory of `steps` steps: the reference's
/// 0, 5, 10, 20, 30, 40, 49 scaled to `steps` (exactly those for 50).
pub fn capture_steps(steps: usize) -> Vec<usize> {
    let mut picks: Vec<usize> = REFERENCE_CAPTURE
        .iter()
        .map(|&i| ((i * steps) as f64 / 50.0).round() as usize)
        .map(|i| i.min(steps.saturating_sub(1)))
        .collect();
    picks.dedup();
    picks
}

/// Host copy of a tensor's values.
pub fn to_vec<const D: usize>(x: &Tensor<D>) -> Vec<f32> {
    x.to_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 tensor")
}

/// Builds a tensor from host values.
pub fn from_vec<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// A sampled trajectory: every state from t = 1 to t = 0, and the solver's result.
#[derive(Debug)]
pub struct Trajectory<const D: usize = 4> {
    /// One frame per state (steps + 1 frames, the last at t = 0).
    pub frames: Vec<TrajectoryFrame>,
    /// The integration result.
    pub solution: Solution<D>,
}

impl<const D: usize> Trajectory<D> {
    /// The frames at [`capture_steps`] plus the final t = 0 frame, as in the reference view.
    pub fn key_frames(&self) -> Vec<TrajectoryFrame> {
        let steps = self.frames.len() - 1;
        capture_steps(steps)
            .into_iter()
            .chain([steps])
            .map(|i| self.frames[i].clone())
            .collect()
    }
}

/// Integrates from `x1` with `solver` (`steps` steps on `grid` for fixed-step solvers),
/// recording every state.
pub fn trajectory<const D: usize, F: VelocityField<D>>(
    model: &F,
    x1: Tensor<D>,
    solver: Solver,
    steps: usize,
    grid: TimeGrid,
) -> Trajectory<D> {
    let mut frames = Vec::with_capacity(steps + 1);
    let solution = solve(model, solver, x1, steps, grid, |_, t, x| {
        frames.push(TrajectoryFrame {
            t,
            pixels: to_vec(x),
        });
    });
    frames.push(TrajectoryFrame {
        t: 0.0,
        pixels: to_vec(&solution.x),
    });
    Trajectory { frames, solution }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_steps_match_the_reference_for_50() {
        assert_eq!(capture_steps(50), REFERENCE_CAPTURE.to_vec());
        assert_eq!(capture_steps(10), vec![0, 1, 2, 4, 6, 8, 9]);
        assert_eq!(capture_steps(1), vec![0]);
    }
}
