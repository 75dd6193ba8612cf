"""Benchmark: the `auto` recipe against the fixed `fine_tune` recipe and fastai `fine_tune(2)`.

Four data sets, built in a temporary folder from ../shared/datasets (nothing is copied into the repo):
  hymenoptera        the full ants-vs-bees set (245 train / 153 valid photos);
  hymenoptera-8      8 training images per class, the same 153 validation images;
  fashion-2000       Fashion-MNIST: the first 2,000 training images and the first 1,000 test images,
                     written as 28x28 grey PNGs (tiny images);
  hymenoptera-48px   the full set downscaled so each image's short side is 48 px (low resolution);
  fashion-mnist      (only with --only fashion-mnist: ~10 min) the whole IDX set, `imgclf train` with no flags:
                     the planner trains xresnet_tiny from scratch at 28 px; target >= 0.940 within 600 s.
Each job runs in its own process, one after another; the table gives validation accuracy, wall seconds
against the job's own budget (recipe.json), and the recipe each took. fastai runs at 224 px except on
fashion-2000 (64 px: at 224 px its three epochs over 2,000 images take ~15 min on this CPU).

Usage: python bench/recipes.py [--only NAME ...] [--skip-fastai] [--skip-fixed]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from imgclf.data.idx import read_idx  # noqa: F401  (bench/blurred.py reads it from here)

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared/datasets"
FASHION = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"]


def build_fashion(root: Path, n_train: int = 2000, n_valid: int = 1000) -> Path:
    src = SHARED / "fashion-mnist"
    for split, prefix, n in (("train", "train", n_train), ("val", "t10k", n_valid)):
        x = read_idx(src / f"{prefix}-images-idx3-ubyte.gz")[:n]
        y = read_idx(src / f"{prefix}-labels-idx1-ubyte.gz")[:n]
        for i, (img, label) in enumerate(zip(x, y, strict=True)):
            d = root / split / FASHION[label]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img, "L").save(d / f"{i:05d}.png")
    return root


def build_few(root: Path, per_class: int = 8) -> Path:
    hym = SHARED / "hymenoptera"
    for cls in ("ants", "bees"):
        d = root / "train" / cls
        d.mkdir(parents=True)
        for p in sorted((hym / "train" / cls).iterdir())[:per_class]:
            (d / p.name).symlink_to(p)
    (root / "val").symlink_to(hym / "val")
    return root


def build_lowres(root: Path, short: int = 48) -> Path:
    hym = SHARED / "hymenoptera"
    for p in sorted(hym.rglob("*")):
        if not p.is_file():
            continue
        with Image.open(p) as im:
            im = im.convert("RGB")
            s = short / min(im.size)
            out = root / p.relative_to(hym).with_suffix(".jpg")
            out.parent.mkdir(parents=True, exist_ok=True)
            im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.Resampling.LANCZOS).save(
                out, quality=95)
    return root


def run_train(data: Path, out: Path, *flags: str) -> tuple[dict, float]:
    """`imgclf train DATA --out OUT --quiet FLAGS` in its own process: (its metrics.json, wall seconds); a failed
    run stops the bench with its stderr."""
    cmd = [sys.executable, "-m", "imgclf", "train", str(data), "--out", str(out), "--quiet", *flags]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return json.loads((out / "metrics.json").read_text()), wall


def run_ours(data: Path, out: Path, *flags: str) -> dict:
    m, wall = run_train(data, out, *flags)
    if (out / "recipe.json").exists():
        rec = json.loads((out / "recipe.json").read_text())
        return {"accuracy": m["accuracy"], "seconds": wall, "recipe": rec["chosen"], "n_valid": m["n_valid"],
                "budget": rec.get("budget_seconds"), "plan": rec.get("plan", {}).get("text")}
    recipe = json.loads((out / "config.json").read_text())["resolved"].get("kept", "fine_tune")
    return {"accuracy": m["accuracy"], "seconds": wall, "recipe": recipe, "n_valid": m["n_valid"]}


def run_fastai(data: Path, size: int) -> dict:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, str(HERE / "peers" / "fastai_hymenoptera.py"), str(data), "--size", str(size)],
                       capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode:
        sys.exit(p.stderr[-3000:])
    res = json.loads(p.stdout.strip().splitlines()[-1])
    return {"accuracy": res["accuracy"], "seconds": wall, "recipe": f"fine_tune(2) @{size}px"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--skip-fastai", action="store_true")
    ap.add_argument("--skip-fixed", action="store_true", help="auto only (no --recipe fine_tune job)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sets = {
            "hymenoptera": (lambda: SHARED / "hymenoptera", 224),
            "hymenoptera-8": (lambda: build_few(tmp / "few"), 224),
            "fashion-2000": (lambda: build_fashion(tmp / "fashion"), 64),
            "hymenoptera-48px": (lambda: build_lowres(tmp / "lowres"), 224),
            "fashion-mnist": (lambda: SHARED / "fashion-mnist", 0),  # only with --only fashion-mnist
        }
        results = {}
        for name, (build, fastai_size) in sets.items():
            if (a.only and name not in a.only) or (not a.only and name == "fashion-mnist"):
                continue
            data = build()
            row = {"auto": run_ours(data, tmp / f"{name}-auto")}
            if not a.skip_fixed and name != "fashion-mnist":
                row["fine_tune"] = run_ours(data, tmp / f"{name}-ft", "--recipe", "fine_tune")
            if not a.skip_fastai and fastai_size:
                row["fastai"] = run_fastai(data, fastai_size)
            results[name] = row
            print(json.dumps({name: row}), flush=True)

    print(f"\n{'data':<18}{'job':<11}{'accuracy':>9}{'seconds':>9}  recipe")
    for name, row in results.items():
        for job, r in row.items():
            print(f"{name:<18}{job:<11}{r['accuracy']:>9.4f}{r['seconds']:>9.1f}  {r['recipe']}")
        auto = row["auto"]
        if auto.get("budget"):
            ok = auto["seconds"] <= auto["budget"]
            print(f"  auto: {auto['seconds']:.0f} s of its {auto['budget']:.0f} s budget ({'ok' if ok else 'OVER'})"
                  f"; {auto.get('plan')}")
        if name == "fashion-mnist":
            ok = auto["accuracy"] >= 0.94 and auto["seconds"] <= 600
            print(f"  target >= 0.940 test accuracy in <= 600 s: {auto['accuracy']:.4f} in {auto['seconds']:.0f} s "
                  f"({'ok' if ok else 'MISS'})")
        if "fine_tune" not in row:
            continue
        n = row["auto"]["n_valid"]
        best_fixed = max(row["fine_tune"]["accuracy"], row.get("fastai", {}).get("accuracy", 0))
        gap = row["auto"]["accuracy"] - best_fixed
        ok = gap >= -max(1 / n, 0.005)
        line = f"  auto - best fixed: {gap * 100:+.1f} points ({'ok' if ok else 'MISS'})"
        if "fastai" in row:
            line += (f"; auto - fastai: {(row['auto']['accuracy'] - row['fastai']['accuracy']) * 100:+.1f} points"
                     f"; time auto/fastai x{row['auto']['seconds'] / row['fastai']['seconds']:.2f}")
        print(line)


if __name__ == "__main__":
    main()
