"""PyTorch twins of flowmatch's networks, for parity fixtures and side-by-side speed.

`SimpleUNet` is the reference network of the blog post's fm_model.py (see
docs/seed-spec.md in the shared material), with the channel widths as a parameter
(`ch`); the default (64, 128, 256) is exactly the reference. flowmatch loads its
`state_dict` (saved with safetensors) unchanged.
"""
import math

import torch
import torch.nn as nn


class SinusoidalPositionalEmbedding(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def forward(self, time):
        half_dim = self.dim // 2
        emb = math.log(10000) / (half_dim - 1)
        emb = torch.exp(torch.arange(half_dim, device=time.device, dtype=torch.float32) * -emb)
        emb = time[:, None].float() * emb[None, :]
        return torch.cat([emb.sin(), emb.cos()], dim=-1)


class Block(nn.Module):
    def __init__(self, in_ch, out_ch, time_emb_dim, up=False, down=False):
        super().__init__()
        self.time_mlp = nn.Linear(time_emb_dim, out_ch)
        if up:
            self.conv = nn.ConvTranspose2d(in_ch, out_ch, 4, 2, 1)
        elif down:
            self.conv = nn.Conv2d(in_ch, out_ch, 3, 2, 1)
        else:
            self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm = nn.GroupNorm(8, out_ch)
        self.act = nn.SiLU()

    def forward(self, x, t):
        h = self.conv(x) + self.time_mlp(t)[:, :, None, None]
        return self.act(self.norm(h))


class SimpleUNet(nn.Module):
    """t is a float in [0, 1]; forward() scales it by 1000 before the embedding."""

    def __init__(self, image_size=28, in_channels=1, time_emb_dim=32, ch=(64, 128, 256)):
        super().__init__()
        c1, c2, c3 = ch
        self.time_mlp = nn.Sequential(
            SinusoidalPositionalEmbedding(time_emb_dim),
            nn.Linear(time_emb_dim, time_emb_dim),
            nn.SiLU(),
            nn.Linear(time_emb_dim, time_emb_dim),
        )
        self.down1 = Block(in_channels, c1, time_emb_dim)
        self.down2 = Block(c1, c2, time_emb_dim, down=True)
        self.down3 = Block(c2, c3, time_emb_dim, down=True)
        self.mid1 = Block(c3, c3, time_emb_dim)
        self.mid2 = Block(c3, c3, time_emb_dim)
        self.up1 = Block(c3 + c3, c2, time_emb_dim, up=True)
        self.up2 = Block(c2 + c2, c1, time_emb_dim, up=True)
        self.up3 = Block(c1 + c1, c1, time_emb_dim)
        self.out = nn.Conv2d(c1, in_channels, 1)

    def forward(self, x, t):
        t_emb = self.time_mlp(t * 1000)
        x1 = self.down1(x, t_emb)
        x2 = self.down2(x1, t_emb)
        x3 = self.down3(x2, t_emb)
        h = self.mid2(self.mid1(x3, t_emb), t_emb)
        h = self.up1(torch.cat([h, x3], dim=1), t_emb)
        h = self.up2(torch.cat([h, x2], dim=1), t_emb)
        h = self.up3(torch.cat([h, x1], dim=1), t_emb)
        return self.out(h)


@torch.no_grad()
def euler(model, x1, steps):
    """The reference sampler: Euler from t = 1 (noise) to t = 0 (data), raw output."""
    x = x1.clone()
    times = torch.linspace(1.0, 0.0, steps + 1)
    for i in range(steps):
        t = torch.full((x.shape[0],), float(times[i]))
        x = x - model(x, t) * (1.0 / steps)
    return x


def randomise_norms_and_biases(model, generator):
    """GroupNorm weights in [0.5, 1.5] and every bias non-zero, so that a swapped or missing
    parameter changes the output."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".norm.weight" in name:
                p.copy_(torch.rand(p.shape, generator=generator) + 0.5)
            elif name.endswith(".bias"):
                p.copy_(torch.rand(p.shape, generator=generator) - 0.5)


# ---------------------------------------------------------------------------------------------
# The residual U-Net (src/model/resunet.rs): the same modules, parameter names and arithmetic.


def zero_(module):
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class TimeEmbed(nn.Module):
    def __init__(self, ch, emb):
        super().__init__()
        self.fc1 = nn.Linear(ch, emb)
        self.fc2 = nn.Linear(emb, emb)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, then GroupNorm modulated by the embedding (scale, shift),
    SiLU-dropout-conv (zero-initialised), plus the (1x1-projected) input."""

    def __init__(self, c_in, c_out, emb, dropout):
        super().__init__()
        self.norm1 = nn.GroupNorm(8, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb_proj = nn.Linear(emb, 2 * c_out)
        self.norm2 = nn.GroupNorm(8, c_out)
        self.conv2 = zero_(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, emb):
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        scale, shift = self.emb_proj(emb)[:, :, None, None].chunk(2, dim=1)
        h = nn.functional.silu(self.norm2(h) * (1 + scale) + shift)
        h = self.conv2(self.dropout(h))
        return (x if self.skip is None else self.skip(x)) + h


class Attention(nn.Module):
    """Multi-head self-attention over the pixels; qkv channels are all queries, then keys,
    then values, each head after head."""

    def __init__(self, c, head_channels):
        super().__init__()
        self.heads = c // head_channels
        self.norm = nn.GroupNorm(8, c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj = zero_(nn.Conv2d(c, c, 1))

    def forward(self, x):
        b, c, h, w = x.shape
        d = c // self.heads
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, d, h * w).unbind(1)
        weights = torch.softmax(q.transpose(2, 3) @ k / math.sqrt(d), dim=-1)
        out = (v @ weights.transpose(2, 3)).reshape(b, c, h, w)
        return x + self.proj(out)


class DownLevel(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList()
        self.attention = nn.ModuleList()
        self.downsample = None


class UpLevel(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList()
        self.attention = nn.ModuleList()
        self.upsample = None


class Middle(nn.Module):
    def __init__(self, c, emb, dropout, attention, head_channels):
        super().__init__()
        self.block1 = ResBlock(c, c, emb, dropout)
        self.attention = Attention(c, head_channels) if attention else None
        self.block2 = ResBlock(c, c, emb, dropout)


class ResUNet(nn.Module):
    """Config keys as flowmatch's ResUNetConfig: in_channels, image_size, channels,
    channel_mult, res_blocks, attention, head_channels, dropout, num_classes."""

    def __init__(self, in_channels=1, image_size=28, channels=32, channel_mult=(1, 2, 2),
                 res_blocks=1, attention=(7,), head_channels=32, dropout=0.0, num_classes=None):
        super().__init__()
        self.config = dict(in_channels=in_channels, image_size=image_size, channels=channels,
                           channel_mult=list(channel_mult), res_blocks=res_blocks,
                           attention=list(attention), head_channels=head_channels,
                           dropout=dropout, num_classes=num_classes)
        ch, emb = channels, 4 * channels
        self.channels = ch
        self.num_classes = num_classes
        self.time_embed = TimeEmbed(ch, emb)
        self.label_emb = nn.Embedding(num_classes + 1, emb) if num_classes else None
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        levels = len(channel_mult)
        attends = [(image_size >> lvl) in attention for lvl in range(levels)]
        skips, cur = [ch], ch
        self.down = nn.ModuleList()
        for lvl in range(levels):
            level, width = DownLevel(), ch * channel_mult[lvl]
            for _ in range(res_blocks):
                level.blocks.append(ResBlock(cur, width, emb, dropout))
                cur = width
                skips.append(cur)
                if attends[lvl]:
                    level.attention.append(Attention(cur, head_channels))
            if lvl + 1 < levels:
                level.downsample = nn.Conv2d(cur, cur, 3, 2, 1)
                skips.append(cur)
            self.down.append(level)
        self.mid = Middle(cur, emb, dropout, attends[-1], head_channels)
        self.up = nn.ModuleList()
        for lvl in reversed(range(levels)):
            level, width = UpLevel(), ch * channel_mult[lvl]
            for _ in range(res_blocks + 1):
                level.blocks.append(ResBlock(cur + skips.pop(), width, emb, dropout))
                cur = width
                if attends[lvl]:
                    level.attention.append(Attention(cur, head_channels))
            if lvl > 0:
                level.upsample = nn.ConvTranspose2d(cur, cur, 4, 2, 1)
            self.up.append(level)
        self.out_norm = nn.GroupNorm(8, cur)
        self.out_conv = zero_(nn.Conv2d(cur, in_channels, 3, padding=1))

    def forward(self, x, t, labels=None):
        """labels: class indices (-1 or None: "no label") for a conditional model."""
        emb = self.time_embed.fc2(nn.functional.silu(self.time_embed.fc1(
            SinusoidalPositionalEmbedding(self.channels)(t * 1000))))
        if self.label_emb is not None:
            if labels is None:
                labels = torch.full((x.shape[0],), -1, dtype=torch.long)
            labels = torch.where(labels < 0, self.num_classes, labels)
            emb = emb + self.label_emb(labels)
        emb = nn.functional.silu(emb)
        h = self.conv_in(x)
        skips = [h]
        for level in self.down:
            for i, block in enumerate(level.blocks):
                h = block(h, emb)
                if len(level.attention):
                    h = level.attention[i](h)
                skips.append(h)
            if level.downsample is not None:
                h = level.downsample(h)
                skips.append(h)
        h = self.mid.block1(h, emb)
        if self.mid.attention is not None:
            h = self.mid.attention(h)
        h = self.mid.block2(h, emb)
        for level in self.up:
            for i, block in enumerate(level.blocks):
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
                if len(level.attention):
                    h = level.attention[i](h)
            if level.upsample is not None:
                h = level.upsample(h)
        return self.out_conv(nn.functional.silu(self.out_norm(h)))


RESUNET_SIZES = {
    "tiny": dict(channels=16, channel_mult=(1, 2, 2), res_blocks=1, attention=(7,)),
    "small": dict(channels=32, channel_mult=(1, 2, 2), res_blocks=1, attention=(7,)),
    "base": dict(channels=64, channel_mult=(1, 2, 2), res_blocks=2, attention=(14, 7)),
}


def randomise_all(model, generator):
    """Every parameter random (the zero-initialised ones too), GroupNorm weights in
    [0.5, 1.5], for a parity check in which every parameter matters."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith(".weight"):
                p.copy_(torch.rand(p.shape, generator=generator) + 0.5)
            else:
                bound = 0.5 / math.sqrt(max(1, p[0].numel()))
                p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1) * bound * 2)
