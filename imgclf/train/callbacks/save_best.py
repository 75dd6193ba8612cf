"""SaveBestModel: keep the weights of the best epoch and end the fit with them."""

from __future__ import annotations

import copy
from pathlib import Path

from .tracker import TrackerCallback


class SaveBestModel(TrackerCallback):
    """Remembers the best epoch's weights; optionally writes them to `path` (safetensors) each time."""

    order = 61

    def __init__(self, monitor: str = "valid_loss", min_delta: float = 0.0, mode: str = "auto",
                 path: str | Path | None = None):
        super().__init__(monitor, min_delta, mode)
        self.path = Path(path) if path else None
        self.best_state = None
        self.best_epoch: int | None = None

    def before_fit(self, learn) -> None:
        self.best, self.best_state, self.best_epoch = None, None, None

    def after_epoch(self, learn) -> None:
        value = self.current(learn)
        if self.improved(value):
            self.best, self.best_epoch = value, learn.epoch
            self.best_state = copy.deepcopy(learn.model.state_dict())
            if self.path is not None:
                from safetensors.torch import save_file

                tmp = self.path.with_suffix(".tmp")
                save_file({k: v.contiguous() for k, v in self.best_state.items()}, str(tmp))
                tmp.replace(self.path)

    def after_fit(self, learn) -> None:
        if self.best_state is not None:
            learn.model.load_state_dict(self.best_state)
