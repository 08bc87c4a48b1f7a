//! The reference SimpleUNet (seed-spec.md), written against burn's module system.
//!
//! Parameters use PyTorch's layouts (Conv2d `[out, in, k, k]`, ConvTranspose2d `[in, out, k, k]`,
//! Linear `[out, in]`) and, through [`pytorch_name`], PyTorch's `state_dict` names, so weights
//! trained by the reference code load unchanged.

use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Uniform};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::kernels::{
    conv_transpose2d, conv_transpose2d_skip, conv2d, conv2d_skip, group_norm_silu,
};

/// Number of GroupNorm groups in every block (as in the reference).
pub const NORM_GROUPS: usize = 8;
const NORM_EPS: f32 = 1e-5;

/// Most channels of any layer (a bound on what a configuration can ask to allocate).
pub const MAX_WIDTH: usize = 4096;
/// Most image channels.
pub const MAX_CHANNELS: usize = 64;
/// Most classes of a conditional model.
pub const MAX_CLASSES: usize = 100_000;

/// The shape of a SimpleUNet: channel widths of the three levels and the time-embedding size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UNetConfig {
    /// Image channels (1 for MNIST).
    pub in_channels: usize,
    /// Channel widths of the three resolution levels (reference: 64/128/256).
    pub widths: [usize; 3],
    /// Size of the sinusoidal time embedding and its MLP (reference: 32).
    pub time_dim: usize,
    /// Number of classes of a class-conditional model (none: unconditional, as the reference).
    #[serde(default)]
    pub num_classes: Option<usize>,
}

impl UNetConfig {
    /// The reference network: widths 64/128/256, time embedding 32.
    pub const REFERENCE: UNetConfig = UNetConfig {
        in_channels: 1,
        widths: [64, 128, 256],
        time_dim: 32,
        num_classes: None,
    };

    /// A one-channel network with the given widths and the reference time embedding.
    pub fn with_widths(widths: [usize; 3]) -> Self {
        UNetConfig {
            widths,
            ..Self::REFERENCE
        }
    }

    /// Checks that the widths work with GroupNorm(8) and the embedding is even and > 2.
    pub fn validate(&self) -> Result<()> {
        if self
            .widths
            .iter()
            .any(|w| *w == 0 || !w.is_multiple_of(NORM_GROUPS))
        {
            return Err(Error::invalid(
                "widths",
                format!(
                    "{:?}: every width must be a positive multiple of {NORM_GROUPS} (GroupNorm groups)",
                    self.widths
                ),
            ));
        }
        if self.time_dim < 4 || !self.time_dim.is_multiple_of(2) {
            return Err(Error::invalid(
                "time embedding size",
                format!("{}: must be even and at least 4", self.time_dim),
            ));
        }
        if self.num_classes == Some(0) {
            return Err(Error::invalid(
                "classes",
                "a conditional model needs at least one class",
            ));
        }
        if self.in_channels == 0 || self.in_channels > MAX_CHANNELS {
            return Err(Error::invalid(
                "in_channels",
                format!("{}: must be 1 to {MAX_CHANNELS}", self.in_channels),
            ));
        }
        if self.widths.iter().any(|&w| w > MAX_WIDTH) || self.time_dim > MAX_WIDTH {
            return Err(Error::invalid(
                "widths",
                format!(
                    "{:?} / time embedding {}: at most {MAX_WIDTH} channels",
                    self.widths, self.time_dim
                ),
            ));
        }
        if self.num_classes.is_some_and(|c| c > MAX_CLASSES) {
            return Err(Error::invalid(
                "classes",
                format!("{:?}: at most {MAX_CLASSES}", self.num_classes),
            ));
        }
        Ok(())
    }
}

/// Supplies parameter tensors while a model is built: fresh initial values or values from a file.
pub trait ParamSource {
    /// Returns the tensor for parameter `name` (PyTorch naming) of the given shape.
    fn tensor<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
        init: Init,
        device: &Device,
    ) -> Result<Tensor<D>>;
}

/// How a parameter is initialised when it is created fresh (PyTorch's defaults).
#[derive(Debug, Clone, Copy)]
pub enum Init {
    /// Uniform in `[-1/sqrt(fan_in), 1/sqrt(fan_in)]` (PyTorch's conv/linear weights and biases).
    FanIn(usize),
    /// Every element equal to the value (GroupNorm weight 1, bias 0).
    Constant(f32),
    /// Normal with mean 0 and this standard deviation (PyTorch's embeddings: 1).
    Normal(f32),
}

/// Fresh parameters drawn from a seeded generator, as PyTorch initialises these layers.
pub struct RandomInit {
    rng: StdRng,
}

impl RandomInit {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        RandomInit {
            rng: StdRng::seed_from_u64(seed),
        }
    }
}

impl ParamSource for RandomInit {
    fn tensor<const D: usize>(
        &mut self,
        _name: &str,
        shape: [usize; D],
        init: Init,
        device: &Device,
    ) -> Result<Tensor<D>> {
        let len = shape.iter().product();
        let values: Vec<f32> = match init {
            Init::FanIn(fan_in) => {
                let bound = 1.0 / (fan_in as f32).sqrt();
                let dist = Uniform::new_inclusive(-bound, bound).expect("finite bound");
                (0..len).map(|_| dist.sample(&mut self.rng)).collect()
            }
            Init::Constant(v) => vec![v; len],
            Init::Normal(std) => (0..len)
                .map(|_| std * self.rng.sample::<f32, _>(rand_distr::StandardNormal))
                .collect(),
        };
        Ok(Tensor::from_data(TensorData::new(values, shape), device))
    }
}

/// Maps a module path (`time_mlp.fc1.weight`) to its PyTorch `state_dict` name (`time_mlp.1.weight`).
pub fn pytorch_name(path: &str) -> String {
    path.replacen("time_mlp.fc1.", "time_mlp.1.", 1)
        .replacen("time_mlp.fc2.", "time_mlp.3.", 1)
}

/// Takes parameter `path` (module path, mapped to its PyTorch name) of `shape` from `source`.
pub(crate) fn param<S: ParamSource, const D: usize>(
    source: &mut S,
    path: &str,
    shape: [usize; D],
    init: Init,
    device: &Device,
) -> Result<Param<Tensor<D>>> {
    let tensor = source.tensor(&pytorch_name(path), shape, init, device)?;
    Ok(Param::from_tensor(tensor))
}

/// A fully connected layer, weight `[out, in]` as in PyTorch.
#[derive(Module, Debug)]
pub struct Dense {
    /// `[out, in]`.
    pub weight: Param<Tensor<2>>,
    /// `[out]`.
    pub bias: Param<Tensor<1>>,
}

impl Dense {
    /// Takes `path.weight` (`[d_out, d_in]`) and `path.bias` from `source`.
    pub fn build<S: ParamSource>(
        source: &mut S,
        path: &str,
        d_in: usize,
        d_out: usize,
        device: &Device,
    ) -> Result<Self> {
        Ok(Dense {
            weight: param(
                source,
                &format!("{path}.weight"),
                [d_out, d_in],
                Init::FanIn(d_in),
                device,
            )?,
            bias: param(
                source,
                &format!("{path}.bias"),
                [d_out],
                Init::FanIn(d_in),
                device,
            )?,
        })
    }

    /// `x @ weight^T + bias` for `x` of shape `[batch, in]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let out = x.matmul(self.weight.val().transpose());
        out + self.bias.val().unsqueeze_dim(0)
    }
}

/// The time MLP: sinusoidal embedding -> Linear -> SiLU -> Linear (`time_mlp.1`, `time_mlp.3`).
#[derive(Module, Debug)]
pub struct TimeMlp {
    /// First linear layer (`time_mlp.1`).
    pub fc1: Dense,
    /// Second linear layer (`time_mlp.3`).
    pub fc2: Dense,
}

/// Sinusoidal embedding of `t` (already scaled by 1000): `[sin(t f_k), cos(t f_k)]`,
/// `f_k = exp(-k ln(10000) / (half - 1))`.
pub fn sinusoidal_embedding(t: Tensor<1>, dim: usize) -> Tensor<2> {
    let half = dim / 2;
    let scale = (10000f64).ln() / (half as f64 - 1.0);
    let freqs: Vec<f32> = (0..half)
        .map(|k| (-(k as f64) * scale).exp() as f32)
        .collect();
    let freqs = Tensor::<1>::from_data(TensorData::new(freqs, [half]), &t.device());
    let args = t.unsqueeze_dim::<2>(1) * freqs.unsqueeze_dim(0);
    Tensor::cat(vec![args.clone().sin(), args.cos()], 1)
}

/// How a block changes resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    /// 3x3 convolution, padding 1.
    Same,
    /// 3x3 convolution, stride 2, padding 1 (halves the size).
    Down,
    /// 4x4 transposed convolution, stride 2, padding 1 (doubles the size).
    Up,
}

/// A convolution's parameters in PyTorch layout.
#[derive(Module, Debug)]
pub struct ConvParams {
    /// Conv2d: `[out, in, k, k]`; ConvTranspose2d: `[in, out, k, k]`.
    pub weight: Param<Tensor<4>>,
    /// `[out]`.
    pub bias: Param<Tensor<1>>,
}

/// GroupNorm's affine parameters (`norm.weight`, `norm.bias`).
#[derive(Module, Debug)]
pub struct GroupNormParams {
    /// Per-channel scale.
    pub weight: Param<Tensor<1>>,
    /// Per-channel shift.
    pub bias: Param<Tensor<1>>,
}

/// conv -> + time projection -> GroupNorm(8) -> SiLU.
#[derive(Module, Debug)]
pub struct Block {
    /// Projection of the time embedding to one bias per output channel.
    pub time_mlp: Dense,
    /// The (transposed) convolution.
    pub conv: ConvParams,
    /// GroupNorm's affine parameters.
    pub norm: GroupNormParams,
    #[module(skip)]
    resample: Resample,
}

impl Block {
    fn build<S: ParamSource>(
        source: &mut S,
        path: &str,
        (c_in, c_out): (usize, usize),
        resample: Resample,
        time_dim: usize,
        device: &Device,
    ) -> Result<Self> {
        let (shape, fan_in) = match resample {
            Resample::Same | Resample::Down => ([c_out, c_in, 3, 3], c_in * 9),
            // PyTorch computes a transposed convolution's fan-in from weight dim 1 (= out).
            Resample::Up => ([c_in, c_out, 4, 4], c_out * 16),
        };
        let conv = ConvParams {
            weight: param(
                source,
                &format!("{path}.conv.weight"),
                shape,
                Init::FanIn(fan_in),
                device,
            )?,
            bias: param(
                source,
                &format!("{path}.conv.bias"),
                [c_out],
                Init::FanIn(fan_in),
                device,
            )?,
        };
        let norm = GroupNormParams {
            weight: param(
                source,
                &format!("{path}.norm.weight"),
                [c_out],
                Init::Constant(1.0),
                device,
            )?,
            bias: param(
                source,
                &format!("{path}.norm.bias"),
                [c_out],
                Init::Constant(0.0),
                device,
            )?,
        };
        Ok(Block {
            time_mlp: Dense::build(source, &format!("{path}.time_mlp"), time_dim, c_out, device)?,
            conv,
            norm,
            resample,
        })
    }

    /// Applies the block to `x` with time embedding `t_emb` (`[batch, time_dim]`).
    pub fn forward(&self, x: Tensor<4>, t_emb: Tensor<2>) -> Tensor<4> {
        self.apply(x, None, t_emb)
    }

    /// Applies the block to the channel concatenation `[x, skip]` (a U-Net skip connection).
    pub fn forward_skip(&self, x: Tensor<4>, skip: Tensor<4>, t_emb: Tensor<2>) -> Tensor<4> {
        self.apply(x, Some(skip), t_emb)
    }

    fn apply(&self, x: Tensor<4>, skip: Option<Tensor<4>>, t_emb: Tensor<2>) -> Tensor<4> {
        let weight = self.conv.weight.val();
        let bias = self.conv.bias.val();
        let (stride, padding) = match self.resample {
            Resample::Same => (1, 1),
            Resample::Down | Resample::Up => (2, 1),
        };
        let h = match (self.resample, skip) {
            (Resample::Up, None) => conv_transpose2d(x, weight, bias, stride, padding),
            (Resample::Up, Some(skip)) => {
                conv_transpose2d_skip(x, skip, weight, bias, stride, padding)
            }
            (_, None) => conv2d(x, weight, bias, stride, padding),
            (_, Some(skip)) => conv2d_skip(x, skip, weight, bias, stride, padding),
        };
        group_norm_silu(
            h,
            self.time_mlp.forward(t_emb),
            self.norm.weight.val(),
            self.norm.bias.val(),
            NORM_GROUPS,
            NORM_EPS,
        )
    }
}

/// The reference U-Net: three levels down, two middle blocks, three up with skip connections.
#[derive(Module, Debug)]
pub struct SimpleUNet {
    /// Time MLP applied to the sinusoidal embedding.
    pub time_mlp: TimeMlp,
    /// Level 1 (full resolution).
    pub down1: Block,
    /// Level 2 (half resolution).
    pub down2: Block,
    /// Level 3 (quarter resolution).
    pub down3: Block,
    /// First middle block.
    pub mid1: Block,
    /// Second middle block.
    pub mid2: Block,
    /// Up from level 3 to 2.
    pub up1: Block,
    /// Up from level 2 to 1.
    pub up2: Block,
    /// Last block at full resolution.
    pub up3: Block,
    /// 1x1 output convolution.
    pub out: ConvParams,
    /// Class embedding of a conditional model: `num_classes + 1` rows, the last for "no label".
    pub label_emb: Option<LabelEmbedding>,
    #[module(skip)]
    config: UNetConfig,
}

impl SimpleUNet {
    /// Builds the network, taking every parameter from `source`.
    pub fn build<S: ParamSource>(
        config: UNetConfig,
        source: &mut S,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let [c1, c2, c3] = config.widths;
        let td = config.time_dim;
        let cin = config.in_channels;
        use Resample::*;
        let mut block =
            |name: &str, chans, resample| Block::build(source, name, chans, resample, td, device);
        let down1 = block("down1", (cin, c1), Same)?;
        let down2 = block("down2", (c1, c2), Down)?;
        let down3 = block("down3", (c2, c3), Down)?;
        let mid1 = block("mid1", (c3, c3), Same)?;
        let mid2 = block("mid2", (c3, c3), Same)?;
        let up1 = block("up1", (2 * c3, c2), Up)?;
        let up2 = block("up2", (2 * c2, c1), Up)?;
        let up3 = block("up3", (2 * c1, c1), Same)?;
        let time_mlp = TimeMlp {
            fc1: Dense::build(source, "time_mlp.fc1", td, td, device)?,
            fc2: Dense::build(source, "time_mlp.fc2", td, td, device)?,
        };
        let label_emb = match config.num_classes {
            Some(classes) => Some(LabelEmbedding {
                weight: param(
                    source,
                    "label_emb.weight",
                    [classes + 1, td],
                    Init::Normal(1.0),
                    device,
                )?,
            }),
            None => None,
        };
        let out = ConvParams {
            weight: param(
                source,
                "out.weight",
                [cin, c1, 1, 1],
                Init::FanIn(c1),
                device,
            )?,
            bias: param(source, "out.bias", [cin], Init::FanIn(c1), device)?,
        };
        let model = SimpleUNet {
            time_mlp,
            down1,
            down2,
            down3,
            mid1,
            mid2,
            up1,
            up2,
            up3,
            out,
            label_emb,
            config,
        };
        // Parameter ids by position, so that optimiser state saved by one process applies to the
        // same parameters when another process rebuilds the model (exact resume).
        Ok(model.map(&mut SequentialIds(0)))
    }

    /// A freshly initialised network (PyTorch's default initialisation, seeded).
    pub fn init(config: UNetConfig, seed: u64, device: &Device) -> Result<Self> {
        Self::build(config, &mut RandomInit::new(seed), device)
    }

    /// The network's shape.
    pub fn config(&self) -> UNetConfig {
        self.config
    }

    /// Predicted velocity for images `x` (`[batch, c, 28, 28]`) at times `t` (`[batch]`, in [0, 1]).
    pub fn forward(&self, x: Tensor<4>, t: Tensor<1>) -> Tensor<4> {
        self.forward_labeled(x, t, None)
    }

    /// Like [`forward`](Self::forward), for a conditional model with one-hot `labels`
    /// (`[batch, num_classes + 1]`, see [`one_hot_labels`]); `None` means "no label".
    /// Labels are ignored by an unconditional model.
    pub fn forward_labeled(
        &self,
        x: Tensor<4>,
        t: Tensor<1>,
        labels: Option<Tensor<2>>,
    ) -> Tensor<4> {
        let [b, ..] = x.dims();
        let t_emb = sinusoidal_embedding(t * 1000.0, self.config.time_dim);
        let t_emb = self
            .time_mlp
            .fc2
            .forward(silu(self.time_mlp.fc1.forward(t_emb)));
        let t_emb = match (&self.label_emb, self.config.num_classes) {
            (Some(embedding), Some(classes)) => {
                let labels =
                    labels.unwrap_or_else(|| one_hot_labels(&vec![None; b], classes, &x.device()));
                t_emb + labels.matmul(embedding.weight.val())
            }
            _ => t_emb,
        };
        let x1 = self.down1.forward(x, t_emb.clone());
        let x2 = self.down2.forward(x1.clone(), t_emb.clone());
        let x3 = self.down3.forward(x2.clone(), t_emb.clone());
        let h = self.mid1.forward(x3.clone(), t_emb.clone());
        let h = self.mid2.forward(h, t_emb.clone());
        let h = self.up1.forward_skip(h, x3, t_emb.clone());
        let h = self.up2.forward_skip(h, x2, t_emb.clone());
        let h = self.up3.forward_skip(h, x1, t_emb);
        conv2d(h, self.out.weight.val(), self.out.bias.val(), 1, 0)
    }

    /// Every parameter as (PyTorch name, shape, values), in module order.
    pub fn named_parameters(&self) -> Vec<NamedTensor> {
        named_parameters(self)
    }
}

/// The learned class embedding (`label_emb.weight`, as PyTorch's `nn.Embedding`).
#[derive(Module, Debug)]
pub struct LabelEmbedding {
    /// `[num_classes + 1, time_dim]`; the last row is the "no label" entry.
    pub weight: Param<Tensor<2>>,
}

/// One-hot rows `[labels.len(), num_classes + 1]`; `None` selects the "no label" entry.
pub fn one_hot_labels(labels: &[Option<usize>], num_classes: usize, device: &Device) -> Tensor<2> {
    let width = num_classes + 1;
    let mut values = vec![0.0f32; labels.len() * width];
    for (i, label) in labels.iter().enumerate() {
        let index = label.filter(|&l| l < num_classes).unwrap_or(num_classes);
        values[i * width + index] = 1.0;
    }
    Tensor::from_data(TensorData::new(values, [labels.len(), width]), device)
}

/// Gives parameters the ids 0, 1, 2, ... in module order.
struct SequentialIds(u64);

impl ModuleMapper for SequentialIds {
    fn map_float<const D: usize>(&mut self, mut param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.id = ParamId::from(self.0);
        self.0 += 1;
        param
    }
}

/// A parameter's name, shape and values, as stored in a checkpoint.
#[derive(Debug, Clone)]
pub struct NamedTensor {
    /// PyTorch `state_dict` name.
    pub name: String,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub values: Vec<f32>,
}

impl NamedTensor {
    /// An error naming `path` and the tensor when any value is NaN or infinite.
    pub fn check_finite(&self, path: &Path) -> Result<()> {
        match self.values.iter().position(|v| !v.is_finite()) {
            None => Ok(()),
            Some(i) => Err(Error::bad_file(
                path,
                format!(
                    "tensor '{}' holds a non-finite value ({} at index {i}); \
                     the file is damaged or came from a diverged run",
                    self.name, self.values[i]
                ),
            )),
        }
    }
}

/// Every parameter of `module` as (PyTorch name, shape, values), in module order.
pub fn named_parameters<M: Module>(module: &M) -> Vec<NamedTensor> {
    let mut collector = ParamCollector::default();
    module.visit(&mut collector);
    collector.tensors
}

#[derive(Default)]
struct ParamCollector {
    path: Vec<String>,
    tensors: Vec<NamedTensor>,
}

impl ModuleVisitor for ParamCollector {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let tensor = param.val();
        let shape = tensor.dims().to_vec();
        let values = tensor
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("f32 parameter data");
        self.tensors.push(NamedTensor {
            name: pytorch_name(&self.path.join(".")),
            shape,
            values,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pytorch_names_and_shapes() {
        let device = Device::flex();
        let model = SimpleUNet::init(UNetConfig::with_widths([8, 16, 32]), 0, &device).unwrap();
        let params = model.named_parameters();
        assert_eq!(params.len(), 54);
        let find = |name: &str| {
            params
                .iter()
                .find(|p| p.name == name)
                .map(|p| p.shape.clone())
        };
        assert_eq!(find("time_mlp.1.weight"), Some(vec![32, 32]));
        assert_eq!(find("time_mlp.3.bias"), Some(vec![32]));
        assert_eq!(find("down1.conv.weight"), Some(vec![8, 1, 3, 3]));
        assert_eq!(find("up1.conv.weight"), Some(vec![64, 16, 4, 4]));
        assert_eq!(find("up3.conv.weight"), Some(vec![8, 16, 3, 3]));
        assert_eq!(find("mid2.norm.weight"), Some(vec![32]));
        assert_eq!(find("out.weight"), Some(vec![1, 8, 1, 1]));
    }

    #[test]
    fn forward_keeps_the_image_shape() {
        let device = Device::flex();
        let model = SimpleUNet::init(UNetConfig::with_widths([8, 16, 32]), 0, &device).unwrap();
        let x = Tensor::<4>::zeros([2, 1, 28, 28], &device);
        let v = model.forward(x, Tensor::from_floats([0.1, 0.9], &device));
        assert_eq!(v.dims(), [2, 1, 28, 28]);
    }

    #[test]
    fn initialisation_follows_pytorch_bounds_and_seed() {
        let device = Device::flex();
        let config = UNetConfig::with_widths([8, 16, 32]);
        let a = SimpleUNet::init(config, 5, &device)
            .unwrap()
            .named_parameters();
        let b = SimpleUNet::init(config, 5, &device)
            .unwrap()
            .named_parameters();
        for (p, q) in a.iter().zip(&b) {
            assert_eq!(p.values, q.values, "{}", p.name);
        }
        let conv = a.iter().find(|p| p.name == "down2.conv.weight").unwrap();
        let bound = 1.0 / ((8 * 9) as f32).sqrt();
        assert!(conv.values.iter().all(|v| v.abs() <= bound));
        assert!(conv.values.iter().any(|v| v.abs() > bound * 0.9));
        let gamma = a.iter().find(|p| p.name == "down2.norm.weight").unwrap();
        assert!(gamma.values.iter().all(|&v| v == 1.0));
    }

    #[test]
    fn widths_must_suit_group_norm() {
        assert!(UNetConfig::with_widths([12, 16, 32]).validate().is_err());
        assert!(UNetConfig::with_widths([8, 16, 32]).validate().is_ok());
    }
}
