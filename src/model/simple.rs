//! The reference SimpleUNet (seed-spec.md): three levels of conv + time shift + GroupNorm +
//! SiLU blocks, with PyTorch's `state_dict` names (through [`pytorch_name`](super::pytorch_name)), so weights
//! trained by the reference code load unchanged.

use burn::module::Module;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::{
    ConvParams, Dense, GroupNormParams, Init, LabelEmbedding, MAX_CHANNELS, MAX_CLASSES, MAX_WIDTH,
    NORM_EPS, NORM_GROUPS, ParamSource, one_hot_labels, param, sinusoidal_embedding,
};
use crate::error::{Error, Result};
use crate::kernels::{
    conv_transpose2d, conv_transpose2d_skip, conv2d, conv2d_skip, group_norm_silu,
};

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
    /// Height and width of the (square) images (28 for MNIST; a multiple of 4).
    #[serde(default = "mnist_size")]
    pub image_size: usize,
    /// A second time input: the start `r` of an interval `[r, t]` (mean-flow models), embedded
    /// as `t - r` by its own MLP and added to the time embedding.
    #[serde(default)]
    pub interval: bool,
}

fn mnist_size() -> usize {
    28
}

impl UNetConfig {
    /// The reference network: widths 64/128/256, time embedding 32.
    pub const REFERENCE: UNetConfig = UNetConfig {
        in_channels: 1,
        widths: [64, 128, 256],
        time_dim: 32,
        num_classes: None,
        image_size: 28,
        interval: false,
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
        if self.image_size == 0 || self.image_size > 4096 || !self.image_size.is_multiple_of(4) {
            return Err(Error::invalid(
                "image size",
                format!(
                    "{}: the SimpleUNet halves the size twice, so it must be a multiple of 4",
                    self.image_size
                ),
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

/// The time MLP: sinusoidal embedding -> Linear -> SiLU -> Linear (`time_mlp.1`, `time_mlp.3`).
#[derive(Module, Debug)]
pub struct TimeMlp {
    /// First linear layer (`time_mlp.1`).
    pub fc1: Dense,
    /// Second linear layer (`time_mlp.3`).
    pub fc2: Dense,
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
    /// Embedding of the interval length `t - r` of a mean-flow model.
    pub interval_mlp: Option<TimeMlp>,
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
        let interval_mlp = match config.interval {
            true => Some(TimeMlp {
                fc1: Dense::build(source, "interval_mlp.fc1", td, td, device)?,
                fc2: Dense::build(source, "interval_mlp.fc2", td, td, device)?,
            }),
            false => None,
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
            interval_mlp,
            config,
        };
        Ok(model)
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
        self.forward_interval(x, None, t, labels)
    }

    /// [`forward_labeled`](Self::forward_labeled) over the interval `[r, t]` (`r`: `None`
    /// means `r = t`) for a mean-flow model; other models ignore `r`.
    pub fn forward_interval(
        &self,
        x: Tensor<4>,
        r: Option<Tensor<1>>,
        t: Tensor<1>,
        labels: Option<Tensor<2>>,
    ) -> Tensor<4> {
        let [b, ..] = x.dims();
        let mlp = |m: &TimeMlp, t: Tensor<1>| {
            let emb = sinusoidal_embedding(t * 1000.0, self.config.time_dim);
            m.fc2.forward(silu(m.fc1.forward(emb)))
        };
        let mut t_emb = mlp(&self.time_mlp, t.clone());
        if let Some(interval) = &self.interval_mlp {
            let length = match r {
                Some(r) => t - r,
                None => t.zeros_like(),
            };
            t_emb = t_emb + mlp(interval, length);
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{RandomInit, named_parameters};

    impl SimpleUNet {
        fn init(config: UNetConfig, seed: u64, device: &Device) -> Result<Self> {
            Self::build(config, &mut RandomInit::new(seed), device)
        }

        fn named_parameters(&self) -> Vec<crate::model::NamedTensor> {
            named_parameters(self)
        }
    }

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
