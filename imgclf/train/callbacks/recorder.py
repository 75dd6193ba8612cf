"""Recorder: per-batch losses and learning rates, and the per-epoch history table.

On a GPU, reading a loss (`.item()`) makes the host wait for the device every step, so the host cannot queue the
next step's kernels while the device runs this one: small nets then train at the speed of the two added up.
Losses are kept on the device and read together every `READ_EVERY` steps (one wait per window) and whenever the
recorded figures are asked for; on a CPU a read costs nothing and happens each step."""

from __future__ import annotations

import time
from typing import Any

import torch

from .core import Callback

READ_EVERY = 32  # steps between the reads of losses kept on a GPU


class Recorder(Callback):
    """Always attached. `history` has one row per epoch: epoch, phase, train_loss, valid_loss, metrics, seconds."""

    order = -10

    def __init__(self, read_every: int | None = None) -> None:
        self.read_every = read_every  # steps between reads; None: each step on a CPU, READ_EVERY on a GPU
        self.history: list[dict[str, Any]] = []
        self.losses: list[float] = []  # smoothed training loss per batch, across fits
        self.lrs: list[float] = []
        self._epoch_base = 0
        self._smooth, self._count = 0.0, 0
        self._sum, self._n = 0.0, 0
        self._resumed_sums: tuple[float, int] | None = None  # a resumed epoch's sums so far (load_state_dict)
        self._pending: list[tuple[torch.Tensor, int]] = []  # (loss on the device, batch size) not read yet

    def before_fit(self, learn) -> None:
        self._epoch_base = len(self.history)
        self._smooth, self._count = 0.0, 0

    def before_epoch(self, learn) -> None:
        self._t0 = time.perf_counter()
        self._sum, self._n = self._resumed_sums or (0.0, 0)
        self._resumed_sums = None

    def after_batch(self, learn) -> None:
        if not learn.training:
            return
        self._pending.append((learn.loss.detach().float(), len(learn.yb)))
        self.lrs.append(learn.opt.param_groups[-1]["lr"])
        every = self.read_every or (1 if learn.loss.device.type == "cpu" else READ_EVERY)
        if len(self._pending) >= every:
            self.flush()

    def flush(self) -> None:
        """Read the losses kept on the device (one wait for it) into the sums and the per-batch curve."""
        if not self._pending:
            return
        values = torch.stack([t for t, _ in self._pending]).tolist()
        for loss, (_, bs) in zip(values, self._pending, strict=True):
            self._sum, self._n = self._sum + loss * bs, self._n + bs
            self._count += 1
            self._smooth = 0.98 * self._smooth + 0.02 * loss
            self.losses.append(self._smooth / (1 - 0.98**self._count))
        self._pending.clear()

    def after_train(self, learn) -> None:
        self.flush()

    def after_fit(self, learn) -> None:  # a fit stopped within an epoch skips after_train
        self.flush()

    def after_epoch(self, learn) -> None:
        self.flush()
        row = {"epoch": self._epoch_base + learn.epoch, "phase": learn.phase,
               "train_loss": self._sum / max(self._n, 1)}
        row.update(learn.last_validation)
        row["seconds"] = time.perf_counter() - self._t0
        self.history.append(row)
        self._sum, self._n = 0.0, 0

    def plot_loss(self):
        """Train and valid loss per epoch, and the smoothed per-batch train loss: a matplotlib Figure."""
        self.flush()
        from matplotlib.figure import Figure

        fig = Figure(figsize=(9, 3.6), layout="constrained")
        ax1, ax2 = fig.subplots(1, 2)
        ax1.plot(self.losses, color="C0", lw=1)
        ax1.set(title="training loss per batch (smoothed)", xlabel="batch", ylabel="loss")
        ep = [r["epoch"] + 1 for r in self.history]
        ax2.plot(ep, [r["train_loss"] for r in self.history], "o-", label="train")
        if self.history and "valid_loss" in self.history[0]:
            ax2.plot(ep, [r["valid_loss"] for r in self.history], "o-", label="valid")
        for i, r in enumerate(self.history):  # shade frozen (head-only) epochs
            if r["phase"] == "frozen":
                ax2.axvspan(ep[i] - 0.5, ep[i] + 0.5, color="0.9", zorder=0)
        ax2.set(title="loss per epoch (grey: head only)", xlabel="epoch", ylabel="loss")
        ax2.legend()
        return fig

    def state_dict(self) -> dict[str, Any]:
        """History and per-batch curves, and the running sums of an epoch in progress (a mid-epoch resume
        then reports the same train_loss as an uninterrupted run)."""
        self.flush()
        return {"history": self.history, "losses": self.losses, "lrs": self.lrs, "epoch_base": self._epoch_base,
                "smooth": self._smooth, "count": self._count, "sum": self._sum, "n": self._n}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [dict(r) for r in state.get("history", [])]
        self.losses, self.lrs = list(state.get("losses", [])), list(state.get("lrs", []))
        self._epoch_base = state.get("epoch_base", len(self.history))
        self._smooth, self._count = state.get("smooth", 0.0), state.get("count", 0)
        self._resumed_sums = (state.get("sum", 0.0), state.get("n", 0))
