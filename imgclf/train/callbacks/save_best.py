"""SaveBestModel: keep the weights of the best epoch and end the fit with them."""

from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from .tracker import TrackerCallback


class SaveBestModel(TrackerCallback):
    """Remembers the best epoch's weights; optionally writes them to `path` (safetensors) each time.

    With `across_fits=True` and `model` given, the best is kept across several fits: `fine_tune` passes
    it to both phases, so a fine-tune that ends worse than the head-only model gives the head-only
    model back (seen on tiny, low-resolution sets where batch statistics of the unfrozen body hurt).
    """

    order = 61

    def __init__(self, monitor: str = "valid_loss", min_delta: float = 0.0, mode: str = "auto",
                 path: str | Path | None = None, model: nn.Module | None = None, across_fits: bool = False):
        super().__init__(monitor, min_delta, mode)
        self.path = Path(path) if path else None
        self.model, self.across_fits = model, across_fits
        self.best_state = None
        self.best_epoch: int | None = None  # the run's epoch count from 0 (history.csv's `epoch`)
        self.best_phase: str | None = None
        self.best_fit_epoch: tuple[int, int] | None = None  # (k, n): the bar's "epoch k/n <phase>"

    def before_fit(self, learn) -> None:
        if not self.across_fits:
            self.best, self.best_state, self.best_epoch = None, None, None

    def _model(self, learn) -> nn.Module:
        return self.model if self.model is not None else learn.model

    def after_epoch(self, learn) -> None:
        if not getattr(learn, "validating", True):  # an epoch `valid_every` left unvalidated: nothing to compare
            return
        value = self.current(learn)
        if self.improved(value):
            self.best, self.best_epoch, self.best_phase = value, learn.recorder.history[-1]["epoch"], learn.phase
            self.best_fit_epoch = (learn.epoch + 1, learn.n_epoch)
            self.best_state = copy.deepcopy(self._model(learn).state_dict())
            if self.path is not None:
                from safetensors.torch import save_file

                tmp = self.path.with_suffix(".tmp")
                save_file({k: v.contiguous() for k, v in self.best_state.items()}, str(tmp))
                tmp.replace(self.path)

    def state_dict(self) -> dict:
        """The best figure, where it was, and its weights (tensors: a checkpoint stores them beside the model)."""
        return {"best": self.best, "best_epoch": self.best_epoch, "best_phase": self.best_phase,
                "best_fit_epoch": self.best_fit_epoch, "best_state": self.best_state}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_state = state.get("best"), state.get("best_state")
        self.best_epoch, self.best_phase = state.get("best_epoch"), state.get("best_phase")
        fit_epoch = state.get("best_fit_epoch")
        self.best_fit_epoch = tuple(fit_epoch) if fit_epoch is not None else None

    @property
    def kept(self) -> str:
        """The kept epoch as the progress bar named it, `epoch 2/8 (frozen)`, not the run's count from 0."""
        if self.best_fit_epoch is None:  # a checkpoint of an older version
            return f"epoch {self.best_epoch} ({self.best_phase})"
        k, n = self.best_fit_epoch
        return f"epoch {k}/{n} ({self.best_phase})"

    def after_fit(self, learn) -> None:
        if self.best_state is not None:
            self._model(learn).load_state_dict(self.best_state)
