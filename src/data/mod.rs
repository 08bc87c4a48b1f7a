//! Image data sets: the embedded MNIST subset, IDX folders, Debian's Fashion-MNIST, verified
//! downloads (MNIST, Fashion-MNIST, CIFAR-10), CIFAR-10's batches and folders of images, each
//! with a held-out split; brought to one shape, packed as bytes, batched in [-1, 1].

pub mod augment;
pub mod batches;
#[cfg(feature = "learner")]
pub mod burn_dataset;
pub mod cifar;
pub mod convert;
pub mod download;
pub mod folder;
pub mod idx;
mod set;
pub mod source;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
pub use batches::EpochOrder;
use idx::{IdxArray, parse_idx, read_idx};
pub use set::{ImageSet, Pixels, to_unit};
pub use source::{BatchSource, DataBatch, ImageSource, InMemory};

/// Where Debian's `dataset-fashion-mnist` package installs the data set.
pub const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// The two splits of a data set.
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
    /// CIFAR-10 (binary version), downloaded into the cache on first use.
    Cifar10,
    /// A folder: of IDX files (`train-images-idx3-ubyte[.gz]`, ...), of CIFAR-10's extracted
    /// batches (`data_batch_1.bin`, ..., `test_batch.bin`), or of images (PNG, JPEG; searched
    /// recursively; one sub-folder per class, as torchvision's `ImageFolder`, or none).
    Dir(PathBuf),
}

impl DataSource {
    /// Parses `embedded`, `mnist`, `fashion-mnist`, `cifar10`, or any other value as a folder.
    pub fn parse(value: &str) -> Self {
        match value {
            "embedded" => DataSource::Embedded,
            "mnist" => DataSource::Mnist,
            "fashion-mnist" => DataSource::FashionMnist,
            "cifar10" | "cifar-10" => DataSource::Cifar10,
            dir => DataSource::Dir(PathBuf::from(dir)),
        }
    }

    /// Whether the images are MNIST digits (the pinned classifier's data).
    pub fn is_mnist(&self) -> bool {
        matches!(self, DataSource::Embedded | DataSource::Mnist)
    }

    /// Whether the data set is downloaded (and verified) into the cache on first use.
    pub fn is_downloaded(&self) -> bool {
        matches!(
            self,
            DataSource::Mnist | DataSource::FashionMnist | DataSource::Cifar10
        )
    }
}

/// What loading a data set tells the user as it goes ([`ImageSet::load_noted`]).
#[derive(Debug, Clone, Copy)]
pub enum LoadNote<'a> {
    /// A data set downloaded into `cache_dir` on first use is about to be read.
    Download {
        /// The data set.
        source: &'a DataSource,
        /// Where it is (or will be) kept.
        cache_dir: &'a Path,
    },
    /// How the images were read (one of [`ImageSet::notes`]).
    Warning(&'a str),
}

impl fmt::Display for DataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataSource::Embedded => write!(f, "embedded"),
            DataSource::Mnist => write!(f, "mnist"),
            DataSource::FashionMnist => write!(f, "fashion-mnist"),
            DataSource::Cifar10 => write!(f, "cifar10"),
            DataSource::Dir(dir) => write!(f, "{}", dir.display()),
        }
    }
}

/// How a data set is reached and shaped.
#[derive(Debug, Clone)]
pub struct DataOptions {
    /// Cache folder: downloads go in sub-folders named after the data set, decoded image
    /// folders in `decoded/`.
    pub cache_dir: PathBuf,
    /// Mirrors to use instead of the built-in ones (base addresses).
    pub mirrors: Vec<String>,
    /// Height and width to bring every image to (resized so the shorter side fits, then
    /// centre-cropped); `None` keeps the data set's own.
    pub image_size: Option<usize>,
    /// Channels to bring every image to (1 grey, 3 colour); `None` keeps the data set's own.
    pub channels: Option<usize>,
    /// Fraction of an image folder held out as its test split (seeded, the same every time).
    pub holdout: f64,
    /// Keep only the first this many training images, taken before any resizing.
    pub limit: Option<usize>,
}

impl Default for DataOptions {
    fn default() -> Self {
        DataOptions {
            cache_dir: default_cache_dir(),
            mirrors: Vec::new(),
            image_size: None,
            channels: None,
            holdout: 0.1,
            limit: None,
        }
    }
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

impl ImageSet {
    /// Builds a set from IDX image and label arrays; `source` names them in errors.
    pub fn from_idx(images: IdxArray, labels: IdxArray, source: &Path) -> Result<Self> {
        let (count, shape) = match images.dims[..] {
            [count, height, width] => (count, [1, height, width]),
            [count, channels, height, width] if channels == 1 || channels == 3 => {
                (count, [channels, height, width])
            }
            _ => {
                return Err(Error::bad_file(
                    source,
                    format!(
                        "images must have 3 dimensions (or 4 with 1 or 3 channels), found {:?}",
                        images.dims
                    ),
                ));
            }
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
        let classes = labels.data.iter().copied().max().unwrap_or(0) as usize + 1;
        let names = (0..classes).map(|c| c.to_string()).collect();
        let labels = labels.data.iter().map(|&l| l as u16).collect();
        ImageSet::from_bytes(images.data, labels, shape, names)
            .map_err(|e| Error::bad_file(source, e.to_string()))
    }

    /// [`ImageSet::load`], telling `on_note` first where a download goes, then how the images
    /// were read.
    pub fn load_noted(
        source: &DataSource,
        split: Split,
        options: &DataOptions,
        mut on_note: impl FnMut(LoadNote),
    ) -> Result<Self> {
        if source.is_downloaded() {
            on_note(LoadNote::Download {
                source,
                cache_dir: &options.cache_dir,
            });
        }
        let set = ImageSet::load(source, split, options)?;
        for note in &set.notes {
            on_note(LoadNote::Warning(note));
        }
        Ok(set)
    }

    /// Loads one split from `source`, brought to the shape `options` asks for.
    pub fn load(source: &DataSource, split: Split, options: &DataOptions) -> Result<Self> {
        let set = match source {
            DataSource::Embedded => embedded(split)?,
            DataSource::Dir(dir) => return from_dir(dir, split, options),
            DataSource::Mnist => {
                let dir = download::ensure_dataset(
                    &download::MNIST,
                    &options.mirrors,
                    &options.cache_dir,
                )?;
                idx_dir(&dir, split)?
            }
            DataSource::FashionMnist => {
                let debian = Path::new(DEBIAN_FASHION_MNIST);
                let dir = if debian.join("train-images-idx3-ubyte.gz").exists() {
                    debian.to_path_buf()
                } else {
                    download::ensure_dataset(
                        &download::FASHION_MNIST,
                        &options.mirrors,
                        &options.cache_dir,
                    )?
                };
                idx_dir(&dir, split)?
            }
            DataSource::Cifar10 => {
                let dir = cifar::ensure_cifar10(&options.mirrors, &options.cache_dir)?;
                cifar::read_split(&dir, split)?
            }
        };
        convert::to_options(limited(set, split, options), options)
    }
}

/// `set` cut to `options.limit` images when it is the training split.
fn limited(set: ImageSet, split: Split, options: &DataOptions) -> ImageSet {
    match (options.limit, split) {
        (Some(n), Split::Train) if n < set.len() => set.take(n),
        _ => set,
    }
}

/// The embedded MNIST subset (8,000 training and 2,000 held-out digits, compiled into the
/// library): no file, no network.
pub fn embedded(split: Split) -> Result<ImageSet> {
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

/// A folder of IDX files, of CIFAR-10 batches, or of images.
fn from_dir(dir: &Path, split: Split, options: &DataOptions) -> Result<ImageSet> {
    if !dir.is_dir() {
        return Err(Error::bad_file(
            dir,
            "no such data folder (or data set name: embedded, mnist, fashion-mnist, cifar10)",
        ));
    }
    let has = |name: &str| dir.join(name).is_file();
    let set = if has("train-images-idx3-ubyte") || has("train-images-idx3-ubyte.gz") {
        idx_dir(dir, split)?
    } else if let Some(batches) = cifar::batches_folder(dir) {
        cifar::read_split(&batches, split)?
    } else {
        // Decoded in bounded chunks into a memory-mapped cache, already in the asked shape.
        return Ok(limited(folder::load(dir, split, options)?, split, options));
    };
    convert::to_options(limited(set, split, options), options)
}

fn idx_dir(dir: &Path, split: Split) -> Result<ImageSet> {
    let images_path = idx_file(dir, split, "images-idx3-ubyte")?;
    let labels_path = idx_file(dir, split, "labels-idx1-ubyte")?;
    let images = read_idx(&images_path)?;
    let labels = read_idx(&labels_path)?;
    ImageSet::from_idx(images, labels, &images_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_downloaded_sets_announce_their_cache() {
        for name in ["mnist", "fashion-mnist", "cifar10"] {
            assert!(DataSource::parse(name).is_downloaded(), "{name}");
        }
        for name in ["embedded", "some/folder"] {
            assert!(!DataSource::parse(name).is_downloaded(), "{name}");
        }
        let mut notes = 0;
        let set = ImageSet::load_noted(
            &DataSource::Embedded,
            Split::Test,
            &DataOptions::default(),
            |_| notes += 1,
        )
        .unwrap();
        assert_eq!((set.len(), notes), (2000, 0));
    }
}
