//! One type for every velocity network, so that training, sampling, guidance, EMA and
//! checkpoints work the same with each architecture.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Deserializer, Serialize};

use super::resunet::{Dropout, ResUNet, ResUNetConfig};
use super::simple::{SimpleUNet, UNetConfig};
use super::{NamedTensor, ParamSource, RandomInit, SequentialIds, named_parameters};
use crate::error::Result;

/// A velocity network of either architecture.
// The variants hold parameter handles, a few kilobytes; a network is moved once per optimiser
// step at most, so boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Network {
    /// The reference SimpleUNet.
    Simple(SimpleUNet),
    /// The residual U-Net.
    Res(ResUNet),
}

/// The shape of a network, tagged with its architecture (`arch = "simple"` or `"resunet"`; a
/// configuration without the tag is a SimpleUNet, as written before the tag existed).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "arch", rename_all = "kebab-case")]
pub enum NetworkConfig {
    /// A SimpleUNet.
    Simple(UNetConfig),
    /// A residual U-Net.
    #[serde(rename = "resunet")]
    Res(ResUNetConfig),
}

impl<'de> Deserialize<'de> for NetworkConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(tag = "arch", rename_all = "kebab-case")]
        enum Tagged {
            Simple(UNetConfig),
            Resunet(ResUNetConfig),
        }
        let mut value = serde_json::Value::deserialize(deserializer)?;
        if let Some(table) = value.as_object_mut() {
            table.entry("arch").or_insert_with(|| "simple".into());
        }
        match Tagged::deserialize(value).map_err(serde::de::Error::custom)? {
            Tagged::Simple(c) => Ok(NetworkConfig::Simple(c)),
            Tagged::Resunet(c) => Ok(NetworkConfig::Res(c)),
        }
    }
}

impl From<UNetConfig> for NetworkConfig {
    fn from(c: UNetConfig) -> Self {
        NetworkConfig::Simple(c)
    }
}

impl From<ResUNetConfig> for NetworkConfig {
    fn from(c: ResUNetConfig) -> Self {
        NetworkConfig::Res(c)
    }
}

impl NetworkConfig {
    /// Checks that the network can be built.
    pub fn validate(&self) -> Result<()> {
        match self {
            NetworkConfig::Simple(c) => c.validate(),
            NetworkConfig::Res(c) => c.validate(),
        }
    }

    /// Classes of a conditional model.
    pub fn num_classes(&self) -> Option<usize> {
        match self {
            NetworkConfig::Simple(c) => c.num_classes,
            NetworkConfig::Res(c) => c.num_classes,
        }
    }

    /// The same network, conditional on `classes` classes (or unconditional).
    pub fn with_classes(self, classes: Option<usize>) -> Self {
        match self {
            NetworkConfig::Simple(c) => NetworkConfig::Simple(UNetConfig {
                num_classes: classes,
                ..c
            }),
            NetworkConfig::Res(c) => NetworkConfig::Res(ResUNetConfig {
                num_classes: classes,
                ..c
            }),
        }
    }

    /// `[channels, height, width]` of the images.
    pub fn image_shape(&self) -> [usize; 3] {
        match self {
            NetworkConfig::Simple(c) => [c.in_channels, c.image_size, c.image_size],
            NetworkConfig::Res(c) => [c.in_channels, c.image_size, c.image_size],
        }
    }

    /// The same network for images of `[channels, size, size]` (square images only; check
    /// the result with [`validate`](Self::validate)).
    pub fn with_image_shape(self, [channels, size, _]: [usize; 3]) -> Self {
        match self {
            NetworkConfig::Simple(c) => NetworkConfig::Simple(UNetConfig {
                in_channels: channels,
                image_size: size,
                ..c
            }),
            NetworkConfig::Res(c) => NetworkConfig::Res(ResUNetConfig {
                in_channels: channels,
                ..c.with_image_size(size)
            }),
        }
    }

    /// Whether the network takes an interval `[r, t]` (a mean-flow model).
    pub fn is_mean_flow(&self) -> bool {
        match self {
            NetworkConfig::Simple(c) => c.interval,
            NetworkConfig::Res(c) => c.interval,
        }
    }

    /// The same network with (or without) the interval input of a mean-flow model.
    pub fn with_interval(self, interval: bool) -> Self {
        match self {
            NetworkConfig::Simple(c) => NetworkConfig::Simple(UNetConfig { interval, ..c }),
            NetworkConfig::Res(c) => NetworkConfig::Res(ResUNetConfig { interval, ..c }),
        }
    }

    /// The architecture's name (`simple` or `resunet`).
    pub fn arch(&self) -> &'static str {
        match self {
            NetworkConfig::Simple(_) => "simple",
            NetworkConfig::Res(_) => "resunet",
        }
    }

    /// A one-line description: architecture, widths, attention, conditioning.
    pub fn describe(&self) -> String {
        let classes = match self.num_classes() {
            Some(n) => format!("class-conditional, {n} classes"),
            None => "unconditional".into(),
        };
        let [c, h, w] = self.image_shape();
        let classes = match self.is_mean_flow() {
            true => format!("{classes}, mean flow (time interval input)"),
            false => classes,
        };
        match self {
            NetworkConfig::Simple(s) => format!(
                "SimpleUNet widths {}, time embedding {}, {c}x{h}x{w} images, {classes}",
                s.widths.map(|w| w.to_string()).join("/"),
                s.time_dim
            ),
            NetworkConfig::Res(r) => {
                let widths: Vec<String> = (0..r.channel_mult.len())
                    .map(|l| r.width(l).to_string())
                    .collect();
                let attention = match r.attention.is_empty() {
                    true => "no attention".to_string(),
                    false => format!(
                        "attention at {} ({} channels per head)",
                        r.attention
                            .iter()
                            .map(|a| format!("{a}x{a}"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        r.head_channels
                    ),
                };
                format!(
                    "ResUNet widths {}, {} residual block(s) per level, {attention}, dropout {}, \
                     {c}x{h}x{w} images, {classes}",
                    widths.join("/"),
                    r.res_blocks,
                    r.dropout
                )
            }
        }
    }
}

impl Network {
    /// Builds the network of `config`, taking every parameter from `source`; parameter ids are
    /// given by position, so that optimiser state saved by one process applies to the same
    /// parameters when another rebuilds the model (exact resume).
    pub fn build<S: ParamSource>(
        config: &NetworkConfig,
        source: &mut S,
        device: &Device,
    ) -> Result<Self> {
        let network = match config {
            NetworkConfig::Simple(c) => Network::Simple(SimpleUNet::build(*c, source, device)?),
            NetworkConfig::Res(c) => Network::Res(ResUNet::build(c, source, device)?),
        };
        Ok(network.map(&mut SequentialIds(0)))
    }

    /// A freshly initialised network (PyTorch's default initialisation, seeded).
    pub fn init(config: &NetworkConfig, seed: u64, device: &Device) -> Result<Self> {
        Self::build(config, &mut RandomInit::new(seed), device)
    }

    /// The network's shape.
    pub fn config(&self) -> NetworkConfig {
        match self {
            Network::Simple(m) => NetworkConfig::Simple(m.config()),
            Network::Res(m) => NetworkConfig::Res(m.config().clone()),
        }
    }

    /// Classes of a conditional model.
    pub fn num_classes(&self) -> Option<usize> {
        self.config().num_classes()
    }

    /// `[channels, height, width]` of the images.
    pub fn image_shape(&self) -> [usize; 3] {
        self.config().image_shape()
    }

    /// The device the parameters live on.
    pub fn device(&self) -> Device {
        self.devices()
            .into_iter()
            .next()
            .unwrap_or_else(Device::flex)
    }

    /// Predicted velocity for images `x` at times `t` (`[batch]`, in [0, 1]).
    pub fn forward(&self, x: Tensor<4>, t: Tensor<1>) -> Tensor<4> {
        self.forward_labeled(x, t, None)
    }

    /// Like [`forward`](Self::forward) with one-hot `labels` (`[batch, num_classes + 1]`, see
    /// [`super::one_hot_labels`]) for a conditional model; `None` means "no label".
    pub fn forward_labeled(
        &self,
        x: Tensor<4>,
        t: Tensor<1>,
        labels: Option<Tensor<2>>,
    ) -> Tensor<4> {
        self.forward_interval(x, None, t, labels)
    }

    /// For a mean-flow model, the average velocity over `[r, t]` (`r`: `None` means `r = t`,
    /// the instantaneous velocity); other models ignore `r`.
    pub fn forward_interval(
        &self,
        x: Tensor<4>,
        r: Option<Tensor<1>>,
        t: Tensor<1>,
        labels: Option<Tensor<2>>,
    ) -> Tensor<4> {
        match self {
            Network::Simple(m) => m.forward_interval(x, r, t, labels),
            Network::Res(m) => m.forward(x, (r, t), labels, None),
        }
    }

    /// The forward pass of a training step: as [`forward_interval`](Self::forward_interval),
    /// with dropout (where the network has it) drawn from `seed`.
    pub fn forward_train(
        &self,
        x: Tensor<4>,
        (r, t): (Option<Tensor<1>>, Tensor<1>),
        labels: Option<Tensor<2>>,
        seed: u64,
    ) -> Tensor<4> {
        match self {
            Network::Simple(m) => m.forward_interval(x, r, t, labels),
            Network::Res(m) => m.forward(x, (r, t), labels, Some(&mut Dropout::new(seed))),
        }
    }

    /// Whether the network takes an interval `[r, t]` (a mean-flow model).
    pub fn is_mean_flow(&self) -> bool {
        self.config().is_mean_flow()
    }

    /// Every parameter as (PyTorch name, shape, values), in module order.
    pub fn named_parameters(&self) -> Vec<NamedTensor> {
        named_parameters(self)
    }

    /// Number of parameters.
    pub fn parameter_count(&self) -> usize {
        self.num_params()
    }
}
