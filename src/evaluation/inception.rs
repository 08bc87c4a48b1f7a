//! The Inception network of the standard FID, as pytorch-fid computes it: its FID variant of
//! Inception-v3 (the TensorFlow graph of 2015-12-05 ported to PyTorch), read from its
//! published weights file, giving the 2,048 features of the last average pool.
//!
//! What pytorch-fid does, done here the same way:
//! - images in [0, 1] (8-bit values / 255, as `ToTensor` reads a PNG; greyscale repeated to
//!   three channels, as `Image.convert('RGB')` does) are resized to 299x299 by bilinear
//!   interpolation with `align_corners=False` (no antialiasing), then mapped to [-1, 1];
//! - every convolution is followed by batch normalisation (eps 1e-3, folded into the
//!   convolution when the weights are read) and ReLU;
//! - the FID variant's own pooling: average pools that leave the zero padding out of the mean
//!   (`count_include_pad=False`) in the A, C and first E blocks, a max pool in the last E
//!   block;
//! - the features are the global average of the last block (`[n, 2048]`).
//!
//! The weights file is PyTorch's (`torch.save` of the state dict, read in either of its
//! formats by the `pytorch-reader` crate, the reader behind burn-store); a safetensors file
//! with the same tensor names is read too. [`pattern_weight`] is the deterministic stand-in
//! that the PyTorch twin (`scripts/make-inception-fixture.py`) computes as well.

use std::path::{Path, PathBuf};

use burn::tensor::activation::relu;
use burn::tensor::module::{avg_pool2d, conv2d, interpolate, max_pool2d};
use burn::tensor::ops::{
    AvgPoolOptions, ConvOptions, InterpolateMode, InterpolateOptions, MaxPoolOptions,
};
use burn::tensor::{Device, Tensor, TensorData};

use crate::data::download::{fetch_verified_to, sha256_file};
use crate::error::{Error, Result};

/// Features per image (the last average pool).
pub const FEATURES: usize = 2048;
/// Side of the square the images are resized to.
pub const INPUT_SIZE: usize = 299;
/// File name of pytorch-fid's published weights (also their name in the cache).
pub const WEIGHTS_FILE: &str = "pt_inception-2015-12-05-6726825d.pth";
/// Where pytorch-fid downloads its weights from (its `FID_WEIGHTS_URL`).
pub const WEIGHTS_URL: &str = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth";
/// SHA-256 of [`WEIGHTS_FILE`]. pytorch-fid states only its first eight digits (in the file
/// name, torch.hub's convention); the whole digest is the one other projects pin for this
/// URL (a 95,628,359-byte file), and it begins with those eight digits.
pub const WEIGHTS_SHA256: &str = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2";
/// Largest weights file accepted from a server (the real one is 95,628,359 bytes).
pub const MAX_WEIGHTS_BYTES: u64 = 128 << 20;
/// Images per network call in [`Inception::embed`]: on 2 cores 16 is as fast as 4 or 32,
/// with a peak of ~350 MB (the network's weights included).
pub const BATCH: usize = 16;
/// Batch normalisation's epsilon in this network.
const BN_EPS: f64 = 1e-3;

/// A convolution with its batch normalisation folded in, followed by ReLU (PyTorch's
/// `BasicConv2d`).
#[derive(Debug, Clone)]
struct ConvBn {
    weight: Tensor<4>,
    bias: Tensor<1>,
    options: ConvOptions<2>,
}

impl ConvBn {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let options = self.options.clone();
        relu(conv2d(
            x,
            self.weight.clone(),
            Some(self.bias.clone()),
            options,
        ))
    }
}

/// Reads the tensors of one network from a source, folding each batch normalisation.
struct Loader<'a, F> {
    get: F,
    device: &'a Device,
}

impl<F: FnMut(&str, &[usize]) -> Result<Vec<f32>>> Loader<'_, F> {
    /// `BasicConv2d` `name`: `c_in` -> `c_out` channels, kernel `[kh, kw]`, `stride`, zero
    /// padding `[ph, pw]`.
    fn conv(
        &mut self,
        name: &str,
        (c_in, c_out): (usize, usize),
        [kh, kw]: [usize; 2],
        stride: usize,
        [ph, pw]: [usize; 2],
    ) -> Result<ConvBn> {
        let mut weight = (self.get)(&format!("{name}.conv.weight"), &[c_out, c_in, kh, kw])?;
        let mut bn = |what: &str| (self.get)(&format!("{name}.bn.{what}"), &[c_out]);
        let (gamma, beta) = (bn("weight")?, bn("bias")?);
        let (mean, var) = (bn("running_mean")?, bn("running_var")?);
        let per_out = c_in * kh * kw;
        let mut bias = vec![0f32; c_out];
        for o in 0..c_out {
            let scale = gamma[o] as f64 / (var[o] as f64 + BN_EPS).sqrt();
            for w in &mut weight[o * per_out..(o + 1) * per_out] {
                *w = (*w as f64 * scale) as f32;
            }
            bias[o] = (beta[o] as f64 - mean[o] as f64 * scale) as f32;
        }
        Ok(ConvBn {
            weight: Tensor::from_data(TensorData::new(weight, [c_out, c_in, kh, kw]), self.device),
            bias: Tensor::from_data(TensorData::new(bias, [c_out]), self.device),
            options: ConvOptions::new_with_padding([stride; 2], [(ph, ph), (pw, pw)], [1, 1], 1),
        })
    }

    /// A square `k`x`k` convolution with stride 1 and the padding that keeps the size.
    fn same(&mut self, name: &str, channels: (usize, usize), k: usize) -> Result<ConvBn> {
        self.conv(name, channels, [k, k], 1, [k / 2, k / 2])
    }

    /// A `1`x`k` (`wide`) or `k`x`1` convolution keeping the size.
    fn line(
        &mut self,
        name: &str,
        channels: (usize, usize),
        k: usize,
        wide: bool,
    ) -> Result<ConvBn> {
        match wide {
            true => self.conv(name, channels, [1, k], 1, [0, k / 2]),
            false => self.conv(name, channels, [k, 1], 1, [k / 2, 0]),
        }
    }
}

/// 3x3 pooling with stride 1 and padding 1: the average over the window's real pixels (zero
/// padding left out), or the maximum.
fn pool_same(x: Tensor<4>, max: bool) -> Tensor<4> {
    match max {
        true => max_pool2d(
            x,
            MaxPoolOptions {
                stride: [1, 1],
                padding: [(1, 1), (1, 1)],
                ..MaxPoolOptions::new([3, 3])
            },
        ),
        false => avg_pool2d(
            x,
            AvgPoolOptions {
                stride: [1, 1],
                padding: [(1, 1), (1, 1)],
                count_include_pad: false,
                ..AvgPoolOptions::new([3, 3])
            },
        ),
    }
}

/// 3x3 max pooling with stride 2, no padding.
fn max_pool_down(x: Tensor<4>) -> Tensor<4> {
    max_pool2d(
        x,
        MaxPoolOptions {
            stride: [2, 2],
            ..MaxPoolOptions::new([3, 3])
        },
    )
}

/// pytorch-fid's `FIDInceptionA` (Mixed_5b/c/d).
#[derive(Debug, Clone)]
struct BlockA {
    b1x1: ConvBn,
    b5x5: [ConvBn; 2],
    b3x3dbl: [ConvBn; 3],
    pool: ConvBn,
}

impl BlockA {
    fn load<F>(l: &mut Loader<F>, name: &str, c_in: usize, pool: usize) -> Result<Self>
    where
        F: FnMut(&str, &[usize]) -> Result<Vec<f32>>,
    {
        let n = |b: &str| format!("{name}.{b}");
        Ok(BlockA {
            b1x1: l.same(&n("branch1x1"), (c_in, 64), 1)?,
            b5x5: [
                l.same(&n("branch5x5_1"), (c_in, 48), 1)?,
                l.same(&n("branch5x5_2"), (48, 64), 5)?,
            ],
            b3x3dbl: [
                l.same(&n("branch3x3dbl_1"), (c_in, 64), 1)?,
                l.same(&n("branch3x3dbl_2"), (64, 96), 3)?,
                l.same(&n("branch3x3dbl_3"), (96, 96), 3)?,
            ],
            pool: l.same(&n("branch_pool"), (c_in, pool), 1)?,
        })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b5 = self.b5x5.iter().fold(x.clone(), |h, c| c.forward(h));
        let b3 = self.b3x3dbl.iter().fold(x.clone(), |h, c| c.forward(h));
        let pool = self.pool.forward(pool_same(x.clone(), false));
        Tensor::cat(vec![self.b1x1.forward(x), b5, b3, pool], 1)
    }
}

/// torchvision's `InceptionB` (Mixed_6a): the grid 35 -> 17.
#[derive(Debug, Clone)]
struct BlockB {
    b3x3: ConvBn,
    b3x3dbl: [ConvBn; 3],
}

impl BlockB {
    fn load<F>(l: &mut Loader<F>, name: &str, c_in: usize) -> Result<Self>
    where
        F: FnMut(&str, &[usize]) -> Result<Vec<f32>>,
    {
        let n = |b: &str| format!("{name}.{b}");
        Ok(BlockB {
            b3x3: l.conv(&n("branch3x3"), (c_in, 384), [3, 3], 2, [0, 0])?,
            b3x3dbl: [
                l.same(&n("branch3x3dbl_1"), (c_in, 64), 1)?,
                l.same(&n("branch3x3dbl_2"), (64, 96), 3)?,
                l.conv(&n("branch3x3dbl_3"), (96, 96), [3, 3], 2, [0, 0])?,
            ],
        })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b3 = self.b3x3dbl.iter().fold(x.clone(), |h, c| c.forward(h));
        Tensor::cat(vec![self.b3x3.forward(x.clone()), b3, max_pool_down(x)], 1)
    }
}

/// pytorch-fid's `FIDInceptionC` (Mixed_6b/c/d/e): factorised 7x7 convolutions.
#[derive(Debug, Clone)]
struct BlockC {
    b1x1: ConvBn,
    b7x7: [ConvBn; 3],
    b7x7dbl: [ConvBn; 5],
    pool: ConvBn,
}

impl BlockC {
    fn load<F>(l: &mut Loader<F>, name: &str, c7: usize) -> Result<Self>
    where
        F: FnMut(&str, &[usize]) -> Result<Vec<f32>>,
    {
        let n = |b: &str| format!("{name}.{b}");
        Ok(BlockC {
            b1x1: l.same(&n("branch1x1"), (768, 192), 1)?,
            b7x7: [
                l.same(&n("branch7x7_1"), (768, c7), 1)?,
                l.line(&n("branch7x7_2"), (c7, c7), 7, true)?,
                l.line(&n("branch7x7_3"), (c7, 192), 7, false)?,
            ],
            b7x7dbl: [
                l.same(&n("branch7x7dbl_1"), (768, c7), 1)?,
                l.line(&n("branch7x7dbl_2"), (c7, c7), 7, false)?,
                l.line(&n("branch7x7dbl_3"), (c7, c7), 7, true)?,
                l.line(&n("branch7x7dbl_4"), (c7, c7), 7, false)?,
                l.line(&n("branch7x7dbl_5"), (c7, 192), 7, true)?,
            ],
            pool: l.same(&n("branch_pool"), (768, 192), 1)?,
        })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b7 = self.b7x7.iter().fold(x.clone(), |h, c| c.forward(h));
        let b7dbl = self.b7x7dbl.iter().fold(x.clone(), |h, c| c.forward(h));
        let pool = self.pool.forward(pool_same(x.clone(), false));
        Tensor::cat(vec![self.b1x1.forward(x), b7, b7dbl, pool], 1)
    }
}

/// torchvision's `InceptionD` (Mixed_7a): the grid 17 -> 8.
#[derive(Debug, Clone)]
struct BlockD {
    b3x3: [ConvBn; 2],
    b7x7x3: [ConvBn; 4],
}

impl BlockD {
    fn load<F>(l: &mut Loader<F>, name: &str) -> Result<Self>
    where
        F: FnMut(&str, &[usize]) -> Result<Vec<f32>>,
    {
        let n = |b: &str| format!("{name}.{b}");
        Ok(BlockD {
            b3x3: [
                l.same(&n("branch3x3_1"), (768, 192), 1)?,
                l.conv(&n("branch3x3_2"), (192, 320), [3, 3], 2, [0, 0])?,
            ],
            b7x7x3: [
                l.same(&n("branch7x7x3_1"), (768, 192), 1)?,
                l.line(&n("branch7x7x3_2"), (192, 192), 7, true)?,
                l.line(&n("branch7x7x3_3"), (192, 192), 7, false)?,
                l.conv(&n("branch7x7x3_4"), (192, 192), [3, 3], 2, [0, 0])?,
            ],
        })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b3 = self.b3x3.iter().fold(x.clone(), |h, c| c.forward(h));
        let b7 = self.b7x7x3.iter().fold(x.clone(), |h, c| c.forward(h));
        Tensor::cat(vec![b3, b7, max_pool_down(x)], 1)
    }
}

/// pytorch-fid's `FIDInceptionE_1` (Mixed_7b, average pool) and `FIDInceptionE_2` (Mixed_7c,
/// max pool).
#[derive(Debug, Clone)]
struct BlockE {
    b1x1: ConvBn,
    b3x3_1: ConvBn,
    b3x3_2: [ConvBn; 2],
    dbl_12: [ConvBn; 2],
    dbl_3: [ConvBn; 2],
    pool: ConvBn,
    max_pool: bool,
}

impl BlockE {
    fn load<F>(l: &mut Loader<F>, name: &str, c_in: usize, max_pool: bool) -> Result<Self>
    where
        F: FnMut(&str, &[usize]) -> Result<Vec<f32>>,
    {
        let n = |b: &str| format!("{name}.{b}");
        Ok(BlockE {
            b1x1: l.same(&n("branch1x1"), (c_in, 320), 1)?,
            b3x3_1: l.same(&n("branch3x3_1"), (c_in, 384), 1)?,
            b3x3_2: [
                l.line(&n("branch3x3_2a"), (384, 384), 3, true)?,
                l.line(&n("branch3x3_2b"), (384, 384), 3, false)?,
            ],
            dbl_12: [
                l.same(&n("branch3x3dbl_1"), (c_in, 448), 1)?,
                l.same(&n("branch3x3dbl_2"), (448, 384), 3)?,
            ],
            dbl_3: [
                l.line(&n("branch3x3dbl_3a"), (384, 384), 3, true)?,
                l.line(&n("branch3x3dbl_3b"), (384, 384), 3, false)?,
            ],
            pool: l.same(&n("branch_pool"), (c_in, 192), 1)?,
            max_pool,
        })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = self.b3x3_1.forward(x.clone());
        let b3 = self.b3x3_2.iter().map(|c| c.forward(h.clone())).collect();
        let h = self.dbl_12.iter().fold(x.clone(), |h, c| c.forward(h));
        let dbl = self.dbl_3.iter().map(|c| c.forward(h.clone())).collect();
        let pool = self.pool.forward(pool_same(x.clone(), self.max_pool));
        let b1 = self.b1x1.forward(x);
        Tensor::cat(vec![b1, Tensor::cat(b3, 1), Tensor::cat(dbl, 1), pool], 1)
    }
}

/// pytorch-fid's `InceptionV3` up to its 2,048-d pool features (block index 3).
#[derive(Debug, Clone)]
pub struct Inception {
    stem: [ConvBn; 5],
    mixed_5: [BlockA; 3],
    mixed_6a: BlockB,
    mixed_6: [BlockC; 4],
    mixed_7a: BlockD,
    mixed_7: [BlockE; 2],
    device: Device,
}

impl Inception {
    /// Builds the network from `get(name, shape)`, which returns the values (row-major) of
    /// the tensor of pytorch-fid's state dict called `name` (e.g.
    /// `Mixed_5b.branch1x1.conv.weight`, `Conv2d_1a_3x3.bn.running_var`) of `shape`.
    pub fn build(
        get: impl FnMut(&str, &[usize]) -> Result<Vec<f32>>,
        device: &Device,
    ) -> Result<Self> {
        let l = &mut Loader { get, device };
        Ok(Inception {
            stem: [
                l.conv("Conv2d_1a_3x3", (3, 32), [3, 3], 2, [0, 0])?,
                l.conv("Conv2d_2a_3x3", (32, 32), [3, 3], 1, [0, 0])?,
                l.same("Conv2d_2b_3x3", (32, 64), 3)?,
                l.same("Conv2d_3b_1x1", (64, 80), 1)?,
                l.conv("Conv2d_4a_3x3", (80, 192), [3, 3], 1, [0, 0])?,
            ],
            mixed_5: [
                BlockA::load(l, "Mixed_5b", 192, 32)?,
                BlockA::load(l, "Mixed_5c", 256, 64)?,
                BlockA::load(l, "Mixed_5d", 288, 64)?,
            ],
            mixed_6a: BlockB::load(l, "Mixed_6a", 288)?,
            mixed_6: [
                BlockC::load(l, "Mixed_6b", 128)?,
                BlockC::load(l, "Mixed_6c", 160)?,
                BlockC::load(l, "Mixed_6d", 160)?,
                BlockC::load(l, "Mixed_6e", 192)?,
            ],
            mixed_7a: BlockD::load(l, "Mixed_7a")?,
            mixed_7: [
                BlockE::load(l, "Mixed_7b", 1280, false)?,
                BlockE::load(l, "Mixed_7c", 2048, true)?,
            ],
            device: device.clone(),
        })
    }

    /// Reads the weights from `path` (see [`WeightsFile`]).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let file = WeightsFile::open(path)?;
        Self::build(|name, shape| file.tensor(name, shape), device)
    }

    /// The 2,048 pool features of images `x` (`[n, 3, h, w]`, values in [0, 1]), as
    /// pytorch-fid's `InceptionV3([3])(x)[0]`: resized to 299x299, mapped to [-1, 1].
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let options = InterpolateOptions {
            align_corners: false,
            output_size: Some([INPUT_SIZE; 2]),
            ..InterpolateOptions::new(InterpolateMode::Bilinear)
        };
        let x = interpolate(x, options) * 2.0 - 1.0;
        let [c1, c2, c3, c4, c5] = &self.stem;
        let h = c3.forward(c2.forward(c1.forward(x)));
        let h = c5.forward(c4.forward(max_pool_down(h)));
        let mut h = max_pool_down(h);
        for block in &self.mixed_5 {
            h = block.forward(h);
        }
        h = self.mixed_6a.forward(h);
        for block in &self.mixed_6 {
            h = block.forward(h);
        }
        h = self.mixed_7a.forward(h);
        for block in &self.mixed_7 {
            h = block.forward(h);
        }
        let [n, c, _, _] = h.dims();
        h.mean_dim(3).mean_dim(2).reshape([n, c])
    }

    /// The features of `n` images given as row-major `[n, c, h, w]` values in flowmatch's
    /// [-1, 1] scale (`c` 1 or 3), in batches of [`BATCH`]. Each value is first rounded to
    /// 8 bits as writing a PNG would (`round(255 (v + 1) / 2)`, clamped), so that samples
    /// are measured as pytorch-fid would measure them saved as PNG files, and real images
    /// exactly as it reads them.
    pub fn embed(&self, values: &[f32], [c, h, w]: [usize; 3]) -> Result<Vec<Vec<f32>>> {
        if c != 1 && c != 3 {
            return Err(Error::invalid(
                "Inception features",
                format!("images of {c} channels: it reads grey (1) or colour (3) images"),
            ));
        }
        let image = c * h * w;
        let mut out = Vec::with_capacity(values.len() / image.max(1));
        for chunk in values.chunks(BATCH * image) {
            let n = chunk.len() / image;
            let mut unit = Vec::with_capacity(n * 3 * h * w);
            for picture in chunk.chunks(image) {
                let quantised = picture.iter().map(|&v| to_8bit(v) as f32 / 255.0);
                match c {
                    1 => {
                        let grey: Vec<f32> = quantised.collect();
                        for _ in 0..3 {
                            unit.extend_from_slice(&grey);
                        }
                    }
                    _ => unit.extend(quantised),
                }
            }
            let x = Tensor::<4>::from_data(TensorData::new(unit, [n, 3, h, w]), &self.device);
            let features = self
                .features(x)
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .expect("f32 features");
            out.extend(features.chunks(FEATURES).map(<[f32]>::to_vec));
        }
        Ok(out)
    }
}

/// An opened weights file: pytorch-fid's `.pth` (a `torch.save`d state dict in either of its
/// formats: the zip archive of PyTorch 1.6 and later, or the older pickle stream) or a
/// safetensors file with the same tensor names.
pub struct WeightsFile {
    path: PathBuf,
    format: Format,
}

enum Format {
    Pytorch(Box<pytorch_reader::PytorchReader>),
    Safetensors(Vec<u8>),
}

impl WeightsFile {
    /// Opens `path`, telling the format from the first bytes (tensor data is read later).
    pub fn open(path: &Path) -> Result<Self> {
        use std::io::Read;
        let mut head = [0u8; 9];
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let read = file.read(&mut head).map_err(|e| Error::io(path, e))?;
        // A safetensors file starts with its header's length (8 bytes), then '{'.
        let format = if read == 9 && head[8] == b'{' && !head.starts_with(b"PK") {
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
                Error::bad_file(path, format!("not a valid safetensors file ({e})"))
            })?;
            Format::Safetensors(bytes)
        } else {
            let reader = pytorch_reader::PytorchReader::new(path).map_err(|e| {
                Error::bad_file(path, format!("not a readable PyTorch weights file ({e})"))
            })?;
            Format::Pytorch(Box::new(reader))
        };
        Ok(WeightsFile {
            path: path.to_path_buf(),
            format,
        })
    }

    /// The values of tensor `name` as float32 (from float32, float64, float16 or bfloat16),
    /// checked to have `shape`.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let path = &self.path;
        let missing = || {
            Error::bad_file(
                path,
                format!("no tensor '{name}': not pytorch-fid's Inception weights"),
            )
        };
        match &self.format {
            Format::Pytorch(reader) => {
                let tensor = reader.get(name).ok_or_else(missing)?;
                let bytes = tensor
                    .read()
                    .map_err(|e| Error::bad_file(path, e.to_string()))?;
                let dtype = format!("{:?}", tensor.dtype());
                to_f32(path, name, shape, tensor.shape(), &dtype, &bytes)
            }
            Format::Safetensors(bytes) => {
                let file = safetensors::SafeTensors::deserialize(bytes)
                    .map_err(|e| Error::bad_file(path, e.to_string()))?;
                let view = file.tensor(name).map_err(|_| missing())?;
                let dtype = format!("{:?}", view.dtype());
                to_f32(path, name, shape, view.shape(), &dtype, view.data())
            }
        }
    }
}

/// A value of flowmatch's [-1, 1] scale as the 8-bit value a PNG of it holds.
fn to_8bit(v: f32) -> u8 {
    (((v + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0).round() as u8
}

/// The values of tensor `name` stored as `dtype` bytes (native little-endian) of shape
/// `found`, checked against the `expected` shape.
fn to_f32(
    path: &Path,
    name: &str,
    expected: &[usize],
    found: &[usize],
    dtype: &str,
    bytes: &[u8],
) -> Result<Vec<f32>> {
    if found != expected {
        return Err(Error::bad_file(
            path,
            format!("tensor '{name}' has shape {found:?}, expected {expected:?}"),
        ));
    }
    let values: Vec<f32> = match dtype.to_ascii_uppercase().as_str() {
        "F32" => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        "F64" => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
            .collect(),
        "F16" => bytes
            .chunks_exact(2)
            .map(|b| burn::tensor::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        "BF16" => bytes
            .chunks_exact(2)
            .map(|b| burn::tensor::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(Error::bad_file(
                path,
                format!("tensor '{name}' is {other}; expected floating point"),
            ));
        }
    };
    if values.len() != expected.iter().product::<usize>() {
        return Err(Error::bad_file(
            path,
            format!("tensor '{name}' holds {} values", values.len()),
        ));
    }
    Ok(values)
}

/// Makes sure pytorch-fid's weights are in `cache_dir/inception/` with the SHA-256 `sha256`,
/// downloading them from `url` when they are missing or wrong ([`WEIGHTS_URL`] and
/// [`WEIGHTS_SHA256`] for the real file); returns the path. A download whose checksum does
/// not match is never kept.
pub fn ensure_weights(cache_dir: &Path, url: &str, sha256: &str) -> Result<PathBuf> {
    let dest = cache_dir.join("inception").join(WEIGHTS_FILE);
    if dest.is_file() {
        if sha256_file(&dest)? == sha256 {
            return Ok(dest);
        }
        std::fs::remove_file(&dest).map_err(|e| Error::io(&dest, e))?;
    }
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    fetch_verified_to(url, sha256, &dest, MAX_WEIGHTS_BYTES)?;
    Ok(dest)
}

/// Where the Inception weights come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsChoice {
    /// The verified copy in the cache (an error, saying how to get it, when there is none).
    Cached,
    /// pytorch-fid's release, downloaded and verified into the cache unless already there.
    Download,
    /// A file given by the user (any `.pth` or safetensors with pytorch-fid's names).
    Path(PathBuf),
}

impl WeightsChoice {
    /// `download` or a path.
    pub fn parse(text: &str) -> Self {
        match text {
            "download" => WeightsChoice::Download,
            path => WeightsChoice::Path(PathBuf::from(path)),
        }
    }

    /// The weights file and whether it is pytorch-fid's published file (its SHA-256): only
    /// then are the features those of the standard FID.
    pub fn locate(&self, cache_dir: &Path) -> Result<(PathBuf, bool)> {
        let cached = cache_dir.join("inception").join(WEIGHTS_FILE);
        match self {
            WeightsChoice::Download => Ok((
                ensure_weights(cache_dir, WEIGHTS_URL, WEIGHTS_SHA256)?,
                true,
            )),
            WeightsChoice::Path(path) => Ok((path.clone(), sha256_file(path)? == WEIGHTS_SHA256)),
            WeightsChoice::Cached if !cached.is_file() => Err(Error::invalid(
                "Inception weights",
                format!(
                    "pytorch-fid's weights are not in {}: give a path, or `download` to fetch \
                     them there",
                    cached.display()
                ),
            )),
            WeightsChoice::Cached if sha256_file(&cached)? != WEIGHTS_SHA256 => {
                Err(Error::bad_file(
                    &cached,
                    "not pytorch-fid's weights (another SHA-256): download them again",
                ))
            }
            WeightsChoice::Cached => Ok((cached, true)),
        }
    }
}

/// The deterministic stand-in for tensor `name` of pytorch-fid's state dict (of `shape`) that
/// `scripts/make-inception-fixture.py` computes too, bit for bit: element i is built from
/// u = fmix32(i + fnv1a32(name)) / 2^32 in float64 — convolution weights (2u - 1)
/// sqrt(6 / fan_in), batch-norm scales and variances 0.5 + u, shifts and means
/// 0.2 (u - 0.5), anything else 0.02 (u - 0.5) — then rounded to float32.
pub fn pattern_weight(name: &str, shape: &[usize]) -> Vec<f32> {
    let seed = name.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    });
    let fan_in: usize = shape.iter().skip(1).product();
    (0..shape.iter().product::<usize>())
        .map(|i| {
            let u = fmix32((i as u32).wrapping_add(seed)) as f64 / 4294967296.0;
            let v = if name.ends_with("conv.weight") {
                (2.0 * u - 1.0) * (6.0 / fan_in as f64).sqrt()
            } else if name.ends_with("bn.weight") || name.ends_with("bn.running_var") {
                0.5 + u
            } else if name.ends_with("bn.bias") || name.ends_with("bn.running_mean") {
                0.2 * (u - 0.5)
            } else {
                0.02 * (u - 0.5)
            };
            v as f32
        })
        .collect()
}

/// murmur3's 32-bit finaliser.
fn fmix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x85eb_ca6b);
    x ^= x >> 13;
    x = x.wrapping_mul(0xc2b2_ae35);
    x ^ (x >> 16)
}
