"""Checkpoints: everything a killed run needs to go on exactly where it stopped, in one file written atomically.

`RUN/checkpoint.safetensors` holds the tensors (the model, the optimizer's moments, each callback's tensors such
as save-best's weights, the RNG states as byte tensors) and, in its metadata, one JSON document with the rest:
where the run stands (fit, epoch, step), the optimizer's settings, the loader's position, every callback's
`state_dict()`, the history, Python's and NumPy's RNG states. Loading never unpickles. One file means one
rename: a `kill -9` at any moment leaves the previous checkpoint or the new one (temporary file, fsync, rename).

Each owner says what it needs (`Callback.state_dict`, `BatchLoader.state_dict`, the optimizer's own); the
`Checkpointer` only gathers them. A job is a sequence of fits (fine_tune: the head's, then the whole model's);
fits are counted, so a resumed job replays its code, skips the fits its checkpoint has finished, restores the
one in progress and runs the rest. Schedules are pure functions of the step, so the step is their position.
Measured (bench/checkpoint.py, 2 shared CPU cores under load): an EfficientNet-Lite0 checkpoint with AdamW's
moments and save-best's copy of the weights is 55 MB and takes 0.32 s to write, 0.04 s to read.
"""

from __future__ import annotations

import json
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..errors import Interrupted, UserError
from ..rundir import CHECKPOINT_FILE, check_version, load_weights, written_whole
from . import distributed as dist
from .callbacks.nonfinite import TerminateOnNaN

if TYPE_CHECKING:
    from .callbacks.core import Callback
    from .learner import Learner

FORMAT = 1
STEP_SECONDS = 300.0  # without --ckpt-every, a mid-epoch checkpoint once this long has passed since the last


def match_param_layout(opt: torch.optim.Optimizer) -> None:
    """Give each optimizer state tensor its parameter's strides. A checkpoint stores tensors contiguous, so a
    channels_last model's moments come back in the other layout; CUDA's fused AdamW refuses to mix the two."""
    for group in opt.param_groups:
        for p in group["params"]:
            state = opt.state.get(p, {})
            for k, v in state.items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                    state[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


# the signals that stop a run cleanly, and how messages name them: Ctrl-C, and SIGTERM (docker stop, SLURM's
# time limit and scancel, systemd, Kubernetes): they ask a program to end, and a run should end as Ctrl-C ends it
STOP_SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


class TrainingInterrupted(Interrupted):
    """Ctrl-C or SIGTERM: the step finished and a checkpoint was written (`where` says which)."""

    def __init__(self, where: str, signum: int = signal.SIGINT):
        super().__init__(signum, where)
        self.where = where


# ---------------------------------------------------------------------- JSON + tensors, without pickle
def pack(obj: Any, name: str, tensors: dict[str, torch.Tensor]) -> Any:
    """`obj` as JSON-able data; its tensors go into `tensors` under names starting with `name`."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        if t.numel() and any(t.data_ptr() == u.data_ptr() for u in tensors.values() if u.numel()):
            t = t.clone()  # safetensors refuses two names on one buffer (tied weights)
        tensors[name] = t
        return {"__tensor__": name}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: pack(v, f"{name}/{k}", tensors) for k, v in obj.items()}
        return {"__items__": [[k, pack(v, f"{name}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [pack(v, f"{name}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [pack(v, f"{name}/{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint: cannot store a {type(obj).__name__} at {name}")


def unpack(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of `pack`."""
    if isinstance(obj, list):
        return [unpack(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return np.array(obj["__ndarray__"], dtype=obj["dtype"])
    if "__tuple__" in obj:
        return tuple(unpack(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {k: unpack(v, tensors) for k, v in obj["__items__"]}
    return {k: unpack(v, tensors) for k, v in obj.items()}


def rng_state() -> dict[str, Any]:
    """Every global generator: Python's, NumPy's, torch's (and CUDA's where initialised)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """`state` (any mix of JSON-able data and tensors) into `path`, atomically."""
    from safetensors.torch import save_file

    from .. import __version__

    tensors: dict[str, torch.Tensor] = {}
    doc = {"format": FORMAT, "imgclf_version": __version__, **pack(state, "", tensors)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with written_whole(path) as tmp:
        save_file(tensors, str(tmp), metadata={"imgclf_checkpoint": json.dumps(doc)})


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's state; a corrupt, foreign or newer one is a `UserError` naming the file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        doc = json.loads(meta["imgclf_checkpoint"])
    except KeyError:
        raise UserError(f"{path}: not an imgclf checkpoint") from None
    except Exception as e:  # safetensors' errors on a truncated file, or broken JSON
        raise UserError(f"{path}: corrupt or truncated checkpoint ({str(e).splitlines()[0][:120]})") from None
    check_version(doc.get("imgclf_version"), path)
    if doc.get("format", 0) > FORMAT:
        raise UserError(f"{path}: checkpoint format {doc['format']} is newer than this imgclf reads ({FORMAT})")
    return unpack(doc, tensors)


def _named(cbs: Sequence[Callback]) -> dict[str, Callback]:
    """Callbacks by class name (`Name#2` for a second of a kind), the keys of their states in a checkpoint."""
    out: dict[str, Callback] = {}
    for cb in cbs:
        key, k = type(cb).__name__, 1
        while key in out:
            k += 1
            key = f"{type(cb).__name__}#{k}"
        out[key] = cb
    return out


# ---------------------------------------------------------------------- the checkpointer
class Checkpointer:
    """Writes `RUN/checkpoint.safetensors` at the end of every epoch, every `every` steps (None: every
    `STEP_SECONDS` of training; 0: epoch ends only) and when Ctrl-C is pressed; restores it in a resumed job.

    `model` is the whole model whose weights a checkpoint holds (a head trained on cached features is a part of
    it). `extra` is the job's own state between fits (the auto recipe's probe result), saved with every
    checkpoint. Attach it with `learn.checkpointer = ck` (the job does), or `Learner.save_checkpoints(run)`.
    """

    def __init__(self, run_dir: str | Path, every: int | None = None, model: nn.Module | None = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / CHECKPOINT_FILE
        self.every, self.model = every, model
        self.extra: dict[str, Any] = {}
        self.fit_no = 0  # fits begun by this process
        self.loaded: dict[str, Any] | None = None  # the checkpoint this process resumes from, until restored
        self.stop_requested, self.in_fit = False, False
        self.stop_signal: int = signal.SIGINT  # the signal that asked for the stop (Ctrl-C unless SIGTERM)
        self.last: str | None = None  # where the last checkpoint written or read stands, for messages
        self.n_written, self.seconds = 0, 0.0
        self._t_last = time.monotonic()
        self.learner: Learner | None = None  # the job's learner: it exports the best weights when a run stops
        # this session: when it began (wall clock, its name) and its clock's start; each checkpoint records the
        # seconds so far, which a resume after a kill -9 (no clean stop to count them) adds to the run's time
        self.session = {"began": time.time(), "t0": time.perf_counter()}

    def attach(self, learn: Learner) -> None:
        """Checkpoint `learn`'s fits (and those of the head learners it makes), holding its whole model."""
        learn.checkpointer, self.model, self.learner = self, learn.model, learn

    # ------------------------------------------------------------------ reading
    def load(self) -> bool:
        """Read the run's checkpoint, if there is one; the job then replays up to it."""
        if not self.path.exists():
            return False
        self.loaded = read_checkpoint(self.path)
        self.extra = self.loaded.get("extra") or {}
        self.last = self.loaded.get("where")
        return True

    def begin_fit(self) -> str:
        """Count a fit and say what to do with it: "run" it, "skip" it (the checkpoint is past it), "restore"."""
        self.fit_no += 1
        done = self.loaded["fit_no"] if self.loaded else 0
        return "run" if done < self.fit_no else ("skip" if done > self.fit_no else "restore")

    def skip_done_fit(self) -> bool:
        """For a caller that would prepare a fit at some cost (cached features): True, and the fit counted,
        when the checkpoint stands in a later fit (whose restore brings back the whole model). A checkpoint in
        this very fit, even at its end, is `begin_fit`'s "restore": skipping it lost the head fit's weights
        and its best epoch, and a fine_tune run stopped in its head phase resumed to a model at chance."""
        if self.loaded and self.loaded["fit_no"] > self.fit_no + 1:
            self.fit_no += 1
            return True
        return False

    def restore(self, learn: Learner, cbs: Sequence[Callback]) -> int:
        """Put the fit in progress back as the checkpoint left it; returns the epoch to go on from."""
        st, self.loaded = self.loaded, None
        assert st is not None
        load_weights(self.model or learn.model, st["model"], self.path)
        try:
            learn.opt.load_state_dict(st["opt"])
            match_param_layout(learn.opt)
        except (ValueError, KeyError) as e:
            raise UserError(f"{self.path}: the optimizer state does not fit this model ({e})") from None
        if learn.grad_scaler is not None and st.get("scaler"):
            learn.grad_scaler.load_state_dict(st["scaler"])
        dl_state = self._mine(st)["train_dl"]
        if dl_state is not None and hasattr(learn.train_dl, "load_state_dict"):
            learn.train_dl.load_state_dict(dl_state)
        for key, cb in _named(cbs).items():
            if key in st["cbs"]:
                cb.load_state_dict(st["cbs"][key])
        set_rng_state(self._mine(st)["rng"])
        learn.iter, learn.phase = st["iter"], st["phase"]
        return learn.n_epoch if st["fit_done"] else st["epoch"]

    def restore_between_fits(self, learn: Learner) -> None:
        """A checkpoint written between fits (`save_between_fits`): its weights and the learner's callback
        states (the history) back; the fits that follow run."""
        st, self.loaded = self.loaded, None
        assert st is not None
        load_weights(self.model or learn.model, st["model"], self.path)
        for key, cb in _named(learn.cbs).items():
            if key in st["cbs"]:
                cb.load_state_dict(st["cbs"][key])
        set_rng_state(self._mine(st)["rng"])

    def _mine(self, st: dict[str, Any]) -> dict[str, Any]:
        """This process's loader position and generators: a checkpoint of several processes holds each rank's
        (`ranks`), and is resumed by as many."""
        ranks = st.get("ranks")
        if not ranks:
            if dist.world_size() > 1:
                raise UserError(f"{self.path}: written by one process; resume it without torchrun/--nproc")
            return {"train_dl": st.get("train_dl"), "rng": st["rng"]}
        if len(ranks) != dist.world_size():
            raise UserError(f"{self.path}: written by {len(ranks)} processes; resume it with --nproc {len(ranks)}")
        return ranks[dist.rank()]

    @staticmethod
    def _ranks(dl_state: dict[str, Any] | None) -> list[dict[str, Any]] | None:
        """Every rank's loader position and generators, gathered (None in a single process)."""
        if not dist.is_distributed():
            return None
        return dist.gather_objects({"train_dl": dl_state, "rng": rng_state()})

    # ------------------------------------------------------------------ writing
    def save(self, learn: Learner, cbs: Sequence[Callback], where: str, fit_done: bool = False,
             next_epoch: bool = False) -> None:
        for cb in cbs:  # losses a GPU run has not checked yet: a NaN stops the run before it reaches the disk
            if isinstance(cb, TerminateOnNaN):
                cb.check(learn)
        t = time.perf_counter()
        dl = learn.train_dl
        dl_state = dl.state_dict() if hasattr(dl, "state_dict") else None
        step = dl_state["batches"] if dl_state else 0
        desc = f"{learn.phase} epoch {learn.epoch + 1}" + (f" step {step}" if step else " end")
        ranks = self._ranks(dl_state)  # several processes: each one's position; rank 0 alone writes
        if dist.is_main():
            write_checkpoint(self.path, {
                "fit_no": self.fit_no, "fit_done": fit_done, "where": desc, "reason": where,
                "epoch": learn.epoch + 1 if next_epoch else learn.epoch, "iter": learn.iter,
                "n_epoch": learn.n_epoch, "phase": learn.phase, "model": (self.model or learn.model).state_dict(),
                "opt": learn.opt.state_dict(), "scaler": learn.grad_scaler.state_dict() if learn.grad_scaler else None,
                "train_dl": dl_state, "cbs": {k: cb.state_dict() for k, cb in _named(cbs).items()},
                "rng": rng_state(), "extra": self.extra, **({"ranks": ranks} if ranks else {}),
                "session": {"began": self.session["began"],
                            "seconds": round(time.perf_counter() - self.session["t0"], 1)},
            })
        self._wrote(desc, t)

    def worth_saving(self) -> bool:
        """Outside a fit, before only a short finish (the auto recipe's probe kept: calibration and the outputs,
        a fraction of a second): whether the run's own rule would checkpoint now. With --ckpt-every N, yes; else
        once STEP_SECONDS have passed since the last, as mid-epoch. A checkpoint took 0.3 s of the default job's
        13 (2-core Xeon), written and removed within the same second; a run killed in that second starts over,
        as one killed in its first five minutes does."""
        return bool(self.every) or self._due_by_time()

    def _due_by_time(self) -> bool:
        """Without --ckpt-every: STEP_SECONDS since the last checkpoint (0: epoch ends only, never by time)."""
        return self.every is None and time.monotonic() - self._t_last > STEP_SECONDS

    def save_between_fits(self, learn: Learner, where: str) -> None:
        """A checkpoint outside any fit (after the auto recipe's probe): weights, `extra`, the learner's
        callback states."""
        t = time.perf_counter()
        ranks = self._ranks(None)
        if dist.is_main():
            write_checkpoint(self.path, {
                "fit_no": self.fit_no, "fit_done": True, "where": where, "reason": "between fits",
                "model": (self.model or learn.model).state_dict(),
                "cbs": {k: cb.state_dict() for k, cb in _named(learn.cbs).items()}, "rng": rng_state(),
                "extra": self.extra, **({"ranks": ranks} if ranks else {}),
            })
        self._wrote(where, t)

    def _wrote(self, desc: str, t: float) -> None:
        dist.barrier()  # several processes: the file is whole before any of them goes on (and might read it)
        self.last, self._t_last = desc, time.monotonic()
        self.n_written += 1
        self.seconds += time.perf_counter() - t

    # ------------------------------------------------------------------ the loop's three calls
    def after_step(self, learn: Learner, cbs: Sequence[Callback]) -> None:
        """After each training step: Ctrl-C pressed -> checkpoint and stop; else a checkpoint when due.
        Between the batches of a gradient accumulation nothing is saved (their gradients are not state)."""
        if getattr(learn, "accumulating", False):
            return
        if dist.is_distributed():  # all ranks save together or none: rank 0's clock decides, any rank's Ctrl-C
            due = self._due(learn) if dist.is_main() else False
            due, self.stop_requested = dist.any_rank(due, self.stop_requested)
        else:
            due = self._due(learn)
        if self.stop_requested:
            self.save(learn, cbs, "interrupt")
            raise TrainingInterrupted(self.last or "", self.stop_signal)
        if due:
            self.save(learn, cbs, "step")

    def _due(self, learn: Learner) -> bool:
        at_end = getattr(learn.train_dl, "position", None) is not None and \
            learn.train_dl.position.batches >= len(learn.train_dl)
        due = learn.iter % self.every == 0 if self.every else self._due_by_time()
        return due and not at_end  # at the end, the epoch's own checkpoint follows shortly

    def after_epoch(self, learn: Learner, cbs: Sequence[Callback]) -> None:
        self.save(learn, cbs, "epoch", next_epoch=True)
        if dist.is_distributed():
            (self.stop_requested,) = dist.any_rank(self.stop_requested)
        if self.stop_requested:
            raise TrainingInterrupted(self.last or "", self.stop_signal)

    def after_fit(self, learn: Learner, cbs: Sequence[Callback]) -> None:
        self.save(learn, cbs, "fit", fit_done=True)

    # ------------------------------------------------------------------ Ctrl-C, SIGTERM
    @contextmanager
    def catch_interrupts(self) -> Iterator[None]:
        """While training: the first Ctrl-C or SIGTERM finishes the step and writes a checkpoint (the loop then
        raises `TrainingInterrupted`); a second one, or one outside a fit, raises `Interrupted` at once.

        SIGTERM is what `docker stop`, SLURM and systemd send before they kill: left to its default it ended the
        process on the spot, the run's status stayed "running" and the best epoch so far was lost. Under torchrun
        every rank receives the signal (the agent forwards it) and they stop at the same step; rank 0 speaks."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self.stop_requested or not self.in_fit:
                raise Interrupted(signum)
            self.stop_requested, self.stop_signal = True, signum
            if dist.is_main():
                again = "Ctrl-C again" if signum == signal.SIGINT else "another SIGTERM or Ctrl-C"
                print(f"\n{STOP_SIGNALS[signum]}: finishing this step and writing a checkpoint ({again} quits at "
                      "once)", file=sys.stderr, flush=True)

        previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
