"""A linear probe: logistic regression on cached pooled features, fitted full-batch with L-BFGS.

On frozen features this is the classical transfer baseline (the PyTorch tutorial's "fixed feature
extractor", 0.954 on hymenoptera with ResNet-18), and it is often the best model outright when images
are few or small. Fitted full-batch it is deterministic and takes well under a second per strength
for thousands of images, so the weight decay can be chosen on validation from a grid.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .forked import fork_map, one_thread

WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
# The auto recipe's probe fits each training image's mirror too: a second feature pass over the training split
# and twice the rows in each fit (~1 s of the default hymenoptera job's 7.5 s). Measured on one code base
# (bench/recipes.py's sets, 2026-11-30): without them hymenoptera falls from 0.9608 to 0.9542 (one image, under its
# 0.95 target's margin); hymenoptera-8 (0.9608), Fashion-MNIST 2,000 (0.8770) and the 48 px photos (0.8758) do not
# move. (Session 6 read the 48 px set as 3.3 points worse without them, against a table from before CV selection.)
PROBE_MIRRORS = True


# the head phase's own fit on cached features (the fixed recipe's frozen epochs): AdamW one-cycle behind dropout.
# It competes with the L-BFGS head on the same CV folds (`recipes.one_cycle_head`). Measured on validation
# (2026-12-01, 8 epochs at 2e-3 vs the CV'd L-BFGS head, same features): loss 0.307 vs 0.326 on hymenoptera at
# 48 px (256 px), 0.318 vs 0.324 (192 px), 0.134 vs 0.150 hymenoptera, 0.277 vs 0.288 hymenoptera-8, 0.458 vs
# 0.470 Fashion 2,000
HEAD_EPOCHS, HEAD_LR = 8, 2e-3


def probe_rows(n_train: int) -> int:
    """Feature rows the auto recipe's probe computes and fits for `n_train` training images (their mirrors too
    with PROBE_MIRRORS): what the planner prices and the rate record counts."""
    return n_train * (2 if PROBE_MIRRORS else 1)


@dataclass
class ProbeFit:
    """One strength tried: its figures on validation, and the head it produced."""

    wd: float
    train_loss: float
    valid_loss: float
    accuracy: float
    seconds: float
    weight: torch.Tensor
    bias: torch.Tensor


def _fit_one(xs: torch.Tensor, y: torch.Tensor, n_classes: int, wd: float, label_smoothing: float,
             max_iter: int, class_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    lin = nn.Linear(xs.shape[1], n_classes)
    nn.init.zeros_(lin.weight)
    nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(xs), y, weight=class_weights, label_smoothing=label_smoothing)
        loss = loss + wd * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        loss = F.cross_entropy(lin(xs), y)
    return lin.weight.detach(), lin.bias.detach(), float(loss)


def fit_linear_probe(
    x: torch.Tensor, y: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor, n_classes: int,
    wds: Sequence[float] = WEIGHT_DECAYS, label_smoothing: float = 0.1, max_iter: int = 200,
    class_weights: torch.Tensor | None = None,
) -> list[ProbeFit]:
    """A probe per weight decay; each head maps raw features to logits (the scaling folded in).

    Features are centred and divided by one global scale for the fit, so one grid of decays suits
    every backbone; the scale is then folded into the weights, giving an ordinary `nn.Linear` on the
    pooled output. One scale, not one per feature: with few images, per-feature standardisation
    blows up near-constant features (measured, hymenoptera with 8 images per class: 0.89 validation
    accuracy per-feature vs 0.95 global; the full set: 0.954 vs 0.961).
    `class_weights` (n_classes,): per-class weights of the training cross-entropy (`--balance weights`).
    """
    x, y, xv, yv = x.float().cpu(), y.cpu(), xv.float().cpu(), yv.cpu()
    mu = x.mean(0)
    sd = ((x - mu).pow(2).mean()).sqrt().clamp_min(1e-6)
    xs = (x - mu) / sd
    cw = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32).cpu()
    with small_threads(xs):
        return _fit_grid(xs, y, xv, yv, mu, sd, n_classes, wds, label_smoothing, max_iter, cw)


def _fit_grid(xs: torch.Tensor, y: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor, mu: torch.Tensor,
              sd: torch.Tensor, n_classes: int, wds: Sequence[float], label_smoothing: float, max_iter: int,
              class_weights: torch.Tensor | None = None) -> list[ProbeFit]:
    out = []
    with torch.enable_grad():
        for wd in wds:
            t = time.perf_counter()
            w, b, train_loss = _fit_one(xs, y, n_classes, wd, label_smoothing, max_iter, class_weights)
            weight = w / sd
            bias = b - weight @ mu
            logits = xv @ weight.T + bias
            out.append(ProbeFit(
                wd, train_loss, float(F.cross_entropy(logits, yv)), float((logits.argmax(1) == yv).float().mean()),
                time.perf_counter() - t, weight, bias,
            ))
    return out


def score_head(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> tuple[float, float]:
    """(cross-entropy, accuracy) of a linear head on feature rows `x`."""
    logits = x.float().cpu() @ weight.detach().float().cpu().T + bias.detach().float().cpu()
    y = y.cpu()
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def head_fit(head: nn.Linear, x: torch.Tensor, y: torch.Tensor, valid_loss: float, accuracy: float,
             seconds: float) -> ProbeFit:
    """A fitted `nn.Linear` head (the one-cycle kind) as a `ProbeFit`: its training loss on `x`, and the figures
    it is judged by (out-of-fold, or on a holdout)."""
    w, b = head.weight.detach().float().cpu(), head.bias.detach().float().cpu()
    return ProbeFit(0.0, score_head(x, y, w, b)[0], valid_loss, accuracy, seconds, w, b)


def best_fit(fits: Sequence[ProbeFit]) -> ProbeFit:
    """Lowest validation loss; ties go to the stronger decay (the simpler model)."""
    return min(fits, key=lambda f: (round(f.valid_loss, 6), -f.wd))


@torch.no_grad()
def load_head(classifier: nn.Linear, fit: ProbeFit) -> None:
    classifier.weight.copy_(fit.weight.to(classifier.weight))
    classifier.bias.copy_(fit.bias.to(classifier.bias))


# --- choosing the decay without a validation set: grouped, stratified k-fold CV on the training features ---


@dataclass
class ProbeSelection:
    """What `select_probe` chose, from the training features alone.

    `fit` is the head refitted on all training rows at `wd`; its `valid_loss` / `accuracy` are the
    out-of-fold (cross-validated) figures, not validation ones: selection never sees a validation set."""

    wd: float                 # the L-BFGS head's decay, chosen by k-fold CV on the TRAINING features only
    cv_loss: float            # mean out-of-fold cross-entropy at the chosen wd
    cv_loss_se: float         # its standard error over folds
    cv_accuracy: float
    table: list[dict]         # per wd: {"wd", "cv_loss", "cv_loss_se", "cv_accuracy"}
    fit: ProbeFit             # the head refitted on ALL training features at the chosen wd
    oof_logits: torch.Tensor  # out-of-fold logits of every training row at the chosen wd (for calibration)
    folds: torch.Tensor | None = None  # (N,) the fold of each row
    seconds: float = 0.0
    head: str = "lbfgs"       # or "one_cycle" (recipes.one_cycle_head), when its CV loss was lower
    init: dict[str, torch.Tensor] | None = None  # one_cycle: the classifier it starts from (refits start there too)


def grouped_stratified_folds(y: torch.Tensor, groups: torch.Tensor | None = None, folds: int = 5,
                             seed: int = 0) -> torch.Tensor:
    """(N,) fold index of each row: rows sharing a group id share a fold; each class spread evenly over folds.

    A group's class is its first row's. Per class, groups are shuffled (seeded) and dealt largest first to the
    fold holding the fewest rows of that class so far (ties: fewest rows overall, then lowest index), so the
    result is deterministic for a seed. Fewer groups than `folds` gives as many folds as groups."""
    y = torch.as_tensor(y).cpu().long()
    n = len(y)
    g = torch.arange(n) if groups is None else torch.as_tensor(groups).cpu().long()
    if len(g) != n:
        raise ValueError(f"groups has {len(g)} rows, y has {n}")
    uniq, inv = torch.unique(g, return_inverse=True)
    n_groups = len(uniq)
    if n_groups < 2:
        raise ValueError("cross-validation needs at least two groups of rows")
    k = min(folds, n_groups)
    first = torch.full((n_groups,), n, dtype=torch.long).scatter_reduce(0, inv, torch.arange(n), "amin")
    g_label, g_size = y[first], torch.bincount(inv, minlength=n_groups)
    gen = torch.Generator().manual_seed(seed)
    fold_of_group = torch.empty(n_groups, dtype=torch.long)
    total = [0] * k
    for c in torch.unique(g_label).tolist():
        members = torch.nonzero(g_label == c).flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        members = members[torch.argsort(g_size[members], descending=True, stable=True)]
        per_class = [0] * k
        for gi in members.tolist():
            f = min(range(k), key=lambda j: (per_class[j], total[j], j))
            fold_of_group[gi] = f
            per_class[f] += int(g_size[gi])
            total[f] += int(g_size[gi])
    return fold_of_group[inv]


# L-BFGS's stopping change for the CV fits, which only rank decays: their out-of-fold losses come within 2e-4 of the
# strict (1e-9) fits' on hymenoptera (standard errors 3e-3 to 9e-3) in 0.75x the time (1.11 s vs 1.45 s, 2-core Xeon)
CV_TOLERANCE = 1e-7


def _lbfgs(xs: torch.Tensor, y: torch.Tensor, n_classes: int, wd: float, label_smoothing: float, max_iter: int,
           init: tuple[torch.Tensor, torch.Tensor] | None = None, class_weights: torch.Tensor | None = None,
           tolerance_change: float = 1e-9) -> tuple[torch.Tensor, torch.Tensor]:
    """`_fit_one`'s objective, started from `init` (a warm start) instead of zeros. `tolerance_change`: L-BFGS's
    stop when a step moves the loss or weights less (its default 1e-9 for the head a run keeps; CV_TOLERANCE)."""
    w = torch.zeros(n_classes, xs.shape[1]) if init is None else init[0].clone()
    b = torch.zeros(n_classes) if init is None else init[1].clone()
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_change=tolerance_change)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xs @ w.T + b, y, weight=class_weights, label_smoothing=label_smoothing)
        loss = loss + wd * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def _row_space(xs: torch.Tensor) -> torch.Tensor:
    """(r, D) orthonormal basis of the rows of `xs` when D > rows (else the identity's rows are not worth it: None).

    The decay's gradient and the data's both lie in the span of the training rows, so L-BFGS started at zero never
    leaves it: fitting r coefficients per class instead of D weights gives the same iterates (to rounding) for
    less work when images are fewer than feature dimensions (392 x 1280 -> 392 x 392 per fold on hymenoptera)."""
    _, s, vh = torch.linalg.svd(xs, full_matrices=False)
    return vh[s > s[0] * 1e-6]


def small(x: torch.Tensor) -> bool:
    """Whether heads fitted on `x` run fastest on one torch thread: thread hand-offs cost more than the maths
    there (22 ms vs <1 ms an L-BFGS step, measured on 48 x 1280 features with the other core busy)."""
    return x.numel() < 4_000_000


def small_threads(x: torch.Tensor) -> AbstractContextManager[None]:
    """One torch thread while fitting heads on `x` when it is `small`."""
    return one_thread(small(x))


@dataclass
class LbfgsCV:
    """The L-BFGS probe's k-fold selection of its decay, cut into one task per fold (`tasks`: the fork pool runs
    them side by side, with other work of the same CV: recipes.probe_cv) and the choice from their results
    (`choose`). `select_probe` does both."""

    x: torch.Tensor
    y: torch.Tensor
    n_classes: int
    fold: torch.Tensor  # (N,) each row's fold
    wds: Sequence[float]
    label_smoothing: float
    max_iter: int
    class_weights: torch.Tensor | None
    warm_start: bool
    started: float  # perf_counter when the selection began: its seconds count from there

    @property
    def k(self) -> int:
        return int(self.fold.max()) + 1

    def tasks(self) -> list[Callable[[], tuple[torch.Tensor, torch.Tensor]]]:
        """One per fold: (logits (len(wds), held-out rows, classes), losses (len(wds),)) of its chain of decays."""
        return [partial(self._fold, f) for f in range(self.k)]

    def _fold(self, f: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Fold `f`'s fits, strongest decay first, each warm-started from the one before (same rows: no leak)."""
        tr, te = self.fold != f, self.fold == f
        xt = self.x[tr]
        mu = xt.mean(0)
        sd = (xt - mu).pow(2).mean().sqrt().clamp_min(1e-6)
        xs, xe = (xt - mu) / sd, (self.x[te] - mu) / sd
        if xs.shape[1] > xs.shape[0]:
            basis = _row_space(xs)
            xs, xe = xs @ basis.T, xe @ basis.T
        logits = torch.zeros(len(self.wds), len(xe), self.n_classes)
        losses = torch.zeros(len(self.wds))
        last = None
        for i in sorted(range(len(self.wds)), key=lambda i: -self.wds[i]):
            w, b = _lbfgs(xs, self.y[tr], self.n_classes, self.wds[i], self.label_smoothing, self.max_iter,
                          last if self.warm_start else None, self.class_weights, CV_TOLERANCE)
            last = (w, b)
            logits[i] = xe @ w.T + b
            losses[i] = F.cross_entropy(logits[i], self.y[te])
        return logits, losses

    def choose(self, results: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> ProbeSelection:
        """The decay with the lowest mean out-of-fold loss (ties: the stronger), refitted on every row from zero."""
        x, y, wds, k = self.x, self.y, self.wds, self.k
        oof = torch.zeros(len(wds), len(y), self.n_classes)
        fold_loss = torch.zeros(len(wds), k)
        for f, (logits, losses) in enumerate(results):
            oof[:, self.fold == f] = logits
            fold_loss[:, f] = losses
        table = []
        for i, wd in enumerate(wds):
            se = float(fold_loss[i].std() / k ** 0.5) if k > 1 else 0.0
            table.append({"wd": wd, "cv_loss": float(fold_loss[i].mean()), "cv_loss_se": se,
                          "cv_accuracy": float((oof[i].argmax(1) == y).float().mean())})
        best = min(range(len(wds)), key=lambda i: (round(table[i]["cv_loss"], 6), -wds[i]))
        t = time.perf_counter()
        mu = x.mean(0)
        sd = (x - mu).pow(2).mean().sqrt().clamp_min(1e-6)
        xs = (x - mu) / sd
        basis = _row_space(xs) if xs.shape[1] > xs.shape[0] else None
        with small_threads(x):
            w, b = _lbfgs(xs if basis is None else xs @ basis.T, y, self.n_classes, wds[best], self.label_smoothing,
                          self.max_iter, None, self.class_weights)
        w = w if basis is None else w @ basis
        with torch.no_grad():
            train_loss = float(F.cross_entropy(xs @ w.T + b, y))
        weight = w / sd
        fit = ProbeFit(wds[best], train_loss, table[best]["cv_loss"], table[best]["cv_accuracy"],
                       time.perf_counter() - t, weight, b - weight @ mu)
        row = table[best]
        return ProbeSelection(wds[best], row["cv_loss"], row["cv_loss_se"], row["cv_accuracy"], table, fit,
                              oof[best], self.fold, time.perf_counter() - self.started)


def lbfgs_cv(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, groups: torch.Tensor | None = None, folds: int = 5,
    wds: Sequence[float] = WEIGHT_DECAYS, seed: int = 0, label_smoothing: float = 0.1, max_iter: int = 200,
    class_weights: torch.Tensor | None = None, warm_start: bool = True,
) -> LbfgsCV:
    """`select_probe`'s selection, its folds drawn, ready to run (`LbfgsCV.tasks`, then `LbfgsCV.choose`)."""
    started = time.perf_counter()
    x, y = x.float().cpu(), torch.as_tensor(y).cpu().long()
    fold = grouped_stratified_folds(y, groups, folds, seed)
    cw = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32).cpu()
    return LbfgsCV(x, y, n_classes, fold, tuple(wds), label_smoothing, max_iter, cw, warm_start, started)


def select_probe(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, groups: torch.Tensor | None = None, folds: int = 5,
    wds: Sequence[float] = WEIGHT_DECAYS, seed: int = 0, label_smoothing: float = 0.1, max_iter: int = 200,
    class_weights: torch.Tensor | None = None, warm_start: bool = True,
) -> ProbeSelection:
    """Choose the probe's weight decay by grouped, stratified k-fold CV on the training features, then refit.

    Why: choosing the decay (and, upstream, everything else) on the validation split and then reporting
    accuracy on that same split flatters the figure, most where validation is small. Cross-validation on
    the training split's cached features is nearly free for a probe and leaves validation untouched; no
    validation tensor is an argument. `groups`: rows with one id (an image and its mirror view,
    near-duplicates) fall in one fold, else the mirror of a held-out image would be in the fit.

    The score is plain out-of-fold cross-entropy (mean over folds; ties go to the stronger decay). Each fold
    repeats exactly what the final fit does (`fit_linear_probe`'s objective, one global feature scale from the
    fold's training rows, L-BFGS from zero), in the span of the fold's training rows (`_row_space`: same
    iterates, fewer numbers). No warm start across folds: the previous fold's weights were fitted on this
    fold's held-out rows and, in directions this fold's rows do not constrain, decay only at the rate of the
    decay itself: measured, that leak took wd=1e-4's CV loss on hymenoptera from 0.178 to 0.151 and made
    it the choice. Within a fold each decay warm-starts from the next stronger one (same rows, no leak;
    CV losses equal the cold ones to 3 decimals); `warm_start=False` starts each from zero. The refit on all
    rows starts from zero, so the head is `fit_linear_probe`'s at that decay (to 3e-5). The folds are
    independent: `forked.fork_map` runs them side by side where it can.
    Measured (CPU seconds, under load: 2 shared cores at load ~10): hymenoptera's 490 x 1280
    EfficientNet-Lite0 features (245 images + mirrors), 5 folds x 7 decays + the refit: 3.3-5.0 s warm,
    6.2-6.7 s cold, against 1.4 s for `fit_linear_probe`'s 7 fits scored on validation; on the quiet 2-core
    Xeon with the CV fits stopping at CV_TOLERANCE: 1.1 s warm (1.45 s at L-BFGS's default tolerance).
    """
    cv = lbfgs_cv(x, y, n_classes, groups, folds, wds, seed, label_smoothing, max_iter, class_weights, warm_start)
    return cv.choose(fork_map(cv.tasks(), on_one=small(cv.x)))
