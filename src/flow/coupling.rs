//! How data and noise are paired in a training batch.
//!
//! Independent pairing is the reference. Minibatch optimal-transport coupling (Tong et al. 2023;
//! Pooladian et al. 2023) re-pairs the batch's noise with its data by the exact assignment that
//! minimises the total squared distance (Kuhn-Munkres / Hungarian algorithm), which makes the
//! learned paths straighter.

use pathfinding::kuhn_munkres::kuhn_munkres_min;
use pathfinding::matrix::Matrix;
use serde::{Deserialize, Serialize};

/// Pairing of data and noise within a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Coupling {
    /// Each image with independent noise (the reference).
    #[default]
    Independent,
    /// The exact minimum-total-squared-distance assignment within the batch.
    MinibatchOt,
}

/// Squared distances scaled to integers for the exact integer assignment (resolution 1e-4).
const COST_SCALE: f64 = 1e4;

/// For `n` data rows and `n` noise rows of `dim` values each, the noise row assigned to each
/// data row so that the total squared distance is minimal.
pub fn ot_assignment(data: &[f32], noise: &[f32], dim: usize) -> Vec<usize> {
    let n = data.len() / dim;
    if n <= 1 {
        return (0..n).collect();
    }
    let costs = Matrix::from_fn(n, n, |(i, j)| {
        let a = &data[i * dim..(i + 1) * dim];
        let b = &noise[j * dim..(j + 1) * dim];
        let d: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
        (d * COST_SCALE).round() as i64
    });
    kuhn_munkres_min(&costs).1
}

/// The noise rows reordered by `assignment` (row `i` becomes noise row `assignment[i]`).
pub fn reorder_rows(noise: &[f32], assignment: &[usize], dim: usize) -> Vec<f32> {
    assignment
        .iter()
        .flat_map(|&j| noise[j * dim..(j + 1) * dim].iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn total(data: &[f32], noise: &[f32], dim: usize, assignment: &[usize]) -> f64 {
        assignment
            .iter()
            .enumerate()
            .map(|(i, &j)| {
                (0..dim)
                    .map(|k| ((data[i * dim + k] - noise[j * dim + k]) as f64).powi(2))
                    .sum::<f64>()
            })
            .sum()
    }

    fn permutations(n: usize) -> Vec<Vec<usize>> {
        if n == 0 {
            return vec![vec![]];
        }
        let mut out = Vec::new();
        for p in permutations(n - 1) {
            for pos in 0..=p.len() {
                let mut q = p.clone();
                q.insert(pos, n - 1);
                out.push(q);
            }
        }
        out
    }

    #[test]
    fn assignment_is_the_brute_force_optimum() {
        let mut rng = StdRng::seed_from_u64(5);
        let (n, dim) = (6, 3);
        for _ in 0..5 {
            let data: Vec<f32> = (0..n * dim)
                .map(|_| rng.random::<f32>() * 4.0 - 2.0)
                .collect();
            let noise: Vec<f32> = (0..n * dim)
                .map(|_| rng.random::<f32>() * 4.0 - 2.0)
                .collect();
            let best = permutations(n)
                .iter()
                .map(|p| total(&data, &noise, dim, p))
                .fold(f64::MAX, f64::min);
            let found = ot_assignment(&data, &noise, dim);
            let mut sorted = found.clone();
            sorted.sort();
            assert_eq!(sorted, (0..n).collect::<Vec<_>>());
            assert!((total(&data, &noise, dim, &found) - best).abs() < 1e-3);
        }
    }

    #[test]
    fn recovers_a_hidden_permutation() {
        let mut rng = StdRng::seed_from_u64(6);
        let (n, dim) = (32, 10);
        let data: Vec<f32> = (0..n * dim).map(|_| rng.random::<f32>() * 10.0).collect();
        let hidden: Vec<usize> = (0..n).rev().collect();
        // Noise row hidden[i] is a slightly perturbed copy of data row i.
        let mut noise = vec![0.0f32; n * dim];
        for (i, &j) in hidden.iter().enumerate() {
            for k in 0..dim {
                noise[j * dim + k] = data[i * dim + k] + rng.random::<f32>() * 0.01;
            }
        }
        assert_eq!(ot_assignment(&data, &noise, dim), hidden);
        let reordered = reorder_rows(&noise, &hidden, dim);
        assert!((reordered[0] - data[0]).abs() < 0.02);
    }
}
