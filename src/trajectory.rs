//! A trajectory written to files (`flowmatch trajectory`): a few samples followed from noise
//! (t = 1) to data (t = 0), every state kept, as a labelled strip of key frames and a GIF of
//! every step. Every frame is held in memory, so the size is limited before anything runs.

use std::path::PathBuf;

use burn::tensor::Device;

use crate::error::{Error, Result};
use crate::image_out;
use crate::model::Network;
use crate::sampling::guidance::Guided;
use crate::sampling::schedule::{AsVelocity, Retimed};
use crate::sampling::solvers::VelocityField;
use crate::sampling::solvers::{Solver, TimeGrid};
use crate::sampling::{Schedule, initial_noise, trajectory};
use crate::tensor_file::refuse_to_replace;

/// Most samples a trajectory view shows (it keeps every frame of each in memory).
pub const MAX_TRAJECTORY_ROWS: usize = 64;
/// Most values the frames of a trajectory may hold (1 GiB of f32).
pub const MAX_TRAJECTORY_FLOATS: usize = 1 << 28;

/// Errors unless a trajectory of `n` samples of `shape` over `steps` steps stays within
/// [`MAX_TRAJECTORY_ROWS`] and [`MAX_TRAJECTORY_FLOATS`].
pub fn check_size(n: usize, steps: usize, shape: [usize; 3]) -> Result<()> {
    if n > MAX_TRAJECTORY_ROWS {
        return Err(Error::invalid(
            "--n",
            format!(
                "a trajectory keeps every frame of every sample; at most \
                 {MAX_TRAJECTORY_ROWS} rows (use `sample` for many samples)"
            ),
        ));
    }
    let floats = steps
        .saturating_add(1)
        .saturating_mul(n)
        .saturating_mul(shape.iter().product::<usize>());
    if floats > MAX_TRAJECTORY_FLOATS {
        return Err(Error::invalid(
            "--steps / --n",
            format!(
                "a trajectory keeps every frame in memory; {steps} steps of {n} samples need \
                 {} MB (at most {} MB: fewer steps or samples)",
                floats.saturating_mul(4) >> 20,
                (MAX_TRAJECTORY_FLOATS * 4) >> 20
            ),
        ));
    }
    Ok(())
}

/// What to follow and where to write it.
#[derive(Debug, Clone)]
pub struct TrajectoryJob {
    /// Samples (rows of the strip).
    pub n: usize,
    /// Steps of a fixed-step solver (dopri5 chooses its own).
    pub steps: usize,
    /// Seed of the starting noise.
    pub seed: u64,
    /// The solver.
    pub solver: Solver,
    /// Time grid of a fixed-step solver.
    pub grid: TimeGrid,
    /// How the model's output becomes a velocity, and the scheduler to follow.
    pub schedule: Schedule,
    /// Conditional models: the class every row draws (none: the unconditional branch).
    pub class: Option<usize>,
    /// Classifier-free guidance scale towards `class` (1: plain conditional).
    pub guidance: f32,
    /// Guidance only at times in this interval (the plain conditional model elsewhere).
    pub guidance_interval: Option<(f32, f32)>,
    /// The strip PNG (key frames).
    pub strip: PathBuf,
    /// The animated GIF (every frame).
    pub gif: PathBuf,
    /// Files no output may replace (the checkpoint followed).
    pub inputs: Vec<PathBuf>,
}

/// Runs `job` on `model`: checks its size ([`check_size`]) and that no output replaces an
/// input before anything runs, then integrates from the seeded noise and writes the strip and
/// the GIF.
pub fn trajectory_to_files(model: &Network, job: &TrajectoryJob, device: &Device) -> Result<()> {
    let shape = model.image_shape();
    check_size(job.n, job.steps, shape)?;
    for input in &job.inputs {
        refuse_to_replace(input, &[&job.strip, &job.gif])?;
    }
    let guided = match job.class {
        Some(class) => Some(
            Guided::new(model, &vec![class; job.n], job.guidance)?
                .with_interval(job.guidance_interval)?,
        ),
        None if job.guidance != 1.0 || job.guidance_interval.is_some() => {
            return Err(Error::invalid(
                "guidance",
                "guidance steers towards a class: give the class (--digit) too",
            ));
        }
        None => None,
    };
    let x1 = initial_noise(model, job.n, job.seed, device)?;
    let trained = job.schedule.trained;
    let output: &dyn VelocityField<4> = match &guided {
        Some(guided) => guided,
        None => model,
    };
    let as_velocity = AsVelocity::new(output, trained);
    let along = job.schedule.along.unwrap_or(trained.scheduler);
    let field = Retimed::new(&as_velocity, trained.scheduler, along);
    let trajectory = trajectory(&field, x1, job.solver, job.steps, job.grid);
    image_out::save_trajectory_strip(&trajectory.key_frames(), shape, &job.strip)?;
    image_out::save_trajectory_gif(&trajectory.frames, shape, &job.gif)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_within_the_limits_pass_and_others_name_the_flags() {
        check_size(1, 50, [1, 28, 28]).unwrap();
        check_size(MAX_TRAJECTORY_ROWS, 100, [3, 32, 32]).unwrap();
        let rows = check_size(MAX_TRAJECTORY_ROWS + 1, 1, [1, 28, 28])
            .unwrap_err()
            .to_string();
        assert!(
            rows.starts_with("invalid --n:") && rows.contains("64 rows"),
            "{rows}"
        );
        let frames = check_size(64, 90_000, [1, 28, 28]).unwrap_err().to_string();
        assert!(
            frames.starts_with("invalid --steps / --n:") && frames.contains("MB"),
            "{frames}"
        );
        // Counts too large to multiply are refused, not wrapped around.
        assert!(check_size(64, usize::MAX, [3, 64, 64]).is_err());
    }
}
