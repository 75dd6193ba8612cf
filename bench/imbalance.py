"""Benchmark: `--balance none|weights|sampler` on skewed versions of the shared data sets.

Two skewed sets are built in a temporary folder (links / small PNGs, never copies into the repo):
  - hymenoptera with bees cut to a tenth in train (124 ants, the first 12 bees by name; validation untouched:
    70 ants, 83 bees), the probe recipe's head (`recipes.probe_cv`: weight decay by 5-fold CV, L-BFGS) on
    cached features computed once (EfficientNet-Lite0 at its size, image + mirror; the skewed split is a subset
    of the full split's rows, so bench/calibration.py reuses the same cache). The probe is full-batch: under
    --balance sampler it uses the class weights (the sampler's expectation), so only none/weights differ there;
  - a Fashion-MNIST subset: 200 training images per class with Shirt cut to 20, validation the first 1000 of
    t10k (about 100 a class), trained from scratch (xresnet_tiny at 28 px, `--epochs`).
For each it prints accuracy, balanced accuracy and macro F1 (with 95% bootstrap bounds) and the minority
class's recall under each --balance, beside the target: balancing should raise the minority recall and the
balanced accuracy over `none`. The temperature is left off (--calibrate off) so only the balance differs.
Under each table, what `--balance auto` picks for that recipe (`samplers.choose_balance`: weights on the
pretrained probe, the sampler from scratch) and whether it is the mode with the best balanced accuracy.

Usage: python -P bench/imbalance.py [--only hymenoptera|fashion] [--epochs 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipes import run_train  # noqa: E402  (the benches' one way to run `imgclf train`, beside this file)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
MODES = ("none", "weights", "sampler")


def skewed_fashion(root: Path, per_class: int = 200, minority: str = "Shirt", keep: int = 20, n_valid: int = 1000
                   ) -> Path:
    """train/<class> with `per_class` images each (`minority` with `keep`), val/ the first `n_valid` of t10k."""
    from imgclf.data.idx import load_idx

    s = load_idx(SHARED / "fashion-mnist", n_train=per_class * 14, n_valid=n_valid)
    out = root / "fashion_skewed"
    for split, images, labels in (("train", s.train_images, s.train_labels), ("val", s.valid_images, s.valid_labels)):
        taken: dict[int, int] = {}
        for i, (img, y) in enumerate(zip(images.numpy(), labels.tolist(), strict=True)):
            cap = (keep if s.classes[y] == minority else per_class) if split == "train" else n_valid
            if taken.get(y, 0) >= cap:
                continue
            taken[y] = taken.get(y, 0) + 1
            d = out / split / s.classes[y].replace("/", "-")  # T-shirt/top: a folder name cannot hold "/"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(img)).save(d / f"{i}.png")
    return out


FEATURES = Path(tempfile.gettempdir()) / "imgclf_bench_hymenoptera_features.pt"  # outside the repo


def hymenoptera_features() -> dict:
    """Pooled features of hymenoptera (train center + flip, valid center) with the default backbone at its
    recommended size, its paths, labels and classes; computed once (minutes under load), then read back."""
    import torch

    if FEATURES.is_file():
        return torch.load(FEATURES)
    from imgclf.config import DataConfig, RunConfig
    from imgclf.models import recommended_size
    from imgclf.train.job import load_data
    from imgclf.train.vision import vision_learner

    cfg = RunConfig(data=DataConfig(path=str(SHARED / "hymenoptera")))
    cfg.data.size = recommended_size(cfg.model.arch)
    data = load_data(cfg, progress=False)
    learn = vision_learner(data, cfg.model.arch, progress=False)
    t = time.perf_counter()
    feats = {v: learn.cached_features(s, v.split("_")[1]) for v, s in
             (("train_center", "train"), ("train_flip", "train"), ("valid_center", "valid"))}
    out = {"x1": feats["train_center"][0], "x2": feats["train_flip"][0], "y": feats["train_center"][1],
           "xv": feats["valid_center"][0], "yv": feats["valid_center"][1], "classes": data.classes,
           "train_paths": [str(p) for p in data.train_paths], "size": data.size, "seconds": time.perf_counter() - t}
    torch.save(out, FEATURES)
    return out


def probe(x1, x2, y, n_classes: int, weights=None, seed: int = 42):
    """The probe recipe's head (as `recipes.probe_cv`): grouped 5-fold CV on image + mirror, refit on all."""
    import torch

    from imgclf.train.probe import select_probe

    n = len(y)
    return select_probe(torch.cat([x1, x2]), torch.cat([y, y]), n_classes, groups=torch.arange(n).repeat(2),
                        seed=seed, class_weights=weights)


def hymenoptera_table(keep: int = 12) -> None:
    import torch

    from imgclf.data.samplers import class_counts, class_weights, imbalance_ratio
    from imgclf.train.metrics import class_figures

    f = hymenoptera_features()
    bees = f["classes"].index("bees")
    bee_rows = sorted((p, i) for i, p in enumerate(f["train_paths"]) if int(f["y"][i]) == bees)[:keep]
    rows = torch.tensor(sorted([i for i in range(len(f["y"])) if int(f["y"][i]) != bees] + [i for _, i in bee_rows]))
    y = f["y"][rows]
    counts = class_counts(y, len(f["classes"]))
    res = {}
    for mode in ("none", "weights"):
        t = time.perf_counter()
        sel = probe(f["x1"][rows], f["x2"][rows], y, len(f["classes"]),
                    class_weights(counts) if mode == "weights" else None)
        logits = f["xv"] @ sel.fit.weight.T + sel.fit.bias
        m = class_figures(logits, f["yv"])
        m.update(accuracy=float((logits.argmax(1) == f["yv"]).float().mean()), classes=f["classes"],
                 imbalance_ratio=imbalance_ratio(counts), wall_seconds=time.perf_counter() - t)
        res[mode] = m
    table(f"hymenoptera, bees cut to {keep} in train, probe head on cached features ({f['size']} px; sampler = "
          "weights for a full-batch probe)", "bees", res, counts.tolist(), "probe")


def train(data: Path, out: Path, balance: str, flags: list[str]) -> dict:
    m, wall = run_train(data, out, "--balance", balance, "--calibrate", "off", *flags)
    m["wall_seconds"] = wall
    m["classes"] = json.loads((out / "model.json").read_text())["classes"]
    return m


def table(title: str, minority: str, results: dict[str, dict], counts: list[int] | None = None,
          recipe: str | None = None) -> None:
    none = results["none"]
    k = none["classes"].index(minority)
    print(f"\n{title}: imbalance ratio {none['imbalance_ratio']:.1f} in train; minority class {minority!r} "
          f"(under load: 2 shared cores)")
    print(f"{'--balance':10} {'accuracy':>9} {'balanced acc (95%)':>22} {'macro F1 (95%)':>22} "
          f"{'minority recall':>16} {'seconds':>8}  vs none (target: higher)")
    for mode, m in results.items():
        rec = m["class_recall"][k]
        vs = "" if mode == "none" else (
            f"recall {rec - none['class_recall'][k]:+.3f}, balanced acc "
            f"{m['balanced_accuracy'] - none['balanced_accuracy']:+.3f}")
        print(f"{mode:10} {m['accuracy']:9.4f} {m['balanced_accuracy']:8.4f} ({m['balanced_accuracy_low']:.3f}-"
              f"{m['balanced_accuracy_high']:.3f}) {m['macro_f1']:8.4f} ({m['macro_f1_low']:.3f}-"
              f"{m['macro_f1_high']:.3f}) {rec:16.4f} {m['wall_seconds']:8.0f}  {vs}")
    if counts is not None:
        from imgclf.data.samplers import choose_balance

        pick, why = choose_balance("auto", counts, recipe=recipe)
        best = max(results, key=lambda k: results[k]["balanced_accuracy"])
        print(f"--balance auto ({recipe}) picks {pick}: {why}\n  best balanced accuracy here: {best} -> auto "
              + ("agrees" if pick == best else "DISAGREES"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["hymenoptera", "fashion"])
    ap.add_argument("--epochs", type=int, default=8, help="Fashion subset: from-scratch epochs")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if a.only in (None, "hymenoptera"):
            hymenoptera_table()
        if a.only in (None, "fashion"):
            data = skewed_fashion(root)
            flags = ["--recipe", "scratch", "--arch", "xresnet_tiny", "--epochs", str(a.epochs)]
            res = {m: train(data, root / f"fm_{m}", m, flags) for m in MODES}
            counts = [res["none"]["counts"]["train"].get(c, 0) for c in res["none"]["classes"]]
            table(f"Fashion-MNIST subset (200/class, Shirt 20), scratch xresnet_tiny {a.epochs} epochs", "Shirt",
                  res, counts, "scratch")


if __name__ == "__main__":
    main()
