//! Seeded shuffling: the order of every epoch is a pure function of (seed, epoch), so a run can
//! stop and resume at any batch and see exactly the same data.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// The shuffled order of one epoch, cut into batches (the last one may be smaller).
#[derive(Debug, Clone)]
pub struct EpochOrder {
    order: Vec<usize>,
    batch_size: usize,
}

impl EpochOrder {
    /// The order of `epoch` for `len` items under `seed`.
    pub fn new(len: usize, batch_size: usize, seed: u64, epoch: usize) -> Self {
        let mut order: Vec<usize> = (0..len).collect();
        let mut rng =
            StdRng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        order.shuffle(&mut rng);
        EpochOrder { order, batch_size }
    }

    /// Number of batches in the epoch.
    pub fn num_batches(&self) -> usize {
        self.order.len().div_ceil(self.batch_size)
    }

    /// The indices of batch `i`.
    pub fn batch(&self, i: usize) -> &[usize] {
        let start = i * self.batch_size;
        &self.order[start..(start + self.batch_size).min(self.order.len())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_once_per_epoch_and_reproducible() {
        let a = EpochOrder::new(10, 4, 7, 0);
        assert_eq!(a.num_batches(), 3);
        assert_eq!(a.batch(2).len(), 2);
        let mut seen: Vec<usize> = (0..3).flat_map(|i| a.batch(i).to_vec()).collect();
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert_eq!(a.order, EpochOrder::new(10, 4, 7, 0).order);
        assert_ne!(a.order, EpochOrder::new(10, 4, 7, 1).order);
    }
}
