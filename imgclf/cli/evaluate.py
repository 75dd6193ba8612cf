"""Score a run on labelled images: `imgclf evaluate RUN DATA`."""

from __future__ import annotations

import argparse

from .common import (
    add_backend,
    add_device,
    add_inference_precision,
    check_run_arg,
    check_writable,
    make_parent,
    positive_int,
)

STACK = ("imgclf.infer", "imgclf.train.metrics")


def add(sub) -> None:
    p = sub.add_parser("evaluate", help="score a trained run on labelled images",
                       description="The figures of RUN's task on DATA: class folders, a data set root whose "
                                   "valid/val split is used (the output names it; score a test/ beside it as "
                                   "DATA/test), or a CSV as the run trained from (every row is "
                                   "scored). Classes: accuracy, loss, balanced accuracy, macro F1, expected "
                                   "calibration error of predict's confidences (before -> after the run's "
                                   "temperature), per-class accuracy; tags: accuracy_multi "
                                   "and f1_multi at the run's threshold, per-tag F1; numbers: mae, rmse. "
                                   "Images RUN trained on (the same bytes, whatever their names) are counted, "
                                   "with a warning, and the figures given again without them.")
    p.add_argument("run")
    p.add_argument("data")
    p.add_argument("--label-re", help="regex on file names for the labels (default: the run's own --label-re when "
                                      "it was trained with one, else folder names; '' for folder names)")
    p.add_argument("--label-col", help="a CSV DATA's label column (default: the run's own --label-col)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--tta", action="store_true", help="also score test-time augmentation (center view + mirror), "
                                                      "beside the plain figures")
    p.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    p.add_argument("--bs", type=positive_int, default=64)
    add_device(p)
    add_inference_precision(p)
    add_backend(p)
    p.add_argument("--quiet", action="store_true")


_CLASS_LINE = ("balanced_accuracy", "macro_f1")
_CALIBRATION = ("ece", "ece_before", "temperature")


def calibration_text(res: dict, prefix: str = "", suffix: str = "") -> str:
    """`ECE 0.0820 -> 0.0301 (T=0.470, 15 bins)`: the expected calibration error before and after the run's
    temperature (what `predict`'s confidences are), or `ECE 0.0301 (T=1, ...)` for an uncalibrated run."""
    from ..train.calibrate import BINS

    after, before = res[f"{prefix}ece{suffix}"], res.get(f"{prefix}ece_before{suffix}")
    t = res.get("temperature", 1.0)
    return f"ECE {before:.4f} -> {after:.4f} (T={t:.3f}, {BINS} bins)" if before is not None else (
        f"ECE {after:.4f} (T={t:.3f}, {BINS} bins)")


def check(a: argparse.Namespace) -> None:
    """Before torch is imported (`cli.main`): --json and RUN, in run's order."""
    if a.json:
        check_writable(a.json, a.force)
    check_run_arg(a)


def run(a: argparse.Namespace) -> None:
    from ..infer import evaluate, load_model
    from ..infer.evaluate import run_labelling, scored_line
    from ..rundir import write_json
    from ..train.metrics import format_figure

    if a.json:
        check_writable(a.json, a.force)
    model = load_model(a.run, device=a.device, precision=a.precision, backend=a.backend)
    took = run_labelling(a.run, a.data, a.label_re, a.label_col)[2]  # evaluate reads DATA the same way
    if took:  # before the scoring: a file name the run's regex does not match fails there
        print(took)
    res = evaluate(model, a.data, label_re=a.label_re, bs=a.bs, progress=not a.quiet, tta=a.tta, label_col=a.label_col,
                   run_dir=a.run)
    # the task's plain figures (classes: accuracy, loss), then the single-label ones a skewed set cannot hide
    plain = [k for k, v in res.items() if isinstance(v, float) and not k.startswith("tta_")
             and not k.endswith(("_low", "_high", "_unseen")) and k not in _CLASS_LINE + _CALIBRATION]
    extra = [k for k in _CLASS_LINE if k in res]
    print("  ".join(format_figure(k, res[k], res.get(f"{k}_low"), res.get(f"{k}_high"), res["n"]) for k in plain)
          + f"  n {res['n']}")
    if extra:  # as `train` prints them: balanced accuracy, macro F1, then the calibration error
        print("  ".join(format_figure(k, res[k], res.get(f"{k}_low"), res.get(f"{k}_high"), res["n"])
                        for k in extra) + "  " + calibration_text(res))
    if a.tta:
        print("  ".join("tta " + format_figure(k, res["tta_" + k], res.get(f"tta_{k}_low"), res.get(f"tta_{k}_high"),
                                               res["n"])
                        for k in plain + extra if "tta_" + k in res)
              + (f"  tta {calibration_text(res, 'tta_')}" if "tta_ece" in res else "")
              + f"  ({' + '.join(res['tta_views'])})")
    if res.get("n_seen_in_training"):  # some were training images (a warning said so): the figures without them
        print("unseen only: " + "  ".join(
            format_figure(k, res[k + "_unseen"], res.get(f"{k}_unseen_low"), res.get(f"{k}_unseen_high"),
                          res["n_unseen"]) for k in plain + extra if k + "_unseen" in res)
              + (f"  {calibration_text(res, suffix='_unseen')}" if "ece_unseen" in res else "")
              + f"  n {res['n_unseen']} ({res['n_seen_in_training']} of {res['n']} were training images)")
    per_class = next((k for k in res if k.startswith("per_class_")), None)
    if per_class:
        print(f"{per_class.removeprefix('per_class_')} per {'tag' if 'f1' in per_class else 'class'}:")
        bounds = res.get(per_class + "_interval", {})
        for c, v in res[per_class].items():
            b = bounds.get(c)
            print(f"  {c}: {v:.4f}" + (f" ({b['low']:.2f}-{b['high']:.2f}, {b['n']} images)" if b else ""))
    scored = scored_line(res, a.run, a.data)
    if scored:  # a data set root: which of its folders the figures are of, last where it is seen
        print(scored)
    if a.json:
        write_json(make_parent(a.json), res)
