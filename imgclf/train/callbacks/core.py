"""The callback protocol: a closed set of named events, and exceptions that skip parts of the loop.

A callback gets the learner as an argument, keeps its own state, and may read or change the learner's
public attributes (`model`, `opt`, `xb`, `yb`, `pred`, `loss`, `epoch`, `pct_train`...).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..learner import Learner

EVENTS = (
    "before_fit", "before_epoch", "before_train", "before_batch", "after_pred", "after_loss",
    "before_step", "after_batch", "after_train", "before_validate", "after_validate", "after_epoch",
    "after_fit",
)


class CancelBatchException(Exception):
    """Skip the rest of this batch."""


class CancelEpochException(Exception):
    """Skip the rest of this epoch (validation included)."""


class CancelFitException(Exception):
    """Stop training now; `after_fit` still runs."""


class Callback:
    """Override the events you need; `order` sorts callbacks (lower runs first)."""

    order: int = 0

    def before_fit(self, learn: Learner) -> None: ...
    def before_epoch(self, learn: Learner) -> None: ...
    def before_train(self, learn: Learner) -> None: ...
    def before_batch(self, learn: Learner) -> None: ...
    def after_pred(self, learn: Learner) -> None: ...
    def after_loss(self, learn: Learner) -> None: ...
    def before_step(self, learn: Learner) -> None: ...
    def after_batch(self, learn: Learner) -> None: ...
    def after_train(self, learn: Learner) -> None: ...
    def before_validate(self, learn: Learner) -> None: ...
    def after_validate(self, learn: Learner) -> None: ...
    def after_epoch(self, learn: Learner) -> None: ...
    def after_fit(self, learn: Learner) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
