"""Export a run for deployment: `imgclf export RUN [--format onnx|torchscript] [--int8] [--out FILE]`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import UserError
from .common import Help, check_run_arg

STACK = ("imgclf.infer.export",)


def add(sub) -> None:
    p = sub.add_parser(
        "export", help="write the run's model as one ONNX or TorchScript file, preprocessing inside",
        description="Export RUN's model to one file that takes uint8 RGB images (batch, presize, presize, 3) and "
                    "returns the task's outputs (class probabilities, tag probabilities or numbers), with the "
                    "classes, task and sizes in its metadata. Checks it against the eager model on the run's "
                    "validation images (top-1 agreement, max |Δprob|) and records the figures in export.json "
                    "beside the file. Default file: RUN/model.onnx (RUN/model.int8.onnx with --int8, RUN/model.ts "
                    "for TorchScript). Predict with it: `imgclf predict RUN IMAGES --backend onnx|int8|torchscript`.",
        formatter_class=Help,
    )
    p.add_argument("run", help="run directory written by `imgclf train`")
    p.add_argument("--format", default="onnx", help="onnx or torchscript")
    p.add_argument("--int8", action="store_true",
                   help="ONNX with int8 weights and activations (static quantization calibrated on the run's training "
                        "images); accuracy before and after, size and speed go into export.json")
    p.add_argument("--out", help="file to write, e.g. deploy/model.onnx (default: inside RUN)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.add_argument("--data", help="the run's data folder when it has moved (the parity check and int8 calibration "
                                  "rebuild the run's split from it)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (17 or later)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors and warnings")


check = check_run_arg  # before torch is imported: a RUN that holds no model, said at once


def run(a: argparse.Namespace) -> None:
    from ..infer.export import FORMATS, default_path, export_model

    if a.out and a.format in FORMATS and (Path(a.out).is_dir() or a.out.endswith(("/", os.sep))):
        # a folder is no wrong suffix: say what is wrong, and the file name the user likely meant
        raise UserError(f"--out {a.out}: is a folder; give a file name, e.g. {default_path(a.out, a.format, a.int8)}")
    export_model(a.run, format=a.format, out=a.out, int8=a.int8, force=a.force, data=a.data, opset=a.opset,
                 progress=not a.quiet)
