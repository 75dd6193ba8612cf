"""Predict labels of new images: `imgclf predict RUN IMAGES`."""

from __future__ import annotations

import argparse
import csv
import sys
import warnings
from pathlib import Path

from ..data.sources import displayable
from ..errors import UserError
from ..rundir import written_whole
from .common import (
    add_backend,
    add_device,
    add_inference_precision,
    check_outputs,
    check_run_arg,
    expand_images,
    make_parent,
    positive_int,
)

STACK = ("imgclf.infer", "imgclf.infer.predictor")


def add(sub) -> None:
    p = sub.add_parser("predict", help="predict labels of new images with a trained run",
                       description="Predict IMAGES (files, folders or globs) with the model in RUN.")
    p.add_argument("run", help="run directory written by `imgclf train`")
    p.add_argument("images", nargs="+", help="image files, folders (searched recursively) or globs")
    p.add_argument("--csv", help="write path,label,confidence rows to this CSV")
    p.add_argument("--probs", action="store_true",
                   help="add one probability column per class to the --csv (or printed) rows; --submission's "
                        "Id,Category has none")
    p.add_argument("--topk", type=int, metavar="K",
                   help="add the K best classes per image: columns label_1, prob_1, ... label_K, prob_K (multi-label: "
                        "the K likeliest tags, each its own probability)")
    p.add_argument("--plot", metavar="FILE.png",
                   help="draw each image beside a bar chart of its top-k (--topk, default 5), up to 16 images")
    p.add_argument("--submission", help="write the homework's Id,Category CSV here (Id: the file name without "
                                        "extension; rows sorted by Id, numerically when all Ids are numbers)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average the center view and its mirror")
    p.add_argument("--force", action="store_true", help="overwrite an existing --csv, --submission or --plot file")
    p.add_argument("--bs", type=positive_int, default=64)
    add_device(p)
    add_inference_precision(p)
    add_backend(p)
    p.add_argument("--quiet", action="store_true")


def check(a: argparse.Namespace) -> None:
    """Before torch is imported (`cli.main`): the flags, IMAGES listed once (`a.paths`, which `run` uses) and RUN,
    in run's order."""
    check_flags(a)
    a.paths = expand_images(a.images)
    check_run_arg(a)


def ahead(a: argparse.Namespace) -> None:
    """Before torch is imported, after `check`: start decoding `a.paths` in a second process at the run's
    presize, read from its model.json (data/ahead.py), while the model's stack loads on the other core."""
    import json
    from pathlib import Path

    from ..data import ahead as decoder

    run_dir = Path(a.run) if Path(a.run).is_dir() else Path(a.run).parent  # an exported file's run: its folder
    try:
        presize = int(json.loads((run_dir / "model.json").read_text())["presize"])
    except (OSError, ValueError, KeyError, TypeError):  # load_model says what is wrong with the run
        return
    decoder.start(a.paths, presize)


def run(a: argparse.Namespace) -> None:
    from ..infer import load_model
    from ..infer.predictor import check_submission_ids, missing_ids, submission_rows

    paths = getattr(a, "paths", None)  # checked and listed by `check` when run as a command
    if paths is None:
        check_flags(a)
    if a.topk is not None and a.topk < 1:
        raise UserError(f"--topk {a.topk}: must be at least 1")
    paths = paths or expand_images(a.images)
    if a.submission:
        check_submission_ids(paths)
    model = load_model(a.run, device=a.device, precision=a.precision, backend=a.backend)
    k = _check_topk(a, model.task, model.classes)
    preds, skipped = model.predict_files(paths, bs=a.bs, progress=not a.quiet, tta=a.tta)
    if not preds:  # each file was named as it was skipped; an empty CSV would read as success
        raise UserError(f"none of the {len(skipped)} image file(s) could be decoded: nothing predicted or written")
    if a.submission:
        with written_whole(make_parent(a.submission)) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([("Id", "Category"), *[(displayable(i), c) for i, c in submission_rows(preds)]])
        print(f"{len(preds)} predictions -> {a.submission}" + (f" ({len(skipped)} file(s) skipped)" if skipped else ""))
        if skipped:  # a Kaggle-style grader rejects a submission without a row for every test image
            warnings.warn(f"{a.submission} lacks {missing_ids(skipped)}; a grader may reject it: fix or replace "
                          "those files and predict again, or add their rows by hand", stacklevel=1)
    if model.task == "regression":
        header = ["path", model.classes[0]]
        rows = [[p.path, f"{p.value:.6g}"] for p in preds]
    else:
        fixed = ["path", "tags" if model.task == "multi_label" else "label", "confidence"]
        fixed += [f"{name}_{i}" for i in range(1, k + 1) for name in ("label", "prob")] if a.topk else []
        header = fixed[:3] + (prob_columns(model.classes, fixed) if a.probs else [])
        rows = [[p.path, p.label, f"{p.confidence:.6f}"] + ([f"{p.probs[c]:.6f}" for c in model.classes]
                                                             if a.probs else []) for p in preds]
        if a.topk:  # after the usual columns, which keep their places
            header += fixed[3:]
            rows = [row + [x for c, q in p.topk(k) for x in (c, f"{q:.6f}")]
                    for row, p in zip(rows, preds, strict=True)]
    table = [[displayable(cell) for cell in row] for row in [header, *rows]]
    if a.csv:
        with written_whole(make_parent(a.csv)) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(table)
        print(f"{len(rows)} predictions -> {a.csv}" + (f" ({len(skipped)} file(s) skipped)" if skipped else ""))
    elif not a.submission:
        csv.writer(sys.stdout).writerows(table)
    if skipped and (a.csv or not a.submission):  # the decoder named each file as it went; this is the total
        where = a.csv or "the CSV printed above"
        warnings.warn(f"{len(skipped)} of {len(paths)} image file(s) could not be decoded and are not in {where} "
                      "(each is named above)", stacklevel=1)
    if a.plot and preds:
        from ..infer.plot import MAX_PLOTTED, plot_topk

        fmt = Path(a.plot).suffix.lower().lstrip(".")  # the temporary file's name does not end in it
        with written_whole(make_parent(a.plot)) as tmp:
            plot_topk(preds, k).savefig(tmp, dpi=110, format=fmt)
        more = f" (the first {MAX_PLOTTED} of {len(preds)} predicted)" if len(preds) > MAX_PLOTTED else ""
        print(f"top-{k} of {min(len(preds), MAX_PLOTTED)} image(s) -> {a.plot}{more}", file=sys.stderr)


def check_flags(a: argparse.Namespace) -> None:
    """Before any work: the output files (`check_outputs`), and no flag that would be silently ignored: --probs
    and --topk add columns to the --csv (or printed) rows, which --submission alone does not write."""
    check_outputs(a.force, csv=a.csv, submission=a.submission, plot=a.plot)
    if a.submission and not a.csv:
        flag = "--probs" if a.probs else "--topk" if a.topk and not a.plot else None
        if flag:
            raise UserError(f"{flag} adds columns to --csv's rows, and --submission writes only Id,Category: "
                            f"add --csv FILE for them, or drop {flag}")


def _check_topk(a: argparse.Namespace, task: str, classes: list[str]) -> int:
    """The k of --topk / --plot (5 or the number of classes, when fewer), or a UserError when it means nothing.
    A --topk above the number of classes ranks them all, as the server and the Python API do (timm caps it too)."""
    if task == "regression" and (a.topk or a.plot or a.probs):
        flag = "--topk" if a.topk else "--plot" if a.plot else "--probs"
        raise UserError(f"{flag}: a regression run predicts one number; there are no classes to rank or give "
                        "probabilities of")
    if a.topk and a.topk > len(classes):
        print(f"--topk {a.topk}: the model has {len(classes)} classes; ranking all {len(classes)}", file=sys.stderr)
    return min(a.topk or 5, len(classes))


def prob_columns(classes: list[str], fixed: list[str]) -> list[str]:
    """The --probs column names: the class names as they are, or, when one of them is also a fixed column's name
    (a class called `path`, `label`, `prob_1`...), `prob_<class>` for every class, so that no header repeats
    (csv.DictReader keeps the last of two equal names) and the scheme is the same for all; said in one line."""
    taken = set(fixed)
    clash = sorted(taken.intersection(classes))
    if not clash:
        return list(classes)
    prefix = "prob_"
    while taken.intersection(prefix + c for c in classes):  # a class "1" beside --topk's prob_1: prob_prob_1
        prefix += "prob_"
    print(f"note: class name(s) {', '.join(clash)} also name fixed columns; the probability columns are named "
          f"{prefix}<class>", file=sys.stderr)
    return [prefix + c for c in classes]
