#!/usr/bin/env python3
"""Writes tests/fixtures/inception: pytorch-fid's own Inception (its FID variant of
Inception-v3, built by pytorch-fid's code) with deterministic "pattern" weights in place of
the published ones, a few small PNG images, their 2,048-d pool features as pytorch-fid's
`get_activations` computes them, and the FID and KID between two halves of the images.

    /opt/torchref/bin/pip install torch torchvision numpy pillow scipy pytorch-fid
    /opt/torchref/bin/python scripts/make-inception-fixture.py [--full-pth DIR]

The pattern weights are what both sides can compute bit for bit without storing ~95 MB: for
the tensor named `name` (the names of pytorch-fid's state_dict) element i is
u = fmix32(i + fnv1a32(name)) / 2^32 (murmur3's finaliser, 32-bit arithmetic), in float64:

- `*.conv.weight` `[o, i, kh, kw]`: (2u - 1) * sqrt(6 / (i kh kw)) (He-uniform);
- `*.bn.weight`: 0.5 + u;  `*.bn.running_var`: 0.5 + u;
- `*.bn.bias`: 0.2 (u - 0.5);  `*.bn.running_mean`: 0.2 (u - 0.5);
- `fc.weight`, `fc.bias`: 0.02 (u - 0.5);  `*.num_batches_tracked`: 0 (int64);

then rounded to float32. flowmatch computes the same (`evaluation::inception::pattern_weight`).

Files:
- images/colour/{0..7}.png: 32x32 RGB pictures (smooth waves; the last four noisier);
- images/grey/{0,1}.png: 28x28 greyscale pictures (pytorch-fid converts them to RGB);
- features.f32: 10 x 2048 little-endian float32, colour images then grey ones, in file order;
- expected.json: FID between colour 0-3 and 4-7 (pytorch-fid's calculate_frechet_distance,
  and an exact float64 evaluation of the same formula), KID (unbiased MMD^2, kernel
  (x.y/2048 + 1)^3, all rows), the feature scale, the versions used;
- small-zip.pth, small-legacy.pth: a few of the pattern tensors (Conv2d_1a_3x3's convolution
  and batch norm, fc.bias) written by torch.save in its zip format and in its legacy format
  (PyTorch < 1.6, `_use_new_zipfile_serialization=False`), to test flowmatch's reader on files
  torch wrote. Every other file comes out byte for byte the same on each run; the legacy file
  does not (its storage keys are taken from memory addresses), its tensors do.

With --full-pth DIR it also writes the whole pattern state_dict as DIR/pattern-zip.pth and
DIR/pattern-legacy.pth (~95 MB each, not committed), for trying `flowmatch eval --features
inception --inception-weights` without the real weights.
"""
import argparse
import inspect
import json
import os

import numpy as np
import PIL
import scipy
import torch
import torchvision
from PIL import Image

import pytorch_fid
import pytorch_fid.inception as fid_inception
from pytorch_fid.fid_score import calculate_frechet_distance, get_activations

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures",
                   "inception")
MASK = 0xFFFFFFFF


def fnv1a32(name):
    h = 0x811C9DC5
    for b in name.encode():
        h = ((h ^ b) * 0x01000193) & MASK
    return h


def fmix32(x):
    """murmur3's 32-bit finaliser, element-wise on a uint64 array holding 32-bit values."""
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & MASK
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & MASK
    return x ^ (x >> 16)


def pattern(name, shape):
    """The pattern values of tensor `name` of `shape` (float32; int64 for a counter)."""
    if name.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    n = int(np.prod(shape)) if len(shape) else 1
    i = np.arange(n, dtype=np.uint64)
    u = fmix32((i + np.uint64(fnv1a32(name))) & np.uint64(MASK)).astype(np.float64) / 2.0**32
    if name.endswith("conv.weight"):
        fan_in = int(np.prod(shape[1:]))
        v = (2.0 * u - 1.0) * np.sqrt(6.0 / fan_in)
    elif name.endswith("bn.weight") or name.endswith("bn.running_var"):
        v = 0.5 + u
    elif name.endswith("bn.bias") or name.endswith("bn.running_mean"):
        v = 0.2 * (u - 0.5)
    elif name.startswith("fc."):
        v = 0.02 * (u - 0.5)
    else:
        raise ValueError(f"no pattern for {name}")
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def pattern_model():
    """pytorch-fid's InceptionV3 (2048-d pool features) built by its fid_inception_v3(), with
    the pattern in place of the published file; also the state_dict it loaded."""
    loaded = {}

    def load_state_dict_from_url(url, progress=True):
        assert url == fid_inception.FID_WEIGHTS_URL
        # The network fid_inception_v3() is about to load into (its local `inception`): the
        # pattern follows its own state_dict's names and shapes.
        net = inspect.currentframe().f_back.f_locals["inception"]
        loaded.update({k: pattern(k, tuple(v.shape)) for k, v in net.state_dict().items()})
        return loaded

    fid_inception.load_state_dict_from_url = load_state_dict_from_url
    model = fid_inception.InceptionV3([fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    return model.eval(), loaded


def waves(rng, size, channels, noise):
    """A picture of a few random plane waves per channel plus noise, as uint8."""
    y, x = np.mgrid[0:size, 0:size] / size
    planes = []
    for _ in range(channels):
        v = np.zeros((size, size))
        for _ in range(3):
            fx, fy, phase = rng.uniform(-4, 4), rng.uniform(-4, 4), rng.uniform(0, 2 * np.pi)
            v += rng.uniform(0.2, 0.5) * np.sin(2 * np.pi * (fx * x + fy * y) + phase)
        planes.append(v + noise * rng.standard_normal((size, size)))
    v = np.stack(planes, -1) if channels > 1 else planes[0]
    return np.clip(np.round(127.5 + 127.5 * v / 1.2), 0, 255).astype(np.uint8)


def images():
    rng = np.random.default_rng(0)
    colour, grey = [], []
    for sub in ("colour", "grey"):
        os.makedirs(os.path.join(OUT, "images", sub), exist_ok=True)
    for i in range(8):
        path = os.path.join(OUT, "images", "colour", f"{i}.png")
        Image.fromarray(waves(rng, 32, 3, 0.05 if i < 4 else 0.4), "RGB").save(path)
        colour.append(path)
    for i in range(2):
        path = os.path.join(OUT, "images", "grey", f"{i}.png")
        Image.fromarray(waves(rng, 28, 1, 0.1), "L").save(path)
        grey.append(path)
    return colour, grey


def exact_frechet(a, b):
    """|mu_a - mu_b|^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^(1/2)) in float64, with
    Tr((S_a S_b)^(1/2)) = sum of sqrt(eig(F^T S_b F)) for S_a = F F^T (no non-symmetric
    square root of a nearly singular product)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s_a)
    keep = w > w.max() * len(w) * np.finfo(float).eps
    f = v[:, keep] * np.sqrt(w[keep])
    m = f.T @ s_b @ f
    tr = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * tr)


def kid(a, b):
    """Unbiased MMD^2 with the kernel (x.y / d + 1)^3 over all rows."""
    d = a.shape[1]
    k = lambda x, y: (x @ y.T / d + 1.0) ** 3  # noqa: E731
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    m, n = len(a), len(b)
    return float((kaa.sum() - np.trace(kaa)) / (m * (m - 1))
                 + (kbb.sum() - np.trace(kbb)) / (n * (n - 1)) - 2 * kab.mean())


def small_pth(state):
    """A few pattern tensors under the real file's names, saved by torch in both formats."""
    small = {k: v for k, v in state.items() if k.startswith("Conv2d_1a_3x3.") or k == "fc.bias"}
    torch.save(small, os.path.join(OUT, "small-zip.pth"))
    torch.save(small, os.path.join(OUT, "small-legacy.pth"), _use_new_zipfile_serialization=False)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--full-pth", help="also write the whole pattern state_dict here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    os.makedirs(OUT, exist_ok=True)
    model, state = pattern_model()
    colour, grey = images()
    with torch.no_grad():
        feats = np.concatenate([
            get_activations(colour, model, batch_size=4, dims=2048, device="cpu", num_workers=0),
            get_activations(grey, model, batch_size=2, dims=2048, device="cpu", num_workers=0),
        ])
    feats.astype("<f4").tofile(os.path.join(OUT, "features.f32"))
    a, b = feats[:4].astype(np.float64), feats[4:8].astype(np.float64)
    fid = calculate_frechet_distance(a.mean(0), np.cov(a, rowvar=False),
                                     b.mean(0), np.cov(b, rowvar=False))
    expected = {
        "images": [os.path.relpath(p, OUT) for p in colour + grey],
        "fid_halves": {"pytorch_fid": float(fid), "exact": exact_frechet(a, b)},
        "kid_halves": kid(a, b),
        "feature_max_abs": float(np.abs(feats).max()),
        "feature_mean": float(feats.mean()),
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                     "pytorch_fid": pytorch_fid.__version__, "numpy": np.__version__,
                     "scipy": scipy.__version__, "pillow": PIL.__version__},
    }
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    small_pth(state)
    if args.full_pth:
        os.makedirs(args.full_pth, exist_ok=True)
        torch.save(state, os.path.join(args.full_pth, "pattern-zip.pth"))
        torch.save(state, os.path.join(args.full_pth, "pattern-legacy.pth"),
                   _use_new_zipfile_serialization=False)
    print(json.dumps(expected, indent=1))


if __name__ == "__main__":
    main()
