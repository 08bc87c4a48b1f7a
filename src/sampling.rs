//! Generating images: seeded starting noise, the sampler, and trajectory capture.

use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::error::{Error, Result};
use crate::flow::gaussian_noise;
use crate::image_out::TrajectoryFrame;
use crate::model::SimpleUNet;
use crate::solver::{Solution, Solver, TimeGrid, solve};

/// Height and width of the images the models work on (the reference's `image_size`).
pub const IMAGE_SIZE: usize = 28;

/// The frames the reference's trajectory view captures for 50 steps.
pub const REFERENCE_CAPTURE: [usize; 7] = [0, 5, 10, 20, 30, 40, 49];

/// Starting noise (t = 1) for `n` images of `model`, reproducible from `seed`.
pub fn initial_noise(model: &SimpleUNet, n: usize, seed: u64, device: &Device) -> Tensor<4> {
    let shape = [n, model.config().in_channels, IMAGE_SIZE, IMAGE_SIZE];
    gaussian_noise(&mut StdRng::seed_from_u64(seed), shape, device)
}

/// Checks that user-supplied starting noise has the shape `model` expects.
pub fn check_noise_shape(model: &SimpleUNet, shape: &[usize]) -> Result<[usize; 4]> {
    let c = model.config().in_channels;
    match shape {
        &[n, ch, h, w] if n > 0 && ch == c && h == IMAGE_SIZE && w == IMAGE_SIZE => {
            Ok([n, ch, h, w])
        }
        _ => Err(Error::invalid(
            "initial noise",
            format!("shape {shape:?}, expected [N, {c}, {IMAGE_SIZE}, {IMAGE_SIZE}] with N > 0"),
        )),
    }
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
pub fn to_vec(x: &Tensor<4>) -> Vec<f32> {
    x.to_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 tensor")
}

/// Builds a tensor from host values.
pub fn from_vec(values: Vec<f32>, shape: [usize; 4], device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// A sampled trajectory: every state from t = 1 to t = 0, and the solver's result.
#[derive(Debug)]
pub struct Trajectory {
    /// One frame per state (steps + 1 frames, the last at t = 0).
    pub frames: Vec<TrajectoryFrame>,
    /// The integration result.
    pub solution: Solution,
}

impl Trajectory {
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
pub fn trajectory(
    model: &SimpleUNet,
    x1: Tensor<4>,
    solver: Solver,
    steps: usize,
    grid: TimeGrid,
) -> Trajectory {
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
