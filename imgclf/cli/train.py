"""Train a classifier: `imgclf train DATA`."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from ..config import DEFAULT_SIZE, DataConfig, ModelConfig, RunConfig, TrainConfig
from ..errors import UserError
from .common import (
    PRECISIONS,
    Help,
    M,
    T,
    add_data_flags,
    add_device,
    figures,
    learning_rate,
    positive_float,
    smoothing,
)

STACK = ("imgclf.train.job",)


def add(sub) -> None:
    p = sub.add_parser(
        "train", help="train a classifier on a folder of images",
        description="Train a classifier on DATA from a pretrained backbone: class folders (with train/ + "
                    "valid|val/ or a random split), a regex on file names (--label-re), or a CSV (--csv). By "
                    "default the recipe is chosen from the data (a probe on cached features, a fine-tune where "
                    "it pays) and explained; random weights (--no-pretrained, our own archs) train from "
                    "scratch. Writes a run directory with the model, its config, history, "
                    "metrics and plots.",
        formatter_class=Help,
    )
    p.add_argument("data", nargs="?", help="image folder, a CSV of file,label[,is_valid], or a known data set's "
                                           "name (`imgclf datasets`)")
    p.add_argument("--resume", metavar="RUN", help="go on from RUN's last checkpoint, with RUN's own settings "
                   "(config.json): give no DATA and no other training flag")
    p.add_argument("--ckpt-every", type=int, metavar="N", help="a checkpoint every N training steps, besides each "
                   "epoch's end (default: every 5 minutes of training; 0: epoch ends only)")
    p.add_argument("--out", help="run directory (default runs/<data-name>; never overwritten: -2, -3...)")
    add_data_flags(p.add_argument_group("data"))
    g = p.add_argument_group("model")
    g.add_argument("--arch", default=M.arch, help="architecture: the embedded default, ours (simple_cnn, "
                   "xresnet18/34/50: from scratch) or any timm name")
    g.add_argument("--weights", help="weights file (.safetensors/.pth) or URL to start from")
    g.add_argument("--no-pretrained", action="store_true", help="start from random weights")
    g.add_argument("--drop-rate", type=float, default=M.drop_rate,
                   help="dropout before the classifier (default: the arch's own)")
    g = p.add_argument_group("training")
    g.add_argument("--recipe", default=T.recipe, choices=["auto", "probe", "fine_tune", "scratch"],
                   help="auto: probe on cached features, fine-tune only where it pays; probe: the probe only; "
                        "fine_tune: head then whole model, fixed epochs; scratch: the whole model from random weights "
                        "for --epochs (the default for --no-pretrained and our own archs)")
    g.add_argument("--budget", type=positive_float, default=T.budget, help="seconds for the auto recipe, planned and "
                   "printed before it runs (default: 60 s + 0.25 s per training image, at most 600 s)")
    g.add_argument("--selection", default=T.selection, choices=["cv", "valid"],
                   help="auto recipe: choose size, weight decay and whether to keep a fine-tune by cross-validation "
                        "on the training split (cv; validation is scored once, at the end) or on the validation "
                        "split itself (valid: the old behaviour, for comparisons)")
    g.add_argument("--max-epochs", type=int, default=T.max_epochs, help="auto recipe: most fine-tune epochs")
    g.add_argument("--epochs", type=int, default=T.epochs,
                   help="epochs of whole-model training (default: fine_tune 1 after the head, scratch 16)")
    g.add_argument("--freeze-epochs", type=int, default=T.freeze_epochs,
                   help="fine_tune recipe: head-only epochs first (on cached features: well under a second each)")
    g.add_argument("--lr", type=learning_rate, default=T.lr,
                   help="peak learning rate, or 'auto' (lr_find's valley); default 2e-3 fine-tuning, 8e-3 from scratch")
    g.add_argument("--schedule", default=T.schedule, choices=["one_cycle", "cosine", "step", "constant"],
                   help="learning-rate schedule of whole-model training: one-cycle, warmup + cosine decay, step "
                        "decay (x0.1 at 50%% and 75%%), or flat")
    g.add_argument("--opt", default=T.opt, choices=["adamw", "adam", "sgd", "rmsprop", "adagrad"])
    g.add_argument("--wd", type=float, default=T.wd, help="weight decay")
    g.add_argument("--wd-mode", default=T.wd_mode, choices=["decoupled", "l2"],
                   help="decoupled (AdamW's: weights shrink apart from the gradient step) or l2 (added to the "
                        "gradient, so Adam rescales it); default: adamw decoupled, the other optimizers l2")
    g.add_argument("--mixup", type=float, default=T.mixup, help="MixUp alpha (0: off; 0.2-0.4 typical)")
    g.add_argument("--cutmix", type=float, default=T.cutmix, help="CutMix alpha (0: off; 1.0 typical)")
    g.add_argument("--label-smoothing", type=smoothing, default=T.label_smoothing,
                   help="classification only (0: off, below 1)")
    g.add_argument("--progressive", type=float, default=T.progressive, metavar="FRAC",
                   help="progressive resizing: training batches start at FRAC x --size and grow to --size by "
                        "half-way (0: off; default: the from-scratch recipe's, off when fine-tuning)")
    g.add_argument("--loss", default=T.loss, choices=["auto", "mse", "l1"],
                   help="regression loss (auto: mse); classes and tags use (binary) cross-entropy")
    g.add_argument("--clip", type=float, default=T.clip, help="gradient-norm clipping (0: off)")
    g.add_argument("--patience", type=int, default=T.patience, help="early-stopping patience on valid_loss")
    g.add_argument("--valid-every", type=int, default=T.valid_every, metavar="N",
                   help="validate every Nth epoch and the last (default: every epoch; a from-scratch run the "
                        "planner chose: 4 times, as nothing is chosen on validation there)")
    add_device(g, T.device)
    g.add_argument("--precision", default=T.precision, choices=PRECISIONS)
    g.add_argument("--compile", action="store_true", default=T.compile,
                   help="torch.compile the training step: faster steps after a compile of a minute or so (CPU: "
                        "needs a C compiler); pays on long runs and GPUs")
    g.add_argument("--init", default=T.init, choices=["default", "lsuv"],
                   help="weight init of a from-scratch model: the arch's own, or LSUV on the first batch "
                        "(unit output std per layer; skipped with a warning on pretrained weights)")
    g.add_argument("--calibrate", default=T.calibrate, choices=["auto", "on", "off"],
                   help="temperature scaling of the class probabilities, fitted on selection data (never the "
                        "reported validation images); auto: kept when it lowers validation NLL")
    g.add_argument("--balance", default=T.balance, choices=["auto", "none", "weights", "sampler"],
                   help="class imbalance: inverse-frequency class weights in the loss, or a sampler drawing "
                        "classes evenly; auto: from a largest/smallest class ratio of 3, weights for the "
                        "probe or a fine-tune of a pretrained body, the sampler from scratch")
    g.add_argument("--accum", type=int, default=T.accum, metavar="K",
                   help="gradient accumulation: step the optimizer every K batches (an effective batch of K x --bs)")
    g.add_argument("--nproc", type=int, metavar="N", help="train in N processes with DistributedDataParallel "
                   "(runs `torchrun --standalone --nproc_per_node N -m imgclf train ...`; gloo on the CPU, nccl on "
                   "CUDA); --bs stays the batch of one step, shared by the processes")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars or per-phase lines (the plan, decisions, warnings and figures still print)")
    _DEFAULTS.update(vars(p.parse_args([])))


_DEFAULTS: dict = {}  # every flag's default: a resume refuses flags that differ from them
_RESUME_KEEPS = {"resume", "quiet", "command", "func", "nproc"}


def config(a: argparse.Namespace) -> RunConfig:
    def pick(kind, **over):
        vals = {f.name: getattr(a, f.name) for f in fields(kind) if hasattr(a, f.name)}
        return kind(**{**vals, **over})

    return RunConfig(
        data=pick(DataConfig, path=a.data),
        model=pick(ModelConfig, pretrained=not a.no_pretrained),
        train=pick(TrainConfig, clip=a.clip or None),
        out=a.out,
    )


def launch(nproc: int, device: str = "auto") -> None:
    """`--nproc N`: this same command again under torchrun, N processes on this machine. On the CPU each process
    gets its share of the cores as threads.

    torchrun's agent runs in this process (`torch.distributed.run.run`, what `python -m torch.distributed.run`
    calls), so that a stop ends as it does in one process. The workers run in sessions of their own: the
    terminal's Ctrl-C, or a SIGTERM to this process, reaches the agent alone, which sends it once to each worker
    (each finishes its step, checkpoints, rank 0 says how to resume) and then raises `SignalException`: caught
    here, it becomes the exit status 128 + the signal's number (130, 143), not a traceback and status 1 as when
    this process exec'd into torchrun. A worker that fails gives its own status (it printed its error)."""
    import logging
    import os
    import signal

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if nproc < 1:
        raise UserError(f"--nproc {nproc}: give a number of processes >= 1")
    argv = sys.argv[1:]
    if "train" not in argv:
        raise UserError("--nproc relaunches the `imgclf train` command line: run it from a shell, or start "
                        "`torchrun --nproc_per_node N -m imgclf train ...` yourself")
    rest, skip = [], False
    for tok in argv[argv.index("train") + 1:]:
        if skip:
            skip = False
        elif tok == "--nproc":
            skip = True
        elif not tok.startswith("--nproc="):
            rest.append(tok)
    cuda = device != "cpu" and not device.startswith("cpu")
    if "OMP_NUM_THREADS" not in os.environ and not (cuda and _cuda_available()):
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))  # the workers inherit it
    # the agent traps these signals for good; this process gets its own handlers back when it returns
    trapped = [getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT") if hasattr(signal, n)]
    handlers = {sig: signal.getsignal(sig) for sig in trapped}
    sys.stdout.flush()
    # the agent's log lines ("Received 2 death signal", "Sending process N closing signal SIGINT", "failed
    # (exitcode: 2) local_rank: 0 ...") repeat what the workers said; a worker a signal ended is told below
    logging.disable(logging.ERROR)
    try:
        run(parse_args(["--standalone", f"--nproc_per_node={nproc}", "-m", "imgclf", "train", *rest]))
    except SignalException as e:
        raise SystemExit(128 + int(e.sigval)) from None
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        if failure.exitcode < 0:  # ended by a signal (the OOM killer, kill -9): nobody said so
            print(f"imgclf: error: the process of rank {rank} was ended by {failure.signal_name()}", file=sys.stderr)
            raise SystemExit(128 - failure.exitcode) from None
        raise SystemExit(failure.exitcode) from None
    finally:
        logging.disable(logging.NOTSET)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def check(a: argparse.Namespace) -> None:
    """Before torch is imported (`cli.main`): a --resume folder that is no run of `imgclf train`, said at once."""
    from ..rundir import check_resumable

    if a.resume:
        check_resumable(a.resume)


def ahead(a: argparse.Namespace) -> None:
    """Start decoding DATA's images in a second process before torch is imported (data/ahead.py; `cli.main` calls
    this before it loads `STACK`, ~2 s on one core), where the job's first
    presize is known from the flags: a fresh single-process run on a folder of images, pretrained, at --size or
    the default backbone's size. Anything else (a CSV, a resume, from scratch, another arch without --size, several
    processes) decodes as it always did."""
    import os

    if (a.resume or not a.data or a.csv or str(a.data).lower().endswith(".csv") or a.no_pretrained
            or a.recipe == "scratch" or (a.nproc or 1) != 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1
            or (a.size is None and a.arch != ModelConfig.arch)):
        return
    from ..data import ahead
    from ..data.decode import CROP_PCT

    # the backbone's own weights (not --weights): its graph's features at that size can be computed ahead too
    ahead.default_start(a.data, a.size, a.crop_pct or CROP_PCT, DEFAULT_SIZE,
                        a.arch if a.weights is None and a.recipe in ("auto", "probe") else None)


def run(a: argparse.Namespace) -> None:
    from ..train import distributed as dist
    from ..train.job import train

    if a.nproc and a.nproc != 1 and not dist.launched():
        launch(a.nproc, a.device)
        return
    if a.accum < 1:
        raise UserError(f"--accum {a.accum}: give a whole number of batches >= 1")
    if a.resume:
        given = [k for k, v in vars(a).items() if k not in _RESUME_KEEPS and k in _DEFAULTS and v != _DEFAULTS[k]]
        if given:
            names = ", ".join("DATA" if k == "data" else "--" + k.replace("_", "-") for k in given)
            raise UserError(f"--resume {a.resume} trains with the run's own settings (its config.json): drop {names}")
        res = train(progress=not a.quiet, resume=a.resume)
    else:
        if not a.data:
            raise UserError("give DATA (an image folder or a CSV), or --resume RUN")
        res = train(config(a), progress=not a.quiet)
    if not dist.is_main():  # under torchrun: rank 0 prints the figures
        return
    from ..rundir import log_to

    with log_to(res.run_dir / "train.log"):  # the log ends as the console does: with the figures
        _print_figures(res)


def _print_figures(res) -> None:
    m = res.metrics
    kept = f"  (kept {m['kept']})" if m.get("kept") else ""
    before = m.get("earlier_sessions_seconds")  # a resumed run: the stopped sessions' time
    earlier = f" (+{before:.0f}s in earlier sessions)" if before else ""
    print(f"{figures(m, res.learner.metrics)}  valid_loss {m['valid_loss']:.4f}  "
          f"fit {m['fit_seconds']:.1f}s  total {m['total_seconds']:.1f}s{earlier}{kept}  -> {res.run_dir}")
    if "balanced_accuracy" in m:  # single-label runs: the figures a skewed split cannot hide (train/metrics.py)
        from ..train.metrics import format_figure

        both = [format_figure(k, m[k], m.get(f"{k}_low"), m.get(f"{k}_high"))
                for k in ("balanced_accuracy", "macro_f1")]
        print(f"{'  '.join(both)}  ECE {m['ece']:.4f} (T={m['temperature']:.3f})")
    from ..rundir import read_json
    from ..train.trust import validation_advice

    recipe = res.run_dir / "recipe.json"  # a small validation split: the cross-validated figure beside it
    advice = validation_advice(m, read_json(recipe) if recipe.is_file() else None)
    for line in advice["lines"] if advice else []:
        print(line)


