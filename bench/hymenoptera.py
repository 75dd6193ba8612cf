"""Benchmark: `imgclf train ../shared/datasets/hymenoptera` (defaults) beside fastai and a plain PyTorch loop.

Runs the three jobs one after another on this machine, each in its own process, and prints their
validation accuracy, fit and total seconds, and the ratios the foundation issue targets:
  - imgclf accuracy >= 0.95;
  - imgclf fit time <= 0.5 x fastai `fine_tune(2)` (Resize(256) + aug_transforms(size=224), bs 64);
  - imgclf seconds per unfrozen epoch at 224 px <= the plain torch loop's (same model and size;
    bf16 + channels_last, the fastest plain loop; its tutorial fp32 form with --fp32-peer). Epoch
    seconds include validation on both sides.

Usage: python bench/hymenoptera.py [DATA] [--skip-fastai] [--fp32-peer]
fastai comes from `pip install -e ".[bench]"`.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared/datasets/hymenoptera"


def run(cmd: list[str]) -> tuple[float, str]:
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return time.perf_counter() - t, p.stdout


def ours(data: Path, *flags: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        wall, _ = run([sys.executable, "-m", "imgclf", "train", str(data), "--out", str(out), "--quiet", *flags])
        m = json.loads((out / "metrics.json").read_text())
        rows = list(csv.DictReader(open(out / "history.csv")))
        cfg = json.loads((out / "config.json").read_text())
    unfrozen = [float(r["seconds"]) for r in rows if r["phase"] == "unfrozen"]
    return {"name": f"imgclf {' '.join(flags) or '(defaults)'}", "accuracy": m["accuracy"],
            "fit_seconds": m["fit_seconds"],
            "total_seconds": wall, "epoch_seconds": unfrozen,
            "recipe": f"{cfg['resolved'].get('recipe')} (kept {m.get('kept')}), size {cfg['resolved']['size']}"}


def peer(script: str, *args: str) -> dict:
    wall, out = run([sys.executable, str(HERE / "peers" / script), *args])
    res = json.loads(out.strip().splitlines()[-1])
    res["total_seconds"] = wall
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--skip-fastai", action="store_true")
    ap.add_argument("--fp32-peer", action="store_true", help="also run the tutorial's fp32 torch loop (slow)")
    a = ap.parse_args()

    rows = [ours(a.data)]
    print(json.dumps(rows[-1]), flush=True)
    rows.append(ours(a.data, "--recipe", "fine_tune", "--size", "224"))  # unfrozen epochs at the peers' size
    print(json.dumps(rows[-1]), flush=True)
    t = peer("torch_hymenoptera.py", str(a.data), "--channels-last", "--bf16", "--epochs", "2")
    rows.append({"name": "torch loop bf16+CL", "accuracy": t["accuracy"], "fit_seconds": t["fit_seconds"],
                 "total_seconds": t["total_seconds"], "epoch_seconds": t["epoch_seconds_with_valid"],
                 "recipe": "2 full epochs"})
    print(json.dumps(rows[-1]), flush=True)
    if a.fp32_peer:
        t = peer("torch_hymenoptera.py", str(a.data), "--epochs", "2")
        rows.append({"name": "torch loop fp32", "accuracy": t["accuracy"], "fit_seconds": t["fit_seconds"],
                     "total_seconds": t["total_seconds"], "epoch_seconds": t["epoch_seconds_with_valid"],
                     "recipe": "2 full epochs"})
        print(json.dumps(rows[-1]), flush=True)
    if not a.skip_fastai:
        f = peer("fastai_hymenoptera.py", str(a.data))
        rows.append({"name": "fastai fine_tune(2)", "accuracy": f["accuracy"], "fit_seconds": f["fit_seconds"],
                     "total_seconds": f["total_seconds"], "epoch_seconds": [], "recipe": f["epochs"]})
        print(json.dumps(rows[-1]), flush=True)

    print(f"\n{'job':<22}{'accuracy':>10}{'fit s':>9}{'total s':>9}  epoch s (unfrozen)   recipe")
    for r in rows:
        ep = ", ".join(f"{s:.1f}" for s in r["epoch_seconds"])
        print(f"{r['name']:<22}{r['accuracy']:>10.4f}{r['fit_seconds']:>9.1f}{r['total_seconds']:>9.1f}  "
              f"{ep:<20} {r['recipe']}")
    me = rows[0]
    for r in rows[2:]:
        print(f"imgclf / {r['name']}: fit x{me['fit_seconds'] / r['fit_seconds']:.2f}, "
              f"total x{me['total_seconds'] / r['total_seconds']:.2f}"
              + (f", unfrozen epoch at 224 px x{rows[1]['epoch_seconds'][0] / min(r['epoch_seconds']):.2f}"
                 if rows[1]["epoch_seconds"] and r["epoch_seconds"] else ""))


if __name__ == "__main__":
    main()
