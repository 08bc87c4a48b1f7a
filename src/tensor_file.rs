//! Reading and writing named f32 tensors as safetensors (stored as float32, or as float16 to
//! halve a file that is only sampled from), with atomic writes.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{Error, Result};
use burn::tensor::{Device, Tensor, TensorData};

use crate::model::{Init, NamedTensor, ParamSource};

/// The tensors and string metadata of one safetensors file.
#[derive(Debug, Clone, Default)]
pub struct TensorFile {
    /// Tensors by name.
    pub tensors: BTreeMap<String, NamedTensor>,
    /// Opaque byte arrays (stored as one-dimensional `U8` tensors), e.g. optimiser state.
    pub blobs: BTreeMap<String, Vec<u8>>,
    /// The file's `__metadata__` entries.
    pub metadata: HashMap<String, String>,
}

impl TensorFile {
    /// Reads a safetensors file whose tensors are float32 or float16 (widened to float32).
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses the bytes of a safetensors file (`path` names it in errors). Every tensor is
    /// float32, float16 (widened to float32) or a one-dimensional byte blob; nothing larger
    /// than twice `bytes` is allocated.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let parsed = SafeTensors::deserialize(bytes)
            .map_err(|e| Error::bad_file(path, format!("not a valid safetensors file ({e})")))?;
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| Error::bad_file(path, format!("not a valid safetensors file ({e})")))?;
        let mut tensors = BTreeMap::new();
        let mut blobs = BTreeMap::new();
        for (name, view) in parsed.tensors() {
            if view.dtype() == Dtype::U8 && view.shape().len() == 1 {
                blobs.insert(name, view.data().to_vec());
                continue;
            }
            let values = match view.dtype() {
                Dtype::F32 => view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                Dtype::F16 => view
                    .data()
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                other => {
                    return Err(Error::bad_file(
                        path,
                        format!(
                            "tensor '{name}' is {other:?}; flowmatch reads float32 and float16 \
                             tensors"
                        ),
                    ));
                }
            };
            let tensor = NamedTensor {
                name: name.clone(),
                shape: view.shape().to_vec(),
                values,
            };
            tensors.insert(name, tensor);
        }
        Ok(TensorFile {
            tensors,
            blobs,
            metadata: header.metadata().clone().unwrap_or_default(),
        })
    }

    /// The tensor called `name`, or an error naming the file.
    pub fn get(&self, name: &str, path: &Path) -> Result<&NamedTensor> {
        self.tensors.get(name).ok_or_else(|| {
            let names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
            Error::bad_file(
                path,
                format!(
                    "no tensor named '{name}' (the file holds: {})",
                    names.join(", ")
                ),
            )
        })
    }

    /// The tensor called `name`, checked to hold only finite values.
    pub fn get_finite(&self, name: &str, path: &Path) -> Result<&NamedTensor> {
        let tensor = self.get(name, path)?;
        tensor.check_finite(path)?;
        Ok(tensor)
    }

    /// Writes the tensors (as float32) and metadata to `path` atomically (temp file, then
    /// rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        self.write_as(path, Storage::F32)
    }

    /// Writes the tensors stored as `storage` and the metadata to `path` atomically.
    pub fn write_as(&self, path: &Path, storage: Storage) -> Result<()> {
        write_atomic(path, &self.to_bytes(storage, path)?)
    }

    /// The safetensors bytes of the tensors stored as `storage` (`path` names the file in
    /// errors). Float16 rounds each value to the nearest representable one; values beyond its
    /// range (65,504) are refused rather than turned into infinities.
    pub fn to_bytes(&self, storage: Storage, path: &Path) -> Result<Vec<u8>> {
        let (dtype, bytes) = match storage {
            Storage::F32 => (
                Dtype::F32,
                self.tensors
                    .values()
                    .map(|t| t.values.iter().flat_map(|v| v.to_le_bytes()).collect())
                    .collect::<Vec<Vec<u8>>>(),
            ),
            Storage::F16 => {
                let mut all = Vec::new();
                for t in self.tensors.values() {
                    if let Some(v) = t
                        .values
                        .iter()
                        .find(|v| v.abs() > f32::from(half::f16::MAX))
                    {
                        return Err(Error::bad_file(
                            path,
                            format!("tensor '{}' holds {v}, beyond float16's range", t.name),
                        ));
                    }
                    let b = t.values.iter();
                    all.push(
                        b.flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                            .collect(),
                    );
                }
                (Dtype::F16, all)
            }
        };
        let views = self
            .tensors
            .values()
            .zip(&bytes)
            .map(|(t, b)| {
                let view = TensorView::new(dtype, t.shape.clone(), b)
                    .map_err(|e| Error::bad_file(path, format!("tensor '{}': {e}", t.name)))?;
                Ok((t.name.clone(), view))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut views = views;
        for (name, bytes) in &self.blobs {
            let view = TensorView::new(Dtype::U8, vec![bytes.len()], bytes)
                .map_err(|e| Error::bad_file(path, format!("blob '{name}': {e}")))?;
            views.push((name.clone(), view));
        }
        let metadata = (!self.metadata.is_empty()).then(|| self.metadata.clone());
        safetensors::serialize(views, metadata)
            .map_err(|e| Error::bad_file(path, format!("cannot serialise tensors: {e}")))
    }
}

/// How tensor values are stored in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Storage {
    /// float32: what training writes, exact.
    #[default]
    F32,
    /// float16: half the size, about three significant digits; for models that are only
    /// sampled from.
    F16,
}

/// Writes `bytes` to `path` so that a reader (or a crash) sees either the old or the new file,
/// never a partial one: the data goes to a temporary file in the same folder, is synced, and is
/// renamed over `path`. On failure (a full disk, say) the temporary file is removed and `path`
/// is left as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = AtomicFile::create(path)?;
    file.write_all(bytes)?;
    file.commit()
}

/// Errors when an output path names the file `input` (the same path or, through links, the
/// same file): a job never replaces what it reads.
pub fn refuse_to_replace(input: &Path, outputs: &[&Path]) -> Result<()> {
    let Ok(input_file) = input.canonicalize() else {
        return Ok(());
    };
    for output in outputs {
        if output.canonicalize().is_ok_and(|o| o == input_file) {
            return Err(Error::invalid(
                "output",
                format!(
                    "{} is the input {}: write to another path",
                    output.display(),
                    input.display()
                ),
            ));
        }
    }
    Ok(())
}

/// A file written under a temporary name beside its destination and renamed over it by
/// [`commit`](Self::commit) once complete and synced; dropped uncommitted, it is removed.
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<BufWriter<File>>,
}

impl AtomicFile {
    /// Starts writing `path` (its folder is created when missing).
    pub fn create(path: &Path) -> Result<Self> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let file_name = path.file_name().ok_or_else(|| {
            Error::invalid(
                "output path",
                format!("{} has no file name", path.display()),
            )
        })?;
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            file_name.to_string_lossy(),
            std::process::id()
        ));
        let file = File::create(&tmp).map_err(|error| Error::Write {
            path: path.to_path_buf(),
            error,
        })?;
        Ok(AtomicFile {
            path: path.to_path_buf(),
            tmp,
            file: Some(BufWriter::new(file)),
        })
    }

    /// Appends `bytes`.
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let file = self.file.as_mut().expect("not yet committed");
        file.write_all(bytes).map_err(|error| Error::Write {
            path: self.path.clone(),
            error,
        })
    }

    /// Flushes, syncs and renames the file over its destination.
    pub fn commit(mut self) -> Result<()> {
        let file = self.file.take().expect("committed once");
        let result = file
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .and_then(|_| std::fs::rename(&self.tmp, &self.path));
        result.map_err(|error| Error::Write {
            path: self.path.clone(),
            error,
        })
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        // After a successful commit the temporary name no longer exists.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// One float32 tensor streamed into a safetensors file chunk by chunk (its shape known
/// up front), so that writing N samples needs memory for one chunk only. Written atomically.
pub struct TensorStream {
    file: AtomicFile,
    remaining: usize,
}

impl TensorStream {
    /// Starts `path` holding the tensor `name` of `shape`.
    pub fn create(path: &Path, name: &str, shape: &[usize]) -> Result<Self> {
        let len = shape
            .iter()
            .try_fold(4usize, |acc, &d| acc.checked_mul(d))
            .map(|bytes| bytes / 4)
            .ok_or_else(|| Error::invalid("tensor shape", format!("{shape:?} is too large")))?;
        let header = serde_json::json!({
            name: {"dtype": "F32", "shape": shape, "data_offsets": [0, len * 4]}
        })
        .to_string();
        // The header is padded with spaces so that the data starts 8-byte aligned.
        let padded = header.len().div_ceil(8) * 8;
        let mut file = AtomicFile::create(path)?;
        file.write_all(&(padded as u64).to_le_bytes())?;
        file.write_all(header.as_bytes())?;
        file.write_all(&vec![b' '; padded - header.len()])?;
        Ok(TensorStream {
            file,
            remaining: len,
        })
    }

    /// Appends the next `values`.
    pub fn write(&mut self, values: &[f32]) -> Result<()> {
        if values.len() > self.remaining {
            return Err(Error::invalid(
                "tensor stream",
                format!(
                    "{} values more than the declared shape",
                    values.len() - self.remaining
                ),
            ));
        }
        self.remaining -= values.len();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.file.write_all(&bytes)
    }

    /// Completes the file; every declared value must have been written.
    pub fn finish(self) -> Result<()> {
        if self.remaining != 0 {
            return Err(Error::invalid(
                "tensor stream",
                format!("{} values missing", self.remaining),
            ));
        }
        self.file.commit()
    }
}

/// Parameters read from a tensor file while a module is built; every name and shape is checked.
pub struct FileParams<'a> {
    /// The file's tensors.
    pub file: &'a TensorFile,
    /// The file, for error messages.
    pub path: &'a Path,
    /// Prefix added to every parameter name (e.g. `ema.`).
    pub prefix: &'a str,
    /// What the file should be, for error messages ("SimpleUNet checkpoint").
    pub kind: &'a str,
}

impl ParamSource for FileParams<'_> {
    fn tensor<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
        _init: Init,
        device: &Device,
    ) -> Result<Tensor<D>> {
        let name = format!("{}{name}", self.prefix);
        let kind = self.kind;
        let stored = self.file.tensors.get(&name).ok_or_else(|| {
            Error::bad_file(self.path, format!("not a {kind}: missing tensor '{name}'"))
        })?;
        if stored.shape != shape {
            return Err(Error::bad_file(
                self.path,
                format!(
                    "not a {kind} of this shape: tensor '{name}' has shape {:?}, expected {shape:?}",
                    stored.shape
                ),
            ));
        }
        stored.check_finite(self.path)?;
        Ok(Tensor::from_data(
            TensorData::new(stored.values.clone(), shape),
            device,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(values: Vec<f32>) -> TensorFile {
        let mut file = TensorFile::default();
        let tensor = NamedTensor {
            name: "w".into(),
            shape: vec![values.len()],
            values,
        };
        file.tensors.insert("w".into(), tensor);
        file.metadata.insert("k".into(), "v".into());
        file
    }

    #[test]
    fn float16_storage_halves_the_tensors_and_rounds_to_three_digits() {
        let values: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let path = Path::new("w.safetensors");
        let f32_bytes = file(values.clone()).to_bytes(Storage::F32, path).unwrap();
        let f16_bytes = file(values.clone()).to_bytes(Storage::F16, path).unwrap();
        assert!(f16_bytes.len() < f32_bytes.len() / 2 + 200);
        let back = TensorFile::from_bytes(&f16_bytes, path).unwrap();
        assert_eq!(back.metadata["k"], "v");
        let w = &back.tensors["w"];
        assert_eq!(w.shape, vec![1000]);
        for (a, b) in values.iter().zip(&w.values) {
            assert!((a - b).abs() <= a.abs() * 2f32.powi(-11) + 1e-7, "{a} {b}");
        }
        let exact = TensorFile::from_bytes(&f32_bytes, path).unwrap();
        assert_eq!(exact.tensors["w"].values, values);
    }

    #[test]
    fn values_beyond_float16s_range_are_refused_not_made_infinite() {
        let err = file(vec![1.0, 70_000.0])
            .to_bytes(Storage::F16, Path::new("big.safetensors"))
            .unwrap_err();
        assert!(err.to_string().contains("beyond float16's range"), "{err}");
    }
}
