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


def accuracy_multi(logits: torch.Tensor, targets: torch.Tensor, thresh: float = 0.5) -> float:
    """Multi-label: the fraction of (image, tag) decisions right at `thresh` on the sigmoid (fastai's)."""
    return ((logits.sigmoid() > thresh) == targets.bool()).float().mean().item()


def fbeta_multi(logits: torch.Tensor, targets: torch.Tensor, beta: float = 1.0, thresh: float = 0.5) -> float:
    """Multi-label F-beta at `thresh`, averaged over images (the planet competition's "samples" average);
    an image with no tag and none predicted counts as a perfect 1."""
    pred, t = (logits.sigmoid() > thresh).float(), targets.float()
    tp = (pred * t).sum(-1)
    b2 = beta * beta
    denom = (1 + b2) * tp + b2 * (t.sum(-1) - tp) + (pred.sum(-1) - tp)
    score = torch.where(denom > 0, (1 + b2) * tp / denom.clamp_min(1e-12), torch.ones_like(tp))
    return score.mean().item()


def f1_multi(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return fbeta_multi(logits, targets, 1.0)


THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 .. 0.95


def best_threshold(logits: torch.Tensor, targets: torch.Tensor, beta: float = 1.0) -> tuple[float, float]:
    """The sigmoid threshold that maximises multi-label F-beta on these predictions, and that score.

    Chosen on the validation set after training (fastai's lesson picks it by eye from a plot); ties go to
    the threshold nearest 0.5, so a flat curve keeps the neutral choice."""
    scores = {t: fbeta_multi(logits, targets, beta, t) for t in THRESHOLDS}
    best = max(scores.values())
    thresh = min((t for t, s in scores.items() if s >= best - 1e-9), key=lambda t: abs(t - 0.5))
    return thresh, best


def mae(preds: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean absolute error, in the units the targets are in (the learner scales them back: `scaled`)."""
    return (preds.float() - targets.float()).abs().mean().item()


def rmse(preds: torch.Tensor, targets: torch.Tensor) -> float:
    return (preds.float() - targets.float()).pow(2).mean().sqrt().item()


def scaled(metric: Callable[[torch.Tensor, torch.Tensor], float], std: float
           ) -> Callable[[torch.Tensor, torch.Tensor], float]:
    """A regression error on standardised targets, reported in the original units (errors scale with std)."""
    def fn(preds: torch.Tensor, targets: torch.Tensor) -> float:
        return metric(preds, targets) * std

    fn.__name__ = metric.__name__
    return fn


TASK_METRICS = {
    "classify": ("accuracy",),
    "multi_label": ("accuracy_multi", "f1_multi"),
    "regression": ("mae", "rmse"),
}

METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = {
    "accuracy": accuracy, "error_rate": error_rate, "top5_accuracy": top5_accuracy,
    "accuracy_multi": accuracy_multi, "f1_multi": f1_multi, "mae": mae, "rmse": rmse,
}


def get_metric(m: str | Callable) -> tuple[str, Callable[[torch.Tensor, torch.Tensor], float]]:
    if callable(m):
        return m.__name__, m
    if m not in METRICS:
        raise UserError(f"unknown metric {m!r} (choose from {', '.join(METRICS)})")
    return m, METRICS[m]
