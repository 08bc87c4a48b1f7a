//! Learning-rate schedules.

use serde::{Deserialize, Serialize};

/// How the learning rate changes over the run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum LrSchedule {
    /// The base rate throughout (the reference).
    Constant,
    /// Linear warm-up from 0 over `warmup_steps`, then cosine decay to 0 at the last step.
    WarmupCosine {
        /// Steps of linear warm-up.
        warmup_steps: u64,
    },
}

impl LrSchedule {
    /// The rate at 1-based `step` of `total_steps`, for base rate `base`.
    pub fn rate(&self, base: f64, step: u64, total_steps: u64) -> f64 {
        match *self {
            LrSchedule::Constant => base,
            LrSchedule::WarmupCosine { warmup_steps } => {
                if step <= warmup_steps {
                    return base * step as f64 / warmup_steps.max(1) as f64;
                }
                let span = total_steps.saturating_sub(warmup_steps).max(1) as f64;
                let progress = ((step - warmup_steps) as f64 / span).min(1.0);
                base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_zero() {
        let s = LrSchedule::WarmupCosine { warmup_steps: 10 };
        assert_eq!(s.rate(1.0, 5, 110), 0.5);
        assert_eq!(s.rate(1.0, 10, 110), 1.0);
        assert!((s.rate(1.0, 60, 110) - 0.5).abs() < 1e-12);
        assert!(s.rate(1.0, 110, 110).abs() < 1e-12);
        assert_eq!(LrSchedule::Constant.rate(0.3, 99, 100), 0.3);
    }
}
