"""Benchmark: model compression on hymenoptera (distillation, pruning), and where distillation pays (Fashion-MNIST).
(1) distillation: a from-scratch student with and without a fine-tuned teacher; (2) magnitude pruning: sparsity
vs accuracy, speed and file size; (3) `--case fashion`: distillation from a small labelled transfer set.

(1) The teacher is the default `imgclf train` run on hymenoptera (EfficientNet-Lite0, ~0.96). The student
(`--arch`, default xresnet_tiny at `--size` 64 px) trains from scratch for `--epochs` with the teacher's soft
targets (T=4, alpha=0.9 unless given) and, in the same call, without them (alpha 0: same seed, init, batches,
augmentation); one pair per seed.
(2) The teacher and the distilled student of the first seed are pruned to each `--sparsity` (global L1 over the
conv and linear weights but the classifier), then fine-tuned `--prune-epochs` with the zeros kept. For each:
validation accuracy before, right after pruning and after the fine-tune; CPU images/s of the pruned model
(batch of 64, presized uint8 in, `Predictor.logits`); model.safetensors bytes raw and gzipped.

(3) `--case fashion`: where distillation pays, Hinton et al.'s small transfer set. The teacher (xresnet_tiny from
scratch on all 60,000 Fashion-MNIST training images, 28 px, bs 256, `--teacher-epochs`, or `--teacher RUN`) teaches
students from scratch that see only `--n-train` labelled images (n/10 per class, drawn per seed, written to a
temporary IDX folder beside the linked t10k files); with and without its soft targets, scored on the 10k test set.

Usage: python bench/compress.py [DATA] [--seeds 3] [--epochs 16] [--arch xresnet_tiny] [--size 64]
       [--alpha 0.9] [--sparsity 0 0.5 0.8] [--prune-epochs 1] [--skip-teacher-prune]
       python bench/compress.py --case fashion [--n-train 500 2000] [--epochs 20] [--teacher-epochs 3]
       [--teacher RUN] [--seeds 3] [--arch xresnet_tiny]
About 5 minutes on a quiet 2-core CPU with the defaults. The fashion case, measured on a shared 2-core CPU (3 seeds,
20 epochs): teacher 0.912; 500 images 0.820 with vs 0.789 alone (+0.031 +- 0.004 s.e.), 2000 images 0.887 vs 0.869
(+0.018 +- 0.003): it pays, every seed. Students ~10 minutes; the teacher's 3 epochs took 23 minutes of wall time
there (the last epoch alone ~13: 3-5 s a step against ~0.2 at first), so reuse one with `--teacher RUN`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from imgclf.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from imgclf.data.idx import read_idx, write_idx
from imgclf.infer import load_model
from imgclf.train.distill import TEMPERATURE, distill
from imgclf.train.job import train
from imgclf.train.prune import prune_run

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared/datasets/hymenoptera"
FASHION = HERE.parents[1] / "shared/datasets/fashion-mnist"


def images_per_second(run: Path, n: int = 64, repeats: int = 3) -> float:
    """CPU throughput of a run's model on a presized uint8 batch (decode excluded), best of `repeats`."""
    p = load_model(run, device="cpu")
    x = torch.randint(0, 256, (n, 3, p.presize, p.presize), dtype=torch.uint8)
    p.logits(x[:8])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        p.logits(x)
        best = min(best, time.perf_counter() - t)
    return n / best


def prune_table(name: str, run: Path, data: Path, sparsities: list[float], epochs: int, work: Path) -> None:
    print(f"\n## pruning {name}: {run.name}, {epochs} fine-tune epoch(s), one-cycle at 5e-4, zeros kept", flush=True)
    print(f"{'sparsity':>9}{'acc before':>12}{'acc pruned':>12}{'acc tuned':>11}{'img/s':>9}{'MB raw':>9}"
          f"{'MB gzip':>9}{'fit s':>8}")
    for s in sparsities:
        res = prune_run(run, data, amount=s, epochs=epochs, out=work / f"{name}-p{round(s * 100)}", progress=False)
        m = res.metrics
        print(f"{m['sparsity']:>9.3f}{m['before']['accuracy']:>12.4f}{m['after_prune']['accuracy']:>12.4f}"
              f"{m['accuracy']:>11.4f}{images_per_second(res.run_dir):>9.1f}{m['file']['bytes'] / 1e6:>9.2f}"
              f"{m['file']['gzip_bytes'] / 1e6:>9.2f}{m['fit_seconds']:>8.1f}", flush=True)


def _sd(v: list[float]) -> float:
    return statistics.stdev(v) if len(v) > 1 else 0.0


def verdict(rows: list[tuple[float, float]]) -> str:
    """Mean with/without and the paired gain against 2 standard errors over seeds."""
    w, o = [r[0] for r in rows], [r[1] for r in rows]
    mw, mo = statistics.mean(w), statistics.mean(o)
    gains = [x - y for x, y in rows]
    se = _sd(gains) / len(gains) ** 0.5
    word = ("pays" if mw - mo > 2 * se else "does NOT pay" if mw - mo < -2 * se else
            "is within the seed noise (|mean gain| <= 2 standard errors): no clear gain")
    return (f"distillation {word}: gain {mw - mo:+.4f} +- {se:.4f} (standard error), "
            f"{sum(g > 0 for g in gains)} of {len(gains)} seeds better with the teacher")


def fashion_subset(root: Path, n: int, seed: int, out: Path) -> Path:
    """An IDX folder with `n` training images of `root` (n/10 per class, drawn with `seed`) and its whole t10k
    test set (linked), named so the class names stay Fashion-MNIST's: the transfer set a student learns from."""
    images, labels = read_idx(next(root.glob("train-images-idx3-ubyte*"))), read_idx(next(root.glob(
        "train-labels-idx1-ubyte*")))
    rng = np.random.default_rng(seed)
    keep = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), n // 10, replace=False)
                                   for c in range(10)]))
    out.mkdir(parents=True)
    write_idx(out / "train-images-idx3-ubyte", images[keep])
    write_idx(out / "train-labels-idx1-ubyte", labels[keep])
    for f in root.glob("t10k-*"):
        (out / f.name).symlink_to(f.resolve())
    return out


def fashion_case(a: argparse.Namespace, work: Path) -> None:
    """Hinton et al.'s small transfer set: a teacher trained on all 60k Fashion-MNIST images; students from
    scratch on `--n-train` labelled images (stratified, drawn per seed) with and without its soft targets,
    scored on the official 10k test set."""
    t = time.perf_counter()
    if a.teacher:  # a run made earlier, e.g. `imgclf train FASHION --arch xresnet_tiny --bs 256 --epochs 3`
        teacher_run, acc = a.teacher, json.loads((a.teacher / "metrics.json").read_text())["accuracy"]
        print(f"teacher: {teacher_run}, test accuracy {acc:.4f}")
    else:
        tcfg = RunConfig(data=DataConfig(path=str(FASHION), bs=256, seed=0), model=ModelConfig(arch="xresnet_tiny"),
                         train=TrainConfig(epochs=a.teacher_epochs), out=str(work / "teacher"))
        res = train(tcfg, progress=False)
        teacher_run = res.run_dir
        print(f"teacher: xresnet_tiny from scratch on all 60,000 training images, 28 px, bs 256, {a.teacher_epochs} "
              f"epochs: test accuracy {res.metrics['accuracy']:.4f} ({time.perf_counter() - t:.0f} s)", flush=True)
    epochs = a.epochs if a.epochs is not None else 20
    print(f"\n## distillation on a small transfer set: student {a.arch} from scratch at 28 px, {epochs} epochs "
          f"one-cycle (bs 64, lr 8e-3, default augment), T={a.temperature}, alpha={a.alpha}; accuracy on the 10k "
          f"test set (best epoch by test loss, both arms alike)")
    print(f"{'n_train':>8}{'seed':>5}{'with teacher':>14}{'alone':>8}{'gain':>8}{'student fit s':>15}")
    for n in a.n_train:
        rows = []
        for seed in range(a.seeds):
            data = fashion_subset(FASHION, n, seed, work / f"fashion-n{n}-s{seed}")
            cfg = RunConfig(data=DataConfig(path=str(data), seed=seed), model=ModelConfig(arch=a.arch),
                            train=TrainConfig(epochs=epochs), out=str(work / f"student-n{n}-s{seed}"))
            m = distill(cfg, teacher_run, a.temperature, a.alpha, compare=True, progress=False).metrics
            rows.append((m["accuracy"], m["without_teacher"]["accuracy"]))
            print(f"{n:>8}{seed:>5}{m['accuracy']:>14.4f}{m['without_teacher']['accuracy']:>8.4f}{m['gain']:>+8.4f}"
                  f"{m['fit_seconds'] + m['without_teacher']['fit_seconds']:>15.1f}", flush=True)
        w, o = [r[0] for r in rows], [r[1] for r in rows]
        print(f"{n:>8} mean{statistics.mean(w):>14.4f}{statistics.mean(o):>8.4f}"
              f"{statistics.mean(w) - statistics.mean(o):>+8.4f}   (std {_sd(w):.4f} / {_sd(o):.4f})")
        print(f"{n:>8} images: {verdict(rows)}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--case", choices=["hymenoptera", "fashion"], default="hymenoptera",
                    help="hymenoptera: distillation + pruning on DATA; fashion: distillation on a small transfer set")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=None, help="student epochs (from scratch; 16, fashion 20)")
    ap.add_argument("--arch", default="xresnet_tiny")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--alpha", type=float, default=0.9)
    ap.add_argument("--temperature", type=float, default=TEMPERATURE)
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.0, 0.5, 0.8])
    ap.add_argument("--prune-epochs", type=int, default=1)
    ap.add_argument("--skip-teacher-prune", action="store_true", help="prune only the student (fast)")
    ap.add_argument("--n-train", type=int, nargs="+", default=[500, 2000], help="fashion: labelled images")
    ap.add_argument("--teacher-epochs", type=int, default=3, help="fashion: the teacher's epochs on all 60k")
    ap.add_argument("--teacher", type=Path, help="fashion: reuse this Fashion-MNIST run as the teacher")
    a = ap.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}; case {a.case}")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if a.case == "fashion":
            fashion_case(a, work)
            return
        epochs = a.epochs if a.epochs is not None else 16
        t = time.perf_counter()
        teacher = train(RunConfig(data=DataConfig(path=str(a.data)), out=str(work / "teacher")), progress=False)
        print(f"teacher: `imgclf train` defaults on {a.data}, accuracy {teacher.metrics['accuracy']:.4f} "
              f"({time.perf_counter() - t:.0f} s)", flush=True)

        print(f"\n## distillation: student {a.arch} from scratch at {a.size} px, {epochs} epochs one-cycle, "
              f"T={a.temperature}, alpha={a.alpha}, teacher targets cached (image + mirror)")
        print(f"{'seed':>5}{'with teacher':>14}{'alone':>8}{'gain':>8}{'teacher pass s':>16}{'student fit s':>15}")
        rows, first = [], None
        for seed in range(a.seeds):
            cfg = RunConfig(data=DataConfig(path=str(a.data), size=a.size, seed=seed),
                            model=ModelConfig(arch=a.arch), train=TrainConfig(epochs=epochs),
                            out=str(work / f"student-{seed}"))
            m = distill(cfg, teacher.run_dir, a.temperature, a.alpha, compare=True, progress=False).metrics
            rows.append((m["accuracy"], m["without_teacher"]["accuracy"]))
            first = first or Path(cfg.out)
            print(f"{seed:>5}{m['accuracy']:>14.4f}{m['without_teacher']['accuracy']:>8.4f}{m['gain']:>+8.4f}"
                  f"{m['teacher']['seconds']:>16.1f}{m['fit_seconds']:>15.1f}", flush=True)
        w, o = [r[0] for r in rows], [r[1] for r in rows]
        mw, mo = statistics.mean(w), statistics.mean(o)
        print(f" mean{mw:>14.4f}{mo:>8.4f}{mw - mo:>+8.4f}   (std {_sd(w):.4f} / {_sd(o):.4f}; "
              f"teacher {teacher.metrics['accuracy']:.4f})")
        print(f"here {verdict(rows)}")

        prune_table("student", first, a.data, a.sparsity, a.prune_epochs, work)
        if not a.skip_teacher_prune:
            prune_table("teacher", teacher.run_dir, a.data, a.sparsity, a.prune_epochs, work)
        print("\nDense kernels multiply zeros like any number: images/s does not rise with sparsity, and "
              "model.safetensors keeps its size; only the gzipped file shrinks.")


if __name__ == "__main__":
    main()
