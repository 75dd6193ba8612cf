"""TerminateOnNaN: stop when the training loss turns NaN or infinite, before it reaches the weights."""

from __future__ import annotations

import math

from ...errors import UserError
from .core import Callback


class NonFiniteLoss(UserError):
    """The training loss turned NaN or infinite: the run stops rather than train on garbage."""


class TerminateOnNaN(Callback):
    """Always attached (as fastai's is). Costs one device sync a step, which the recorder pays anyway.

    The message names the epoch and step, the last good checkpoint when the learner writes them, and the usual
    cure (a lower learning rate). The learning-rate finder goes without it: it ends its sweep on divergence."""

    order = 20  # after MixedPrecision has left autocast

    def after_loss(self, learn) -> None:
        if not learn.training:
            return
        value = float(learn.loss.detach())
        if math.isfinite(value):
            return
        step = getattr(getattr(learn.train_dl, "position", None), "batches", None)
        where = f"epoch {learn.epoch + 1}" + (f" step {step}" if step else f", step {learn.iter + 1} of the fit")
        ck = getattr(learn, "checkpointer", None)
        last = f"; the last good checkpoint is {ck.last} in {ck.path}" if ck and ck.last else ""
        lr = max(g["lr"] for g in learn.opt.param_groups)
        raise NonFiniteLoss(f"the training loss became {value} at {where} ({learn.phase}){last}; the learning rate "
                            f"is too high for this model and data: try a lower --lr (it was {lr:.3g} there)")
