"""Why a run errs: `imgclf interpret RUN`."""

from __future__ import annotations

import argparse

from .common import Help, add_device, check_run_arg, positive_int

STACK = ("imgclf.evaluate.interpret",)


def add(sub) -> None:
    p = sub.add_parser(
        "interpret", help="why does a trained run err? confusion matrix, top losses, features",
        description="Interpret RUN on its validation images (rebuilt from its config.json, the same seeded "
                    "split): confusion matrices, most confused pairs, per-class precision/recall/F1, top "
                    "losses, misclassified images, PCA and t-SNE of the pooled features, a model summary. "
                    "Prints the figures and writes them to RUN/interpret/ (replacing an earlier interpret) or to --out "
                    "(an earlier interpret's files there are overwritten only with --force).",
        formatter_class=Help,
    )
    p.add_argument("run", help="run directory written by `imgclf train`")
    p.add_argument("--data", help="other labelled images (class folders or a CSV, labelled as the run was); "
                                  "their validation split is used (default: the run's own data); images the "
                                  "run trained on (same bytes) are counted, and accuracy given without them")
    p.add_argument("--out", help="output folder (default RUN/interpret, replaced by each interpret)")
    p.add_argument("--force", action="store_true",
                   help="overwrite the figures of an earlier interpret in an --out folder of yours")
    p.add_argument("--k", type=int, default=9, help="images in the top-losses grid")
    p.add_argument("--min-val", type=int, default=1, help="least count of a most-confused pair")
    p.add_argument("--bs", type=positive_int, default=64)
    add_device(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


check = check_run_arg  # before torch is imported: a RUN that holds no model, said at once


def run(a: argparse.Namespace) -> None:
    from ..evaluate.interpret import FILES, check_interpret_dir, format_summary, interpret_run
    from ..rundir import read_json

    replacing = (check_interpret_dir(a.run, a.out, a.force) / "interpret.json").exists()  # before any work
    out = interpret_run(a.run, data=a.data, out=a.out, k=a.k, min_val=a.min_val, bs=a.bs, device=a.device,
                        progress=not a.quiet, force=a.force)
    print(format_summary(read_json(out / "interpret.json")))
    print(f"\n{len(FILES)} files -> {out}" + (" (replacing the earlier interpret)" if replacing else ""))
