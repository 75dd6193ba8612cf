"""EarlyStopping: end training when the monitored figure stops improving (Keras' semantics)."""

from __future__ import annotations

import copy

from .core import CancelFitException
from .tracker import TrackerCallback


class EarlyStopping(TrackerCallback):
    order = 75  # after save-best (61) and the CSV log (70): the epoch that ends the fit is still logged

    def __init__(self, monitor: str = "valid_loss", min_delta: float = 0.0, patience: int = 3,
                 mode: str = "auto", restore_best_weights: bool = False):
        super().__init__(monitor, min_delta, mode)
        self.patience, self.restore_best_weights = patience, restore_best_weights

    def before_fit(self, learn) -> None:
        self.best, self.wait, self.best_state, self.stopped_epoch = None, 0, None, None

    def after_epoch(self, learn) -> None:
        if not getattr(learn, "validating", True):  # an epoch `valid_every` left unvalidated: nothing to compare
            return
        value = self.current(learn)
        if self.improved(value):
            self.best, self.wait = value, 0
            if self.restore_best_weights:
                self.best_state = copy.deepcopy(learn.model.state_dict())
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = learn.epoch
            print(f"early stopping: no improvement in {self.monitor} for {self.patience} epoch(s)")
            raise CancelFitException()

    def state_dict(self) -> dict:
        return {"best": self.best, "wait": self.wait, "best_state": self.best_state}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.wait, self.best_state = state.get("best"), state.get("wait", 0), state.get("best_state")

    def after_fit(self, learn) -> None:
        if self.restore_best_weights and self.best_state is not None:
            learn.model.load_state_dict(self.best_state)
