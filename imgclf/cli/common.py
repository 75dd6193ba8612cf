"""What the commands share: the help formatter, the data flags, and checks on the user's paths."""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

from ..config import DataConfig, ModelConfig, TrainConfig
from ..errors import UserError

D, M, T = DataConfig(), ModelConfig(), TrainConfig()


class Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default only when it has one worth showing (not None, not an off switch)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action)


def add_data_flags(g) -> None:
    """The flags that say how DATA is read: the same for every command that loads a data set."""
    g.add_argument("--csv", help="CSV of file,label[,is_valid] with files relative to DATA")
    g.add_argument("--task", default=D.task, choices=["classify", "multi_label", "regression"],
                   help="what to predict: one class; several tags (space-separated in the CSV's label, or the same "
                        "image in several class folders); or a number (a CSV column, see --label-col)")
    g.add_argument("--label-col", help="the CSV column holding the labels or the regression target")
    g.add_argument("--label-re", help=r"regex on the file name; group 1 is the label, e.g. '^(.+)_\d+\.jpg$'")
    g.add_argument("--valid", help="name of the validation folder (default: valid or val, if present)")
    g.add_argument("--valid-pct", type=float, default=D.valid_pct, help="held-out fraction when no split exists")
    g.add_argument("--split", default=D.split, choices=["stratified", "random"],
                   help="that held-out split: stratified by class with byte-identical copies on one side, or plain "
                        "random (the split of runs written before 2026-11-30)")
    g.add_argument("--seed", type=int, default=D.seed, help="seed for the split, init and augmentation")
    g.add_argument("--size", type=int, default=D.size,
                   help="image size in pixels (default: the backbone's recommended size, 256 for the default; from "
                        "scratch, small images' own size)")
    g.add_argument("--crop-pct", type=float, default=D.crop_pct,
                   help="validation view: the center fraction of the presized image (default 0.875, ImageNet's; "
                        "1, the whole image, when a from-scratch model trains at small images' own size)")
    g.add_argument("--bs", type=int, default=D.bs, help="batch size")
    g.add_argument("--augment", default=D.augment,
                   help="training augmentation: a preset (none, light, default, strong) and/or name=strength "
                        "overrides, e.g. 'strong', 'default,noise=0.05,erase=0.25', 'flip=0,rotate=20'; names: "
                        "flip rotate zoom warp translate shear pad lighting saturation hue noise salt_pepper erase")
    g.add_argument("--workers", type=int, default=D.workers, help="decoding threads (0: one per core)")


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def add_inference_precision(p) -> None:
    """`--precision` for the commands that run a trained model (predict, evaluate)."""
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="the eager model's arithmetic (auto: fp32 on a CPU, as train's figures; bf16 autocast on a "
                        "GPU that has it)")


def expand_images(args: list[str]) -> list[Path]:
    """Files, folders (recursively) and globs to a sorted list of image paths; what they hold that is not an
    image (notes.txt, a dangling symlink...) is counted by kind in one warning line."""
    from ..data.sources import Unused, entry_kind, scan_images

    out: list[Path] = []
    unused = Unused()
    for a in args:
        if Path(a).exists():
            matches = [a]
        elif any(ch in a for ch in "*?["):
            matches = sorted(glob.glob(a, recursive=True))
        else:
            raise UserError(f"{a}: no such file or directory")
        for m in matches:
            kind = entry_kind(m) if m != a else "image"  # a path named outright: scan_images says what is wrong
            if kind in ("dir", "image"):
                found, left_out = scan_images(m)
                out += found
                unused.update(left_out)
            else:
                unused.add(kind, Path(m))
    unused.warn(" ".join(args))
    if not out:
        raise UserError(f"{' '.join(args)}: no images found")
    return list(dict.fromkeys(out))


def check_writable(path: str, force: bool) -> None:
    if Path(path).exists() and not force:
        raise UserError(f"{path}: already exists (pass --force to overwrite)")


def learning_rate(value: str) -> float | str:
    """`--lr`: a number or "auto"."""
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {value!r}") from None


def figures(m: dict, metrics) -> str:
    """The task's metrics of a result, in order: accuracy, or accuracy_multi/f1_multi (threshold), or mae/rmse;
    with its 95% interval where the result has `<name>_low`/`_high`: `accuracy 0.9673 (0.93-0.99, 153 images)`."""
    from ..train.metrics import format_figure

    names = [n for n, _ in metrics] + (["threshold"] if "threshold" in m else [])
    return "  ".join(format_figure(n, m[n], m.get(f"{n}_low"), m.get(f"{n}_high"), m.get("n_valid"))
                     for n in names if n in m)


EXTRAS = {"onnx": "export", "onnxruntime": "export", "onnxscript": "export", "fastapi": "serve", "uvicorn": "serve",
          "starlette": "serve", "multipart": "serve", "python_multipart": "serve"}


def missing_extra(e: ImportError) -> UserError | None:
    """A one-line error naming the pip extra when `e` is a missing optional dependency, else None (a real bug)."""
    top = (e.name or "").split(".")[0]
    if top not in EXTRAS:
        return None
    return UserError(f"this needs the {EXTRAS[top]} extra ({top} is missing): pip install 'imgclf[{EXTRAS[top]}]'")
