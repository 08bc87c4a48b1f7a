#!/usr/bin/env python3
"""Writes tests/fixtures/parity-small: the reference PyTorch SimpleUNet at widths 8/16/32
(random weights, seed 0) and its Euler results from fixed noise, for flowmatch's parity test.

    python3 -m venv /opt/torchref && /opt/torchref/bin/pip install torch numpy safetensors
    /opt/torchref/bin/python scripts/make-parity-fixture.py

Files (float32, PyTorch's own names and layouts):
- weights.safetensors: the model's state_dict (54 tensors);
- cases.safetensors: x1 [4,1,28,28] (noise at t = 1), x0_steps1 and x0_steps10 (the reference
  Euler sampler with 1 and 10 steps, raw values).
"""
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_models import SimpleUNet, euler, randomise_norms_and_biases  # noqa: E402

WIDTHS = (8, 16, 32)


def main():
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures",
                       "parity-small")
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
