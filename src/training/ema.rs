//! Exponential moving average of a model's weights, kept on the plain (non-autodiff) device.
//!
//! `ema <- d * ema + (1 - d) * weights` after every optimiser step, with the usual warm-up
//! `d = min(decay, (1 + n) / (10 + n))` at update `n`, so that early averages are not dominated
//! by the random initialisation.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;

/// The averaged weights and the number of updates so far.
#[derive(Debug, Clone)]
pub struct Ema<M> {
    model: M,
    decay: f64,
    updates: u64,
}

impl<M: Module> Ema<M> {
    /// Starts the average at the current weights of `model`.
    pub fn new(model: &M, decay: f64) -> Self {
        Ema {
            model: model.valid(),
            decay,
            updates: 0,
        }
    }

    /// Resumes an average (from a checkpoint) that has seen `updates` updates.
    pub fn resume(model: M, decay: f64, updates: u64) -> Self {
        Ema {
            model,
            decay,
            updates,
        }
    }

    /// The decay used at the next update.
    pub fn current_decay(&self) -> f64 {
        let n = self.updates as f64;
        self.decay.min((1.0 + n) / (10.0 + n))
    }

    /// Moves the average towards the weights of `model`.
    pub fn update(&mut self, model: &M) {
        let mut weights = Flatten(Vec::new());
        model.visit(&mut weights);
        let mut blend = Blend {
            weights: weights.0.into_iter(),
            decay: self.current_decay() as f32,
        };
        self.model = self.model.clone().map(&mut blend);
        self.updates += 1;
    }

    /// The averaged model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The configured decay.
    pub fn decay(&self) -> f64 {
        self.decay
    }

    /// Updates so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }
}

/// Collects every parameter, flattened, without autodiff.
struct Flatten(Vec<Tensor<1>>);

impl ModuleVisitor for Flatten {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val().without_autodiff();
        let len: usize = value.dims().iter().product();
        self.0.push(value.reshape([len]));
    }
}

/// Blends each parameter with the next collected weight (same module structure, same order).
struct Blend {
    weights: std::vec::IntoIter<Tensor<1>>,
    decay: f32,
}

impl ModuleMapper for Blend {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let weight = self
            .weights
            .next()
            .expect("EMA and model have the same parameters");
        let decay = self.decay;
        param.map(|avg| {
            let shape = avg.dims();
            avg * decay + weight.reshape(shape) * (1.0 - decay)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Network, NetworkConfig, UNetConfig};
    use burn::tensor::Device;

    #[test]
    fn average_follows_the_formula() {
        let device = Device::flex();
        let config = NetworkConfig::Simple(UNetConfig::with_widths([8, 16, 32]));
        let a = Network::init(&config, 1, &device).unwrap();
        let b = Network::init(&config, 2, &device).unwrap();
        let mut ema = Ema::new(&a, 0.5);
        assert!((ema.current_decay() - 0.1).abs() < 1e-12);
        ema.update(&b);
        ema.update(&b);
        // d1 = min(0.5, 1/10) = 0.1, d2 = min(0.5, 2/11): avg = d2 (d1 a + (1-d1) b) + (1-d2) b.
        let (d1, d2) = (0.1f32, 2.0f32 / 11.0);
        let pa = a.named_parameters();
        let pb = b.named_parameters();
        let pe = ema.model().named_parameters();
        for ((x, y), e) in pa.iter().zip(&pb).zip(&pe) {
            for ((xa, yb), ev) in x.values.iter().zip(&y.values).zip(&e.values) {
                let expected = d2 * (d1 * xa + (1.0 - d1) * yb) + (1.0 - d2) * yb;
                assert!((expected - ev).abs() < 1e-6, "{}", x.name);
            }
        }
        assert_eq!(ema.updates(), 2);
    }
}
