"""ParamScheduler: set each group's learning rate (and momentum) from pure schedule functions."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..optim import set_momentum
from .core import Callback


class ParamScheduler(Callback):
    """lr of layer group i = `lrs[i] * lr_sched(pct_train)`; momentum = `mom_sched(pct_train)`."""

    order = -5

    def __init__(self, lrs: Sequence[float], lr_sched: Callable[[float], float],
                 mom_sched: Callable[[float], float] | None = None):
        self.lrs, self.lr_sched, self.mom_sched = list(lrs), lr_sched, mom_sched

    def before_batch(self, learn) -> None:
        if not learn.training:
            return
        f = self.lr_sched(learn.pct_train)
        for g in learn.opt.param_groups:
            g["lr"] = self.lrs[min(g.get("layer", 0), len(self.lrs) - 1)] * f
        if self.mom_sched is not None:
            set_momentum(learn.opt, self.mom_sched(learn.pct_train))
