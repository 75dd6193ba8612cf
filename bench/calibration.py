"""Benchmark: calibration (ECE, 15 bins of top-1 confidence) before and after temperature scaling.

Two runs on the shared data:
  - hymenoptera, the probe recipe's head on cached features (bench/imbalance.py's cache: EfficientNet-Lite0 at
    its size): T fitted on the probe's out-of-fold training logits (the selection folds, as `imgclf train`
    does), figures on the validation split it never saw;
  - a Fashion-MNIST subset trained from scratch (200 images a class, validation the first 1000 of t10k,
    xresnet_tiny at 28 px, `--epochs`): no selection folds, so T is fitted on validation and its figures are
    cross-fitted (each half scored with the T fitted on the other half).
Prints T, ECE and NLL before -> after and whether `--calibrate auto` kept T, beside the target: ECE after <
ECE before where T is kept (auto keeps it only when validation NLL drops).

Usage: python -P bench/calibration.py [--only hymenoptera|fashion] [--epochs 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from imbalance import hymenoptera_features, probe, skewed_fashion  # noqa: E402  (the bench's helpers, beside it)
from recipes import run_train  # noqa: E402


def hymenoptera() -> dict:
    """As `imgclf train hymenoptera --recipe probe`: CV-chosen probe, T from its out-of-fold logits."""
    import torch

    from imgclf.train.calibrate import choose_temperature

    f = hymenoptera_features()
    t = time.perf_counter()
    sel = probe(f["x1"], f["x2"], f["y"], len(f["classes"]))
    logits = f["xv"] @ sel.fit.weight.T + sel.fit.bias
    cal = choose_temperature(logits, f["yv"], "auto", sel.oof_logits, torch.cat([f["y"], f["y"]]))
    return {"accuracy": float((logits.argmax(1) == f["yv"]).float().mean()), "calibration": cal,
            "wall_seconds": time.perf_counter() - t, "recipe": f"probe@{f['size']}"}


def train(data: Path, out: Path, flags: list[str]) -> dict:
    m, wall = run_train(data, out, *flags)
    m["wall_seconds"] = wall
    m["recipe"] = json.loads((out / "config.json").read_text())["resolved"].get("recipe")
    return m


def row(name: str, m: dict) -> None:
    c = m["calibration"]
    ok = ("ok" if c["ece_after"] < c["ece_before"] else "MISSED") if c["applied"] else "not kept"
    print(f"{name:34} {m['accuracy']:8.4f} {c['fitted']:7.3f} {c['ece_before']:11.4f} {c['ece_after']:10.4f} "
          f"{c['nll_before']:11.4f} {c['nll_after']:10.4f} {'kept' if c['applied'] else 'T=1':>5} "
          f"{m['wall_seconds']:7.0f}  {ok}  [{m['recipe']}; {c['method']}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["hymenoptera", "fashion"])
    ap.add_argument("--epochs", type=int, default=8, help="Fashion subset: from-scratch epochs")
    a = ap.parse_args()
    print("ECE/NLL on the validation split, before -> after the temperature (under load: 2 shared cores); "
          "target: ECE after < before where kept")
    print(f"{'run':34} {'accuracy':>8} {'T':>7} {'ECE before':>11} {'ECE after':>10} {'NLL before':>11} "
          f"{'NLL after':>10} {'auto':>5} {'seconds':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if a.only in (None, "hymenoptera"):
            row("hymenoptera, probe", hymenoptera())
        if a.only in (None, "fashion"):
            data = skewed_fashion(root, keep=200)  # balanced: every class 200
            row(f"Fashion-MNIST 2000, scratch {a.epochs} ep", train(
                data, root / "fm", ["--recipe", "scratch", "--arch", "xresnet_tiny", "--epochs", str(a.epochs)]))


if __name__ == "__main__":
    main()
