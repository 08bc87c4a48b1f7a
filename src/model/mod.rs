//! Velocity models: the [`VelocityModel`] trait that every part of flowmatch takes (bring your
//! own burn module), and the built-in networks that implement it: the reference [`SimpleUNet`]
//! and the residual U-Net [`ResUNet`], behind one [`Network`] type, plus what they share
//! (parameter sources and initialisation, dense and convolution parameters, time and class
//! embeddings, PyTorch naming).
//!
//! Parameters use PyTorch's layouts (Conv2d `[out, in, k, k]`, ConvTranspose2d `[in, out, k, k]`,
//! Linear `[out, in]`) and PyTorch's `state_dict` names, so weights move between flowmatch and
//! the PyTorch twins in `scripts/torch_models.py` unchanged.

mod network;
pub mod resunet;
pub mod simple;
mod velocity;

use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Uniform};

use crate::error::{Error, Result};

pub use network::{Network, NetworkConfig};
pub use resunet::{ResUNet, ResUNetConfig};
pub use simple::{SimpleUNet, UNetConfig};
pub use velocity::{Condition, VelocityModel, batch_shape, per_row};

/// Checkpoint metadata key of a built-in network's architecture and shape (JSON of
/// [`NetworkConfig`]).
pub const META_NETWORK: &str = "flowmatch.network";

/// Number of GroupNorm groups in every block.
pub const NORM_GROUPS: usize = 8;
/// GroupNorm's variance epsilon (PyTorch's default).
pub const NORM_EPS: f32 = 1e-5;

/// Most channels of any layer (a bound on what a configuration can ask to allocate).
pub const MAX_WIDTH: usize = 4096;
/// Most image channels.
pub const MAX_CHANNELS: usize = 64;
/// Most classes of a conditional model.
pub const MAX_CLASSES: usize = 100_000;

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
pub(crate) struct SequentialIds(pub(crate) u64);

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
    fn enter_module(&mut self, name: &str, container_type: &str) {
        // A network enum's variant is not part of the parameter names.
        if !container_type.starts_with("Enum:") {
            self.path.push(name.to_string());
        }
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        if !container_type.starts_with("Enum:") {
            self.path.pop();
        }
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
