"""Schedules as pure functions of training progress `pct` in [0, 1]: nothing keeps a hidden counter."""

from __future__ import annotations

import math


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
