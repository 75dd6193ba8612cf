"""Schedules as pure functions of training progress `pct` in [0, 1]: nothing keeps a hidden counter."""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable

from ..errors import UserError

Schedule = Callable[[float], float]


def cos_interp(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2 * (math.cos(math.pi * pct) + 1)


def one_cycle_lr(pct: float, pct_start: float = 0.25, div: float = 25.0, div_final: float = 1e5) -> float:
    """Multiplier of the peak rate: cosine warm-up from 1/div to 1, then cosine down to 1/div_final."""
    if pct < pct_start:
        return cos_interp(1 / div, 1.0, pct / pct_start)
    return cos_interp(1.0, 1 / div_final, (pct - pct_start) / (1 - pct_start))


def one_cycle_mom(pct: float, pct_start: float = 0.25, hi: float = 0.95, lo: float = 0.85) -> float:
    """Momentum (or Adam's beta1) moving opposite to the rate, as in Smith's one-cycle policy."""
    if pct < pct_start:
        return cos_interp(hi, lo, pct / pct_start)
    return cos_interp(lo, hi, (pct - pct_start) / (1 - pct_start))


def exp_range(pct: float, start: float, end: float) -> float:
    """Exponential sweep from `start` to `end`: the learning-rate finder's schedule."""
    return start * (end / start) ** pct


def constant(pct: float) -> float:
    return 1.0


def linear_warmup(pct: float, warmup: float, start: float) -> float:
    """Straight line from `start` at pct 0 to 1 at pct `warmup` (the warm-up part of a schedule)."""
    return start + (1.0 - start) * pct / warmup


def warmup_cosine(pct: float, warmup: float = 0.05, final: float = 1e-3) -> float:
    """Linear warm-up from `final` to 1 over the first `warmup` of training, then cosine down to `final`.

    The recipe of most modern ImageNet training (timm's `cosine` with warm-up, Goyal et al. 2017 for the
    warm-up): it starts at `final`, not at 0, so no step is wasted, and every value lies in (0, 1].
    """
    if pct < warmup:
        return linear_warmup(pct, warmup, final)
    return cos_interp(1.0, final, (pct - warmup) / (1 - warmup) if warmup < 1 else 1.0)


def step_decay(pct: float, milestones: tuple[float, ...] = (0.5, 0.75), gamma: float = 0.1,
               warmup: float = 0.0) -> float:
    """The classic ResNet schedule: 1, multiplied by `gamma` at each milestone reached (0.5 -> 0.1, 0.75 -> 0.01).

    `warmup` > 0 adds a linear ramp from `gamma` to 1 over the first `warmup` of training.
    """
    if pct < warmup:
        return linear_warmup(pct, warmup, gamma)
    return gamma ** bisect_right(sorted(milestones), pct)


# name -> (rate multiplier, momentum or None: None leaves momentum as the optimizer has it)
SCHEDULES: dict[str, tuple[Schedule, Schedule | None]] = {
    "one_cycle": (one_cycle_lr, one_cycle_mom),
    "cosine": (warmup_cosine, None),
    "step": (step_decay, None),
    "constant": (constant, None),
}


def get_schedule(name: str) -> tuple[Schedule, Schedule | None]:
    """`(lr_sched, mom_sched or None)` for a schedule name, with each function's default settings."""
    if name not in SCHEDULES:
        raise UserError(f"--schedule {name}: unknown schedule (choose from {', '.join(SCHEDULES)})")
    return SCHEDULES[name]
