"""Streaming from tar shards vs the in-memory path: peak memory and training speed as the data set grows.

Makes N synthetic small JPEGs (32-64 px, 10 classes of a few random patterns each) in a temporary folder,
writes them as shards (`imgclf shard`), then, each case in a fresh subprocess, trains one epoch from random
weights at 32 px and records the process's peak resident memory and the epoch's images/s:

    memory: ImageData.from_folder (every image decoded once, presized, held as one uint8 tensor)
    stream: ShardData (the shards streamed, shuffled across shards, decoded per batch in a thread pool)

Targets (issue 13): the streaming path's peak memory stays flat as N grows (10k vs 100k: within 1.25x; the
in-memory one grows with N), and its images/s is at least 0.8x the in-memory path's at the same N.

    python bench/shards.py                  # 10k and 100k
    python bench/shards.py --n 10000        # quicker
    python bench/shards.py --pixels         # shards of presized pixels (`imgclf shard --pixels`): no decode
    python bench/shards.py --arch simple_cnn --keep /tmp/shards-bench   # keep the generated folders
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def make_images(root: Path, n: int, classes: int = 10, seed: int = 0) -> None:
    """n JPEGs of 32-64 px: a class's own colour under an image's own random 4x4 pattern (no two alike: the split's
    near-duplicate check moves nothing)."""
    from PIL import Image

    tints = np.random.default_rng(seed).integers(40, 215, (classes, 3))
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)

    def one(i: int) -> None:
        r = np.random.default_rng(seed * 1_000_003 + i)
        c = i % classes
        grid = tints[c] + r.integers(-40, 41, (4, 4, 3))
        side = int(r.integers(32, 65))
        img = Image.fromarray(np.clip(grid, 0, 255).astype(np.uint8)).resize((side, side), Image.Resampling.BILINEAR)
        img.save(root / f"class{c}" / f"{i:06d}.jpg", quality=90)

    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        list(pool.map(one, range(n), chunksize=256))


def case(mode: str, path: str, arch: str, size: int, bs: int) -> dict:
    """One epoch in this process (called in a subprocess per case): seconds, images/s, peak RSS."""
    import torch

    from imgclf.data.core import ImageData
    from imgclf.data.shards import ShardData
    from imgclf.train.vision import vision_learner

    torch.set_num_threads(os.cpu_count() or 2)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    if mode == "memory":
        data = ImageData.from_folder(path, size=size, bs=bs, crop_pct=1.0, progress=False)
    else:
        data = ShardData(path, size=size, bs=bs, crop_pct=1.0, progress=False)
    load = time.perf_counter() - t
    t = time.perf_counter()
    cpu = time.process_time()
    if arch == "none":  # the input pipeline alone: batches decoded (streaming), augmented and normalised
        for _ in data.loader("train", (0.5,) * 3, (0.5,) * 3, seed=0):
            pass
    else:
        learn = vision_learner(data, arch, pretrained=False, progress=False, device="cpu")
        learn.valid_dl = None  # the training epoch alone
        t = time.perf_counter()
        cpu = time.process_time()
        learn.fit_one_cycle(1, 2e-3)
    epoch = time.perf_counter() - t
    cpu = time.process_time() - cpu
    return {"mode": mode, "n_train": data.n_train, "load_s": load, "epoch_s": epoch, "img_s": data.n_train / epoch,
            "cpu_ms_per_img": 1000 * cpu / data.n_train,
            "rss_start_mb": rss0, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_case(mode: str, path: Path, args) -> dict:
    out = subprocess.run([sys.executable, __file__, "--case", mode, "--path", str(path), "--arch", args.arch,
                          "--size", str(args.size), "--bs", str(args.bs)], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"case {mode} {path} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000], help="data set sizes")
    p.add_argument("--arch", default="xresnet_tiny", help="model trained one epoch; none: the input pipeline alone")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--bs", type=int, default=256)
    p.add_argument("--pixels", action="store_true", help="shards of presized pixels (`imgclf shard --pixels "
                   "--presize SIZE`) instead of JPEG bytes")
    p.add_argument("--keep", help="folder to keep the generated images and shards in (default: a temporary one)")
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        print(json.dumps(case(args.case, args.path, args.arch, args.size, args.bs)))
        return
    from imgclf.data.shards import write_shards

    root = Path(args.keep or tempfile.mkdtemp(prefix="imgclf-shards-bench-"))
    rows = []
    try:
        for n in args.n:
            images, shards = root / f"images-{n}", root / f"shards-{n}{'-pixels' if args.pixels else ''}"
            t = time.perf_counter()
            if not images.exists():
                make_images(images, n)
            made = time.perf_counter() - t
            t = time.perf_counter()
            if not shards.exists():
                write_shards(images, shards, progress=False, presize=args.size if args.pixels else 0,
                             pixels=args.pixels)
            written = time.perf_counter() - t
            mb = sum(f.stat().st_size for f in shards.iterdir()) / 2**20
            print(f"N={n}: images made in {made:.1f}s, shards written in {written:.1f}s ({mb:.0f} MB)", flush=True)
            for mode in ("memory", "stream"):
                r = run_case(mode, images if mode == "memory" else shards, args)
                rows.append({"n": n, **r})
                print(f"  {mode:6s} load {r['load_s']:6.1f}s  epoch {r['epoch_s']:6.1f}s  {r['img_s']:7.0f} img/s  "
                      f"{r['cpu_ms_per_img']:.2f} CPU ms/img  "
                      f"peak RSS {r['peak_rss_mb']:6.0f} MB (after imports {r['rss_start_mb']:.0f})", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\n{args.arch} at {args.size} px, bs {args.bs}, one training epoch, {os.cpu_count()} CPU threads")
    print(f"{'N':>7} {'mode':>6} {'img/s':>7} {'peak RSS MB':>11} {'above imports':>13}   target")
    by = {(r["n"], r["mode"]): r for r in rows}
    for n in args.n:
        mem, st = by[n, "memory"], by[n, "stream"]
        ratio = st["img_s"] / mem["img_s"]
        for r in (mem, st):
            print(f"{n:>7} {r['mode']:>6} {r['img_s']:>7.0f} {r['peak_rss_mb']:>11.0f} "
                  f"{r['peak_rss_mb'] - r['rss_start_mb']:>13.0f}", end="")
            print(f"   speed {ratio:.2f}x memory's (target >= 0.8x: {'met' if ratio >= 0.8 else 'NOT met'}); "
                  f"CPU per image {st['cpu_ms_per_img'] / mem['cpu_ms_per_img']:.2f}x" if r is st else "")
    if len(args.n) > 1:
        lo, hi = min(args.n), max(args.n)
        for mode in ("memory", "stream"):
            g = by[hi, mode]["peak_rss_mb"] / by[lo, mode]["peak_rss_mb"]
            target = f"   (target <= 1.25x: {'met' if g <= 1.25 else 'NOT met'})" if mode == "stream" else ""
            print(f"peak RSS {mode}: {hi:,} vs {lo:,} images: {g:.2f}x{target}")


if __name__ == "__main__":
    main()
