"""Predict labels of new images: `imgclf predict RUN IMAGES`."""

from __future__ import annotations

import argparse
import csv
import sys

from .common import check_writable, expand_images


def add(sub) -> None:
    p = sub.add_parser("predict", help="predict labels of new images with a trained run",
                       description="Predict IMAGES (files, folders or globs) with the model in RUN.")
    p.add_argument("run", help="run directory written by `imgclf train`")
    p.add_argument("images", nargs="+", help="image files, folders (searched recursively) or globs")
    p.add_argument("--csv", help="write path,label,confidence rows to this CSV")
    p.add_argument("--probs", action="store_true", help="add one probability column per class")
    p.add_argument("--submission", help="write the homework's Id,Category CSV here (Id: the file name without "
                                        "extension; rows sorted by Id, numerically when all Ids are numbers)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average the center view and its mirror")
    p.add_argument("--force", action="store_true", help="overwrite an existing --csv or --submission file")
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")


def run(a: argparse.Namespace) -> None:
    from ..infer import load_model
    from ..infer.predictor import check_submission_ids, submission_rows

    for out in (a.csv, a.submission):
        if out:
            check_writable(out, a.force)
    paths = expand_images(a.images)
    if a.submission:
        check_submission_ids(paths)
    model = load_model(a.run, device=a.device)
    preds, skipped = model.predict_files(paths, bs=a.bs, progress=not a.quiet, tta=a.tta)
    if a.submission:
        with open(a.submission, "w", newline="") as f:
            csv.writer(f).writerows([("Id", "Category"), *submission_rows(preds)])
        print(f"{len(preds)} predictions -> {a.submission}" + (f" ({len(skipped)} file(s) skipped)" if skipped else ""))
    if model.task == "regression":
        header = ["path", model.classes[0]]
        rows = [[p.path, f"{p.value:.6g}"] for p in preds]
    else:
        header = ["path", "tags" if model.task == "multi_label" else "label", "confidence"]
        header += model.classes if a.probs else []
        rows = [[p.path, p.label, f"{p.confidence:.6f}"] + ([f"{p.probs[c]:.6f}" for c in model.classes]
                                                             if a.probs else []) for p in preds]
    if a.csv:
        with open(a.csv, "w", newline="") as f:
            csv.writer(f).writerows([header, *rows])
        print(f"{len(rows)} predictions -> {a.csv}" + (f" ({len(skipped)} file(s) skipped)" if skipped else ""))
    elif not a.submission:
        w = csv.writer(sys.stdout)
        w.writerows([header, *rows])
