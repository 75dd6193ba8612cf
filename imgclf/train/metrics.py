"""Metrics as functions of (logits, targets) over the whole validation set."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import UserError


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return (logits.argmax(-1) == targets).float().mean().item()


def error_rate(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return 1.0 - accuracy(logits, targets)


def top5_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    k = min(5, logits.shape[-1])
    return (logits.topk(k, -1).indices == targets[:, None]).any(-1).float().mean().item()


METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = {
    "accuracy": accuracy, "error_rate": error_rate, "top5_accuracy": top5_accuracy,
}


def get_metric(m: str | Callable) -> tuple[str, Callable[[torch.Tensor, torch.Tensor], float]]:
    if callable(m):
        return m.__name__, m
    if m not in METRICS:
        raise UserError(f"unknown metric {m!r} (choose from {', '.join(METRICS)})")
    return m, METRICS[m]
