"""Benchmark: how long a command takes before it does anything (issue 14: target `imgclf --help` < 1 s).

Times, best of N warm runs each, in fresh processes: `imgclf --help`, `imgclf train --help` and the other
commands' `--help`, a bare `import imgclf`, and for scale `import torch` (what every command paid before the
imports were made lazy: `imgclf --help` took 5.5 s on a quiet machine, 8.4 s under load). Then lists the
heavy packages (torch, timm, matplotlib, ...) that building the parser imported: there should be none.

Usage: python bench/startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time

TARGET = 1.0  # seconds, issue 14
HEAVY = ("torch", "torchvision", "timm", "matplotlib", "numpy", "PIL", "safetensors", "fastapi", "onnx")


def imgclf_cmd() -> list[str]:
    """The installed `imgclf` script (what a user runs), else `python -m imgclf`."""
    exe = shutil.which("imgclf")
    return [exe] if exe else [sys.executable, "-m", "imgclf"]


def best_wall(cmd: list[str], repeats: int) -> float:
    """Best wall-clock seconds of `cmd` over `repeats` runs after one warm-up run (file cache warm)."""
    subprocess.run(cmd, capture_output=True, check=True)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        best = min(best, time.perf_counter() - t)
    return best


def heavy_imports() -> list[str]:
    """Heavy top-level packages in sys.modules after `imgclf.cli.parser()` in a fresh interpreter."""
    code = ("import sys, imgclf.cli; imgclf.cli.parser(); "
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return out.split()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()

    from imgclf.cli import COMMANDS

    cli = imgclf_cmd()
    rows = [("imgclf --help", cli + ["--help"]), ("imgclf --version", cli + ["--version"])]
    rows += [(f"imgclf {name} --help", cli + [name, "--help"]) for name in COMMANDS]
    rows += [("python -c 'import imgclf'", [sys.executable, "-c", "import imgclf"]),
             ("python -c 'import torch' (for scale)", [sys.executable, "-c", "import torch"])]
    print(f"best of {a.repeats} warm runs (wall seconds); target {TARGET:.1f} s for the imgclf commands")
    width = max(len(r[0]) for r in rows)
    for label, cmd in rows:
        s = best_wall(cmd, a.repeats)
        target = "" if "scale" in label else f"  (target < {TARGET:.1f} s: {'ok' if s < TARGET else 'OVER'})"
        print(f"  {label:<{width}}  {s:6.2f} s{target}")
    heavy = heavy_imports()
    print(f"heavy packages imported by building the parser: {', '.join(heavy) if heavy else 'none'} "
          "(target: none)")


if __name__ == "__main__":
    main()
