"""What the commands share: the help formatter, the data flags, and checks on the user's paths."""

from __future__ import annotations

import argparse
import glob
import math
import re
from pathlib import Path

from ..config import DataConfig, ModelConfig, TrainConfig
from ..errors import UserError
from ..rundir import check_can_make

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
    g.add_argument("--valid-pct", type=fraction, default=D.valid_pct,
                   help="held-out fraction when no split exists (between 0 and 1)")
    g.add_argument("--split", default=D.split, choices=["stratified", "random"],
                   help="that held-out split: stratified by class with byte-identical copies on one side, or plain "
                        "random (the split of runs written before 2026-11-30)")
    g.add_argument("--seed", type=int, default=D.seed, help="seed for the split, init and augmentation")
    g.add_argument("--size", type=positive_int, default=D.size,
                   help="image size in pixels (default: the backbone's recommended size, 256 for the default; from "
                        "scratch, small images' own size)")
    g.add_argument("--crop-pct", type=float, default=D.crop_pct,
                   help="validation view: the center fraction of the presized image (default 0.875, ImageNet's; "
                        "1, the whole image, when a from-scratch model trains at small images' own size)")
    g.add_argument("--bs", type=positive_int, default=D.bs, help="batch size")
    g.add_argument("--augment", default=D.augment,
                   help="training augmentation: a preset (none, light, default, strong) and/or name=strength "
                        "overrides, e.g. 'strong', 'default,noise=0.05,erase=0.25', 'flip=0,rotate=20'; names: "
                        "flip rotate zoom warp translate shear pad lighting saturation hue noise salt_pepper erase")
    g.add_argument("--workers", type=workers, default=D.workers, help="decoding threads (0: one per core)")


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def add_inference_precision(p) -> None:
    """`--precision` for the commands that run a trained model (predict, evaluate)."""
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="the eager model's arithmetic (auto: fp32 on a CPU, as train's figures; bf16 autocast on a "
                        "GPU that has it)")


def add_backend(p) -> None:
    """`--backend` for the commands that run a trained model (predict, evaluate, serve)."""
    p.add_argument("--backend", default="eager", choices=["eager", "onnx", "int8", "torchscript"],
                   help="eager: the run's weights in torch; onnx / int8 / torchscript: the file `imgclf export` wrote "
                        "into RUN (model.onnx, model.int8.onnx, model.ts)")


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


def check_run_arg(a: argparse.Namespace) -> None:
    """The `check` (`cli.main`: before torch is imported) of the commands whose first argument is RUN: one that holds
    no model (or, with --backend, no file for it) is said at once (`rundir.check_run`)."""
    from ..rundir import check_run

    check_run(a.run, getattr(a, "backend", "eager"))


def check_writable(path: str, force: bool, suffixes: tuple[str, ...] = ()) -> None:
    """Before any work: an output file that can be written (its missing folders are made by `make_parent` when it
    is written), not a folder, not overwritten without `force`, and of one of `suffixes` when given, so no
    traceback comes after minutes of predicting."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{path}: is a folder; give a file name")
    if suffixes and p.suffix.lower() not in suffixes:
        raise UserError(f"{path}: give a file ending in {', '.join(suffixes)}")
    if p.exists() and not force:
        raise UserError(f"{path}: already exists (pass --force to overwrite)")
    check_can_make(p)


def make_parent(path: str | Path) -> str | Path:
    """`path`, its folder made if missing (as export and report do)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return path


def check_outputs(force: bool, **outputs: str | None) -> None:
    """`check_writable` for each output flag given, and no two flags naming the same file (one would be lost)."""
    given = {flag: out for flag, out in outputs.items() if out}
    seen: dict[Path, str] = {}
    for flag, out in given.items():
        key = Path(out).resolve()
        if key in seen:
            raise UserError(f"--{seen[key]} and --{flag} both name {out}: one would overwrite the other")
        seen[key] = flag
        check_writable(out, force, PLOT_SUFFIXES if flag == "plot" else ())


PLOT_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")


def _int_in(value: str, lo: int, hi: int | None, what: str) -> int:
    """`value` as a whole number in [lo, hi]: argparse's one-line error instead of a traceback deep inside."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if n < lo or (hi is not None and n > hi):
        raise argparse.ArgumentTypeError(f"{what}, got {n}")
    return n


def positive_int(value: str) -> int:
    """A count that must be at least 1 (--bs)."""
    return _int_in(value, 1, None, "must be at least 1")


def port(value: str) -> int:
    """--port: 0 (any free one) to 65535."""
    return _int_in(value, 0, 65535, "a port is 0-65535 (0: any free one)")


def workers(value: str) -> int:
    """--workers: 0 (one per core) or a count of threads."""
    return _int_in(value, 0, None, "must be 0 (one per core) or more")


def _number(value: str, what: str = "a number") -> float:
    """`value` as a finite float (nan and inf pass float() and then fail deep inside torch)."""
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}") from None
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}")
    return x


def positive_float(value: str) -> float:
    """A quantity that must be above 0 (--budget: seconds)."""
    x = _number(value)
    if x <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value}")
    return x


def fraction(value: str) -> float:
    """--valid-pct: a fraction strictly between 0 and 1 (0 would validate on nothing, 1 train on nothing)."""
    x = _number(value)
    if not 0 < x < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (e.g. 0.2), got {value}")
    return x


def smoothing(value: str) -> float:
    """--label-smoothing: 0 (off) up to, not including, 1 (1 would make every target uniform)."""
    x = _number(value)
    if not 0 <= x < 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1 (0.1 is typical), got {value}")
    return x


def learning_rate(value: str) -> float | str:
    """`--lr`: a number above 0, or "auto"."""
    if value == "auto":
        return value
    x = _number(value, "a number or 'auto'")
    if x <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0 (e.g. 2e-3) or 'auto', got {value}")
    return x


DEVICES = "auto, cpu, cuda, cuda:N (e.g. cuda:1), mps"


def device(value: str) -> str:
    """--device: what `train.learner.pick_device` takes (whether CUDA is there is checked when it is used)."""
    if value in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d+", value):
        return value
    raise argparse.ArgumentTypeError(f"choose {DEVICES}; got {value!r}")


def add_device(g, default: str = "auto") -> None:
    """--device, as every command that runs a model takes it (a bad name is refused at parsing: torch's own error
    came as a traceback once the data had loaded)."""
    g.add_argument("--device", type=device, default=default, help=DEVICES)


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
