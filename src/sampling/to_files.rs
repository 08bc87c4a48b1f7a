//! A sampling job written to files: any number of samples generated chunk by chunk, a grid PNG
//! of the first tiles and, when asked or when the grid cannot show them all, every sample in a
//! tensor file streamed as it is made. Memory is set by the chunk, not by the number of samples.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::image_out::{self, Images};
use crate::model::Network;
use crate::sampling::guidance::Guided;
use crate::sampling::{
    ClassPlan, Generation, NoiseSource, check_noise_shape, check_steps, generate,
};
use crate::tensor_file::{TensorFile, TensorStream, refuse_to_replace};

/// What to sample and where to write it.
#[derive(Debug, Clone)]
pub struct SampleJob {
    /// Samples of an unconditional plan (a class plan counts its own).
    pub n: usize,
    /// Which class each sample is drawn for.
    pub classes: ClassPlan,
    /// Starting noise: a tensor file holding `x1` (`[N, c, h, w]`; N overrides `n`), or the
    /// seeded stream of `seed`.
    pub init_noise: Option<PathBuf>,
    /// Seed of the starting noise when no file gives it.
    pub seed: u64,
    /// Solver, steps, grid, guidance and chunk.
    pub generation: Generation,
    /// The grid PNG.
    pub grid: PathBuf,
    /// Grid columns (square-ish when `None`).
    pub grid_columns: Option<usize>,
    /// Every sample as tensor `x0`; when `None` and the grid cannot hold them all, they go to
    /// the grid's path with the extension `.safetensors`.
    pub tensor: Option<PathBuf>,
    /// Files no output may replace (the checkpoint sampled from; the noise file always).
    pub inputs: Vec<PathBuf>,
}

/// What a sampling job did.
#[derive(Debug, Clone)]
pub struct SampleReport {
    /// Samples drawn.
    pub count: usize,
    /// Accepted solver steps (of the last chunk).
    pub steps: usize,
    /// Fewest and most network evaluations of a chunk (equal for fixed-step solvers).
    pub nfe: (usize, usize),
    /// Wall time of the generation.
    pub seconds: f64,
    /// Samples shown in the grid (the first ones).
    pub in_grid: usize,
    /// The tensor file holding every sample, if one was written.
    pub tensor: Option<PathBuf>,
}

/// Runs `job` on `model`; `on_samples(k, total)` after each chunk of `k` of `total` samples. Everything is
/// checked (counts, classes, guidance, the noise file) before anything is written.
pub fn sample_to_files(
    model: &Network,
    job: &SampleJob,
    device: &burn::tensor::Device,
    mut on_samples: impl FnMut(usize, usize),
) -> Result<SampleReport> {
    if job.generation.chunk == 0 {
        return Err(Error::invalid("batch size", "must be positive"));
    }
    if job.generation.solver.stages().is_some() {
        check_steps(job.generation.steps)?;
    }
    let mut count = match &job.classes {
        ClassPlan::Rows { classes, per_class } => {
            Guided::new(model, classes, job.generation.guidance)?;
            classes.len().checked_mul(*per_class).ok_or_else(|| {
                Error::invalid(
                    "number of samples",
                    format!("{per_class} per class is too many"),
                )
            })?
        }
        ClassPlan::Unconditional if job.generation.guidance != 1.0 => {
            return Err(Error::invalid(
                "guidance",
                "it needs class labels to guide towards (sample: --digit or --digits)",
            ));
        }
        ClassPlan::Unconditional => job.n,
    };
    if count == 0 {
        return Err(Error::invalid("number of samples", "must be positive"));
    }
    let noise_file = match &job.init_noise {
        Some(path) => Some((read_noise(model, path)?, path)),
        None => None,
    };
    let mut noise = match &noise_file {
        Some((values, path)) => {
            let given = values.len() / image_len(model);
            if job.classes != ClassPlan::Unconditional && given != count {
                return Err(Error::bad_file(
                    path.as_path(),
                    format!("tensor 'x1' holds {given} samples, the labels ask for {count}"),
                ));
            }
            count = given;
            NoiseSource::Given(values)
        }
        None => NoiseSource::seeded(job.seed),
    };
    let in_grid = count.min(image_out::GRID_MAX_TILES);
    let tensor = match &job.tensor {
        Some(path) => Some(path.clone()),
        None if count > in_grid => Some(job.grid.with_extension("safetensors")),
        None => None,
    };
    let outputs: Vec<&Path> = std::iter::once(job.grid.as_path())
        .chain(tensor.as_deref())
        .collect();
    for input in job.inputs.iter().chain(&job.init_noise) {
        refuse_to_replace(input, &outputs)?;
    }
    let [c, h, w] = model.image_shape();
    let mut stream = match &tensor {
        Some(path) => Some(TensorStream::create(path, "x0", &[count, c, h, w])?),
        None => None,
    };
    let image_len = image_len(model);
    let mut grid_values = Vec::with_capacity(in_grid * image_len);
    let started = Instant::now();
    let stats = generate(
        model,
        count,
        &job.classes,
        &mut noise,
        &job.generation,
        device,
        |start, values| {
            if start < in_grid {
                let take = (in_grid - start).min(values.len() / image_len);
                grid_values.extend_from_slice(&values[..take * image_len]);
            }
            on_samples(values.len() / image_len, count);
            match &mut stream {
                Some(stream) => stream.write(&values),
                None => Ok(()),
            }
        },
    )?;
    let seconds = started.elapsed().as_secs_f64();
    let images = Images {
        pixels: &grid_values,
        shape: model.image_shape(),
    };
    match job.grid_columns {
        Some(cols) => image_out::save_png(&image_out::grid(images, cols, 1, 2), &job.grid)?,
        None => image_out::save_grid(images, &job.grid)?,
    }
    if let Some(stream) = stream {
        stream.finish()?;
    }
    let nfe = &stats.nfe_per_chunk;
    Ok(SampleReport {
        count,
        steps: stats.steps,
        nfe: (
            nfe.iter().min().copied().unwrap_or(0),
            nfe.iter().max().copied().unwrap_or(0),
        ),
        seconds,
        in_grid,
        tensor,
    })
}

fn image_len(model: &Network) -> usize {
    model.image_shape().iter().product()
}

/// The finite `x1` of a noise file, of the shape `model` takes.
fn read_noise(model: &Network, path: &Path) -> Result<Vec<f32>> {
    let mut file = TensorFile::read(path)?;
    let noise = file.get_finite("x1", path)?;
    check_noise_shape(model, &noise.shape)
        .map_err(|e| Error::bad_file(path, format!("tensor 'x1': {e}")))?;
    Ok(file
        .tensors
        .remove("x1")
        .map(|t| t.values)
        .unwrap_or_default())
}
