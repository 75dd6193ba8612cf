"""TerminateOnNaN: stop when the training loss turns NaN or infinite, before it reaches the weights."""

from __future__ import annotations

import torch

from ...errors import UserError
from .core import Callback


class NonFiniteLoss(UserError):
    """The training loss turned NaN or infinite: the run stops rather than train on garbage."""


CHECK_EVERY = 32  # steps between the checks of losses kept on a GPU (as the recorder reads them: recorder.py)


class TerminateOnNaN(Callback):
    """Always attached (as fastai's is). On a CPU each loss is checked before its step, so a NaN never reaches
    the weights. On a GPU that check would make the host wait for the device every step (see recorder.py): the
    losses are checked together every `CHECK_EVERY` steps and before every checkpoint (`check`), so a NaN can
    reach the weights in memory for a few steps but never a checkpoint on disk.

    The message names the epoch and step, the last good checkpoint when the learner writes them, and the usual
    cure (a lower learning rate). The learning-rate finder goes without it: it ends its sweep on divergence."""

    order = 20  # after MixedPrecision has left autocast

    def __init__(self, every: int | None = None) -> None:
        self.every = every  # steps between checks; None: each step on a CPU, CHECK_EVERY on a GPU
        self._pending: list[tuple[torch.Tensor, int | None, int]] = []  # (loss on the device, epoch step, fit step)

    def before_fit(self, learn) -> None:
        self._pending = []

    def after_loss(self, learn) -> None:
        if not learn.training:
            return
        step = getattr(getattr(learn.train_dl, "position", None), "batches", None)
        self._pending.append((learn.loss.detach(), step, learn.iter + 1))
        every = self.every or (1 if learn.loss.device.type == "cpu" else CHECK_EVERY)
        if len(self._pending) >= every:
            self.check(learn)

    def after_train(self, learn) -> None:
        self.check(learn)

    def check(self, learn) -> None:
        """Raise `NonFiniteLoss` if a loss not checked yet is NaN or infinite (one wait for the device)."""
        if not self._pending:
            return
        losses = torch.stack([t.float() for t, _, _ in self._pending])
        if bool(torch.isfinite(losses).all()):
            self._pending.clear()
            return
        i = int((~torch.isfinite(losses)).nonzero()[0])
        value, step, fit_step = float(losses[i]), self._pending[i][1], self._pending[i][2]
        self._pending.clear()
        where = f"epoch {learn.epoch + 1}" + (f" step {step}" if step else f", step {fit_step} of the fit")
        ck = getattr(learn, "checkpointer", None)
        last = f"; the last good checkpoint is {ck.last} in {ck.path}" if ck and ck.last else ""
        lr = max(g["lr"] for g in learn.opt.param_groups)
        raise NonFiniteLoss(f"the training loss became {value} at {where} ({learn.phase}){last}; the learning rate "
                            f"is too high for this model and data: try a lower --lr (it was {lr:.3g} there)")
