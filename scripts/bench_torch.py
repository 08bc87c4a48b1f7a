#!/usr/bin/env python3
"""The PyTorch side of scripts/bench-vs-pytorch.sh: the same measurement as `flowmatch bench`
(and the reference benchmark it follows) on the PyTorch twin of a flowmatch network, on the CPU.

    bench_torch.py --arch simple --widths 64,128,256
    bench_torch.py --arch resunet --size small [--image-size 28 --channels 1]

Training: batch 128, AdamW lr 1e-4 (weight decay 0.01), global clip 1.0, 3 warm-up steps, then
at least 10 steps and 10 s. Sampling: 64 images x 50 Euler steps, 1 warm-up run, then at least
2 runs and 10 s. Prints one JSON line (train_img_s, sample_img_s, peak_rss_mb, ...).
"""
import argparse
import json
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_models import RESUNET_SIZES, ResUNet, SimpleUNet, euler  # noqa: E402

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed(work, warmup, min_count, min_time):
    for _ in range(warmup):
        work()
    count, start = 0, time.perf_counter()
    while count < min_count or time.perf_counter() - start < min_time:
        work()
        count += 1
    return count, time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", choices=["simple", "resunet"], default="simple")
    ap.add_argument("--widths", default="64,128,256")
    ap.add_argument("--size", default="small")
    ap.add_argument("--image-size", type=int, default=28)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    c, s = args.channels, args.image_size
    if args.arch == "simple":
        model = SimpleUNet(in_channels=c, ch=tuple(int(w) for w in args.widths.split(",")))
    else:
        # The size's attention resolutions are for 28x28; keep them at the same levels, as
        # flowmatch does (7x7 at 28x28 becomes 8x8 at 32x32).
        size = dict(RESUNET_SIZES[args.size])
        levels = len(size.get("channel_mult", (1, 2, 2)))
        size["attention"] = tuple(s >> l for l in range(levels) if (28 >> l) in size["attention"])
        model = ResUNet(in_channels=c, image_size=s, **size)
    quick = (1, 2, 0.0, 0, 1, 0.0) if args.quick else (3, 10, 10.0, 1, 2, 10.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x0 = torch.rand(128, c, s, s) * 2 - 1

    def step():
        t = torch.rand(x0.shape[0])
        x1 = torch.randn_like(x0)
        te = t.view(-1, 1, 1, 1)
        x_t = (1 - te) * x0 + te * x1
        loss = torch.nn.functional.mse_loss(model(x_t, t), x1 - x0)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    model.train()
    steps, train_s = timed(step, *quick[:3])
    model.eval()
    noise = torch.randn(64, c, s, s)
    runs, sample_s = timed(lambda: euler(model, noise, 50), *quick[3:])
    print(json.dumps({
        "impl": "torch",
        "arch": args.arch,
        "config": args.widths if args.arch == "simple" else args.size,
        "train_img_s": round(128 * steps / train_s, 2),
        "sample_img_s": round(64 * runs / sample_s, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "params": sum(p.numel() for p in model.parameters()),
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
    }), flush=True)


if __name__ == "__main__":
    main()
