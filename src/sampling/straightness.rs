//! How straight the sampling paths of a model are (rectified flow's measure).

use burn::tensor::Device;

use super::solvers::{Solver, TimeGrid, solve};
use super::{initial_noise, to_vec};
use crate::model::Network;

/// Straightness of the sampling paths: with Euler velocities `v_i` over `steps` uniform steps
/// and the net velocity `v = x(t=1) - x(t=0)`, the mean over samples of
/// `mean_i |v_i - v|^2 / |v|^2`. Zero for straight paths travelled at constant speed.
pub fn straightness(model: &Network, n: usize, steps: usize, seed: u64, device: &Device) -> f64 {
    let x1 = initial_noise(model, n, seed, device).expect("a network takes rank-4 batches");
    let mut states = vec![to_vec(&x1)];
    let solution = solve(
        model,
        Solver::Euler,
        x1,
        steps,
        TimeGrid::Uniform,
        |i, _, x| {
            if i > 0 {
                states.push(to_vec(x));
            }
        },
    );
    states.push(to_vec(&solution.x));
    let dim = states[0].len() / n;
    let dt = 1.0 / steps as f64;
    let mut total = 0.0;
    for s in 0..n {
        let row = |k: usize| &states[k][s * dim..(s + 1) * dim];
        let net: Vec<f64> = row(0)
            .iter()
            .zip(row(steps))
            .map(|(a, b)| (a - b) as f64)
            .collect();
        let net_sq: f64 = net.iter().map(|v| v * v).sum();
        let deviation: f64 = (0..steps)
            .map(|i| {
                row(i)
                    .iter()
                    .zip(row(i + 1))
                    .zip(&net)
                    .map(|((a, b), v)| ((a - b) as f64 / dt - v).powi(2))
                    .sum::<f64>()
            })
            .sum::<f64>()
            / steps as f64;
        total += deviation / net_sq.max(1e-12);
    }
    total / n as f64
}
