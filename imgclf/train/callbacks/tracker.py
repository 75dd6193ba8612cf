"""Shared by early stopping and save-best: follow one validation figure and say when it improves."""

from __future__ import annotations

import operator

from .core import Callback


class TrackerCallback(Callback):
    """Keeps `best` of `monitor` (lower is better for losses/errors, higher for the rest)."""

    order = 60

    def __init__(self, monitor: str = "valid_loss", min_delta: float = 0.0, mode: str = "auto"):
        if mode == "auto":
            mode = "min" if ("loss" in monitor or "error" in monitor) else "max"
        self.monitor, self.min_delta, self.mode = monitor, abs(min_delta), mode
        self.best: float | None = None

    def improved(self, value: float) -> bool:
        if self.best is None:
            return True
        op, delta = (operator.lt, -self.min_delta) if self.mode == "min" else (operator.gt, self.min_delta)
        return op(value, self.best + delta)

    def current(self, learn) -> float:
        row = learn.last_validation
        if self.monitor not in row:
            raise KeyError(f"{type(self).__name__}: {self.monitor!r} not among {sorted(row)}")
        return row[self.monitor]

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best")
