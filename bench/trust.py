"""Benchmark: can the reported validation accuracy be trusted? Reported vs images the run never sees.

Each case has three disjoint parts built in a temporary folder from ../shared/datasets (nothing is copied
into the repo): what the run trains on, its validation split (the figure it reports, metrics.json), and a
held-out test folder it never sees, scored afterwards with `imgclf.infer.evaluate`.

  hymenoptera     the 245 training photos; validation: 30 photos per class drawn from val/ (seeded);
                  held out: the other 93 of val/ (a given split: train/ + valid/ folders);
  hymenoptera-K   K photos per class drawn from train/ (seeded; K = 10, 20, 30) in class folders, so the run
                  draws its own stratified 20% split (2, 4, 6 validation photos per class); held out: all 153
                  of val/;
  fashion-30      Fashion-MNIST: 30 training images per class drawn from train-* (seeded), written as 28x28
                  PNGs in class folders (the run's 20% split: 6 per class); held out: 100 per class of t10k-*.

Every case runs with `selection="valid"` (before: the size, decay and head chosen on the validation split
that is then reported) and `selection="cv"` (after: chosen by k-fold CV on the training features; the
validation split scored once), for several seeds (the seed draws the subsets and the split). The target, per
run: the reported accuracy lies inside the 95% Wilson interval of the held-out accuracy. The summary gives,
per case and selection, the mean gap (reported - held out), how many runs meet the target, and seconds.

Beside them, the cross-validated accuracy on the training split (recipe.json's selection figure, the one
`train` prints next to a validation split under 100 images): "cv in" counts the runs where it lies inside the
held-out 95% interval, and "advice" the runs where the figure `train` said to trust (train/trust.py: the
cross-validated one, the validation one, or neither) lies inside it ("neither" counts as a miss).

The recipe is `probe` at a fixed size (hymenoptera 128 px, Fashion-MNIST 64 px) by default: its choices (the
head and its decay) are what selection changes, it is deterministic, and it does not depend on the machine's
speed the way the auto recipe's time budget does (`--recipe auto` runs that instead).

Usage: python bench/trust.py [--cases hymenoptera hymenoptera-10 ...] [--seeds 3] [--recipe probe|auto]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from imgclf.data.idx import read_idx

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared/datasets"
HYMENOPTERA = SHARED / "hymenoptera"
FASHION = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"]
CASES = ("hymenoptera", "hymenoptera-10", "hymenoptera-20", "hymenoptera-30", "fashion-30")
SIZES = {"hymenoptera": 128, "fashion": 64}


def link(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.symlink_to(src.resolve())


def photos(split: str) -> dict[str, list[Path]]:
    from imgclf.data.sources import is_image_file

    return {c: sorted(p for p in (HYMENOPTERA / split / c).iterdir() if is_image_file(p)) for c in ("ants", "bees")}


def build_case(name: str, root: Path, seed: int) -> tuple[Path, Path]:
    """(data folder the run trains from, held-out test folder) for case `name`, drawn with `seed`."""
    rng = random.Random(seed)
    data, test = root / "data", root / "test"
    if name == "hymenoptera":
        for c, files in photos("train").items():
            for p in files:
                link(p, data / "train" / c / p.name)
        for c, files in photos("val").items():
            files = list(files)
            rng.shuffle(files)
            for i, p in enumerate(files):
                link(p, (data / "valid" / c if i < 30 else test / c) / p.name)
    elif name.startswith("hymenoptera-"):
        k = int(name.split("-")[1])
        for c, files in photos("train").items():
            for p in rng.sample(files, k):
                link(p, data / c / p.name)
        for c, files in photos("val").items():
            for p in files:
                link(p, test / c / p.name)
    elif name.startswith("fashion-"):
        k = int(name.split("-")[1])
        src = SHARED / "fashion-mnist"
        for part, prefix, n, folder in (("train", "train", k, data), ("test", "t10k", 100, test)):
            x = read_idx(src / f"{prefix}-images-idx3-ubyte.gz")
            y = read_idx(src / f"{prefix}-labels-idx1-ubyte.gz")
            for label, cls in enumerate(FASHION):
                idx = np.flatnonzero(y == label).tolist()
                for i in (rng.sample(idx, n) if part == "train" else idx[:n]):
                    (folder / cls).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(x[i]).save(folder / cls / f"{prefix}{i}.png")
    else:
        raise SystemExit(f"unknown case {name!r}: choose from {', '.join(CASES)}")
    return data, test


def run_case(name: str, selection: str, seed: int, recipe: str, work: Path) -> dict:
    from imgclf.config import DataConfig, RunConfig, TrainConfig
    from imgclf.infer import evaluate
    from imgclf.train.job import train
    from imgclf.train.trust import validation_advice

    root = work / f"{name}-{seed}"
    if not root.exists():
        build_case(name, root, seed)
    data, test = root / "data", root / "test"
    size = SIZES["fashion" if name.startswith("fashion") else "hymenoptera"]
    cfg = RunConfig(data=DataConfig(path=str(data), size=size, bs=32, seed=seed),
                    train=TrainConfig(recipe=recipe, selection=selection), out=str(root / f"run-{selection}"))
    t = time.perf_counter()
    log = io.StringIO()  # the run's own lines (plan, recipe, calibration) would bury the table
    with warnings.catch_warnings(), contextlib.redirect_stdout(log):
        warnings.simplefilter("ignore")
        m = train(cfg, progress=False).metrics
        held = evaluate(root / f"run-{selection}", test, progress=False)
    recipe_json = root / f"run-{selection}" / "recipe.json"
    report = json.loads(recipe_json.read_text()) if recipe_json.is_file() else {}
    chosen = next((c for c in report.get("candidates", []) if c.get("name") == report.get("chosen")), {})
    cv = (chosen.get("selection") or {}).get("accuracy")
    advice = validation_advice(m, report)
    trust = advice["trust"] if advice else "valid"  # a split of >= 100 images stands alone

    def held_in(v: float | None) -> bool:
        return v is not None and held["accuracy_low"] <= v <= held["accuracy_high"]

    return {"case": name, "selection": selection, "seed": seed, "n_train": m["n_train"], "n_valid": m["n_valid"],
            "reported": m["accuracy"], "reported_low": m["accuracy_low"], "reported_high": m["accuracy_high"],
            "held_out": held["accuracy"], "held_low": held["accuracy_low"], "held_high": held["accuracy_high"],
            "n_held_out": held["n"], "cv_accuracy": cv, "chosen": report.get("chosen"),
            "ok": held["accuracy_low"] <= m["accuracy"] <= held["accuracy_high"],
            "covers": m["accuracy_low"] <= held["accuracy"] <= m["accuracy_high"],
            "cv_in": held_in(cv), "trust": trust,
            "unbiased_chance": unbiased_chance(m["n_valid"], held["accuracy"], held["accuracy_low"],
                                               held["accuracy_high"]),
            "advice_ok": held_in({"cv": cv, "valid": m["accuracy"]}.get(trust or "valid")),
            "seconds": time.perf_counter() - t}


def unbiased_chance(n_valid: int, p: float, low: float, high: float) -> float:
    """The probability that a reported figure with no selection bias at all lands inside [low, high]: k/n_valid for
    k ~ Binomial(n_valid, p), p the held-out accuracy (the best estimate of the true one). What the target asks of
    each run is at most this: the noise of n_valid images alone misses it 1 - this often."""
    return sum(math.comb(n_valid, k) * p**k * (1 - p) ** (n_valid - k)
               for k in range(n_valid + 1) if low <= k / n_valid <= high)


def cv_count(rs: list[dict]) -> str:
    """`k/n` of the runs with a cross-validated figure whose figure lies inside the held-out interval."""
    with_cv = [r for r in rs if r["cv_accuracy"] is not None]
    return f"{sum(r['cv_in'] for r in with_cv)}/{len(with_cv)}" if with_cv else "-"


def cv_gap(rs: list[dict]) -> str:
    """Mean |cross-validated accuracy - held out| over the runs with a cross-validated figure."""
    gaps = [abs(r["cv_accuracy"] - r["held_out"]) for r in rs if r["cv_accuracy"] is not None]
    return f"{statistics.mean(gaps):.3f}" if gaps else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="+", default=list(CASES))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--selections", nargs="+", default=["valid", "cv"])
    ap.add_argument("--recipe", default="probe", choices=["probe", "auto"])
    ap.add_argument("--json", help="also write every run's row to this file")
    a = ap.parse_args()
    rows = []
    print(f"{'case':16} {'sel':5} {'seed':>4} {'train':>5} {'valid':>5}  {'reported (95%)':21} "
          f"{'held out (95%)':21} {'cv acc':>6}  target  covers  cv in  {'trust':7} {'s':>5}")
    with tempfile.TemporaryDirectory(prefix="imgclf-trust-") as tmp:
        for name in a.cases:
            for seed in range(a.seeds):
                for selection in a.selections:
                    r = run_case(name, selection, seed, a.recipe, Path(tmp))
                    rows.append(r)
                    cv = f"{r['cv_accuracy']:.3f}" if r["cv_accuracy"] is not None else "-"
                    print(f"{name:16} {selection:5} {seed:>4} {r['n_train']:>5} {r['n_valid']:>5}  "
                          f"{r['reported']:.3f} ({r['reported_low']:.2f}-{r['reported_high']:.2f})   "
                          f"{r['held_out']:.3f} ({r['held_low']:.2f}-{r['held_high']:.2f})   {cv:>6}  "
                          f"{'yes' if r['ok'] else 'NO':6}  {'yes' if r['covers'] else 'NO':6}  "
                          f"{'-' if r['cv_accuracy'] is None else 'yes' if r['cv_in'] else 'NO':5}  "
                          f"{str(r['trust']):7} {r['seconds']:5.0f}", flush=True)
    print("\nsummary: gap = reported - held out (mean over seeds); target: reported inside the held-out 95% "
          "interval on every run; covers: the held-out figure inside the reported 95% interval; cv |gap|: mean "
          "|cross-validated - held out|; cv in: the "
          "cross-validated accuracy inside the held-out interval; advice: the figure train said to trust inside it")
    print("unbiased: how many runs would meet the target on average if the reported figure carried no selection "
          "bias at all, only the noise of its validation images (unbiased_chance summed)")
    print(f"{'case':16} {'sel':5} {'mean gap':>9} {'mean |gap|':>10} {'target met':>11} {'unbiased':>9} {'covers':>7} "
          f"{'cv |gap|':>8} {'cv in':>7} {'advice':>7} {'seconds':>8}")
    all_ok = {s: True for s in a.selections}
    for name in a.cases:
        for selection in a.selections:
            rs = [r for r in rows if r["case"] == name and r["selection"] == selection]
            gaps = [r["reported"] - r["held_out"] for r in rs]
            met = sum(r["ok"] for r in rs)
            all_ok[selection] &= met == len(rs)
            print(f"{name:16} {selection:5} {statistics.mean(gaps):+9.3f} {statistics.mean(map(abs, gaps)):10.3f} "
                  f"{met:>5}/{len(rs):<5} {sum(r['unbiased_chance'] for r in rs):>5.1f}/{len(rs):<3} "
                  f"{sum(r['covers'] for r in rs):>3}/{len(rs):<3} "
                  f"{cv_gap(rs):>8} {cv_count(rs):>7} {sum(r['advice_ok'] for r in rs):>3}/{len(rs):<3} "
                  f"{sum(r['seconds'] for r in rs):8.0f}")
    for selection, ok in all_ok.items():
        rs = [r for r in rows if r["selection"] == selection]
        every = math.prod(r["unbiased_chance"] for r in rs)
        print(f"target (every run) with selection={selection}: {'MET' if ok else 'NOT MET'}: {sum(r['ok'] for r in rs)}"
              f"/{len(rs)} runs, against {sum(r['unbiased_chance'] for r in rs):.1f} expected with no selection bias "
              f"(chance of every run by noise alone: {every:.1e}); held out inside the reported interval "
              f"{sum(r['covers'] for r in rs)}/{len(rs)}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    sys.exit(main())
