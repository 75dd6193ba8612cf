"""One self-contained HTML page of a run: `imgclf report RUN`."""

from __future__ import annotations

import argparse

from .common import add_device, check_run_arg, check_writable

STACK = ("imgclf.evaluate.report",)


def add(sub) -> None:
    p = sub.add_parser(
        "report", help="one self-contained HTML page of a trained run",
        description="Write RUN/report.html: config, recipe, history, loss and lr_find curves, data counts, "
                    "confusion matrix, per-class scores, most confused pairs, top losses, features and model "
                    "summary, images embedded (no network needed). Runs `interpret` first when RUN/interpret/ "
                    "has no interpret.json. Prints the report's path.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run", help="run directory written by `imgclf train`")
    p.add_argument("--out", help="HTML file (default RUN/report.html)")
    p.add_argument("--force", action="store_true", help="replace an existing report")
    p.add_argument("--data", help="labelled images for the interpret step, when it has to run and the run's "
                                  "own data is not there (as for `imgclf interpret --data`)")
    add_device(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


check = check_run_arg  # before torch is imported: a RUN that holds no model, said at once


def run(a: argparse.Namespace) -> None:
    from ..evaluate.report import report_path, write_report

    path = report_path(a.run, a.out)
    check_writable(str(path), a.force)
    print(write_report(a.run, path, force=True, data=a.data, device=a.device, progress=not a.quiet))
