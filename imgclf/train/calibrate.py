"""Temperature scaling and calibration error: does a prediction's confidence mean what it says?

A network trained with cross-entropy is often over-confident: of the images it gives 0.95, fewer than 95%
are right. Guo et al. (2017, "On calibration of modern neural networks") show that one scalar fixes most of
it: divide the logits by a temperature T fitted by minimising the negative log-likelihood on held-out data.
Dividing by T > 0 never changes the arg-max, so accuracy is untouched; only the confidences move.

The temperature must be fitted on data the reported figures do not come from: the auto recipe's out-of-fold
probe logits on the training split, or (fixed recipes) one half of validation to score the other, cross-fitted
(`cross_fit_temperature`). ECE here is the usual one: 15 equal-width bins of top-1 confidence, the mean
|accuracy - confidence| weighted by the share of images in each bin.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

BINS = 15
T_MIN, T_MAX = 0.05, 20.0  # outside this the data are too few or degenerate (all right, all one class)


def _as(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(logits).detach().float().cpu(), torch.as_tensor(targets).long().flatten().cpu()


def nll(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the targets under softmax(logits / T)."""
    logits, targets = _as(logits, targets)
    if len(targets) == 0:
        return float("nan")
    return float(F.cross_entropy(logits / temperature, targets))


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> float:
    """The T > 0 minimising NLL of softmax(logits / T): L-BFGS on log T (so T stays positive), from T = 1.

    Convex in 1/T, so L-BFGS finds the optimum in a handful of steps (milliseconds for 10k x 10 logits).
    A weak prior keeps few rows from running away: log T ~ N(0, 1), i.e. (log T)^2 / 2n added to the mean NLL
    (negligible at thousands of rows; on 22 rows all right, plain NLL drives T to 0 and every confidence to
    1.0). Returns 1.0 when there is nothing to fit (no rows, one class only, no error or no right answer: then
    the plain optimum is T -> 0 or infinity, an artefact of the sample); clamped to [0.05, 20]."""
    logits, targets = _as(logits, targets)
    if len(targets) < 2 or logits.ndim != 2 or logits.shape[1] < 2:
        return 1.0
    right = logits.argmax(-1) == targets
    if bool(right.all()) or not bool(right.any()):
        return 1.0
    n = len(targets)
    log_t = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), targets) + log_t.pow(2) / (2 * n)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    t = float(log_t.detach().exp())
    if not math.isfinite(t):
        return 1.0
    return min(max(t, T_MIN), T_MAX)


def reliability(probs: torch.Tensor, targets: torch.Tensor, bins: int = BINS) -> dict[str, Any]:
    """Per equal-width bin of top-1 confidence: its edges, mean confidence, accuracy and count (the diagram's
    data). Empty bins have confidence/accuracy None. `ece` is the weighted gap, `mce` the largest."""
    probs, targets = _as(probs, targets)
    conf, pred = probs.max(-1)
    right = (pred == targets).float()
    # bin i holds (i/bins, (i+1)/bins]; confidence 0 (impossible with softmax) goes to the first
    idx = (torch.ceil(conf * bins).long() - 1).clamp(0, bins - 1)
    counts = torch.bincount(idx, minlength=bins).float()
    conf_sum = torch.bincount(idx, weights=conf, minlength=bins)
    right_sum = torch.bincount(idx, weights=right, minlength=bins)
    n = max(len(targets), 1)
    confs, accs, gaps = [], [], []
    for c, cs, rs in zip(counts.tolist(), conf_sum.tolist(), right_sum.tolist(), strict=True):
        if c == 0:
            confs.append(None)
            accs.append(None)
            continue
        confs.append(cs / c)
        accs.append(rs / c)
        gaps.append((abs(rs / c - cs / c), c))
    return {
        "edges": [i / bins for i in range(bins + 1)],
        "confidence": confs, "accuracy": accs, "count": [int(c) for c in counts.tolist()],
        "ece": sum(g * c for g, c in gaps) / n if gaps else 0.0,
        "mce": max((g for g, _ in gaps), default=0.0),
        "n": len(targets),
    }


def expected_calibration_error(probs: torch.Tensor, targets: torch.Tensor, bins: int = BINS) -> float:
    """ECE: sum over bins of (share of images in the bin) x |accuracy - mean confidence|; 0 is perfect."""
    return float(reliability(probs, targets, bins)["ece"])


def calibration_summary(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                        bins: int = BINS) -> dict[str, float]:
    """ECE and NLL of `logits` before (T=1) and after dividing by `temperature`: the figures a report shows."""
    logits, targets = _as(logits, targets)
    before = F.softmax(logits, -1)
    after = F.softmax(logits / temperature, -1)
    return {
        "temperature": float(temperature),
        "ece_before": expected_calibration_error(before, targets, bins),
        "ece_after": expected_calibration_error(after, targets, bins),
        "nll_before": nll(logits, targets),
        "nll_after": nll(logits, targets, temperature),
        "n": len(targets),
    }


def cross_fit_temperature(logits: torch.Tensor, targets: torch.Tensor, seed: int = 0
                          ) -> tuple[float, dict[str, float]]:
    """For a run with no selection folds: an honest estimate of what a temperature does on unseen data.

    Validation is split in two halves (seeded, stratified by class); T fitted on each half scales the other, so
    every image's calibrated probability comes from a T it did not help fit. Returns (T fitted on all of
    validation: the one shipped, whose effect the cross-fitted figures estimate; summary with `ece_after` /
    `nll_after` cross-fitted)."""
    logits, targets = _as(logits, targets)
    n = len(targets)
    t_all = fit_temperature(logits, targets)
    summary = calibration_summary(logits, targets, t_all)
    if n < 4:
        return t_all, {**summary, "method": "too few images to cross-fit: in-sample"}
    g = torch.Generator().manual_seed(seed)
    half = torch.zeros(n, dtype=torch.bool)
    for c in targets.unique():
        rows = (targets == c).nonzero().flatten()
        rows = rows[torch.randperm(len(rows), generator=g)]
        half[rows[: len(rows) // 2]] = True
    scaled = torch.empty_like(logits)
    temps = []
    for part in (half, ~half):
        t = fit_temperature(logits[part], targets[part])
        temps.append(t)
        scaled[~part] = logits[~part] / t
    summary["ece_after"] = expected_calibration_error(F.softmax(scaled, -1), targets)
    summary["nll_after"] = float(F.cross_entropy(scaled, targets))
    summary["fold_temperatures"] = temps
    summary["method"] = "cross-fitted on two halves of validation"
    return t_all, summary


def apply_temperature(logits: torch.Tensor, temperature: float | None) -> torch.Tensor:
    """logits / T (T None or 1: unchanged); what predictor, export and evaluate divide by."""
    if not temperature or temperature == 1.0:
        return logits
    return logits / temperature


CALIBRATE = ("auto", "on", "off")


def choose_temperature(valid_logits: torch.Tensor, valid_targets: torch.Tensor, mode: str = "auto",
                       selection_logits: torch.Tensor | None = None, selection_targets: torch.Tensor | None = None,
                       seed: int = 0) -> dict[str, Any]:
    """`--calibrate`: the temperature a run ships, with ECE/NLL on validation before and after and how it was had.

    With selection data (the auto recipe's out-of-fold probe logits on the training split) T is fitted there and
    scored on validation as it is; without (fixed recipes), T is fitted on validation and its figures are the
    cross-fitted ones (`cross_fit_temperature`), so no image is scored with a T it helped fit. `mode` "auto"
    ships T only if that honest NLL is lower than the uncalibrated one; "on" always; "off" never (figures still
    reported). `temperature` is what ships (1.0 = none), `fitted` the T found; `ece` is the shipped model's."""
    if mode not in CALIBRATE:
        from ..errors import UserError

        raise UserError(f"--calibrate {mode}: choose {', '.join(CALIBRATE)}")
    if selection_logits is not None and selection_targets is not None and len(selection_targets) >= 2:
        fitted = fit_temperature(selection_logits, selection_targets)
        summary = {**calibration_summary(valid_logits, valid_targets, fitted),
                   "method": f"fitted on {len(selection_targets)} out-of-fold training logits (selection folds); "
                             "figures on validation"}
    else:
        fitted, summary = cross_fit_temperature(valid_logits, valid_targets, seed)
    better = summary["nll_after"] < summary["nll_before"]
    applied = mode == "on" or (mode == "auto" and better)
    if mode == "off":
        why = "--calibrate off"
    elif mode == "on":
        why = "--calibrate on"
    else:
        why = (f"validation NLL {summary['nll_before']:.4f} -> {summary['nll_after']:.4f} at T={fitted:.3f}: "
               + ("kept" if better else "not lower, left at T=1"))
    return {**summary, "temperature": fitted if applied else 1.0, "fitted": fitted, "applied": applied,
            "mode": mode, "why": why, "ece": summary["ece_after"] if applied else summary["ece_before"]}


def evaluate_classes(learn: Any, mode: str = "auto", selection_logits: torch.Tensor | None = None,
                     selection_targets: torch.Tensor | None = None, seed: int = 0,
                     preds: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, Any]:
    """A single-label run's final validation figures: the learner's (valid_loss, accuracy), balanced accuracy
    and macro F1 with bootstrap bounds, per-class recall, and the temperature chosen by `choose_temperature`
    (set on `learn.temperature`, so `export` writes it into model.json) with its ECE before/after.

    `preds`: the validation (logits, targets) when they are at hand already (the probe's, from cached features:
    `recipes.cached_valid_preds`); else the learner predicts them."""
    from ..data.samplers import class_counts, imbalance_ratio
    from .metrics import class_figures

    logits, targets = preds if preds is not None else learn.get_preds()
    # the bootstrap's own fixed seed, not the run's: train, evaluate and interpret give the same bounds
    final = {**learn.score(logits, targets), **class_figures(logits, targets)}
    cal = choose_temperature(logits, targets, mode, selection_logits, selection_targets, seed)
    learn.temperature = cal["temperature"]
    final.update(ece=cal["ece"], temperature=cal["temperature"], calibration=cal, balance=learn.balance,
                 imbalance_ratio=imbalance_ratio(class_counts(learn.data.train_y, len(learn.data.classes))))
    if cal["temperature"] != 1.0:  # the loss of what export ships (and evaluate scores): valid_loss is at T = 1
        final["valid_loss_calibrated"] = nll(logits, targets, cal["temperature"])
    return final
