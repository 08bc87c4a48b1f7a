//! A residual U-Net in the style of DDPM / improved DDPM / ADM (the `UNetModel` of guided
//! diffusion, torchcfm and flow_matching's image examples), sized for a CPU:
//!
//! - residual blocks: `GroupNorm → SiLU → conv3x3`, then GroupNorm whose output is scaled and
//!   shifted by the time (and class) embedding, `SiLU → dropout → conv3x3` (zero-initialised),
//!   plus the input (through a 1x1 convolution when the width changes);
//! - `res_blocks` blocks per level, widths `channels · channel_mult[level]`, a stride-2
//!   convolution down and a 4x4 stride-2 transposed convolution up between levels;
//! - multi-head self-attention after the blocks at the chosen resolutions (and in the middle
//!   when the deepest resolution is one of them), its output projection zero-initialised;
//! - ADM's skip pattern: every block and downsampling output of the way down is concatenated
//!   to the input of one block of the way up (`res_blocks + 1` blocks per level there);
//! - output: GroupNorm, SiLU, a zero-initialised conv3x3.
//!
//! Its PyTorch twin (same parameter names, layouts and arithmetic) is `ResUNet` in
//! `scripts/torch_models.py`.

use burn::module::Module;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{
    ConvParams, Dense, GroupNormParams, Init, LabelEmbedding, MAX_CHANNELS, MAX_CLASSES, MAX_WIDTH,
    NORM_EPS, NORM_GROUPS, ParamSource, param, sinusoidal_embedding,
};
use crate::error::{Error, Result};
use crate::kernels::{
    attention, concat_channels, conv_transpose2d, conv2d, group_norm_affine, group_norm_silu,
    group_norm_silu_modulated,
};

/// The shape of a residual U-Net.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResUNetConfig {
    /// Image channels.
    pub in_channels: usize,
    /// Height and width of the (square) images.
    pub image_size: usize,
    /// Width of the first level; the time embedding has four times as many features.
    pub channels: usize,
    /// Width of each level as a multiple of `channels` (one entry per level).
    pub channel_mult: Vec<usize>,
    /// Residual blocks per level on the way down (one more on the way up).
    pub res_blocks: usize,
    /// Resolutions (image sizes of a level, e.g. 7 and 14) with self-attention.
    pub attention: Vec<usize>,
    /// Channels per attention head.
    pub head_channels: usize,
    /// Dropout probability inside the residual blocks (training only).
    pub dropout: f32,
    /// Classes of a class-conditional model (none: unconditional).
    #[serde(default)]
    pub num_classes: Option<usize>,
    /// A second time input: the start `r` of an interval `[r, t]` (mean-flow models), embedded
    /// as `t - r` by its own MLP and added to the time embedding.
    #[serde(default)]
    pub interval: bool,
}

impl ResUNetConfig {
    /// A named size: `tiny` (16 channels, widths 16/32/32, attention at 7x7), `small`
    /// (32 channels, widths 32/64/64, attention at 7x7) or `base` (64 channels, widths
    /// 64/128/128, two blocks per level, attention at 14x14 and 7x7), for 28x28 grey images.
    pub fn preset(name: &str) -> Result<Self> {
        let (channels, mult, res_blocks, attention): (usize, &[usize], usize, &[usize]) = match name
        {
            "tiny" => (16, &[1, 2, 2], 1, &[7]),
            "small" => (32, &[1, 2, 2], 1, &[7]),
            "base" => (64, &[1, 2, 2], 2, &[14, 7]),
            other => {
                return Err(Error::invalid(
                    "network size",
                    format!("'{other}' (tiny, small, base)"),
                ));
            }
        };
        Ok(ResUNetConfig {
            in_channels: 1,
            image_size: 28,
            channels,
            channel_mult: mult.to_vec(),
            res_blocks,
            attention: attention.to_vec(),
            head_channels: 32,
            dropout: 0.0,
            num_classes: None,
            interval: false,
        })
    }

    /// Width of `level`.
    pub fn width(&self, level: usize) -> usize {
        self.channels * self.channel_mult[level]
    }

    /// Image size at `level`.
    pub fn resolution(&self, level: usize) -> usize {
        self.image_size >> level
    }

    /// The same network for images of `size`, attention kept at the same levels (7x7 at
    /// 28x28 becomes 8x8 at 32x32; a resolution that is no level's stays as it is).
    pub fn with_image_size(self, size: usize) -> Self {
        let attention = self
            .attention
            .iter()
            .map(
                |&r| match (0..self.channel_mult.len()).find(|&l| self.resolution(l) == r) {
                    Some(level) => size >> level,
                    None => r,
                },
            )
            .collect();
        ResUNetConfig {
            image_size: size,
            attention,
            ..self
        }
    }

    /// The embedding size (time and class): four times the base width.
    pub fn embedding_dim(&self) -> usize {
        4 * self.channels
    }

    fn attends(&self, level: usize) -> bool {
        self.attention.contains(&self.resolution(level))
    }

    /// Checks that the shape can be built and works with GroupNorm(8), the down-sampling and
    /// the attention heads.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, reason: String| Err(Error::invalid(what, reason));
        let levels = self.channel_mult.len();
        if levels == 0 || levels > 6 {
            return bad(
                "channel multipliers",
                format!("{:?}: one to six levels", self.channel_mult),
            );
        }
        if self.in_channels == 0 || self.in_channels > MAX_CHANNELS {
            return bad(
                "in_channels",
                format!("{}: must be 1 to {MAX_CHANNELS}", self.in_channels),
            );
        }
        let factor = 1 << (levels - 1);
        if self.image_size == 0 || self.image_size > 4096 || !self.image_size.is_multiple_of(factor)
        {
            return bad(
                "image size",
                format!(
                    "{}: {levels} levels halve the size {} times, so it must be a multiple of {factor}",
                    self.image_size,
                    levels - 1
                ),
            );
        }
        // The base width feeds the first block's GroupNorm and sizes the time embedding.
        if self.channels == 0 || !self.channels.is_multiple_of(NORM_GROUPS) {
            return bad(
                "base channels",
                format!(
                    "{}: must be a positive multiple of {NORM_GROUPS} (GroupNorm groups)",
                    self.channels
                ),
            );
        }
        for level in 0..levels {
            let width = self.channels * self.channel_mult[level];
            if width == 0 || !width.is_multiple_of(NORM_GROUPS) || width > MAX_WIDTH {
                return bad(
                    "widths",
                    format!(
                        "level {level} has {width} channels: each must be a positive multiple \
                         of {NORM_GROUPS} (GroupNorm groups), at most {MAX_WIDTH}"
                    ),
                );
            }
            if self.attends(level)
                && (self.head_channels == 0 || !width.is_multiple_of(self.head_channels))
            {
                return bad(
                    "attention heads",
                    format!(
                        "{} channels per head do not divide the {width} channels at {}x{}",
                        self.head_channels,
                        self.resolution(level),
                        self.resolution(level)
                    ),
                );
            }
        }
        if let Some(r) = self
            .attention
            .iter()
            .find(|r| !(0..levels).any(|l| self.resolution(l) == **r))
        {
            return bad(
                "attention resolutions",
                format!(
                    "{r}: the levels have sizes {:?}",
                    (0..levels).map(|l| self.resolution(l)).collect::<Vec<_>>()
                ),
            );
        }
        if self.res_blocks == 0 || self.res_blocks > 8 {
            return bad(
                "residual blocks",
                format!("{}: 1 to 8 per level", self.res_blocks),
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad("dropout", format!("{}: must be in [0, 1)", self.dropout));
        }
        match self.num_classes {
            Some(0) => bad(
                "classes",
                "a conditional model needs at least one class".into(),
            ),
            Some(c) if c > MAX_CLASSES => bad("classes", format!("{c}: at most {MAX_CLASSES}")),
            _ => Ok(()),
        }
    }
}

/// Dropout masks drawn from a seeded generator, so that a training step is reproducible from
/// its seed (exact resume).
pub struct Dropout {
    rng: StdRng,
}

impl Dropout {
    /// Masks for one training step.
    pub fn new(seed: u64) -> Self {
        Dropout {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// `x` with each value zeroed with probability `p` and the rest scaled by `1 / (1 - p)`.
    /// A mask takes one draw from the generator; its values are the SplitMix64 stream from
    /// that draw, indexed by position, so they are made in parallel.
    fn apply(&mut self, x: Tensor<4>, p: f32) -> Tensor<4> {
        if p == 0.0 {
            return x;
        }
        let (dims, device) = (x.dims(), x.device());
        let seed: u64 = self.rng.random();
        // A value is dropped when the top 32 bits of its hash fall below `p · 2^32`.
        let drop_below = (p as f64 * 4_294_967_296.0) as u64;
        let keep = 1.0 / (1.0 - p);
        let mask: Vec<f32> = (0..dims.iter().product::<usize>() as u64)
            .into_par_iter()
            .map(|i| match splitmix64(seed, i) >> 32 < drop_below {
                true => 0.0,
                false => keep,
            })
            .collect();
        x * Tensor::from_data(TensorData::new(mask, dims), &device)
    }
}

/// The `index`-th output of the SplitMix64 generator started at `seed`.
fn splitmix64(seed: u64, index: u64) -> u64 {
    let mut z = seed.wrapping_add(index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn conv<S: ParamSource>(
    source: &mut S,
    path: &str,
    (c_in, c_out, k): (usize, usize, usize),
    zero: bool,
    device: &Device,
) -> Result<ConvParams> {
    let init = if zero {
        Init::Constant(0.0)
    } else {
        Init::FanIn(c_in * k * k)
    };
    Ok(ConvParams {
        weight: param(
            source,
            &format!("{path}.weight"),
            [c_out, c_in, k, k],
            init,
            device,
        )?,
        bias: param(source, &format!("{path}.bias"), [c_out], init, device)?,
    })
}

fn norm<S: ParamSource>(
    source: &mut S,
    path: &str,
    c: usize,
    device: &Device,
) -> Result<GroupNormParams> {
    Ok(GroupNormParams {
        weight: param(
            source,
            &format!("{path}.weight"),
            [c],
            Init::Constant(1.0),
            device,
        )?,
        bias: param(
            source,
            &format!("{path}.bias"),
            [c],
            Init::Constant(0.0),
            device,
        )?,
    })
}

/// A residual block with the embedding applied as a scale and shift of its second GroupNorm.
#[derive(Module, Debug)]
pub struct ResBlock {
    /// GroupNorm before the first convolution.
    pub norm1: GroupNormParams,
    /// First 3x3 convolution (`in -> out`).
    pub conv1: ConvParams,
    /// Projection of `silu(embedding)` to a scale and a shift per output channel (`[2 out]`).
    pub emb_proj: Dense,
    /// GroupNorm before the second convolution, modulated by the embedding.
    pub norm2: GroupNormParams,
    /// Second 3x3 convolution (`out -> out`), zero-initialised.
    pub conv2: ConvParams,
    /// 1x1 convolution of the input when the width changes.
    pub skip: Option<ConvParams>,
    #[module(skip)]
    dropout: f32,
}

impl ResBlock {
    fn build<S: ParamSource>(
        source: &mut S,
        path: &str,
        (c_in, c_out): (usize, usize),
        config: &ResUNetConfig,
        device: &Device,
    ) -> Result<Self> {
        let emb = config.embedding_dim();
        Ok(ResBlock {
            norm1: norm(source, &format!("{path}.norm1"), c_in, device)?,
            conv1: conv(
                source,
                &format!("{path}.conv1"),
                (c_in, c_out, 3),
                false,
                device,
            )?,
            emb_proj: Dense::build(source, &format!("{path}.emb_proj"), emb, 2 * c_out, device)?,
            norm2: norm(source, &format!("{path}.norm2"), c_out, device)?,
            conv2: conv(
                source,
                &format!("{path}.conv2"),
                (c_out, c_out, 3),
                true,
                device,
            )?,
            skip: match c_in == c_out {
                true => None,
                false => Some(conv(
                    source,
                    &format!("{path}.skip"),
                    (c_in, c_out, 1),
                    false,
                    device,
                )?),
            },
            dropout: config.dropout,
        })
    }

    /// The block on `x` with `emb` = `silu(embedding)` (`[batch, embedding_dim]`).
    fn forward(&self, x: Tensor<4>, emb: Tensor<2>, dropout: Option<&mut Dropout>) -> Tensor<4> {
        let [b, c_in, ..] = x.dims();
        let c_out = self.norm2.weight.dims()[0];
        let zeros = Tensor::<2>::zeros([b, c_in], &x.device());
        let h = group_norm_silu(
            x.clone(),
            zeros,
            self.norm1.weight.val(),
            self.norm1.bias.val(),
            NORM_GROUPS,
            NORM_EPS,
        );
        let h = conv2d(h, self.conv1.weight.val(), self.conv1.bias.val(), 1, 1);
        let e = self.emb_proj.forward(emb);
        let (scale, shift) = (
            e.clone().narrow(1, 0, c_out) + 1.0,
            e.narrow(1, c_out, c_out),
        );
        let gamma = scale.clone() * self.norm2.weight.val().unsqueeze_dim(0);
        let beta = scale * self.norm2.bias.val().unsqueeze_dim(0) + shift;
        let h = group_norm_silu_modulated(h, gamma, beta, NORM_GROUPS, NORM_EPS);
        let h = match dropout {
            Some(d) => d.apply(h, self.dropout),
            None => h,
        };
        let h = conv2d(h, self.conv2.weight.val(), self.conv2.bias.val(), 1, 1);
        let skip = match &self.skip {
            Some(s) => conv2d(x, s.weight.val(), s.bias.val(), 1, 0),
            None => x,
        };
        skip + h
    }
}

/// Multi-head self-attention over the pixels of a feature map, with a residual connection.
#[derive(Module, Debug)]
pub struct Attention {
    /// GroupNorm of the input.
    pub norm: GroupNormParams,
    /// 1x1 convolution to queries, keys and values (`[3c, c]`: all queries, then keys, then
    /// values; within each, head after head).
    pub qkv: ConvParams,
    /// 1x1 output projection, zero-initialised.
    pub proj: ConvParams,
    #[module(skip)]
    heads: usize,
}

impl Attention {
    fn build<S: ParamSource>(
        source: &mut S,
        path: &str,
        c: usize,
        head_channels: usize,
        device: &Device,
    ) -> Result<Self> {
        Ok(Attention {
            norm: norm(source, &format!("{path}.norm"), c, device)?,
            qkv: conv(source, &format!("{path}.qkv"), (c, 3 * c, 1), false, device)?,
            proj: conv(source, &format!("{path}.proj"), (c, c, 1), true, device)?,
            heads: c / head_channels,
        })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let normed = group_norm_affine(
            x.clone(),
            self.norm.weight.val(),
            self.norm.bias.val(),
            NORM_GROUPS,
            NORM_EPS,
        );
        let qkv = conv2d(normed, self.qkv.weight.val(), self.qkv.bias.val(), 1, 0);
        let out = attention(qkv, self.heads);
        x + conv2d(out, self.proj.weight.val(), self.proj.bias.val(), 1, 0)
    }
}

/// The time MLP: sinusoidal embedding -> Linear -> SiLU -> Linear.
#[derive(Module, Debug)]
pub struct TimeEmbed {
    /// `channels -> 4 channels`.
    pub fc1: Dense,
    /// `4 channels -> 4 channels`.
    pub fc2: Dense,
}

/// One level of the way down: residual blocks (each followed by attention at attention
/// resolutions) and the stride-2 convolution to the next level.
#[derive(Module, Debug)]
pub struct DownLevel {
    /// Residual blocks.
    pub blocks: Vec<ResBlock>,
    /// Attention after each block (empty when this resolution has none).
    pub attention: Vec<Attention>,
    /// 3x3 stride-2 convolution (all levels but the last).
    pub downsample: Option<ConvParams>,
}

/// One level of the way up: residual blocks on the concatenation with a skip (each followed by
/// attention at attention resolutions) and the transposed convolution to the next level.
#[derive(Module, Debug)]
pub struct UpLevel {
    /// Residual blocks.
    pub blocks: Vec<ResBlock>,
    /// Attention after each block (empty when this resolution has none).
    pub attention: Vec<Attention>,
    /// 4x4 stride-2 transposed convolution (all levels but the first).
    pub upsample: Option<ConvParams>,
}

/// The middle of the network: block, attention (when the deepest resolution has it), block.
#[derive(Module, Debug)]
pub struct Middle {
    /// First block.
    pub block1: ResBlock,
    /// Attention between the blocks.
    pub attention: Option<Attention>,
    /// Second block.
    pub block2: ResBlock,
}

/// The residual U-Net.
#[derive(Module, Debug)]
pub struct ResUNet {
    /// Time MLP.
    pub time_embed: TimeEmbed,
    /// Class embedding of a conditional model: `num_classes + 1` rows, the last for "no label".
    pub label_emb: Option<LabelEmbedding>,
    /// Embedding of the interval length `t - r` of a mean-flow model.
    pub interval_embed: Option<TimeEmbed>,
    /// 3x3 input convolution.
    pub conv_in: ConvParams,
    /// The way down, from full resolution.
    pub down: Vec<DownLevel>,
    /// The middle.
    pub mid: Middle,
    /// The way up, from the deepest level.
    pub up: Vec<UpLevel>,
    /// GroupNorm of the output head.
    pub out_norm: GroupNormParams,
    /// 3x3 output convolution, zero-initialised.
    pub out_conv: ConvParams,
    #[module(skip)]
    config: ResUNetConfig,
}

impl ResUNet {
    /// Builds the network, taking every parameter from `source`.
    pub fn build<S: ParamSource>(
        config: &ResUNetConfig,
        source: &mut S,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let (ch, emb) = (config.channels, config.embedding_dim());
        let time_embed = TimeEmbed {
            fc1: Dense::build(source, "time_embed.fc1", ch, emb, device)?,
            fc2: Dense::build(source, "time_embed.fc2", emb, emb, device)?,
        };
        let label_emb = match config.num_classes {
            Some(classes) => Some(LabelEmbedding {
                weight: param(
                    source,
                    "label_emb.weight",
                    [classes + 1, emb],
                    Init::Normal(1.0),
                    device,
                )?,
            }),
            None => None,
        };
        let interval_embed = match config.interval {
            true => Some(TimeEmbed {
                fc1: Dense::build(source, "interval_embed.fc1", ch, emb, device)?,
                fc2: Dense::build(source, "interval_embed.fc2", emb, emb, device)?,
            }),
            false => None,
        };
        let conv_in = conv(
            source,
            "conv_in",
            (config.in_channels, ch, 3),
            false,
            device,
        )?;
        let levels = config.channel_mult.len();
        let attention = |source: &mut S, path: String, c: usize, on: bool| -> Result<Vec<_>> {
            let count = if on { config.res_blocks } else { 0 };
            (0..count)
                .map(|i| {
                    Attention::build(
                        source,
                        &format!("{path}.{i}"),
                        c,
                        config.head_channels,
                        device,
                    )
                })
                .collect()
        };
        // Widths of the skips, in the order the way down produces them.
        let mut skips = vec![ch];
        let mut cur = ch;
        let mut down = Vec::with_capacity(levels);
        for level in 0..levels {
            let width = config.width(level);
            let mut blocks = Vec::new();
            for i in 0..config.res_blocks {
                let path = format!("down.{level}.blocks.{i}");
                blocks.push(ResBlock::build(
                    source,
                    &path,
                    (cur, width),
                    config,
                    device,
                )?);
                cur = width;
                skips.push(cur);
            }
            let attn = attention(
                source,
                format!("down.{level}.attention"),
                cur,
                config.attends(level),
            )?;
            let downsample = if level + 1 < levels {
                skips.push(cur);
                let path = format!("down.{level}.downsample");
                Some(conv(source, &path, (cur, cur, 3), false, device)?)
            } else {
                None
            };
            down.push(DownLevel {
                blocks,
                attention: attn,
                downsample,
            });
        }
        let mid = Middle {
            block1: ResBlock::build(source, "mid.block1", (cur, cur), config, device)?,
            attention: match config.attends(levels - 1) {
                true => Some(Attention::build(
                    source,
                    "mid.attention",
                    cur,
                    config.head_channels,
                    device,
                )?),
                false => None,
            },
            block2: ResBlock::build(source, "mid.block2", (cur, cur), config, device)?,
        };
        let mut up = Vec::with_capacity(levels);
        for (i, level) in (0..levels).rev().enumerate() {
            let width = config.width(level);
            let mut blocks = Vec::new();
            for j in 0..=config.res_blocks {
                let skip = skips.pop().expect("one skip per block of the way up");
                let path = format!("up.{i}.blocks.{j}");
                blocks.push(ResBlock::build(
                    source,
                    &path,
                    (cur + skip, width),
                    config,
                    device,
                )?);
                cur = width;
            }
            let attn = match config.attends(level) {
                true => (0..=config.res_blocks)
                    .map(|j| {
                        let path = format!("up.{i}.attention.{j}");
                        Attention::build(source, &path, cur, config.head_channels, device)
                    })
                    .collect::<Result<Vec<_>>>()?,
                false => Vec::new(),
            };
            let upsample = if level > 0 {
                let path = format!("up.{i}.upsample");
                Some(ConvParams {
                    weight: param(
                        source,
                        &format!("{path}.weight"),
                        [cur, cur, 4, 4],
                        Init::FanIn(cur * 16),
                        device,
                    )?,
                    bias: param(
                        source,
                        &format!("{path}.bias"),
                        [cur],
                        Init::FanIn(cur * 16),
                        device,
                    )?,
                })
            } else {
                None
            };
            up.push(UpLevel {
                blocks,
                attention: attn,
                upsample,
            });
        }
        Ok(ResUNet {
            time_embed,
            label_emb,
            interval_embed,
            conv_in,
            down,
            mid,
            up,
            out_norm: norm(source, "out_norm", cur, device)?,
            out_conv: conv(
                source,
                "out_conv",
                (cur, config.in_channels, 3),
                true,
                device,
            )?,
            config: config.clone(),
        })
    }

    /// The network's shape.
    pub fn config(&self) -> &ResUNetConfig {
        &self.config
    }

    /// Predicted velocity for images `x` at times `t` (`[batch]`, in [0, 1]) — for a mean-flow
    /// model, the average velocity over `[r, t]` (`r`: `None` means `r = t`) — with one-hot
    /// `labels` for a conditional model (`None`: "no label"), and dropout masks when training.
    pub fn forward(
        &self,
        x: Tensor<4>,
        (r, t): (Option<Tensor<1>>, Tensor<1>),
        labels: Option<Tensor<2>>,
        mut dropout: Option<&mut Dropout>,
    ) -> Tensor<4> {
        let [b, ..] = x.dims();
        let embed = |m: &TimeEmbed, t: Tensor<1>| {
            let t_emb = sinusoidal_embedding(t * 1000.0, self.config.channels);
            m.fc2.forward(silu(m.fc1.forward(t_emb)))
        };
        let mut emb = embed(&self.time_embed, t.clone());
        if let Some(interval) = &self.interval_embed {
            let length = match r {
                Some(r) => t - r,
                None => t.zeros_like(),
            };
            emb = emb + embed(interval, length);
        }
        if let (Some(embedding), Some(classes)) = (&self.label_emb, self.config.num_classes) {
            let labels = labels
                .unwrap_or_else(|| super::one_hot_labels(&vec![None; b], classes, &x.device()));
            emb = emb + labels.matmul(embedding.weight.val());
        }
        let emb = silu(emb);
        let mut h = conv2d(x, self.conv_in.weight.val(), self.conv_in.bias.val(), 1, 1);
        let mut skips = vec![h.clone()];
        for level in &self.down {
            for (i, block) in level.blocks.iter().enumerate() {
                h = block.forward(h, emb.clone(), dropout.as_deref_mut());
                if let Some(attention) = level.attention.get(i) {
                    h = attention.forward(h);
                }
                skips.push(h.clone());
            }
            if let Some(down) = &level.downsample {
                h = conv2d(h, down.weight.val(), down.bias.val(), 2, 1);
                skips.push(h.clone());
            }
        }
        h = self
            .mid
            .block1
            .forward(h, emb.clone(), dropout.as_deref_mut());
        if let Some(attention) = &self.mid.attention {
            h = attention.forward(h);
        }
        h = self
            .mid
            .block2
            .forward(h, emb.clone(), dropout.as_deref_mut());
        for level in &self.up {
            for (i, block) in level.blocks.iter().enumerate() {
                let skip = skips.pop().expect("one skip per block of the way up");
                h = block.forward(
                    concat_channels(h, skip),
                    emb.clone(),
                    dropout.as_deref_mut(),
                );
                if let Some(attention) = level.attention.get(i) {
                    h = attention.forward(h);
                }
            }
            if let Some(up) = &level.upsample {
                h = conv_transpose2d(h, up.weight.val(), up.bias.val(), 2, 1);
            }
        }
        let [b, c, ..] = h.dims();
        let zeros = Tensor::<2>::zeros([b, c], &h.device());
        let h = group_norm_silu(
            h,
            zeros,
            self.out_norm.weight.val(),
            self.out_norm.bias.val(),
            NORM_GROUPS,
            NORM_EPS,
        );
        conv2d(
            h,
            self.out_conv.weight.val(),
            self.out_conv.bias.val(),
            1,
            1,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{RandomInit, named_parameters};

    fn tiny() -> ResUNetConfig {
        ResUNetConfig {
            channels: 8,
            channel_mult: vec![1, 2],
            attention: vec![14],
            head_channels: 8,
            ..ResUNetConfig::preset("tiny").unwrap()
        }
    }

    #[test]
    fn shapes_names_and_zero_initialised_outputs() {
        let device = Device::flex();
        let model = ResUNet::build(&tiny(), &mut RandomInit::new(0), &device).unwrap();
        let x = Tensor::<4>::ones([2, 1, 28, 28], &device);
        let t = Tensor::from_floats([0.1, 0.9], &device);
        let v = model.forward(x, (None, t), None, None);
        assert_eq!(v.dims(), [2, 1, 28, 28]);
        // The output convolution starts at zero, so the initial velocity is zero.
        assert_eq!(v.abs().max().into_scalar::<f32>(), 0.0);
        let params = named_parameters(&model);
        let find = |name: &str| {
            params
                .iter()
                .find(|p| p.name == name)
                .map(|p| p.shape.clone())
        };
        assert_eq!(find("time_embed.fc1.weight"), Some(vec![32, 8]));
        assert_eq!(find("down.0.blocks.0.conv1.weight"), Some(vec![8, 8, 3, 3]));
        assert_eq!(find("down.0.blocks.0.emb_proj.weight"), Some(vec![16, 32]));
        assert_eq!(find("down.1.blocks.0.skip.weight"), Some(vec![16, 8, 1, 1]));
        assert_eq!(find("down.0.downsample.weight"), Some(vec![8, 8, 3, 3]));
        // Levels of 28x28 and 14x14; attention at 14x14 (the deepest, so in the middle too).
        assert_eq!(find("down.0.attention.0.qkv.weight"), None);
        assert_eq!(
            find("down.1.attention.0.qkv.weight"),
            Some(vec![48, 16, 1, 1])
        );
        assert_eq!(find("mid.attention.qkv.weight"), Some(vec![48, 16, 1, 1]));
        // Way up: deepest level first, skips of 16 (block) and 8 (downsample) channels.
        assert_eq!(find("up.0.blocks.0.conv1.weight"), Some(vec![16, 32, 3, 3]));
        assert_eq!(find("up.0.blocks.1.conv1.weight"), Some(vec![16, 24, 3, 3]));
        assert_eq!(find("up.0.upsample.weight"), Some(vec![16, 16, 4, 4]));
        assert_eq!(find("up.1.blocks.0.conv1.weight"), Some(vec![8, 24, 3, 3]));
        assert_eq!(
            find("up.0.attention.1.qkv.weight"),
            Some(vec![48, 16, 1, 1])
        );
        assert_eq!(find("up.1.attention.0.qkv.weight"), None);
        assert_eq!(find("out_conv.weight"), Some(vec![1, 8, 3, 3]));
    }

    #[test]
    fn shapes_that_cannot_work_are_rejected() {
        let bad = |c: ResUNetConfig| c.validate().is_err();
        assert!(bad(ResUNetConfig {
            image_size: 30,
            channel_mult: vec![1, 2, 2],
            ..tiny()
        }));
        assert!(bad(ResUNetConfig {
            channels: 12,
            ..tiny()
        }));
        // Every level a multiple of 8, the base width not: its first GroupNorm would panic.
        assert!(bad(ResUNetConfig {
            channels: 4,
            channel_mult: vec![2, 2],
            attention: vec![],
            ..tiny()
        }));
        assert!(bad(ResUNetConfig {
            attention: vec![5],
            ..tiny()
        }));
        assert!(bad(ResUNetConfig {
            head_channels: 5,
            ..tiny()
        }));
        assert!(bad(ResUNetConfig {
            dropout: 1.0,
            ..tiny()
        }));
        assert!(tiny().validate().is_ok());
        assert!(ResUNetConfig::preset("huge").is_err());
    }

    #[test]
    fn dropout_masks_follow_the_seed_and_keep_the_mean() {
        let device = Device::flex();
        let x = Tensor::<4>::ones([4, 8, 10, 10], &device);
        let a = Dropout::new(5).apply(x.clone(), 0.25);
        let b = Dropout::new(5).apply(x.clone(), 0.25);
        assert_eq!((a.clone() - b).abs().max().into_scalar::<f32>(), 0.0);
        let mean = a.clone().mean().into_scalar::<f32>();
        assert!((mean - 1.0).abs() < 0.1, "{mean}");
        let zeros = a.clone().equal_elem(0.0).int().sum().into_scalar::<i64>();
        assert!((700..900).contains(&zeros), "{zeros} of 3200 dropped");
        // The next mask of the same generator, and another seed's, are different masks.
        let mut d = Dropout::new(5);
        let first = d.apply(x.clone(), 0.25);
        let next = d.apply(x.clone(), 0.25);
        let other = Dropout::new(6).apply(x, 0.25);
        assert!((first.clone() - next).abs().max().into_scalar::<f32>() > 0.0);
        assert!((first - other).abs().max().into_scalar::<f32>() > 0.0);
    }
}
