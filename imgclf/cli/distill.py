"""Train a small student on a teacher run's soft targets: `imgclf distill TEACHER_RUN DATA --arch xresnet_tiny`."""

from __future__ import annotations

import argparse

from ..config import DISTILL_ALPHA, DISTILL_TEMPERATURE, ModelConfig
from .common import Help, T, add_data_flags, add_device, figures, learning_rate, smoothing
from .train import config

STACK = ("imgclf.train.distill",)


def add(sub) -> None:
    p = sub.add_parser(
        "distill", help="train a small student on a trained run's soft targets (knowledge distillation)",
        description="Knowledge distillation (Hinton et al. 2015): train --arch on DATA with the loss "
                    "alpha * T^2 * KL(teacher || student at temperature T) + (1 - alpha) * cross-entropy, the "
                    "teacher's probabilities computed once per training image (its own size and normalisation, "
                    "the image and its mirror). By default the same student also trains without the teacher "
                    "(same seed and batches) and both accuracies are printed and saved. Writes a normal run "
                    "directory: predict, evaluate and export take it as any run.",
        formatter_class=Help,
    )
    p.add_argument("teacher", help="the teacher's run directory (any single-label classifier; same classes as DATA)")
    p.add_argument("data", help="image folder (or a CSV of file,label[,is_valid]), read as `imgclf train` reads it")
    p.add_argument("--out", help="run directory (default runs/<data-name>-<arch>-distill; never overwritten: -2...)")
    add_data_flags(p.add_argument_group("data"))
    g = p.add_argument_group("distillation")
    g.add_argument("--temperature", type=float, default=DISTILL_TEMPERATURE,
                   help="softmax temperature T of both models")
    g.add_argument("--alpha", type=float, default=DISTILL_ALPHA,
                   help="weight of the teacher's term (the rest: cross-entropy on the labels); 0 = no teacher")
    g.add_argument("--no-compare", action="store_true",
                   help="skip training the same student without the teacher (halves the student's training time)")
    g = p.add_argument_group("student")
    g.add_argument("--arch", default="xresnet_tiny", help="the student's architecture (ours or any timm name)")
    g.add_argument("--weights", help="weights file (.safetensors/.pth) or URL to start the student from")
    g.add_argument("--no-pretrained", action="store_true", help="start a timm student from random weights")
    g.add_argument("--drop-rate", type=float, default=ModelConfig.drop_rate,
                   help="dropout before the classifier (default: the arch's own)")
    g.add_argument("--epochs", type=int, default=T.epochs,
                   help="epochs (default: 16 from scratch, 1 for a pretrained student)")
    g.add_argument("--lr", type=learning_rate, default=T.lr,
                   help="peak learning rate or 'auto' (default 8e-3 from scratch)")
    g.add_argument("--schedule", default=T.schedule, choices=["one_cycle", "cosine", "step", "constant"])
    g.add_argument("--opt", default=T.opt, choices=["adamw", "adam", "sgd", "rmsprop", "adagrad"])
    g.add_argument("--wd", type=float, default=T.wd, help="weight decay")
    g.add_argument("--mixup", type=float, default=T.mixup, help="MixUp alpha (0: off); blends labels and targets")
    g.add_argument("--cutmix", type=float, default=T.cutmix, help="CutMix alpha (0: off)")
    g.add_argument("--label-smoothing", type=smoothing, default=T.label_smoothing,
                   help="on the label term only (0: off, below 1)")
    g.add_argument("--clip", type=float, default=T.clip, help="gradient-norm clipping (0: off)")
    g.add_argument("--patience", type=int, default=T.patience, help="early-stopping patience on valid_loss")
    add_device(g, T.device)
    g.add_argument("--precision", default=T.precision, choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def check(a: argparse.Namespace) -> None:
    """Before torch is imported (`cli.main`): a TEACHER that holds no model, said at once."""
    from ..rundir import check_run

    check_run(a.teacher)


def run(a: argparse.Namespace) -> None:
    from ..train.distill import distill

    res = distill(config(a), a.teacher, temperature=a.temperature, alpha=a.alpha, compare=not a.no_compare,
                  progress=not a.quiet)
    m = res.metrics
    print(f"student {figures(m, res.learner.metrics)}  valid_loss {m['valid_loss']:.4f}  "
          f"fit {m['fit_seconds']:.1f}s  -> {res.run_dir}")
    t = m["teacher"]
    line = f"teacher accuracy {t['valid_accuracy']:.4f}"
    if "without_teacher" in m:
        w = m["without_teacher"]
        verdict = "distillation paid" if m["gain"] > 0 else "distillation did not pay here"
        line += f"  |  same student without it {w['accuracy']:.4f}: {m['gain']:+.4f} ({verdict})"
    print(line)
