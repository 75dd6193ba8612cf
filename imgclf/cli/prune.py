"""Magnitude pruning of a trained run into a new one: `imgclf prune RUN [DATA] --sparsity 0.5`."""

from __future__ import annotations

import argparse

from .common import Help, add_device, check_run_arg, positive_float, positive_int

STACK = ("imgclf.train.prune",)


def add(sub) -> None:
    p = sub.add_parser(
        "prune", help="zero the smallest weights of a run, fine-tune briefly, write a new run",
        description="Global magnitude pruning (L1, unstructured) of the conv and linear weights of RUN's model, "
                    "then a short fine-tune that keeps the zeros, written to a NEW run directory (never RUN) "
                    "with the sparsity and the accuracy before, right after pruning and after the fine-tune in "
                    "metrics.json. Honest note: dense kernels do not skip zeros, so the model is no faster, and "
                    "model.safetensors is no smaller; only a compressed copy is (gzip sizes in metrics.json).",
        formatter_class=Help,
    )
    p.add_argument("run", help="the run directory to prune (read only)")
    p.add_argument("data", nargs="?", help="its data (default: the path in RUN/config.json)")
    p.add_argument("--sparsity", type=float, default=0.5, help="fraction of the weights to zero, in [0, 1)")
    p.add_argument("--epochs", type=int, default=1, help="fine-tune epochs after pruning (0: none)")
    p.add_argument("--lr", type=positive_float, default=5e-4, help="peak learning rate of the one-cycle fine-tune")
    p.add_argument("--head", action="store_true", help="prune the classifier too (default: it stays dense)")
    p.add_argument("--out", help="new run directory (default RUN-pruned50; never overwritten: -2, -3...)")
    p.add_argument("--bs", type=positive_int, help="batch size (default: the run's)")
    add_device(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


check = check_run_arg  # before torch is imported: a RUN that holds no model, said at once


def run(a: argparse.Namespace) -> None:
    from ..train.prune import prune_run

    res = prune_run(a.run, a.data, amount=a.sparsity, epochs=a.epochs, lr=a.lr, out=a.out, bs=a.bs,
                    device=a.device, head=a.head, progress=not a.quiet)
    m = res.metrics
    key = next(k for k in ("accuracy", "accuracy_multi", "mae") if k in m)
    tuned = ("no fine-tune" if not a.epochs else "fine-tune not kept (it raised the validation loss)"
             if m["kept"] != "fine-tuned" else f"fine-tuned {m[key]:.4f} (after its last epoch, which is kept)")
    print(f"sparsity {m['sparsity']:.3f}  {key}: before {m['before'][key]:.4f}, pruned {m['after_prune'][key]:.4f}, "
          f"{tuned}  -> {res.run_dir}")
    f, o = m["file"], m["original_file"]
    print(f"model.safetensors {f['bytes'] / 1e6:.1f} MB as before ({o['bytes'] / 1e6:.1f}); gzipped "
          f"{f['gzip_bytes'] / 1e6:.1f} MB vs {o['gzip_bytes'] / 1e6:.1f}. Dense kernels do not skip zeros: no faster.")
