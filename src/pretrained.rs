//! The models shipped with flowmatch: trained by flowmatch on the embedded digits, built into
//! the library, each file's SHA-256 checked before it is used, so that a model samples the
//! moment the build ends.
//!
//! ```
//! use burn::tensor::Device;
//! use flowmatch::pretrained;
//! use flowmatch::sampling::{sample, solvers::Solver};
//!
//! let device = Device::flex();
//! let shipped = pretrained::find("mnist-digits").unwrap();
//! let model = shipped.load(&device).unwrap().model;
//! let digits = sample(&model, 2, Solver::Euler, 2, 0, &device).unwrap();
//! assert_eq!(digits.dims(), [2, 1, 28, 28]);
//! ```
//!
//! Each model's card (how it was trained, with the command, and what it scores, with the
//! command that measured it) is in `docs/models.md`; `flowmatch models` prints the summary.

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use crate::checkpoint::{LoadedModel, Weights, model_from_file};
use crate::data::download::{sha256_file, sha256_hex};
use crate::error::{Error, Result};
use crate::sampling::solvers::TimeGrid;
use crate::tensor_file::{TensorFile, write_atomic};

/// A model shipped with flowmatch.
#[derive(Debug)]
pub struct Pretrained {
    /// Its name (`--pretrained NAME`).
    pub name: &'static str,
    /// What it is, in a few words.
    pub summary: &'static str,
    /// The data it was trained on.
    pub data: &'static str,
    /// The command that trained it (and any that followed, such as an export).
    pub recipe: &'static str,
    /// Training time and machine.
    pub training: &'static str,
    /// What it scores (pinned classifier, n = 1,000, seed 0; the real-data floor is 74.7).
    pub quality: &'static str,
    /// The command that measured `quality`.
    pub measured_by: &'static str,
    /// The Euler steps it is meant to be sampled with.
    pub steps: usize,
    /// The time grid of those steps.
    pub grid: TimeGrid,
    /// SHA-256 of the file.
    pub sha256: &'static str,
    bytes: &'static [u8],
}

/// Every shipped model.
pub static MODELS: &[Pretrained] = &[
    Pretrained {
        name: "mnist",
        summary: "unconditional digits, the residual U-Net small (the best recipe measured)",
        data: "the embedded 8,000 training digits of MNIST",
        recipe: "flowmatch train --preset small-2h --max-minutes 1000 --out runs/mnist (seed 0, \
                 21,500 steps: the end of its cosine); flowmatch export --checkpoint \
                 runs/mnist/final.safetensors --out assets/models/mnist.safetensors",
        training: "21,500 steps, 132 CPU-minutes per core on 2 cores (AMD EPYC); stopped and \
                   resumed exactly once",
        quality: "10 Euler steps: cFID 117.5 (floor 74.7, 1.57x), 103.0 (1.38x) on the shifted \
                  grid (--time-grid shifted --grid-shift 3); 50 steps: 86.8 (1.16x); 91-93 % \
                  confident; no copying",
        measured_by: "flowmatch eval --pretrained mnist --solvers euler --nfe 10,50 --n 1000 \
                      --memorisation (and --nfe 10 --time-grid shifted --grid-shift 3)",
        steps: 10,
        grid: TimeGrid::Shifted(3.0),
        sha256: "d989b7a0fe39ff042e02c06518db83be9ec9d8677535337687b30d9a9826d753",
        bytes: include_bytes!("../assets/models/mnist.safetensors"),
    },
    Pretrained {
        name: "mnist-digits",
        summary: "class-conditional digits (labels 0-9, classifier-free guidance), the residual \
                  U-Net small with a label embedding",
        data: "the embedded 8,000 training digits of MNIST",
        recipe: "flowmatch train --preset small-2h --classes 10 --steps 13000 --max-minutes 1000 \
                 --out runs/mnist-digits (seed 0); flowmatch export --checkpoint \
                 runs/mnist-digits/final.safetensors --out assets/models/mnist-digits.safetensors",
        training: "13,000 steps, 82 CPU-minutes per core on 2 cores (AMD EPYC)",
        quality: "class-balanced, 10 Euler steps: w = 1 cFID 67.8 (floor 74.7, 0.91x), 97.7 % \
                  confident, 98.0 % the asked digit; w = 2 (20 NFE): 100 % the asked digit, cFID \
                  219.3; no copying",
        measured_by: "flowmatch eval --pretrained mnist-digits --solvers euler --nfe 10 --n 1000 \
                      --guidance-scales 1,2 --memorisation",
        steps: 10,
        grid: TimeGrid::Uniform,
        sha256: "c95913a964968897a9e0c95400531f17b0045431837363c2dcb5fdea26d10f04",
        bytes: include_bytes!("../assets/models/mnist-digits.safetensors"),
    },
    Pretrained {
        name: "mnist-1step",
        summary: "unconditional digits in one network evaluation: mnist distilled into a \
                  one-step student",
        data: "20,000 (noise, sample) pairs drawn from mnist (RK4, 8 steps)",
        recipe: "flowmatch distill --checkpoint runs/mnist/final.safetensors --student-steps 1 \
                 --train-steps 8000 --out runs/mnist-1step (seed 0); flowmatch export --checkpoint \
                 runs/mnist-1step/final.safetensors --out assets/models/mnist-1step.safetensors",
        training: "pairs (26 minutes on 2 cores), then 8,000 steps: 52 minutes on one core (AMD \
                   EPYC), after its teacher's 132 CPU-minutes per core",
        quality: "1 Euler step: cFID 153.9 (floor 74.7, 2.06x), 88.5 % confident; no copying",
        measured_by: "flowmatch eval --pretrained mnist-1step --solvers euler --nfe 1 --n 1000 \
                      --memorisation",
        steps: 1,
        grid: TimeGrid::Uniform,
        sha256: "b52d3ba44915d8a76def9727f7f27e37b65ca896cb5c7511b87837ad22e15b81",
        bytes: include_bytes!("../assets/models/mnist-1step.safetensors"),
    },
];

/// The shipped model called `name`, or an error listing them.
pub fn find(name: &str) -> Result<&'static Pretrained> {
    MODELS.iter().find(|m| m.name == name).ok_or_else(|| {
        let names: Vec<&str> = MODELS.iter().map(|m| m.name).collect();
        Error::invalid(
            "pretrained model",
            format!("no model called '{name}' (shipped: {})", names.join(", ")),
        )
    })
}

impl Pretrained {
    /// The file's bytes, after checking their SHA-256 (a mismatch means a damaged build).
    pub fn bytes(&self) -> Result<&'static [u8]> {
        let digest = sha256_hex(self.bytes);
        match digest == self.sha256 {
            true => Ok(self.bytes),
            false => Err(Error::bad_file(
                self.label(),
                format!(
                    "SHA-256 {digest}, expected {}: the build is damaged",
                    self.sha256
                ),
            )),
        }
    }

    /// The model on `device`, hash-checked.
    pub fn load(&self, device: &Device) -> Result<LoadedModel> {
        let path = self.label();
        let file = TensorFile::from_bytes(self.bytes()?, &path)?;
        model_from_file(&file, &path, device, Weights::PreferEma)
    }

    /// The model as a file under `cache_dir/models/` (written once, hash-checked each time),
    /// for whatever takes a checkpoint path.
    pub fn file_in(&self, cache_dir: &Path) -> Result<PathBuf> {
        let dir = cache_dir.join("models").join(&self.sha256[..16]);
        let path = dir.join(format!("{}.safetensors", self.name));
        if path.is_file() && sha256_file(&path)? == self.sha256 {
            return Ok(path);
        }
        let bytes = self.bytes()?;
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        write_atomic(&path, bytes)?;
        Ok(path)
    }

    /// The size of the file in bytes.
    pub fn size(&self) -> usize {
        self.bytes.len()
    }

    /// How the model is named in messages: `pretrained:NAME`.
    pub fn label(&self) -> PathBuf {
        PathBuf::from(format!("pretrained:{}", self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_are_named_once_and_unknown_names_list_the_shipped_ones() {
        for (i, m) in MODELS.iter().enumerate() {
            assert!(MODELS[..i].iter().all(|o| o.name != m.name), "{}", m.name);
            assert!(find(m.name).is_ok());
        }
        let err = find("cifar").unwrap_err().to_string();
        assert!(err.contains("mnist-digits"), "{err}");
    }

    #[test]
    fn a_damaged_file_is_refused() {
        let damaged = Pretrained {
            sha256: "00",
            ..*find("mnist-digits").unwrap()
        };
        let err = damaged.bytes().unwrap_err().to_string();
        assert!(
            err.contains("damaged") && err.contains("pretrained:mnist-digits"),
            "{err}"
        );
        assert!(damaged.load(&Device::flex()).is_err());
    }
}
