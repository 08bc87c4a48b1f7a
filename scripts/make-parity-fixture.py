#!/usr/bin/env python3
"""Writes the parity fixtures of flowmatch's tests from the PyTorch twins of its networks:

- tests/fixtures/parity-small: the reference PyTorch SimpleUNet at widths 8/16/32 (random
  weights, seed 0) and its Euler results from fixed noise;
- tests/fixtures/parity-resunet: a small class-conditional ResUNet (every parameter random,
  the zero-initialised ones too), its velocities for given labels and its Euler result.

    python3 -m venv /opt/torchref && /opt/torchref/bin/pip install torch numpy safetensors
    /opt/torchref/bin/python scripts/make-parity-fixture.py

Files (float32, PyTorch's own names and layouts):
- weights.safetensors: the model's state_dict (54 tensors);
- cases.safetensors: x1 [4,1,28,28] (noise at t = 1), x0_steps1 and x0_steps10 (the reference
  Euler sampler with 1 and 10 steps, raw values).
For the ResUNet, weights.safetensors carries the network's shape in its metadata
('flowmatch.network', as flowmatch writes it) and cases.safetensors holds x1 [2,1,28,28],
v_labels (the velocity at t = 0.7 for labels 0 and 2), v_none (the same without labels) and
x0_steps4 (4 unconditional Euler steps).
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_models import (  # noqa: E402
    ResUNet, SimpleUNet, euler, randomise_all, randomise_norms_and_biases)

WIDTHS = (8, 16, 32)
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")


def resunet():
    out = os.path.join(FIXTURES, "parity-resunet")
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    model = ResUNet(channels=8, channel_mult=(1, 2), res_blocks=1, attention=(14,),
                    head_channels=8, num_classes=3).eval()
    randomise_all(model, torch.Generator().manual_seed(1))
    x1 = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    t = torch.full((2,), 0.7)
    with torch.no_grad():
        cases = {
            "x1": x1,
            "v_labels": model(x1, t, torch.tensor([0, 2])),
            "v_none": model(x1, t),
            "x0_steps4": euler(model, x1, 4),
        }
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    meta = {"flowmatch.network": json.dumps({"arch": "resunet", **model.config}), "format": "pt"}
    save_file(state, os.path.join(out, "weights.safetensors"), metadata=meta)
    save_file({k: v.contiguous() for k, v in cases.items()}, os.path.join(out, "cases.safetensors"))
    print(f"{out}: {len(state)} tensors, max |v| = {cases['v_labels'].abs().max():.3f}")


def main():
    resunet()
    out = os.path.join(FIXTURES, "parity-small")
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    model = SimpleUNet(ch=WIDTHS).eval()
    randomise_norms_and_biases(model, torch.Generator().manual_seed(1))
    x1 = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    cases = {"x1": x1, "x0_steps1": euler(model, x1, 1), "x0_steps10": euler(model, x1, 10)}
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(out, "weights.safetensors"))
    save_file({k: v.contiguous() for k, v in cases.items()}, os.path.join(out, "cases.safetensors"))
    print(f"{out}: {len(state)} tensors, max |x0_steps10| = {cases['x0_steps10'].abs().max():.3f}")


if __name__ == "__main__":
    main()
