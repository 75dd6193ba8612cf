"""One process or two: the same `imgclf train` command with `--nproc 2` (torchrun, DDP over gloo on the CPU), on
this machine's cores split as 1 process x N threads against N processes x 1 thread. Two questions:

- equivalence: does the 2-process run reach the 1-process run's accuracy (within the noise of the validation
  set: two binomial standard errors)? Expected: yes, it steps through the same batches (each process takes half
  of each batch), only batch-norm statistics (per process, over half the batch) and augmentation draws differ.
- scaling: how much faster is it? On a CPU, DDP only pays where the single process could not use the cores
  well (small convolutions, Python overhead); it adds the gradient all-reduce per step and decodes the data
  once per process. On GPUs, one process per GPU is how training scales.

Cases (each run is a fresh `imgclf train` subprocess, so the seconds include start-up and data loading):
  hymenoptera  fine_tune recipe (8 head epochs on cached features, then 1 epoch of the whole EfficientNet-Lite0)
  fashion      xresnet_tiny from scratch, --epochs E on the first --n-train training images (IDX subset written
               to a temporary folder), scored on the first --n-valid test images

    python -P bench/distributed.py                          # both cases, 2 cores: 1x2 vs 2x1
    python -P bench/distributed.py --cases fashion --n-train 10000 --epochs 2
    python -P bench/distributed.py --cases hymenoptera --cores 2
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"


def idx_subset(src: Path, dst: Path, n_train: int, n_valid: int) -> Path:
    """The first n images of Fashion-MNIST's IDX files, as IDX files in `dst` (a folder named like the data)."""
    dst.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_valid)):
        for kind, header in (("images-idx3-ubyte", 16), ("labels-idx1-ubyte", 8)):
            name = f"{split}-{kind}"
            path = src / name if (src / name).exists() else src / f"{name}.gz"
            raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
            count = struct.unpack(">I", raw[4:8])[0]
            n_keep = min(n, count)
            item = (len(raw) - header) // count
            head = raw[:4] + struct.pack(">I", n_keep) + raw[8:header]
            (dst / name).write_bytes(head + raw[header:header + n_keep * item])
    return dst


def run(args: list[str], nproc: int, threads: int, out: Path) -> dict:
    """One `imgclf train` subprocess: its metrics.json and wall seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "imgclf", "train", *args, "--quiet", "--device", "cpu", "--out", str(out)]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    t = time.perf_counter()
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if res.returncode != 0:
        raise SystemExit(f"failed (exit {res.returncode}): {' '.join(cmd)}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
    m = json.loads((out / "metrics.json").read_text())
    return {"accuracy": m["accuracy"], "valid_loss": m["valid_loss"], "fit_seconds": m["fit_seconds"],
            "total_seconds": m["total_seconds"], "wall_seconds": wall, "n_valid": m["n_valid"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="hymenoptera,fashion")
    p.add_argument("--cores", type=int, default=2, help="1 process x CORES threads vs CORES processes x 1 thread")
    p.add_argument("--epochs", type=int, default=2, help="fashion: epochs from scratch")
    p.add_argument("--n-train", type=int, default=10000, help="fashion: training images")
    p.add_argument("--n-valid", type=int, default=10000, help="fashion: test images scored")
    p.add_argument("--json", help="write the rows here too")
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cases = {}
        if "hymenoptera" in a.cases:
            cases["hymenoptera fine_tune"] = [str(DATASETS / "hymenoptera"), "--recipe", "fine_tune"]
        if "fashion" in a.cases:
            data = idx_subset(DATASETS / "fashion-mnist", tmp / "fashion-mnist", a.n_train, a.n_valid)
            cases[f"fashion scratch {a.n_train // 1000}k x{a.epochs}ep"] = [
                str(data), "--arch", "xresnet_tiny", "--epochs", str(a.epochs), "--bs", "256"]
        for name, args in cases.items():
            one = run(args, 1, a.cores, tmp / f"{len(rows)}-one")
            many = run(args, a.cores, 1, tmp / f"{len(rows)}-many")
            se = math.sqrt(max(one["accuracy"] * (1 - one["accuracy"]), 1e-4) / one["n_valid"])
            for procs, r in ((f"1 x {a.cores} threads", one), (f"{a.cores} x 1 thread", many)):
                rows.append({"case": name, "processes": procs, **r})
            print(f"{name}: accuracy {one['accuracy']:.4f} (1 process) vs {many['accuracy']:.4f} ({a.cores} processes)"
                  f", difference {many['accuracy'] - one['accuracy']:+.4f}; target: within 2 SE = ±{2 * se:.4f} -> "
                  f"{'yes' if abs(many['accuracy'] - one['accuracy']) <= 2 * se else 'NO'}; "
                  f"fit {one['fit_seconds']:.1f}s vs {many['fit_seconds']:.1f}s "
                  f"(speed-up x{one['fit_seconds'] / max(many['fit_seconds'], 1e-9):.2f}), "
                  f"wall {one['wall_seconds']:.1f}s vs {many['wall_seconds']:.1f}s", flush=True)
    print()
    print("| case | processes x threads | accuracy | valid_loss | fit s | wall s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['case']} | {r['processes']} | {r['accuracy']:.4f} | {r['valid_loss']:.4f} | "
              f"{r['fit_seconds']:.1f} | {r['wall_seconds']:.1f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
