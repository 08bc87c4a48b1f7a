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
