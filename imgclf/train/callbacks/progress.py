"""Progress: a bar per epoch over its training and validation batches, and a table row per epoch (like fastai's).

The bar's estimate covers the whole epoch, validation included: before any validation batch has run, one counts
as a third of a training batch (a forward pass against forward + backward + step); from the second epoch on, as
the ratio the first epoch measured. Off a terminal (a log file, CI, train.log: see `imgclf.progress`) there is no
bar but a line as each epoch starts, one every ~30 s while it runs, and its table row, with seconds, at its end.
"""

from __future__ import annotations

import time

from ... import progress
from .core import Callback

VALID_WEIGHT = 1 / 3  # a validation batch's cost in training batches, until the first epoch has measured it
_BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]"


def _len(dl) -> int | None:
    try:
        return len(dl)
    except TypeError:  # a stream of unknown length
        return None


def _batches(n: int | None, kind: str) -> str:
    return f"{'?' if n is None else n} {kind} batch{'' if n == 1 else 'es'}"


class ProgressCallback(Callback):
    order = 50

    def __init__(self, leave: bool = False):
        self.leave = leave
        self.bar: progress.Bar | None = None
        self._printed_header = False
        self.valid_weight = VALID_WEIGHT

    def before_fit(self, learn) -> None:
        self._printed_header = False
        self.valid_weight = VALID_WEIGHT  # a new fit may train other layers: measure again

    def before_train(self, learn) -> None:
        self._close()
        n_train = _len(learn.train_dl)
        # under torchrun each rank scores its share of validation (Learner.valid_share): the bar counts that
        validating = learn.valid_dl is not None and getattr(learn, "validating", True)
        n_valid = _len(learn.valid_share()[0]) if validating else 0
        total = n_train + self.valid_weight * n_valid if n_train is not None and n_valid is not None else None
        self._counts = (n_train, n_valid)
        self._desc = f"epoch {learn.epoch + 1}/{learn.n_epoch} {learn.phase}"
        start = _batches(n_train, "training") + (f" + {_batches(n_valid, 'validation')}" if n_valid else "")
        self.bar = progress.bar(total=total, desc=self._desc, unit="batch", start=start, end_line=False,
                                leave=self.leave, bar_format=_BAR_FORMAT)
        self._t = time.perf_counter()
        self._train_s = 0.0

    def before_validate(self, learn) -> None:
        now = time.perf_counter()
        self._train_s, self._t = now - self._t, now
        if self.bar is not None:
            self.bar.set_description(f"{self._desc} (validating)")

    def after_batch(self, learn) -> None:
        if self.bar is None:
            return
        if learn.training:
            self.bar.update(1)
            if self.bar.drawn:  # .item() waits for the device: only when a bar shows it
                self.bar.set_postfix(loss=f"{learn.loss.item():.4f}")
        else:
            self.bar.update(self.valid_weight)

    def after_validate(self, learn) -> None:
        valid_s = time.perf_counter() - self._t
        (n_train, n_valid), train_s = self._counts, self._train_s
        if n_train and n_valid and train_s > 0 and valid_s > 0:  # the ratio the next epochs' estimates use
            self.valid_weight = min(max((valid_s / n_valid) / (train_s / n_train), 0.02), 4.0)

    def after_epoch(self, learn) -> None:
        self._close()
        row = learn.recorder.history[-1]
        cols = [k for k in row if k not in ("phase",)]
        if not self._printed_header:
            progress.write("  ".join(f"{c:>11}" for c in ["phase", *cols]))
            self._printed_header = True
        cells = [f"{row['phase']:>11}"]
        for c in cols:
            v = row[c]
            cells.append(f"{v:>11d}" if isinstance(v, int) else f"{'-':>11}" if v != v else f"{v:>11.4f}")  # NaN:
            # not validated this epoch (`valid_every`)
        progress.write("  ".join(cells))

    def after_fit(self, learn) -> None:
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
