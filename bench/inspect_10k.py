"""Benchmark: `imgclf inspect` on 10,000 synthetic images, and whether it finds the duplicates planted in them.

Writes N small JPEGs (64x64 .. 160x120, 10 classes, 80% train/ 20% valid/) into a temporary folder:
each a random gradient with random shapes, so no two are alike; then plants copies: exact copies and
near copies (re-saved at JPEG quality 50 and 90% size) within train, and exact and near (mirrored)
copies of training images in valid (leaks). Runs the real command in a subprocess and prints its
seconds (the issue's target: well under a minute on the reference 2-core CPU), the seconds of the audit
alone (from inspect.json), and the planted groups found against any others (false alarms).

Usage: python bench/inspect_10k.py [--n 10000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

CLASSES = 10
PLANT = 10  # of each kind within train; half as many of each kind of leak


def synthetic(seed: int) -> Image.Image:
    """A random gradient with six random shapes: structured, so distinct images look distinct."""
    rng = np.random.default_rng(seed)
    w, h = int(rng.integers(64, 161)), int(rng.integers(64, 121))
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * xx + np.sin(angle) * yy
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    img = Image.fromarray((a + (b - a) * ramp[..., None].clip(0, 1)).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(rng.integers(-10, w)), int(rng.integers(-10, h))
        x1, y1 = x0 + int(rng.integers(8, w // 2 + 9)), y0 + int(rng.integers(8, h // 2 + 9))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = rng.integers(0, 3)
        if shape == 0:
            d.ellipse([x0, y0, x1, y1], fill=colour)
        elif shape == 1:
            d.rectangle([x0, y0, x1, y1], fill=colour)
        else:
            d.line([x0, y0, x1, y1], fill=colour, width=int(rng.integers(2, 8)))
    return img


def write_dataset(root: Path, n: int) -> dict[str, list[list[str]]]:
    """N images under root/{train,valid}/c<k>/; returns the planted groups (relative paths) by kind."""
    n_base = n - 3 * PLANT  # PLANT exact + PLANT near in train, PLANT/2 + PLANT/2 leaks in valid
    for split in ("train", "valid"):
        for k in range(CLASSES):
            (root / split / f"c{k}").mkdir(parents=True, exist_ok=True)

    def rel(i: int) -> str:
        return f"{'valid' if i // CLASSES % 5 == 4 else 'train'}/c{i % CLASSES}/{i}.jpg"

    def make(i: int) -> None:
        synthetic(i).save(root / rel(i), quality=90)

    with ThreadPoolExecutor() as pool:
        list(pool.map(make, range(n_base)))
    train = [i for i in range(n_base) if i // CLASSES % 5 != 4]
    planted: dict[str, list[list[str]]] = {"exact": [], "near": [], "leak": []}
    for j, i in enumerate(train[: 3 * PLANT]):
        src = root / rel(i)
        c = f"c{i % CLASSES}"
        if j < PLANT:  # an exact copy in train
            dst = f"train/{c}/{i}_copy.jpg"
            shutil.copyfile(src, root / dst)
            planted["exact"].append([rel(i), dst])
        elif j < 2 * PLANT:  # a near copy in train: smaller, re-saved at a lower quality
            img = Image.open(src)
            dst = f"train/{c}/{i}_resaved.jpg"
            img.resize((img.width * 9 // 10, img.height * 9 // 10)).save(root / dst, quality=50)
            planted["near"].append([rel(i), dst])
        elif j < 2 * PLANT + PLANT // 2:  # an exact copy in valid
            dst = f"valid/{c}/{i}_leak.jpg"
            shutil.copyfile(src, root / dst)
            planted["leak"].append([rel(i), dst])
        else:  # a mirrored copy in valid: training flips, so this leaks too
            dst = f"valid/{c}/{i}_mirror.jpg"
            ImageOps.mirror(Image.open(src)).save(root / dst, quality=85)
            planted["leak"].append([rel(i), dst])
    return planted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="images in all (train + valid, planted copies included)")
    ap.add_argument("--keep", help="write the images here and keep them (default: a temporary folder)")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    root = Path(args.keep or tmp.name) / "synthetic"
    t = time.perf_counter()
    planted = write_dataset(root, args.n)
    print(f"wrote {args.n} images in {time.perf_counter() - t:.1f} s -> {root}")

    out = Path(tmp.name) / "inspect"
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "imgclf", "inspect", str(root), "--out", str(out), "--quiet"],
                       capture_output=True, text=True, cwd=tmp.name)  # not beside this inspect.py
    seconds = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"imgclf inspect failed:\n{p.stderr[-3000:]}")
    info = json.loads((out / "inspect.json").read_text())
    dup = info["duplicates"]

    def found(groups: list[dict]) -> list[set[str]]:
        return [{str(Path(f["path"]).relative_to(root)) for f in g["files"]} for g in groups]

    groups = found(dup["exact"]) + found(dup["near"])
    hits = {kind: sum(any(set(pair) <= g for g in groups) for pair in pairs) for kind, pairs in planted.items()}
    planted_files = {f for pairs in planted.values() for pair in pairs for f in pair}
    extra = [g for g in groups if not g & planted_files]
    n = info["totals"]["train"] + info["totals"]["valid"]
    print(f"imgclf inspect: {seconds:.1f} s for {n} images ({n / seconds:.0f} images/s; audit alone "
          f"{info['seconds']:.1f} s, the rest is start-up, decoding at {info['presize']} px and figures)")
    print("planted found: " + ", ".join(f"{kind} {hits[kind]}/{len(pairs)}" for kind, pairs in planted.items())
          + f"; leaks reported {dup['n_leaks']} (planted {len(planted['leak'])}); other groups {len(extra)}")
    for g in extra[:5]:
        print("  other:", ", ".join(sorted(g)))
    tmp.cleanup()


if __name__ == "__main__":
    main()
