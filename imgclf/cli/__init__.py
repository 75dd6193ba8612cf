"""The `imgclf` command: thin over the Python API. User mistakes print one line and exit 2.

One module per command, each with `add(subparsers)`, `run(args)` and `STACK` (the modules its run imports, loaded
first by `load_stack`), and optionally `check(args)` (torch-free checks said before the imports) and `ahead(args)`
(torch-free work started before them); `COMMANDS` lists them in the order `imgclf --help` shows them. Flags that
several commands share live in `common.py`.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import importlib
import os
import signal
import sys
import warnings
from typing import NoReturn

from ..errors import Interrupted, UserError
from . import (
    datasets,
    distill,
    evaluate,
    export,
    inspect,
    interpret,
    models,
    predict,
    prune,
    report,
    serve,
    shard,
    train,
)
from .common import missing_extra
from .train import config

COMMANDS = {"train": train, "predict": predict, "evaluate": evaluate, "interpret": interpret, "inspect": inspect,
            "report": report, "export": export, "serve": serve, "distill": distill, "prune": prune, "models": models,
            "datasets": datasets, "shard": shard}

__all__ = ["COMMANDS", "config", "main", "parser"]


class _Parser(argparse.ArgumentParser):
    """argparse's parser, its mistakes said as every other user mistake is: one line, exit 2 (argparse printed the
    whole usage block above its line: a bad --size put 20 lines of flags between the user and what was wrong).
    `error` is argparse's documented hook for this; the command's subparsers are made of this class too."""

    def error(self, message: str):
        self.exit(2, f"imgclf: error: {message} (see `{self.prog} --help`)\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="imgclf", description="Turn a folder of images into an accurate image classifier.",
        epilog="examples:\n  imgclf train photos/\n  imgclf predict runs/photos new/ --csv preds.csv\n"
               "  imgclf evaluate runs/photos photos/val",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from .. import __version__

    p.add_argument("--version", action="version", version=f"imgclf {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS.values():
        module.add(sub)
    return p


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"imgclf: warning: {message}\n"


def _line_buffered(stream) -> None:
    """Python buffers stdout in blocks when it is a file or a pipe: `imgclf train DATA > log` showed the plan and
    the epochs only when the run ended (the hymenoptera run: 55 s of silence, then everything at once). Line by
    line, as on a terminal, a log says what runs while it runs."""
    try:
        stream.reconfigure(line_buffering=True)
    except (AttributeError, ValueError, OSError):  # not a plain text stream (a test's capture, a closed stream)
        pass


def load_stack(modules: tuple[str, ...]) -> None:
    """Torch, torchvision (which brings torch._dynamo) and timm leave ~400k objects that live until the process
    ends. Loaded with the cyclic collector on, Python scans them over and over as they arrive (0.5 s of `imgclf
    train`'s start here) and again at exit (about 1 s). So the collector pauses while they load, and `gc.freeze`
    (Python's documented way to exempt long-lived objects) takes them out of every later collection."""
    gc.disable()
    try:
        for name in modules:
            importlib.import_module(name)
    finally:
        gc.freeze()
        gc.enable()


def _terminate(signum, frame) -> None:
    """SIGTERM (docker stop, SLURM, systemd) outside a training loop, which has its own handler
    (train/checkpoint.py): the command stops as on Ctrl-C, its `finally` clauses run, and it exits 143."""
    raise Interrupted(signum)


def _interrupted(e: KeyboardInterrupt) -> int:
    """The line and the exit status of a command a signal stopped: 128 + its number (130 Ctrl-C, 143 SIGTERM), as
    a shell reports it. Under torchrun rank 0 alone says it: every rank received the signal."""
    signum = getattr(e, "signum", signal.SIGINT)
    if os.environ.get("RANK", "0") == "0":
        by = "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}"
        print(f"imgclf: interrupted{by}", file=sys.stderr)
    return 128 + signum


def command() -> NoReturn:
    """The `imgclf` command (and `python -m imgclf`): `main` on this process's command line, then `leave`; under a
    profiler or a tracer (`python -m cProfile -m imgclf`, coverage) an ordinary exit, which lets them write."""
    code = main()
    if sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(code)
    leave(code)


def leave(code: int) -> NoReturn:
    """End the `imgclf` process without the interpreter's teardown. By now every file the command wrote is closed
    (each is written in a `with`), and what is left is torch's stack: freed object by object, it took 0.5 s after
    the default job's last line (2-core Xeon), 4% of its wall time, and 1.3 s after a bare import without
    `load_stack`'s freeze. Exit handlers still run (multiprocessing's stops any worker left), then the streams are
    flushed, then the process exits with `code`."""
    atexit._run_exitfuncs()  # what the interpreter's own exit runs first; its teardown after that is what is skipped
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that left (`| head`), a stream already closed
            pass
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (None: this process's own) and return its exit status."""
    args = parser().parse_args(argv)
    own_process = argv is None  # the `imgclf` command itself, not a call from a long-lived Python process
    warnings.formatwarning = _one_line_warning  # the documented hook for how warnings print
    # PIL's own warning for a very large image names no file; data.decode warns again, naming it
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")
    _line_buffered(sys.stdout)
    on_term = signal.getsignal(signal.SIGTERM)
    try:
        command = COMMANDS[args.command]
        if own_process:  # a caller's process keeps its objects collectable: nothing frozen there
            if hasattr(command, "check"):  # torch-free mistakes (a RUN that is none): said before the imports
                command.check(args)
            if hasattr(command, "ahead"):  # work that needs no torch, started first: on the core the imports leave
                command.ahead(args)
            # SIGTERM as Ctrl-C from here on (the process the line above forked keeps the default, so that
            # stopping it stays a plain terminate): the run directory and the decode-ahead process are cleaned up
            signal.signal(signal.SIGTERM, _terminate)
            load_stack(command.STACK)
        command.run(args)
    except UserError as e:
        print(f"imgclf: error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:  # an optional extra not installed (export, serve): one line naming it
        err = missing_extra(e)
        if err is None:
            raise
        print(f"imgclf: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (`Interrupted` from the training loop says which)
        return _interrupted(e)
    except BrokenPipeError:  # `imgclf predict ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0
    finally:
        if own_process:
            signal.signal(signal.SIGTERM, on_term)
    return 0


if __name__ == "__main__":
    command()
