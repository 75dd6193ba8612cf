"""Metrics as functions of (logits, targets) over the whole validation set."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

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


def cross_fitted_decisions(logits: torch.Tensor, targets: torch.Tensor, beta: float = 1.0,
                           seed: int = 0) -> torch.Tensor | None:
    """Each image's tag decisions at the threshold `best_threshold` chose on the other half of the images (two
    seeded halves), as logits of +-10: what a threshold chosen on these images scores on images it was not chosen
    on. The threshold the model keeps is chosen on all of them; scored on the same images, its F1 reads high
    (the figure a choice is made on is not the figure to report: README). None under 4 images."""
    n = len(targets)
    if n < 4:
        return None
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    halves = (order[: n // 2], order[n // 2 :])
    out = torch.empty_like(logits, dtype=torch.float32)
    for this, other in (halves, halves[::-1]):
        t, _ = best_threshold(logits[other], targets[other], beta)
        out[this] = torch.where(logits[this].sigmoid() > t, 10.0, -10.0)
    return out


def per_tag(logits: torch.Tensor, targets: torch.Tensor, names: Sequence[str], thresh: float = 0.5
            ) -> list[dict[str, Any]]:
    """Each tag's precision, recall, F1 and support (images that carry it) at `thresh`: the report's per-tag
    table (None where a figure has no denominator)."""
    pred, t = logits.sigmoid() > thresh, targets.bool()
    tp, fp, fn = (pred & t).sum(0), (pred & ~t).sum(0), (~pred & t).sum(0)
    rows = []
    for i, name in enumerate(names):
        p = float(tp[i] / (tp[i] + fp[i])) if tp[i] + fp[i] else None
        r = float(tp[i] / (tp[i] + fn[i])) if tp[i] + fn[i] else None
        f1 = 2 * p * r / (p + r) if p is not None and r is not None and p + r else (0.0 if p is not None else None)
        rows.append({"class": name, "precision": p, "recall": r, "f1": f1, "support": int(t[:, i].sum())})
    return rows


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


# the task each named metric scores: a metric of another task fails at the first validation (shapes differ)
METRIC_TASK = {name: task for task, names in (("classify", ("accuracy", "error_rate", "top5_accuracy")),
                                              ("multi_label", ("accuracy_multi", "f1_multi")),
                                              ("regression", ("mae", "rmse"))) for name in names}

PROPORTIONS = ("accuracy", "error_rate", "top5_accuracy")  # one right/wrong per image: Wilson fits


def wilson_interval(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion k/n (95% at z=1.96).

    Unlike the normal approximation it stays inside [0, 1] and is not empty at k=0 or k=n: 0 right of
    10 gives (0, 0.278), so a perfect score on 10 images still says "could be as low as 72%"."""
    if n <= 0:
        return 0.0, 1.0
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    return (0.0 if k <= 0 else lo), (1.0 if k >= n else hi)  # exact ends where rounding would miss them


def bootstrap_interval(values: torch.Tensor, n_boot: int = 1000, seed: int = 0, level: float = 0.95
                       ) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-image `values` (resampling images, fixed seed).

    For figures that are averages over images but not a count of successes (multi-label accuracy, samples F1);
    all resamples in one indexing op: 1000 x 1000 images costs a few milliseconds on CPU."""
    v = torch.as_tensor(values, dtype=torch.float32).flatten()
    if len(v) == 0:
        return 0.0, 1.0
    g = torch.Generator().manual_seed(seed)
    means = v[torch.randint(len(v), (n_boot, len(v)), generator=g)].mean(1)
    a = (1 - level) / 2
    lo, hi = torch.quantile(means, torch.tensor([a, 1 - a])).tolist()
    return lo, hi


def add_intervals(metrics: dict[str, Any], n: int, z: float = 1.96) -> dict[str, Any]:
    """Adds `<name>_low` / `<name>_high` (Wilson, n images) for each proportion metric in `metrics`; in place."""
    for name in PROPORTIONS:
        if isinstance(metrics.get(name), float):
            metrics[f"{name}_low"], metrics[f"{name}_high"] = wilson_interval(round(metrics[name] * n), n, z)
    return metrics


def multi_label_intervals(logits: torch.Tensor, targets: torch.Tensor, thresh: float = 0.5, n_boot: int = 1000,
                          seed: int = 0) -> dict[str, float]:
    """Bootstrap bounds over images of accuracy_multi and f1_multi: `accuracy_multi_low`, ... `f1_multi_high`.

    The (image, tag) decisions of one image are not independent, so no Wilson here: images are resampled."""
    pred, t = (logits.sigmoid() > thresh).float(), targets.float()
    tp = (pred * t).sum(-1)
    denom = 2 * tp + (t.sum(-1) - tp) + (pred.sum(-1) - tp)
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp_min(1e-12), torch.ones_like(tp))
    out = {}
    for name, per_image in (("accuracy_multi", (pred == t).float().mean(-1)), ("f1_multi", f1)):
        out[f"{name}_low"], out[f"{name}_high"] = bootstrap_interval(per_image, n_boot, seed)
    return out


def bootstrap_f1_per_class(preds: torch.Tensor, targets: torch.Tensor, n_classes: int, n_boot: int = 1000,
                           seed: int = 0, level: float = 0.95) -> tuple[list[float], list[float]]:
    """Percentile bootstrap bounds (over images, fixed seed) of each class's F1 from predicted/actual indices.

    F1 has no closed-form interval; all resamples are counted with one bincount: (lows, highs) per class. A
    resample that holds none of a class's images and predicts it nowhere has no F1 for that class (0 / 0): it is
    left out of that class's bounds, as macro F1 leaves such a class out. Counted as 0, a class of 2 images
    scored perfectly had a lower bound of 0: ~12% of resamples of 20 images miss both of them."""
    preds, targets = torch.as_tensor(preds).long().flatten(), torch.as_tensor(targets).long().flatten()
    n = len(targets)
    if n == 0:
        return [0.0] * n_classes, [1.0] * n_classes
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(n, (n_boot, n), generator=g)
    t, p = targets[idx], preds[idx]
    base = torch.arange(n_boot)[:, None] * n_classes
    size = n_boot * n_classes

    def count(cls: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        flat = (base + cls)[mask] if mask is not None else (base + cls).flatten()
        return torch.bincount(flat, minlength=size).reshape(n_boot, n_classes).float()

    tp, support, predicted = count(t, t == p), count(t), count(p)
    denom = support + predicted
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.full_like(tp, math.nan))
    a = (1 - level) / 2
    q = torch.nanquantile(f1, torch.tensor([a, 1 - a]), dim=0)
    return q[0].nan_to_num(0.0).tolist(), q[1].nan_to_num(1.0).tolist()  # no resample with the class: 0-1


def confusion(preds: torch.Tensor, targets: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(n_classes, n_classes) counts: row = actual class, column = predicted."""
    preds, targets = torch.as_tensor(preds).long().flatten(), torch.as_tensor(targets).long().flatten()
    return torch.bincount(targets * n_classes + preds, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _balanced_and_f1(tp: torch.Tensor, support: torch.Tensor, predicted: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced accuracy (mean recall over classes with images) and macro F1 (mean F1 over classes that have
    images or predictions, as scikit-learn), from per-class counts; the last dimension is the class."""
    present = support > 0
    recall = tp / support.clamp_min(1)
    bal = (recall * present).sum(-1) / present.sum(-1).clamp_min(1)
    seen = (support + predicted) > 0
    f1 = 2 * tp / (support + predicted).clamp_min(1)
    macro = (f1 * seen).sum(-1) / seen.sum(-1).clamp_min(1)
    return bal, macro


def class_recall(logits: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """Each class's recall (right / images of the class; nan for a class with no images)."""
    cm = confusion(logits.argmax(-1), targets, logits.shape[-1]).float()
    support = cm.sum(1)
    return torch.where(support > 0, cm.diag() / support.clamp_min(1), torch.full_like(support, math.nan)).tolist()


def balanced_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean of the per-class recalls: accuracy as if every class had as many images. With one class at a tenth
    of the other, always answering the majority scores accuracy 0.91 but balanced accuracy 0.5."""
    cm = confusion(logits.argmax(-1), targets, logits.shape[-1]).float()
    return float(_balanced_and_f1(cm.diag(), cm.sum(1), cm.sum(0))[0])


def macro_f1(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Unweighted mean over classes of F1 = 2 TP / (2 TP + FP + FN): each class counts the same."""
    cm = confusion(logits.argmax(-1), targets, logits.shape[-1]).float()
    return float(_balanced_and_f1(cm.diag(), cm.sum(1), cm.sum(0))[1])


METRICS.update(balanced_accuracy=balanced_accuracy, macro_f1=macro_f1)


def class_figures(logits: torch.Tensor, targets: torch.Tensor, n_boot: int = 1000, seed: int = 0,
                  level: float = 0.95) -> dict[str, Any]:
    """balanced_accuracy and macro_f1 with percentile bootstrap bounds (`_low`/`_high`, images resampled, fixed
    seed), and per-class recall: the single-label figures that do not let a large class hide a small one.

    Neither is a proportion of independent successes, so no Wilson interval: all resamples are counted in one
    bincount (1000 x 153 images: milliseconds)."""
    logits, targets = logits.float().cpu(), torch.as_tensor(targets).long().flatten().cpu()
    k, n = logits.shape[-1], len(targets)
    preds = logits.argmax(-1)
    out: dict[str, Any] = {"balanced_accuracy": balanced_accuracy(logits, targets),
                           "macro_f1": macro_f1(logits, targets), "class_recall": class_recall(logits, targets)}
    if n == 0:
        return out
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(n, (n_boot, n), generator=g)
    t, p = targets[idx], preds[idx]
    base = torch.arange(n_boot)[:, None] * k

    def count(cls: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        flat = (base + cls)[mask] if mask is not None else (base + cls).flatten()
        return torch.bincount(flat, minlength=n_boot * k).reshape(n_boot, k).float()

    bal, macro = _balanced_and_f1(count(t, t == p), count(t), count(p))
    a = (1 - level) / 2
    q = torch.tensor([a, 1 - a])
    out["balanced_accuracy_low"], out["balanced_accuracy_high"] = torch.quantile(bal, q).tolist()
    out["macro_f1_low"], out["macro_f1_high"] = torch.quantile(macro, q).tolist()
    return out


def format_figure(name: str, value: float, lo: float | None = None, hi: float | None = None,
                  n: int | None = None) -> str:
    """`accuracy 0.9673 (0.93-0.99, 153 images)`; just `accuracy 0.9673` without bounds."""
    if lo is None or hi is None:
        return f"{name} {value:.4f}"
    return f"{name} {value:.4f} ({lo:.2f}-{hi:.2f}" + (f", {n} images)" if n is not None else ")")


def metric_list(metrics: str | Callable | Sequence[str | Callable]) -> list[str | Callable]:
    """`metrics` as a list: one name or function is a list of one, as fastai users write `metrics="accuracy"`
    (iterated, the string was read letter by letter: "unknown metric 'a'")."""
    if isinstance(metrics, str) or callable(metrics):
        return [metrics]
    if not isinstance(metrics, Iterable):
        raise UserError(f"metrics={metrics!r}: give a metric name, a function or a list of them "
                        f"(names: {', '.join(METRICS)})")
    return list(metrics)


def get_metric(m: str | Callable) -> tuple[str, Callable[[torch.Tensor, torch.Tensor], float]]:
    if callable(m):
        return m.__name__, m
    if m not in METRICS:
        raise UserError(f"unknown metric {m!r} (choose from {', '.join(METRICS)})")
    return m, METRICS[m]
