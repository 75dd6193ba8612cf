"""Benchmark: what a checkpoint costs — EfficientNet-Lite0 with AdamW's state and save-best's copy of the weights,
written atomically (temporary file, fsync, rename) and read back — beside one training step it would follow.

The figure that matters is the ratio: a checkpoint every N steps costs (write seconds) / (N x step seconds)
of the training time. Prints the checkpoint's size, seconds to write and to read (median of `--repeat`), and a
training step's seconds at `--bs` and `--size` on this machine's device (fp32).

Usage: python bench/checkpoint.py [--arch efficientnet_lite0] [--bs 32] [--size 224] [--repeat 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch

from imgclf.models import create_model
from imgclf.train.checkpoint import read_checkpoint, rng_state, write_checkpoint
from imgclf.train.learner import pick_device


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="efficientnet_lite0")
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()

    device = pick_device("auto")
    model, _ = create_model(a.arch, 10, pretrained=False)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(a.bs, 3, a.size, a.size, device=device)
    y = torch.randint(0, 10, (a.bs,), device=device)
    steps = []
    for _ in range(3):  # the first step allocates AdamW's moments; time the others
        t = time.perf_counter()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        steps.append(time.perf_counter() - t)
    best = copy.deepcopy(model.state_dict())
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "cbs": {"SaveBestModel": {"best_state": best}},
             "rng": rng_state(), "epoch": 0, "iter": 3}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkpoint.safetensors"
        writes, reads = [], []
        for _ in range(a.repeat):
            t = time.perf_counter()
            write_checkpoint(path, state)
            writes.append(time.perf_counter() - t)
            t = time.perf_counter()
            read_checkpoint(path)
            reads.append(time.perf_counter() - t)
        mb = path.stat().st_size / 1e6
    n_params = sum(p.numel() for p in model.parameters())
    step = statistics.median(steps[1:])
    write = statistics.median(writes)
    print(f"{a.arch}: {n_params / 1e6:.2f}M parameters, device {device}")
    print(f"checkpoint (weights + AdamW moments + save-best copy + RNG): {mb:.1f} MB")
    print(f"write (temp file, fsync, rename): {write:.3f} s median of {a.repeat}  "
          f"(min {min(writes):.3f}, max {max(writes):.3f})")
    print(f"read: {statistics.median(reads):.3f} s median")
    print(f"one training step, bs {a.bs} at {a.size} px fp32: {step:.3f} s")
    for n in (100, 500):
        print(f"  a checkpoint every {n} steps costs {100 * write / (n * step):.2f}% of training time")


if __name__ == "__main__":
    main()
