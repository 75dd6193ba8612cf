"""Progress: a bar per epoch over batches, and a table row per epoch (like fastai's, in any terminal)."""

from __future__ import annotations

from tqdm.auto import tqdm

from .core import Callback


class ProgressCallback(Callback):
    order = 50

    def __init__(self, leave: bool = False):
        self.leave = leave
        self.bar = None
        self._printed_header = False

    def before_fit(self, learn) -> None:
        self._printed_header = False

    def before_train(self, learn) -> None:
        self.bar = tqdm(total=len(learn.train_dl), desc=f"epoch {learn.epoch + 1}/{learn.n_epoch} {learn.phase}",
                        leave=self.leave, unit="batch", dynamic_ncols=True, disable=None)

    def before_validate(self, learn) -> None:
        self._close()
        self.bar = tqdm(total=len(learn.valid_dl), desc="validate", leave=False, unit="batch", dynamic_ncols=True,
                        disable=None)

    def after_batch(self, learn) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if learn.training:
                self.bar.set_postfix(loss=f"{learn.loss.item():.4f}", refresh=False)

    def after_epoch(self, learn) -> None:
        self._close()
        row = learn.recorder.history[-1]
        cols = [k for k in row if k not in ("phase",)]
        if not self._printed_header:
            tqdm.write("  ".join(f"{c:>11}" for c in ["phase", *cols]))
            self._printed_header = True
        cells = [f"{row['phase']:>11}"]
        for c in cols:
            v = row[c]
            cells.append(f"{v:>11d}" if isinstance(v, int) else f"{v:>11.4f}")
        tqdm.write("  ".join(cells))

    def after_fit(self, learn) -> None:
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
