"""Fashion-MNIST from scratch: the issue-5 target (>= 94.0% test accuracy within 10 minutes of training on
the reference 2-core CPU) and the regularisation table (with / without label smoothing, mixup, strong
augmentation, and TTA), each run through `imgclf.train.job.train` -- exactly what the CLI runs:

    imgclf train ../shared/datasets/fashion-mnist --arch xresnet_tiny --size 28 --crop-pct 1 --bs 256 \
        --epochs 18 --lr 8e-3 --augment pad=2,flip=1,rotate=0,zoom=1,warp=0,lighting=0.1 --label-smoothing 0.1

Test accuracy is on the official 10k test set (the `t10k` files, the validation split of `from_idx`), scored
again by `imgclf.infer.evaluate` from the exported run (plain and TTA, center + mirror).

    python -P bench/fashion_scratch.py                       # the recipe alone (the target)
    python -P bench/fashion_scratch.py --table --epochs 16   # the recipe and its ablations (16 epochs each)
    python -P bench/fashion_scratch.py --epochs 2 --set arch=xresnet_small   # variations
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from imgclf.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from imgclf.infer import evaluate
from imgclf.train.job import train

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fashion-mnist"

# the recipe the target is claimed for: a small ResNet at the images' own 28 px, the whole image as the
# validation view, one-cycle AdamW, label smoothing, light augmentation (pad-and-crop, flip, lighting)
RECIPE = {
    "arch": "xresnet_tiny", "size": 28, "crop_pct": 1.0, "bs": 256, "epochs": 18, "lr": 8e-3,
    "augment": "pad=2,flip=1,rotate=0,zoom=1,warp=0,lighting=0.1", "label_smoothing": 0.1, "mixup": 0.0,
    "schedule": "one_cycle",
}
# the ablation table: each changes one thing from a plain baseline (no smoothing, no mixup, same light aug)
BASE = {**RECIPE, "label_smoothing": 0.0}
VARIANTS = {
    "baseline (light aug, no smoothing, no mixup)": {},
    "+ label smoothing 0.1": {"label_smoothing": 0.1},
    "+ mixup 0.2": {"mixup": 0.2},
    "+ strong augmentation": {"augment": "strong"},
    "no augmentation": {"augment": "none"},
}


def config(spec: dict, data: Path, out: Path, device: str) -> RunConfig:
    return RunConfig(
        data=DataConfig(path=str(data), size=spec["size"], crop_pct=spec["crop_pct"], bs=spec["bs"],
                        augment=spec["augment"]),
        model=ModelConfig(arch=spec["arch"], pretrained=False),
        train=TrainConfig(recipe="scratch", epochs=spec["epochs"], lr=spec["lr"], schedule=spec["schedule"],
                          label_smoothing=spec["label_smoothing"], mixup=spec["mixup"], device=device),
        out=str(out),
    )


def run(name: str, spec: dict, data: Path, out: Path, device: str, progress: bool) -> dict:
    t0 = time.perf_counter()
    res = train(config(spec, data, out, device), progress=progress)
    ev = evaluate(res.run_dir, data, tta=True, progress=False)
    row = {
        "variant": name, "test_acc": ev["accuracy"], "tta_acc": ev["tta_accuracy"],
        "fit_s": res.metrics["fit_seconds"], "s_per_epoch": res.metrics["fit_seconds"] / spec["epochs"],
        "total_s": time.perf_counter() - t0, "kept": res.metrics.get("kept"), "spec": spec,
    }
    print(f"{name:48s} test {row['test_acc']:.4f}  tta {row['tta_acc']:.4f}  fit {row['fit_s']:.0f}s "
          f"({row['s_per_epoch']:.1f} s/epoch)  kept {row['kept']}", flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--table", action="store_true", help="also run the ablations (one run each)")
    p.add_argument("--epochs", type=int, help="override the epochs of every run")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path, help="write the rows here")
    p.add_argument("--progress", action="store_true")
    a = p.parse_args()
    over = {}
    for kv in a.set:
        k, v = kv.split("=", 1)
        if k not in RECIPE:
            sys.exit(f"--set {k}: not a recipe field ({', '.join(RECIPE)})")
        over[k] = type(RECIPE[k])(v) if not isinstance(RECIPE[k], str) else v
    if a.epochs:
        over["epochs"] = a.epochs
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"device {'cuda: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(run("recipe", {**RECIPE, **over}, a.data, Path(tmp) / "recipe", a.device, a.progress))
        if a.table:
            for i, (name, change) in enumerate(VARIANTS.items()):
                spec = {**copy.deepcopy(BASE), **over, **change}
                rows.append(run(name, spec, a.data, Path(tmp) / f"v{i}", a.device, a.progress))
    print("\n| run | test acc | TTA acc | fit s | s/epoch |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['test_acc']:.4f} | {r['tta_acc']:.4f} | {r['fit_s']:.0f} | "
              f"{r['s_per_epoch']:.1f} |")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
