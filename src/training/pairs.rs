//! (noise, sample) pairs drawn from a trained model: the data of reflow (rectified flow's
//! k-rectification) and of distillation. Generated in shards of a fixed size, each from its own
//! seeded noise, so that generation is resumable (finished shards are kept) and memory stays
//! at one shard; read back as one set for training.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::StdRng;
use sha2::{Digest, Sha256};

use crate::data::{BatchSource, DataBatch};
use crate::error::{Error, Result};
use crate::model::{NamedTensor, Network};
use crate::sampling::{ClassPlan, Generation, NoiseSource, generate};
use crate::tensor_file::TensorFile;

/// Pairs per shard file.
pub const SHARD: usize = 1024;

/// What a pair generation did.
#[derive(Debug, Clone)]
pub struct PairsReport {
    /// The shard files, in order.
    pub shards: Vec<PathBuf>,
    /// Shards that were already there (a resumed generation).
    pub reused: usize,
    /// Network evaluations per pair.
    pub nfe: usize,
}

fn shard_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("pairs-{index:05}.safetensors"))
}

/// Metadata key of a shard's provenance: the teacher, the generation and the noise seed.
const PROVENANCE: &str = "flowmatch.pairs";

/// SHA-256 of the model's parameters (names and values): which teacher drew a shard.
fn fingerprint(model: &Network) -> String {
    let mut hash = Sha256::new();
    for p in model.named_parameters() {
        hash.update(p.name.as_bytes());
        for v in &p.values {
            hash.update(v.to_le_bytes());
        }
    }
    hash.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `path` is a complete shard of `len` pairs of images of `shape`, drawn as
/// `provenance` says (a shard of another teacher, sampler or seed is drawn again).
fn complete(path: &Path, len: usize, shape: [usize; 3], provenance: &str) -> bool {
    let want: Vec<usize> = [len].into_iter().chain(shape).collect();
    TensorFile::read(path).is_ok_and(|f| {
        f.metadata.get(PROVENANCE).is_some_and(|p| p == provenance)
            && ["x1", "x0"]
                .iter()
                .all(|n| f.tensors.get(*n).is_some_and(|t| t.shape == want))
    })
}

/// Draws `count` pairs from `model` with `generation` (unconditional sampling; for a
/// conditional model its label-free branch) into `dir`, shard by shard, each shard's noise
/// seeded from `seed` and its index; shards already complete (same teacher, generation and
/// seed) are kept. `on_shard(done,
/// total)` after each.
pub fn generate_pairs(
    model: &Network,
    count: usize,
    generation: &Generation,
    seed: u64,
    dir: &Path,
    device: &Device,
    mut on_shard: impl FnMut(usize, usize),
) -> Result<PairsReport> {
    if count == 0 {
        return Err(Error::invalid("pairs", "must be positive"));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let shape = model.image_shape();
    let image_len: usize = shape.iter().product();
    let shards = count.div_ceil(SHARD);
    let teacher = fingerprint(model);
    let mut report = PairsReport {
        shards: Vec::new(),
        reused: 0,
        nfe: generation
            .solver
            .stages()
            .map_or(0, |s| s * generation.steps),
    };
    for index in 0..shards {
        let len = SHARD.min(count - index * SHARD);
        let path = shard_path(dir, index);
        report.shards.push(path.clone());
        let shard_seed = seed ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let provenance = format!("teacher {teacher}, {generation:?}, seed {shard_seed}");
        if complete(&path, len, shape, &provenance) {
            report.reused += 1;
            on_shard(index + 1, shards);
            continue;
        }
        let x1 = NoiseSource::seeded(shard_seed).take(len, image_len);
        let mut x0 = Vec::with_capacity(len * image_len);
        let stats = generate(
            model,
            len,
            &ClassPlan::Unconditional,
            &mut NoiseSource::Given(&x1),
            generation,
            device,
            |_, values| {
                x0.extend(values);
                Ok(())
            },
        )?;
        report.nfe = stats.nfe_per_chunk.first().copied().unwrap_or(0);
        let mut file = TensorFile::default();
        let dims: Vec<usize> = [len].into_iter().chain(shape).collect();
        for (name, values) in [("x1", x1), ("x0", x0)] {
            file.tensors.insert(
                name.into(),
                NamedTensor {
                    name: name.into(),
                    shape: dims.clone(),
                    values,
                },
            );
        }
        file.metadata.insert(PROVENANCE.into(), provenance);
        file.write(&path)?;
        on_shard(index + 1, shards);
    }
    // Shards past this count (an earlier, larger generation) would be read with these.
    for path in shard_files(dir)? {
        if !report.shards.contains(&path) {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(report)
}

/// The shard files of `dir` (`pairs-*.safetensors`), in order.
fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with("pairs-") && n.ends_with(".safetensors")
            })
        })
        .collect();
    paths.sort();
    Ok(paths)
}

/// A set of (noise, sample) pairs, in memory.
#[derive(Debug, Clone)]
pub struct PairSet {
    /// Noise, `[n, c, h, w]` row-major.
    pub x1: Vec<f32>,
    /// The teacher's samples from that noise.
    pub x0: Vec<f32>,
    /// `[c, h, w]`.
    pub shape: [usize; 3],
}

impl PairSet {
    /// Reads every shard of `dir` (`pairs-*.safetensors`, in order).
    pub fn read(dir: &Path) -> Result<Self> {
        let paths = shard_files(dir)?;
        if paths.is_empty() {
            return Err(Error::bad_file(
                dir,
                "no pairs-*.safetensors shards in this folder",
            ));
        }
        let (mut x1, mut x0, mut shape) = (Vec::new(), Vec::new(), None);
        for path in &paths {
            let file = TensorFile::read(path)?;
            let (a, b) = (file.get_finite("x1", path)?, file.get_finite("x0", path)?);
            let dims: [usize; 3] = match a.shape[..] {
                [_, c, h, w] if a.shape == b.shape => [c, h, w],
                _ => {
                    return Err(Error::bad_file(
                        path,
                        "x1 and x0 must be [n, c, h, w] alike",
                    ));
                }
            };
            if shape.is_some_and(|s| s != dims) {
                return Err(Error::bad_file(path, "shards of different image shapes"));
            }
            shape = Some(dims);
            x1.extend_from_slice(&a.values);
            x0.extend_from_slice(&b.values);
        }
        Ok(PairSet {
            x1,
            x0,
            shape: shape.expect("at least one shard"),
        })
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.x1.len() / self.shape.iter().product::<usize>()
    }

    /// Whether there is no pair.
    pub fn is_empty(&self) -> bool {
        self.x1.is_empty()
    }

    /// The pairs at `indices` as `(x0, x1)` tensors `[batch, c, h, w]`.
    pub fn batch(&self, indices: &[usize], device: &Device) -> (Tensor<4>, Tensor<4>) {
        let len: usize = self.shape.iter().product();
        let gather = |values: &[f32]| {
            let mut out = Vec::with_capacity(indices.len() * len);
            for &i in indices {
                out.extend_from_slice(&values[i * len..(i + 1) * len]);
            }
            let [c, h, w] = self.shape;
            Tensor::from_data(TensorData::new(out, [indices.len(), c, h, w]), device)
        };
        (gather(&self.x0), gather(&self.x1))
    }
}

impl BatchSource<4> for PairSet {
    fn len(&self) -> usize {
        PairSet::len(self)
    }

    fn sample_shape(&self) -> Vec<usize> {
        self.shape.to_vec()
    }

    fn is_pairs(&self) -> bool {
        true
    }

    fn batch(
        &self,
        indices: &[usize],
        _: Option<&mut StdRng>,
        device: &Device,
    ) -> Result<DataBatch<4>> {
        let (x0, x1) = PairSet::batch(self, indices, device);
        Ok(DataBatch {
            x0,
            labels: None,
            x1: Some(x1),
        })
    }
}
