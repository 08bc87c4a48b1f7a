//! Image data sets: IDX files from the embedded MNIST subset, a folder, Debian's Fashion-MNIST
//! or a verified download; pixels scaled to [-1, 1]; seeded shuffling into batches.

pub mod augment;
pub mod batches;
pub mod download;
pub mod idx;

use std::fmt;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{Error, Result};
pub use batches::EpochOrder;
use idx::{IdxArray, parse_idx, read_idx};

/// Where Debian's `dataset-fashion-mnist` package installs the data set.
pub const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// The two splits of an MNIST-style data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The training split (`train-*` files).
    Train,
    /// The held-out split (`t10k-*` files).
    Test,
}

impl Split {
    fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// Where the images come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    /// The 10,000-digit MNIST subset compiled into flowmatch (8,000 train / 2,000 test).
    Embedded,
    /// Full MNIST, downloaded into the cache on first use.
    Mnist,
    /// Full Fashion-MNIST: Debian's copy when installed, else downloaded into the cache.
    FashionMnist,
    /// A folder holding `train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`, `t10k-…`.
    Dir(PathBuf),
}

impl DataSource {
    /// Parses `embedded`, `mnist`, `fashion-mnist`, or any other value as a folder path.
    pub fn parse(value: &str) -> Self {
        match value {
            "embedded" => DataSource::Embedded,
            "mnist" => DataSource::Mnist,
            "fashion-mnist" => DataSource::FashionMnist,
            dir => DataSource::Dir(PathBuf::from(dir)),
        }
    }
}

impl fmt::Display for DataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataSource::Embedded => write!(f, "embedded"),
            DataSource::Mnist => write!(f, "mnist"),
            DataSource::FashionMnist => write!(f, "fashion-mnist"),
            DataSource::Dir(dir) => write!(f, "{}", dir.display()),
        }
    }
}

/// Options for reaching downloadable data sets.
#[derive(Debug, Clone, Default)]
pub struct DownloadOptions {
    /// Cache folder (data sets go in sub-folders named after them).
    pub cache_dir: PathBuf,
    /// Mirrors to use instead of the built-in ones (base addresses).
    pub mirrors: Vec<String>,
}

/// Default cache folder: `$FLOWMATCH_CACHE`, else `$XDG_CACHE_HOME/flowmatch`, else `~/.cache/flowmatch`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLOWMATCH_CACHE") {
        return dir.into();
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Path::new(&dir).join("flowmatch");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    Path::new(&home).join(".cache/flowmatch")
}

/// Images with pixel values in [-1, 1] and their labels.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    /// `len * height * width` values in [-1, 1], row-major, one channel.
    pub pixels: Vec<f32>,
    /// One label per image.
    pub labels: Vec<u8>,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
}

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per image.
    pub fn image_len(&self) -> usize {
        self.height * self.width
    }

    /// Builds a set from IDX image and label arrays; `source` names them in errors.
    pub fn from_idx(images: IdxArray, labels: IdxArray, source: &Path) -> Result<Self> {
        let [count, height, width] = images.dims[..] else {
            return Err(Error::bad_file(
                source,
                format!("images must have 3 dimensions, found {:?}", images.dims),
            ));
        };
        if labels.dims != [count] {
            return Err(Error::bad_file(
                source,
                format!("{count} images but labels of shape {:?}", labels.dims),
            ));
        }
        if count == 0 {
            return Err(Error::bad_file(source, "the data set holds no image"));
        }
        Ok(ImageSet {
            pixels: images
                .data
                .iter()
                .map(|&p| p as f32 / 127.5 - 1.0)
                .collect(),
            labels: labels.data,
            height,
            width,
        })
    }

    /// Loads one split from `source`.
    pub fn load(source: &DataSource, split: Split, download: &DownloadOptions) -> Result<Self> {
        match source {
            DataSource::Embedded => embedded(split),
            DataSource::Dir(dir) => from_dir(dir, split),
            DataSource::Mnist => {
                let dir = download::ensure_dataset(
                    &download::MNIST,
                    &download.mirrors,
                    &download.cache_dir,
                )?;
                from_dir(&dir, split)
            }
            DataSource::FashionMnist => {
                let debian = Path::new(DEBIAN_FASHION_MNIST);
                if debian.join("train-images-idx3-ubyte.gz").exists() {
                    return from_dir(debian, split);
                }
                let dir = download::ensure_dataset(
                    &download::FASHION_MNIST,
                    &download.mirrors,
                    &download.cache_dir,
                )?;
                from_dir(&dir, split)
            }
        }
    }

    /// The first `n` images (all when `n` is larger).
    pub fn take(&self, n: usize) -> ImageSet {
        let n = n.min(self.len());
        ImageSet {
            pixels: self.pixels[..n * self.image_len()].to_vec(),
            labels: self.labels[..n].to_vec(),
            height: self.height,
            width: self.width,
        }
    }

    /// The images at `indices` as a `[batch, 1, h, w]` tensor, with their labels.
    pub fn batch(&self, indices: &[usize], device: &Device) -> (Tensor<4>, Vec<u8>) {
        let (values, labels) = self.batch_values(indices);
        (self.tensor(values, device), labels)
    }

    /// The pixel values of the images at `indices`, with their labels.
    pub fn batch_values(&self, indices: &[usize]) -> (Vec<f32>, Vec<u8>) {
        let len = self.image_len();
        let mut values = Vec::with_capacity(indices.len() * len);
        for &i in indices {
            values.extend_from_slice(&self.pixels[i * len..(i + 1) * len]);
        }
        (values, indices.iter().map(|&i| self.labels[i]).collect())
    }

    /// Images of this set's shape as a `[n, 1, h, w]` tensor.
    pub fn tensor(&self, values: Vec<f32>, device: &Device) -> Tensor<4> {
        let shape = [values.len() / self.image_len(), 1, self.height, self.width];
        Tensor::from_data(TensorData::new(values, shape), device)
    }
}

fn embedded(split: Split) -> Result<ImageSet> {
    let (images, labels): (&[u8], &[u8]) = match split {
        Split::Train => (
            include_bytes!("../../assets/mnist-10k/train-images-idx3-ubyte.gz"),
            include_bytes!("../../assets/mnist-10k/train-labels-idx1-ubyte.gz"),
        ),
        Split::Test => (
            include_bytes!("../../assets/mnist-10k/t10k-images-idx3-ubyte.gz"),
            include_bytes!("../../assets/mnist-10k/t10k-labels-idx1-ubyte.gz"),
        ),
    };
    let name = Path::new("<embedded mnist-10k>");
    let parse = |bytes| parse_idx(bytes).map_err(|reason| Error::bad_file(name, reason));
    ImageSet::from_idx(parse(images)?, parse(labels)?, name)
}

/// Finds `<prefix>-<kind>-idxN-ubyte`, gzip-compressed or raw, in `dir`.
fn idx_file(dir: &Path, split: Split, kind: &str) -> Result<PathBuf> {
    let base = format!("{}-{kind}", split.prefix());
    let candidates = [format!("{base}.gz"), base.clone()];
    candidates
        .iter()
        .map(|name| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::bad_file(
                dir.join(&base),
                format!("missing IDX file (looked for {base} and {base}.gz)"),
            )
        })
}

fn from_dir(dir: &Path, split: Split) -> Result<ImageSet> {
    if !dir.is_dir() {
        return Err(Error::bad_file(
            dir,
            "no such data folder (or data set name: embedded, mnist, fashion-mnist)",
        ));
    }
    let images_path = idx_file(dir, split, "images-idx3-ubyte")?;
    let labels_path = idx_file(dir, split, "labels-idx1-ubyte")?;
    let images = read_idx(&images_path)?;
    let labels = read_idx(&labels_path)?;
    ImageSet::from_idx(images, labels, &images_path)
}
