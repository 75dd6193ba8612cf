"""`auto_fit`: choose the recipe from the data — probe first on cached features, fine-tune only where it pays.

A fixed recipe (fastai's `fine_tune`, ours) loses badly on two common kinds of data: few images per
class, and small or blurred images. There a linear probe on frozen, cached features (image + mirror)
beats a full fine-tune in a tenth of the time. So the default (after `plan.choose_plan` priced it, and chose
a from-scratch run instead where images are many and small):

1. picks candidate sizes from the images (never shrinking photos below what the backbone saw, never
   blowing 28 px images up to 256 px without checking that it helps);
2. probes each size on cached features, its weight decay and the size chosen by 5-fold cross-validation on
   the TRAINING features (an image and its mirror in one fold; seconds): the validation split is not seen;
3. tries a fine-tune from the chosen probe only when an inner holdout of the training split can show a gain
   and the budget allows a trial and an epoch; a trial of 1/8 epoch, judged on that holdout against the
   probe refitted without it, decides whether the epochs run at all (on small blurred photos three epochs
   scored 0.61-0.65 against the probe's 0.77: the trial stops that after ~45 s instead of ~1,100 s);
4. keeps the fine-tuned weights only if the holdout loss improves and its accuracy does not drop (steps 3-4:
   train/finetune.py);
5. writes every candidate, its selection figures beside its validation figures, the seconds, the choice
   and why into `recipe.json`; the validation split is scored for the record, never to choose.

`selection="valid"` is the behaviour before (every choice on the validation split): bench/trust.py compares.
With a `Checkpointer`, the probe's result (its size, weights, report and the plan for a fine-tune) is saved
as soon as it is known, so a resumed job goes straight to the fine-tune (under `selection="cv"` the fine-tune
then starts over from the probe: its trial and epochs run on an inner split that a resume rebuilds).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import ahead
from ..data.core import ImageData
from ..models import recommended_size
from . import distributed as dist
from .callbacks import CSVLogger, SaveBestModel
from .candidate import Candidate
from .checkpoint import Checkpointer
from .finetune import cv_fine_tune, fine_tune
from .forked import fork_map, workers_for
from .lr_finder import LRFind
from .metrics import accuracy, balanced_accuracy
from .plan import (
    EXPORT_SECONDS,
    HOLDOUT,
    TRAIN_COST,
    default_budget,
    fine_tune_seconds,
    record_rate,
    recorded_rate,
    train_forward,
    trial_in_share,
)
from .probe import (
    HEAD_EPOCHS,
    HEAD_LR,
    PROBE_MIRRORS,
    WEIGHT_DECAYS,
    ProbeSelection,
    best_fit,
    fit_linear_probe,
    head_fit,
    lbfgs_cv,
    load_head,
    probe_rows,
    score_head,
    select_probe,
    small,
)
from .vision import VisionLearner, vision_learner

MIN_ERRORS = 10  # a fine-tune is tried only if the probe leaves this many errors to fix where it is judged
RECIPES = ("auto", "probe", "fine_tune")
SELECTIONS = ("cv", "valid")
__all__ = ["RECIPES", "SELECTIONS", "AutoFit", "auto_fit", "candidate_sizes", "default_budget", "keep_fine_tune",
           "should_try_fine_tune"]


def candidate_sizes(short_side: float, recommended: int) -> list[int]:
    """The backbone's size, plus smaller ones near 2x and 4x the images' own size when they are small."""
    sizes = {recommended}
    if short_side and short_side < recommended * 0.875:
        for k in (2, 4):
            s = int(max(32, round(short_side * k / 32) * 32))
            if s < recommended:
                sizes.add(s)
    return sorted(sizes)


def should_try_fine_tune(probe: Candidate, n_valid: int, epoch_seconds: float, remaining: float,
                         min_errors: int = MIN_ERRORS, where: str = "validation", trial_seconds: float = 0.0,
                         spent: float = 0.0, budget: float = math.inf) -> tuple[bool, str]:
    """Whether a fine-tune is worth its time: a measurable gain must be possible among the `n_valid` images it is
    judged on (`where`: the validation split, or the inner holdout), an epoch (with its trial) must fit, and its
    trial (`trial_seconds`, begun `spent` seconds into the job) must end within a third of the `budget`
    (`plan.trial_in_share`)."""
    assert probe.accuracy is not None
    errors = round((1 - probe.accuracy) * n_valid)
    if errors < min_errors:
        return False, (f"the probe leaves ~{errors} {where} error(s) of {n_valid}; fewer than {min_errors} cannot "
                       "show a fine-tune's gain, so the probe is kept")
    if epoch_seconds > remaining:
        left = f"the {remaining:.0f}s left" if remaining > 0 else f"the budget (spent {-remaining:.0f}s over it)"
        return False, f"one fine-tune epoch (~{epoch_seconds:.0f}s) does not fit {left}"
    if trial_seconds and not trial_in_share(spent, trial_seconds, budget):
        return False, (f"its trial (~{trial_seconds:.0f}s after {spent:.0f}s spent) would take the job past a third "
                       f"of its {budget:.0f}s budget before it could tell whether a fine-tune pays, so the probe is "
                       "kept")
    return True, f"the probe leaves ~{errors} {where} errors of {n_valid} and ~{remaining:.0f}s of budget"


def keep_fine_tune(probe: Candidate, tuned: Candidate | None) -> tuple[bool, str]:
    """Keep the fine-tuned weights only when validation loss improves and accuracy does not drop."""
    if tuned is None:
        return False, "no fine-tune ran"
    if tuned.valid_loss < probe.valid_loss and tuned.accuracy >= probe.accuracy:
        return True, (f"fine-tune improved validation loss {probe.valid_loss:.4f} -> {tuned.valid_loss:.4f}, "
                      f"accuracy {probe.accuracy:.4f} -> {tuned.accuracy:.4f}")
    return False, (f"fine-tune did not beat the probe (loss {tuned.valid_loss:.4f} vs {probe.valid_loss:.4f}, "
                   f"accuracy {tuned.accuracy:.4f} vs {probe.accuracy:.4f})")


def probe_features(learn: VisionLearner) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, y, xv, yv): the training images' cached features (center views; with `PROBE_MIRRORS`, then their
    mirrors: row i and row i + n are one image), and the validation center views: what every probe fits and
    scores on."""
    if PROBE_MIRRORS:  # first: the center views come from the same pass
        x2, y2 = learn.cached_features("train", "flip")
    x1, y1 = learn.cached_features("train", "center")
    xv, yv = learn.cached_features("valid", "center")
    if not PROBE_MIRRORS:
        return x1, y1, xv, yv
    return torch.cat([x1, x2]), torch.cat([y1, y2]), xv, yv


def probe_learner(learn: VisionLearner, head_epochs: int = 8, head_lr: float = 2e-3) -> tuple[Candidate, float]:
    """Probe `learn`'s data on cached features and load the best head into its model.

    Two kinds of head compete on validation loss, both on the same cached features: the L-BFGS
    logistic regression over a grid of decays, and the foundation's head phase (AdamW one-cycle with
    dropout, its best epoch). Neither wins everywhere (measured: L-BFGS ahead on hymenoptera-8,
    the one-cycle head ahead by two images on hymenoptera at 48 px).
    Returns the candidate and the measured forward throughput (images/s), used to budget a fine-tune.
    """
    t = time.perf_counter()
    x, y, xv, yv = probe_features(learn)
    feat_seconds = time.perf_counter() - t
    fits = fit_linear_probe(x, y, xv, yv, len(learn.data.classes),
                            class_weights=learn.class_weights)  # --balance: see vision_learner
    tried = [{"head": "lbfgs", "wd": f.wd, "valid_loss": f.valid_loss, "accuracy": f.accuracy} for f in fits]
    lbfgs = best_fit(fits)
    head = learn.head_learner(log=False)
    keep = SaveBestModel("valid_loss")
    head.fit_one_cycle(head_epochs, head_lr, cbs=[keep])  # ends with its best epoch's weights loaded
    row = min(head.recorder.history, key=lambda r: r["valid_loss"])
    tried.append({"head": "one_cycle", "wd": learn.wd, "epochs": head_epochs, "valid_loss": row["valid_loss"],
                  "accuracy": row["accuracy"]})
    if lbfgs.valid_loss <= row["valid_loss"]:
        load_head(learn.model.get_classifier(), lbfgs)
        chosen = {"head": "lbfgs", "wd": lbfgs.wd, "train_loss": lbfgs.train_loss}
        loss, acc = lbfgs.valid_loss, lbfgs.accuracy
    else:
        chosen = {"head": "one_cycle", "wd": learn.wd, "train_loss": row["train_loss"]}
        loss, acc = row["valid_loss"], row["accuracy"]
    rate = (len(y) + len(yv)) / max(feat_seconds, 1e-3)
    cand = Candidate(f"probe@{learn.data.size}", "probe", learn.data.size, loss, acc, time.perf_counter() - t,
                     {**chosen, "feature_seconds": feat_seconds, "feature_engine": learn.features.engine_report(),
                      "tried": tried})
    return cand, rate


def head_text(detail: dict[str, Any]) -> str:
    """A probe's head in a user's words: the L-BFGS head's decay, or the one-cycle head's epochs."""
    if detail.get("head") == "one_cycle":
        return f"one-cycle head, {HEAD_EPOCHS} epochs at {HEAD_LR:g}"
    edge = {max(WEIGHT_DECAYS): ", the strongest the grid tries",
            min(WEIGHT_DECAYS): ", the weakest the grid tries"}.get(detail["wd"], "")
    return f"L-BFGS head, weight decay {detail['wd']:g}{edge}"


def one_cycle_tasks(learn: VisionLearner, x: torch.Tensor, y: torch.Tensor, folds: torch.Tensor,
                    init: dict[str, torch.Tensor], refit: bool) -> list[Callable[[], tuple]]:
    """The one-cycle head's CV on `folds` (the L-BFGS selection's, so the two compare fold for fold) as tasks for
    `fork_map`, each fold's head started from `init` (the classifier as created): (out-of-fold logits, the torch
    RNG state after it). `refit`: one more task, the head on every training row ((head, seconds, RNG state)),
    run ahead of knowing whether it wins, beside the L-BFGS folds. None at all when a fold would train on fewer
    than two rows."""
    k = int(folds.max()) + 1
    if any(int((folds != f).sum()) < 2 for f in range(k)):
        return []
    tasks: list[Callable[[], tuple]] = [partial(_one_cycle_fold, learn, x, y, folds == f, init, learn.seed + f)
                                        for f in range(k)]
    return tasks + [partial(_one_cycle_all, learn, x, y, init)] if refit else tasks


def _one_cycle_fold(learn: VisionLearner, x: torch.Tensor, y: torch.Tensor, te: torch.Tensor,
                    init: dict[str, torch.Tensor], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    tr = ~te
    head = learn.fit_head_copy(x[tr], y[tr], x[te], y[te], init, seed, HEAD_EPOCHS, HEAD_LR)
    with torch.no_grad():
        return head(x[te].to(learn.device)).float().cpu(), torch.get_rng_state()


def _one_cycle_all(learn: VisionLearner, x: torch.Tensor, y: torch.Tensor, init: dict[str, torch.Tensor]
                   ) -> tuple[nn.Module, float, torch.Tensor]:
    t = time.perf_counter()
    head = learn.fit_head_copy(x, y, x, y, init, learn.seed, HEAD_EPOCHS, HEAD_LR)
    return head, time.perf_counter() - t, torch.get_rng_state()


def one_cycle_head(learn: VisionLearner, x: torch.Tensor, y: torch.Tensor, folds: torch.Tensor,
                   init: dict[str, torch.Tensor], beat: float, done: Sequence[tuple], started: float
                   ) -> tuple[list[dict], ProbeSelection | None]:
    """The one-cycle head's CV row for the record from `done` (its `one_cycle_tasks`' results), and, when its CV
    loss is below `beat`, its selection with the head refitted on every training row (from `done` when it was
    run there, else now); else None. The torch RNG is left where running the fits in turn here would leave it.
    `started`: perf_counter when the CV began."""
    if not done:
        return [], None
    k = int(folds.max()) + 1
    yc = y.cpu()
    oof = torch.zeros(len(y), len(learn.data.classes))
    fold_loss = torch.zeros(k)
    for f in range(k):
        te = folds == f
        oof[te] = done[f][0]
        fold_loss[f] = F.cross_entropy(oof[te], yc[te])
    cv_loss, se = float(fold_loss.mean()), float(fold_loss.std() / k ** 0.5) if k > 1 else 0.0
    cv_acc = float((oof.argmax(1) == yc).float().mean())
    table = [{"head": "one_cycle", "epochs": HEAD_EPOCHS, "lr": HEAD_LR, "cv_loss": cv_loss, "cv_loss_se": se,
              "cv_accuracy": cv_acc}]
    if not cv_loss < beat:
        torch.set_rng_state(done[k - 1][1])
        return table, None
    head, seconds, rng = done[k] if len(done) > k else _one_cycle_all(learn, x, y, init)
    torch.set_rng_state(rng)
    fit = head_fit(head, x, y, cv_loss, cv_acc, seconds)
    return table, ProbeSelection(0.0, cv_loss, se, cv_acc, table, fit, oof, folds, time.perf_counter() - started,
                                 "one_cycle", init)


def probe_cv(learn: VisionLearner, folds: int = 5, sel: ProbeSelection | None = None
             ) -> tuple[Candidate, float, ProbeSelection]:
    """Probe `learn`'s data on cached features, the weight decay chosen by grouped k-fold CV on the training
    features alone (an image and its mirror in one fold), and load that head (refitted on all of them).

    The validation features are scored once, for the record. Two kinds of head compete on the same folds: the
    L-BFGS logistic regression over a grid of decays, and the head phase's one-cycle fit (`one_cycle_head`); the
    lower CV loss wins (ties: L-BFGS). Both kinds' folds (and the one-cycle head's refit, before it is known to
    win) are independent tasks that `fork_map` runs side by side on every core. Returns the candidate, the
    measured forward throughput (images/s) and the selection (its out-of-fold logits calibrate the model:
    interfaces.md 3).
    """
    t = time.perf_counter()
    x, y, xv, yv = probe_features(learn)
    feat_seconds = time.perf_counter() - t
    n = len(learn.data.train_y)  # images; with mirrors, 2n rows (an image and its mirror in one fold)
    if sel is None:  # `sel`: a selection already made on these features (`_check_class_weights`)
        print(f"probe@{learn.data.size}: choosing its head and weight decay by {folds}-fold CV on {len(y):,} "
              "feature rows", flush=True)  # seconds to a minute on large sets: said before, not only after
        started = time.perf_counter()
        init = copy.deepcopy(learn.model.get_classifier().state_dict())
        cv = lbfgs_cv(x, y, len(learn.data.classes), groups=torch.arange(n).repeat(len(y) // n), folds=folds,
                      seed=learn.seed, class_weights=learn.class_weights)  # --balance: see vision_learner
        lbfgs = cv.tasks()
        heads = one_cycle_tasks(learn, x, y, cv.fold, init, refit=workers_for(len(lbfgs) + cv.k + 1) > 1)
        done = fork_map(lbfgs + heads, on_one=small(cv.x))
        sel = cv.choose(done[:len(lbfgs)])
        rows, won = one_cycle_head(learn, x, y, cv.fold, init, sel.cv_loss, done[len(lbfgs):], started)
        # `wd` stays the L-BFGS decay CV chose: the fine-tune trial's reference head refits at it (finetune.py)
        sel = replace(won or sel, table=sel.table + rows, wd=sel.wd)
    load_head(learn.model.get_classifier(), sel.fit)
    valid_loss, accuracy = score_head(xv, yv, sel.fit.weight, sel.fit.bias)
    k = int(sel.folds.max()) + 1 if sel.folds is not None else folds
    cand = Candidate(
        f"probe@{learn.data.size}", "probe", learn.data.size, valid_loss, accuracy, time.perf_counter() - t,
        {"head": sel.head, "wd": sel.wd, "train_loss": sel.fit.train_loss, "feature_seconds": feat_seconds,
         "feature_engine": learn.features.engine_report(), "features_ahead": learn.features.ahead_rows,
         "tried": sel.table},
        {"method": f"{k}-fold CV on the training features" + (" (an image and its mirror in one fold)"
                                                                 if PROBE_MIRRORS else ""),
         "loss": sel.cv_loss, "loss_se": sel.cv_loss_se, "accuracy": sel.cv_accuracy, "n": n},
    )
    rate = (len(y) + len(yv)) / max(feat_seconds, 1e-3)
    return cand, rate, sel


def remember_graph(learn: VisionLearner) -> None:
    """Record the graph that ran the probe's pass as this backbone's at this size, when it is the pretrained body
    as published (not --weights), so that the next job's decoder computes features with it while the job starts
    (data/ahead.py)."""
    engine = learn.features.engine
    held = learn.features.peek(("valid", "center"), learn.model)
    if engine is None or engine.graph is None or held is None or learn.meta.pretrained not in ("embedded", "timm"):
        return
    ahead.remember_graph(learn.meta.arch, ahead.Graph(str(engine.graph), learn.data.size, held[0].shape[1],
                                                      tuple(learn.meta.mean), tuple(learn.meta.std)))


def clearly_better(new: Candidate, old: Candidate) -> bool:
    """A candidate replaces a cheaper one only when its selection loss is lower by more than the standard error
    of the difference (the two fold-SEs combined): within it, the data cannot tell them apart."""
    se = math.hypot(new.selection.get("loss_se", 0.0), old.selection.get("loss_se", 0.0))
    return new.selection["loss"] < old.selection["loss"] - se


def keep_class_weights(weighted: ProbeSelection, plain: ProbeSelection, y: torch.Tensor) -> tuple[bool, str]:
    """Whether class weights earn their place: their out-of-fold balanced accuracy (mean recall over classes, what
    they are for) must beat the unweighted probe's. On a 100/20/5 set whose 4 smallest-class training images
    carried 20x an image's weight, the weighted probe's CV accuracy was 0.70 against 0.935, and its validation
    accuracy 0.68 against 0.92."""
    bw, bp = balanced_accuracy(weighted.oof_logits, y), balanced_accuracy(plain.oof_logits, y)
    aw, ap = accuracy(weighted.oof_logits, y), accuracy(plain.oof_logits, y)
    figures = f"CV balanced accuracy {bw:.4f} with, {bp:.4f} without (CV accuracy {aw:.4f} vs {ap:.4f})"
    if bw > bp:
        return True, f"class weights kept: {figures}"
    return False, f"class weights dropped: they do not raise the balanced accuracy they are for: {figures}"


def _check_class_weights(learn: VisionLearner, cand: Candidate, sel: ProbeSelection, report: dict[str, Any]
                         ) -> tuple[Candidate, ProbeSelection]:
    """`keep_class_weights` on `learn`'s cached features; when dropped, the learner loses them (its loss too) and
    the probe takes the unweighted selection (its time counted with the first's; the feature pass's time stays)."""
    t = time.perf_counter()
    x, y, _, _ = probe_features(learn)  # cached: no second pass
    n = len(learn.data.train_y)
    plain = select_probe(x, y, len(learn.data.classes), groups=torch.arange(n).repeat(len(y) // n),
                         seed=learn.seed)
    keep, note = keep_class_weights(sel, plain, y)
    report["balance_check"] = {"kept": keep, "why": note}
    print(f"balance: {note}", flush=True)
    if not keep:
        learn.set_balance("none")
        first = cand
        cand, _, sel = probe_cv(learn, sel=plain)  # the unweighted selection just made: no second CV
        cand.detail["feature_seconds"] = first.detail["feature_seconds"]
        cand.seconds = first.seconds
    cand.seconds += time.perf_counter() - t  # the check is the probe's time
    return cand, sel


def size_ties(probes: Sequence[Candidate], kept: Candidate) -> list[str]:
    """What to say of the probes whose CV loss is within a standard error of the kept one's. Sizes are compared
    in turn, each with the one kept so far, so a tie can sit on either side: a larger one lost to the cheaper
    kept one; a smaller one was passed over because a size between them beat it."""
    close = [c for c in probes if c is not kept and not clearly_better(kept, c) and not clearly_better(c, kept)]
    larger = [c.name for c in close if c.size > kept.size]
    smaller = [c.name for c in close if c.size < kept.size]
    out = []
    if larger:
        out.append(f"the training data cannot tell {', '.join(larger)} from {kept.name} apart (CV losses within "
                   "a standard error): the cheaper, smaller one is kept")
    if smaller:
        out.append(f"{kept.name} was kept although its CV loss is within a standard error of {', '.join(smaller)}"
                   "'s: sizes are compared in turn, and it beat the one kept before it by more than one")
    return out


def valid_cannot_tell(cands: Sequence[Candidate], n_valid: int) -> str | None:
    """A reason when the validation accuracies of `cands` differ by less than one standard error of accuracy
    on `n_valid` images: that split alone could not have chosen between them."""
    accs = [c.accuracy for c in cands if c.accuracy is not None]
    if len(accs) < 2 or n_valid <= 0:
        return None
    p = max(accs)
    se = math.sqrt(max(p * (1 - p), 1 / n_valid) / n_valid)
    if max(accs) - min(accs) < se:
        return (f"the validation split ({n_valid} images) is too small to tell the candidates apart: accuracies "
                f"{min(accs):.3f}-{max(accs):.3f} differ by less than one standard error (±{se:.3f}); the choice "
                "rests on cross-validation of the training split")
    return None


@dataclass
class AutoFit:
    """What `auto_fit` returns: the learner with the kept weights, the report, lr_find's result if run, and the
    logits/targets the choice was made on, apart from validation (the chosen probe's out-of-fold logits of the
    training images, or a kept fine-tune's inner-holdout logits): the temperature is fitted on them."""

    learner: VisionLearner
    report: dict[str, Any]
    lr_find: LRFind | None = None
    selection_logits: torch.Tensor | None = None
    selection_targets: torch.Tensor | None = None
    valid_preds: tuple[torch.Tensor, torch.Tensor] | None = None  # the kept probe's (logits, targets) on validation


def cached_valid_preds(learn: VisionLearner) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(logits, targets) of the validation split from the features the probe was scored on, when the body is still
    the one they came from (None otherwise: a kept fine-tune changed it, or a resumed job has none cached).

    The head is linear on the pooled features, so this is the model's output without a second pass over the
    images: the final figures cost milliseconds instead of an eager forward pass (2-4 s on hymenoptera's 153
    validation images on two cores), and they are the fp32 features' logits that the probe was chosen on."""
    held = learn.features.peek(("valid", "center"), learn.model)
    if held is None:
        return None
    xv, yv = held
    head = learn.model.get_classifier()
    weight = next(head.parameters())
    with torch.no_grad():
        logits = head(xv.to(weight.device, weight.dtype)).float().cpu()
    return logits, yv.cpu()


def auto_fit(
    data: ImageData,
    arch: str = "efficientnet_lite0",
    budget: float | None = None,
    recipe: str = "auto",
    sizes: Sequence[int] | None = None,
    max_epochs: int = 3,
    base_lr: float | None = 2e-3,
    seed: int = 42,
    progress: bool = True,
    log_csv: str | Path | None = None,
    checkpointer: Checkpointer | None = None,
    selection: str = "cv",
    spent: float = 0.0,
    check_balance: bool = False,
    **learner_kwargs: Any,
) -> AutoFit:
    """Train with the recipe chosen from the data: the learner holding the kept weights and the report
    that `recipe.json` records. `data` gives the items; other sizes are decoded from them.

    `recipe="probe"` stops after the probes; `"auto"` may go on to a fine-tune, at `base_lr` (None: the
    valley of `lr_find` on the chosen probe's cached training features). `selection`: "cv" chooses the size,
    decay and whether to keep a fine-tune apart from the validation split (k-fold CV on training features, an
    inner holdout); "valid" chooses on the validation split (the behaviour before; for comparisons).
    `spent`: seconds of the budget the job already used (planning, decoding). `checkpointer`: save the probe's
    result and the fine-tune's progress there; one that holds a checkpoint (`Checkpointer.load`) resumes.
    `check_balance` (--balance auto chose class weights): the first probe is cross-validated again without them,
    and they are dropped for every size when they do not raise the CV balanced accuracy (`keep_class_weights`).
    kwargs go to `vision_learner`.
    """
    if recipe not in ("auto", "probe"):
        raise ValueError(f"auto_fit runs the auto or probe recipe, not {recipe!r}")
    check_weights = check_balance
    if selection not in SELECTIONS:
        raise ValueError(f"selection {selection!r}: choose {' or '.join(SELECTIONS)}")
    cbs = [CSVLogger(log_csv)] if log_csv else []

    def make_learner(d: ImageData, log: bool = True) -> VisionLearner:
        return vision_learner(d, arch, seed=seed, progress=progress, cbs=cbs if log else [], **learner_kwargs)

    ck = checkpointer
    if ck is not None and "auto" in ck.extra:  # a resumed job: the probe is done
        saved = ck.extra["auto"]
        d = data if saved["size"] == data.size else data.resized(saved["size"])
        if not saved["report"].get("balance_check", {}).get("kept", True):  # the probe dropped the class weights
            learner_kwargs["balance"] = "none"
        learn = make_learner(d)
        ck.attach(learn)
        if ck.loaded and ck.loaded["reason"] == "between fits":
            ck.restore_between_fits(learn)
        learn.model.load_state_dict(saved["probe_state"])  # a checkpoint within the fine-tune overrides it
        learn.phase = "probe"
        finder = LRFind(saved["lr_find"][0], saved["lr_find"][1]) if saved.get("lr_find") else None
        print(f"resumed after the probe at {saved['size']}px ({'fine-tune next' if saved['epochs'] else 'kept'})")
        return _finish_auto(learn, saved["report"], Candidate(**saved["probe"]), saved["why"], saved["epochs"],
                            saved["base_lr"], finder, saved["t_elapsed"], saved.get("selection", "valid"),
                            saved.get("sel"), make_learner, saved["budget"] if "budget" in saved else math.inf)
    t0 = time.perf_counter() - spent
    budget = default_budget(data.n_train) if budget is None else float(budget)
    short = data.native_short_side()
    rec = recommended_size(arch)
    sizes = list(sizes) if sizes else candidate_sizes(short, rec)
    report: dict[str, Any] = {"recipe": recipe, "selection": selection, "budget_seconds": budget,
                              "median_short_side": short, "recommended_size": rec, "sizes": sizes, "candidates": []}

    # smallest size first: it is the cheapest, and its measured speed prices the larger ones
    best: tuple[Candidate, VisionLearner, float, ProbeSelection | None] | None = None
    last: tuple[int, float] | None = None  # (size, forward images/s) of the last probe
    n_feats = 2 * data.n_train + data.n_valid
    probes: list[Candidate] = []
    for size in sorted(sizes):
        elapsed = time.perf_counter() - t0
        est = n_feats / last[1] * (size / last[0]) ** 2 if last else 0.0
        if best is not None and dist.agree(elapsed + est > budget):  # torchrun: rank 0's clock decides
            report["candidates"].append({"name": f"probe@{size}", "skipped": (
                f"budget: ~{est:.0f}s of features would pass the {budget:.0f}s budget at {elapsed:.0f}s")})
            continue
        d = data if size == data.size else data.resized(size)
        learn = make_learner(d)
        sel = None
        if selection == "cv":
            cand, rate, sel = probe_cv(learn)
            if check_weights and learner_kwargs.get("balance") == "weights":  # once, at the first size
                check_weights = False
                cand, sel = _check_class_weights(learn, cand, sel, report)
                if learn.class_weights is None:  # every later size too: their CV losses stay comparable
                    learner_kwargs["balance"] = "none"
            better = best is None or clearly_better(cand, best[0])
            print(f"probe@{size}: CV loss {cand.selection['loss']:.4f} ± {cand.selection['loss_se']:.4f}, "
                  f"CV accuracy {cand.selection['accuracy']:.4f} ({head_text(cand.detail)})", flush=True)
        else:
            cand, rate = probe_learner(learn)
            better = best is None or cand.valid_loss < best[0].valid_loss
        report["candidates"].append(asdict(cand))
        probes.append(cand)
        last = (size, rate)
        if dist.is_main():  # the next job's plan prices its features from this pass (plan.recorded_rate)
            record_rate(arch, size, learn.device, learn.features.ran,
                        probe_rows(d.n_train) + d.n_valid - learn.features.ahead_rows, cand.detail["feature_seconds"])
            remember_graph(learn)
        if better:
            best = (cand, learn, rate, sel)
        del learn
    assert best is not None
    probe, learn, rate, sel = best
    probe, sel = dist.agree((probe, sel))  # torchrun: rank 0's probe on every rank (fits on identical features
    dist.broadcast_module(learn.model)  # agree to the last bit on one machine, not always across machines)
    learn.phase = "probe"
    learn.recorder.history.append({"epoch": 0, "phase": "probe", "train_loss": probe.detail["train_loss"],
                                   "valid_loss": probe.valid_loss, "accuracy": probe.accuracy,
                                   "seconds": probe.seconds})
    for cb in cbs:
        cb.write_row(learn.recorder.history[-1])
    if selection == "cv":
        why = [f"probe at {probe.size}px ({head_text(probe.detail)}) chosen by cross-validation on the "
               f"training split: CV loss {probe.selection['loss']:.4f} ± {probe.selection['loss_se']:.4f} of sizes "
               f"{sizes}" + (" (a larger size is taken only when its CV loss is lower by more than the standard "
                             "error of the difference: the cheaper one otherwise)" if len(probes) > 1 else "")]
        why += size_ties(probes, probe)
        reason = valid_cannot_tell(probes, data.n_valid)
        if reason:
            why.append(reason)
    else:
        why = [f"probe at {probe.size}px ({probe.detail['head']} head, weight decay {probe.detail['wd']:g}) had "
               f"the lowest validation loss ({probe.valid_loss:.4f}) of sizes {sizes}"]
    finder: LRFind | None = None
    epochs = 0  # of fine-tune: 0 keeps the probe

    if recipe == "auto":
        n_train, n_valid = learn.data.n_train, learn.data.n_valid
        remaining = budget - (time.perf_counter() - t0) - EXPORT_SECONDS
        # the fine-tune's steps run eager, not on the feature engine: priced from earlier trials' training rate
        trained = recorded_rate(arch, probe.size, learn.device, kind="train")
        rate = train_forward(rate, probe.size, learn.features.ran, trained[:2] if trained else None)
        remaining, rate = dist.agree((remaining, rate))  # under torchrun: rank 0's clock decides for all ranks
        if selection == "cv":
            n_hold = round(n_train * HOLDOUT)
            trial_s, epoch_s = fine_tune_seconds(n_train, rate)  # rate: measured at this size
            assert sel is not None
            try_it, reason = should_try_fine_tune(
                Candidate(probe.name, "probe", probe.size, None, sel.cv_accuracy, 0.0), n_hold, epoch_s + trial_s,
                remaining, where="inner-holdout", trial_seconds=trial_s, spent=time.perf_counter() - t0, budget=budget)
            report["fine_tune_plan"] = {"trial_seconds": trial_s, "epoch_seconds": epoch_s, "holdout": n_hold}
        else:
            epoch_s = (n_train * TRAIN_COST + n_valid) / rate  # rate was measured at this size
            try_it, reason = should_try_fine_tune(probe, n_valid, epoch_s, remaining)
            trial_s = 0.0
        why.append(reason)
        if try_it:
            if base_lr is None:
                finder = learn.lr_find(cached=True)
                base_lr = finder.valley
                report["lr_find"] = finder.suggestions
                report["lr_find_data"] = "training batches only (the head on cached training features)"
            report["lr"] = base_lr
            epochs = min(max_epochs, max(1, math.floor((remaining - trial_s) / epoch_s)))
    sel_info = None
    if sel is not None:
        n = len(learn.data.train_y)
        sel_info = {"wd": sel.wd, "head": sel.head, "init": sel.init, "cv_accuracy": sel.cv_accuracy,
                    "oof_logits": sel.oof_logits[:n].clone(), "targets": learn.data.train_y.clone()}
    if ck is not None:
        ck.attach(learn)
    if ck is not None and (epochs or ck.worth_saving()):  # a fine-tune follows: a resume starts it from here
        ck.extra["auto"] = {
            "size": probe.size, "probe": asdict(probe), "probe_state": copy.deepcopy(learn.model.state_dict()),
            "report": copy.deepcopy(report), "why": list(why), "epochs": epochs, "base_lr": base_lr,
            "t_elapsed": time.perf_counter() - t0, "selection": selection, "sel": sel_info, "budget": budget,
            "lr_find": [finder.lrs, finder.raw_losses] if finder else None,
        }
        ck.save_between_fits(learn, f"after the probe at {probe.size}px")
    return _finish_auto(learn, report, probe, why, epochs, base_lr, finder, time.perf_counter() - t0, selection,
                        sel_info, make_learner, budget)


def _finish_auto(learn: VisionLearner, report: dict[str, Any], probe: Candidate, why: list[str], epochs: int,
                 base_lr: float | None, finder: LRFind | None, t_elapsed: float, selection: str = "valid",
                 sel_info: dict[str, Any] | None = None,
                 make_learner: Callable[..., VisionLearner] | None = None, budget: float = math.inf) -> AutoFit:
    """After the probe: the planned fine-tune (`epochs` > 0), kept only if it beats the probe."""
    t0 = time.perf_counter() - t_elapsed
    chosen = probe.name
    logits = sel_info["oof_logits"] if sel_info else None
    targets = sel_info["targets"] if sel_info else None
    if epochs and selection == "cv":
        assert sel_info is not None and make_learner is not None and base_lr is not None
        tuned, hold = cv_fine_tune(learn, probe, sel_info, epochs, base_lr, make_learner, t0 + budget, why)
        report["candidates"].append(asdict(tuned))
        if hold is not None:
            chosen = tuned.name
            logits, targets = hold
    elif epochs:
        tuned = fine_tune(learn, probe, epochs, base_lr)
        probe_state = tuned.detail.pop("probe_state")
        report["candidates"].append(asdict(tuned))
        keep, reason = keep_fine_tune(probe, tuned)
        why.append(reason)
        if keep:
            chosen = tuned.name
        else:
            learn.model.load_state_dict(probe_state)
    report.update(chosen=chosen, why=why, seconds=time.perf_counter() - t0)
    return AutoFit(learn, report, finder, logits, targets, cached_valid_preds(learn) if chosen == probe.name else None)
