//! An image set as training reads it: packed `u8` pixels `[n, channels, height, width]` (in
//! memory, or memory-mapped from the cache), a label per image and the class names, turned
//! into `[-1, 1]` values only batch by batch.

use std::sync::Arc;

use burn::tensor::{Device, Tensor, TensorData};
use rand::Rng;

use crate::error::{Error, Result};

/// Where the packed pixels live.
#[derive(Debug, Clone)]
pub enum Pixels {
    /// In memory.
    Owned(Arc<Vec<u8>>),
    /// Memory-mapped from a cache file (data sets larger than memory).
    Mapped(Arc<memmap2::Mmap>),
}

impl Pixels {
    fn bytes(&self) -> &[u8] {
        match self {
            Pixels::Owned(v) => v,
            Pixels::Mapped(m) => m,
        }
    }
}

/// Images with their labels.
#[derive(Debug, Clone)]
pub struct ImageSet {
    pixels: Pixels,
    /// Which stored images this set holds, in order (all of them when `None`).
    rows: Option<Arc<Vec<u32>>>,
    labels: Arc<Vec<u16>>,
    /// Channels (1 grey, 3 colour).
    pub channels: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Class names, in label order (empty: the images carry no labels).
    pub classes: Vec<String>,
    /// What a user should know about how the set was read (skipped files, ...).
    pub notes: Vec<String>,
}

/// Maps a pixel byte to the data scale: 0 -> -1, 255 -> 1.
pub fn to_unit(p: u8) -> f32 {
    p as f32 / 127.5 - 1.0
}

impl ImageSet {
    /// A set of `labels.len()` images of `shape` held in `pixels` (checked to fit).
    pub fn new(
        pixels: Pixels,
        labels: Vec<u16>,
        shape: [usize; 3],
        classes: Vec<String>,
    ) -> Result<Self> {
        let [channels, height, width] = shape;
        if channels * height * width == 0 {
            return Err(Error::invalid(
                "image set",
                format!("images of {channels}x{height}x{width} hold no pixel"),
            ));
        }
        let expected = [labels.len(), channels, height, width]
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if expected != Some(pixels.bytes().len()) || labels.is_empty() {
            return Err(Error::invalid(
                "image set",
                format!(
                    "{} pixel bytes for {} images of {channels}x{height}x{width}",
                    pixels.bytes().len(),
                    labels.len()
                ),
            ));
        }
        if !classes.is_empty() && labels.iter().any(|&l| l as usize >= classes.len()) {
            return Err(Error::invalid(
                "image set",
                "a label outside the class list",
            ));
        }
        Ok(ImageSet {
            pixels,
            rows: None,
            labels: Arc::new(labels),
            channels,
            height,
            width,
            classes,
            notes: Vec::new(),
        })
    }

    /// An in-memory set.
    pub fn from_bytes(
        bytes: Vec<u8>,
        labels: Vec<u16>,
        shape: [usize; 3],
        classes: Vec<String>,
    ) -> Result<Self> {
        Self::new(Pixels::Owned(Arc::new(bytes)), labels, shape, classes)
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.rows.as_ref().map_or(self.labels.len(), |r| r.len())
    }

    /// Whether the set holds no image.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `[channels, height, width]`.
    pub fn shape(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }

    /// Values per image.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Whether the images carry class labels.
    pub fn is_labelled(&self) -> bool {
        !self.classes.is_empty()
    }

    /// Whether the pixels are memory-mapped from the cache.
    pub fn is_mapped(&self) -> bool {
        matches!(self.pixels, Pixels::Mapped(_))
    }

    fn row(&self, i: usize) -> usize {
        self.rows.as_ref().map_or(i, |r| r[i] as usize)
    }

    /// The pixel bytes of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let len = self.image_len();
        &self.pixels.bytes()[self.row(i) * len..][..len]
    }

    /// The label of image `i` (0 for an unlabelled set).
    pub fn label(&self, i: usize) -> u16 {
        self.labels[self.row(i)]
    }

    /// Every label, in order.
    pub fn labels(&self) -> Vec<u16> {
        (0..self.len()).map(|i| self.label(i)).collect()
    }

    /// The images `start..start + count` in the data scale [-1, 1].
    pub fn values(&self, start: usize, count: usize) -> Vec<f32> {
        (start..start + count)
            .flat_map(|i| self.image(i).iter().map(|&p| to_unit(p)))
            .collect()
    }

    /// The images at `indices` in the data scale, with their labels.
    pub fn batch_values(&self, indices: &[usize]) -> (Vec<f32>, Vec<u16>) {
        let mut values = Vec::with_capacity(indices.len() * self.image_len());
        for &i in indices {
            values.extend(self.image(i).iter().map(|&p| to_unit(p)));
        }
        (values, indices.iter().map(|&i| self.label(i)).collect())
    }

    /// The images at `indices` as a `[batch, c, h, w]` tensor, with their labels.
    pub fn batch(&self, indices: &[usize], device: &Device) -> (Tensor<4>, Vec<u16>) {
        let (values, labels) = self.batch_values(indices);
        (self.tensor(values, device), labels)
    }

    /// [`batch`](Self::batch), each image mirrored left-right with probability 1/2.
    pub fn batch_flipped<R: Rng>(
        &self,
        indices: &[usize],
        rng: &mut R,
        device: &Device,
    ) -> (Tensor<4>, Vec<u16>) {
        let (mut values, labels) = self.batch_values(indices);
        let w = self.width;
        for image in values.chunks_mut(self.image_len()) {
            if rng.random::<bool>() {
                for row in image.chunks_mut(w) {
                    row.reverse();
                }
            }
        }
        (self.tensor(values, device), labels)
    }

    /// Values of images of this set's shape as a `[n, c, h, w]` tensor.
    pub fn tensor(&self, values: Vec<f32>, device: &Device) -> Tensor<4> {
        let shape = [
            values.len() / self.image_len(),
            self.channels,
            self.height,
            self.width,
        ];
        Tensor::from_data(TensorData::new(values, shape), device)
    }

    /// The images at `indices` (a view: the pixels are shared).
    pub fn select(&self, indices: &[usize]) -> ImageSet {
        ImageSet {
            rows: Some(Arc::new(
                indices.iter().map(|&i| self.row(i) as u32).collect(),
            )),
            ..self.clone()
        }
    }

    /// The first `n` images (all when `n` is larger).
    pub fn take(&self, n: usize) -> ImageSet {
        let indices: Vec<usize> = (0..n.min(self.len())).collect();
        self.select(&indices)
    }

    /// The same images with new pixels and shape (from [`crate::data::convert`]).
    pub fn with_pixels(&self, bytes: Vec<u8>, shape: [usize; 3]) -> Result<Self> {
        Self::from_bytes(bytes, self.labels(), shape, self.classes.clone())
    }

    /// Number of images per label (empty for an unlabelled set).
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for i in 0..self.len() {
            if let Some(c) = counts.get_mut(self.label(i) as usize) {
                *c += 1;
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn set() -> ImageSet {
        let bytes: Vec<u8> = (0..3 * 2 * 2 * 3).map(|i| i as u8 * 7).collect();
        let classes = vec!["a".into(), "b".into()];
        ImageSet::from_bytes(bytes, vec![0, 1, 1], [2, 2, 3], classes).unwrap()
    }

    #[test]
    fn views_values_and_labels() {
        let s = set();
        assert_eq!((s.len(), s.image_len()), (3, 12));
        let view = s.select(&[2, 0]);
        assert_eq!(view.labels(), vec![1, 0]);
        assert_eq!(view.image(0), s.image(2));
        assert_eq!(view.take(1).image(0), s.image(2));
        let v = s.values(1, 1);
        assert_eq!(v[0], to_unit(12 * 7));
        assert_eq!((to_unit(0), to_unit(255)), (-1.0, 1.0));
        assert_eq!(s.class_counts(), vec![1, 2]);
        assert!(ImageSet::from_bytes(vec![0; 5], vec![0], [1, 2, 3], vec![]).is_err());
        assert!(ImageSet::from_bytes(vec![0; 6], vec![2], [1, 2, 3], vec!["x".into()]).is_err());
    }

    #[test]
    fn flips_mirror_rows() {
        let s = set();
        let device = Device::flex();
        let mut flipped = 0;
        for seed in 0..8 {
            let (x, _) = s.batch_flipped(&[0], &mut StdRng::seed_from_u64(seed), &device);
            let v = x
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap();
            let plain = s.values(0, 1);
            if v != plain {
                flipped += 1;
                // Each row of 3 reversed.
                assert_eq!(v[0], plain[2]);
                assert_eq!(v[3], plain[5]);
            }
        }
        assert!((1..8).contains(&flipped));
    }
}
