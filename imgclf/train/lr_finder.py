"""The learning-rate finder (Smith 2015, fastai's `lr_find`): sweep, record, suggest, plot."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .callbacks.core import Callback, CancelFitException
from .schedule import exp_range


class LRFinder(Callback):
    """Sets every group's rate from an exponential sweep; stops when the loss diverges."""

    order = -4  # after ParamScheduler, so the sweep's rate wins

    def __init__(self, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100):
        self.start_lr, self.end_lr, self.num_it = start_lr, end_lr, num_it
        self.lrs: list[float] = []
        self.losses: list[float] = []

    def before_batch(self, learn) -> None:
        if not learn.training:
            return
        lr = exp_range(len(self.lrs) / max(1, self.num_it - 1), self.start_lr, self.end_lr)
        for g in learn.opt.param_groups:
            g["lr"] = lr
        self.lrs.append(lr)

    def after_batch(self, learn) -> None:
        if not learn.training:
            return
        loss = float(learn.loss.detach())
        self.losses.append(loss)
        smooth = _smooth(self.losses)[-1]
        best = min(_smooth(self.losses))
        if len(self.lrs) >= self.num_it or not math.isfinite(loss) or (len(self.losses) > 10 and smooth > 4 * best):
            raise CancelFitException()


def _smooth(values: list[float], beta: float = 0.98) -> list[float]:
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta**i))
    return out


# the suggestions as the plot's legend names them, in the console's words (`train.job` prints "minimum/10"):
# `minimum` is a tenth of the rate at the lowest loss, not that rate, and its point sits a decade left of the dip
LABELS = {"minimum": "minimum/10", "steep": "steep", "valley": "valley"}


@dataclass
class LRFind:
    """The sweep's rates and raw losses, with fastai's three suggestions."""

    lrs: list[float]
    raw_losses: list[float]
    skip_start: int = 5
    skip_end: int = 5
    losses: list[float] = field(init=False)

    def __post_init__(self) -> None:
        self.losses = _smooth(self.raw_losses)

    def _window(self) -> tuple[list[float], list[float]]:
        end = max(len(self.lrs) - self.skip_end, self.skip_start + 3)
        return self.lrs[self.skip_start : end], self.losses[self.skip_start : end]

    @property
    def minimum(self) -> float:
        """A tenth of the rate at the lowest loss."""
        lrs, losses = self._window()
        return lrs[losses.index(min(losses))] / 10

    @property
    def steep(self) -> float:
        """The rate where the loss falls fastest (per log-rate)."""
        lrs, losses = self._window()
        grads = [(losses[i + 1] - losses[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i])) for i in range(len(lrs) - 1)]
        return lrs[grads.index(min(grads))]

    @property
    def valley(self) -> float:
        """fastai's default: two-thirds of the way along the longest falling stretch of the curve."""
        lrs, losses = self._window()
        n = len(losses)
        lds = [1] * n
        max_start = max_end = 0
        for i in range(1, n):
            for j in range(i):
                if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                    lds[i] = lds[j] + 1
                if lds[max_end] < lds[i]:
                    max_end, max_start = i, i - lds[i]
        sections = (max_end - max_start) / 3
        return lrs[max_start + int(sections) + int(sections / 2)]

    @property
    def suggestions(self) -> dict[str, float]:
        return {"minimum": self.minimum, "steep": self.steep, "valley": self.valley}

    def plot(self):
        """Loss against rate (log scale) with the suggestions marked: a matplotlib Figure."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 4), layout="constrained")
        ax = fig.subplots()
        lrs, losses = self._window()
        ax.plot(lrs, losses, color="C0")
        for (name, lr), color in zip(self.suggestions.items(), ("C1", "C2", "C3"), strict=True):
            y = losses[min(range(len(lrs)), key=lambda i: abs(math.log(lrs[i]) - math.log(lr)))]
            ax.plot([lr], [y], "o", color=color, label=f"{LABELS[name]}: {lr:.2e}")
        ax.set(xscale="log", xlabel="learning rate", ylabel="loss (smoothed)", title="learning-rate finder")
        ax.legend()
        return fig
