"""`auto_fit`: choose the recipe from the data — probe first on cached features, fine-tune only where it pays.

A fixed recipe (fastai's `fine_tune`, ours) loses badly on two common kinds of data: few images per
class, and small or blurred images. There a linear probe on frozen, cached features (image + mirror)
beats a full fine-tune in a tenth of the time. So the default:

1. picks candidate sizes from the images (never shrinking photos below what the backbone saw, never
   blowing 28 px images up to 256 px without checking that it helps);
2. probes each size on cached features, its weight decay chosen on validation (seconds);
3. tries a fine-tune from the best probe only when the validation set can show a gain (enough errors
   left to fix) and the time budget allows an epoch, with early stopping;
4. keeps the fine-tuned weights only if validation loss improves and accuracy does not drop;
5. writes every candidate, its figures and seconds, the choice and why into `recipe.json`.

With a `Checkpointer`, the probe's result (its size, weights, report and the plan for a fine-tune) is saved
as soon as it is known, so a resumed job goes straight to the fine-tune, itself checkpointed per epoch/steps.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.core import ImageData
from ..models import recommended_size
from .callbacks import CSVLogger, EarlyStopping, SaveBestModel
from .checkpoint import Checkpointer
from .lr_finder import LRFind
from .probe import best_fit, fit_linear_probe, load_head
from .vision import VisionLearner, vision_learner

MIN_ERRORS = 10  # a fine-tune is tried only if the probe leaves this many validation errors to fix
TRAIN_COST = 3.5  # a training step costs about this many forward passes (forward + backward + step)
RECIPES = ("auto", "probe", "fine_tune")


@dataclass
class Candidate:
    """One recipe tried, with its validation figures."""

    name: str
    kind: str  # "probe" or "fine_tune"
    size: int
    valid_loss: float
    accuracy: float
    seconds: float
    detail: dict[str, Any] = field(default_factory=dict)


def candidate_sizes(short_side: float, recommended: int) -> list[int]:
    """The backbone's size, plus smaller ones near 2x and 4x the images' own size when they are small."""
    sizes = {recommended}
    if short_side and short_side < recommended * 0.875:
        for k in (2, 4):
            s = int(max(32, round(short_side * k / 32) * 32))
            if s < recommended:
                sizes.add(s)
    return sorted(sizes)


def default_budget(n_train: int) -> float:
    """Seconds for the whole job when none is given: a minute, plus a quarter second per training image."""
    return 60.0 + 0.25 * n_train


def should_try_fine_tune(probe: Candidate, n_valid: int, epoch_seconds: float, remaining: float,
                         min_errors: int = MIN_ERRORS) -> tuple[bool, str]:
    """Whether a fine-tune is worth its time: a measurable gain must be possible, and an epoch must fit."""
    errors = round((1 - probe.accuracy) * n_valid)
    if errors < min_errors:
        return False, (f"the probe leaves {errors} validation error(s); fewer than {min_errors} cannot show "
                       "a fine-tune's gain, so the probe is kept")
    if epoch_seconds > remaining:
        return False, f"one fine-tune epoch (~{epoch_seconds:.0f}s) does not fit the {remaining:.0f}s left"
    return True, f"the probe leaves {errors} validation errors and ~{remaining:.0f}s of budget"


def keep_fine_tune(probe: Candidate, tuned: Candidate | None) -> tuple[bool, str]:
    """Keep the fine-tuned weights only when validation loss improves and accuracy does not drop."""
    if tuned is None:
        return False, "no fine-tune ran"
    if tuned.valid_loss < probe.valid_loss and tuned.accuracy >= probe.accuracy:
        return True, (f"fine-tune improved validation loss {probe.valid_loss:.4f} -> {tuned.valid_loss:.4f}, "
                      f"accuracy {probe.accuracy:.4f} -> {tuned.accuracy:.4f}")
    return False, (f"fine-tune did not beat the probe (loss {tuned.valid_loss:.4f} vs {probe.valid_loss:.4f}, "
                   f"accuracy {tuned.accuracy:.4f} vs {probe.accuracy:.4f})")


def probe_learner(learn: VisionLearner, head_epochs: int = 8, head_lr: float = 2e-3) -> tuple[Candidate, float]:
    """Probe `learn`'s data on cached features and load the best head into its model.

    Two kinds of head compete on validation loss, both on the same cached features: the L-BFGS
    logistic regression over a grid of decays, and the foundation's head phase (AdamW one-cycle with
    dropout, its best epoch). Neither wins everywhere (measured: L-BFGS ahead on hymenoptera-8,
    the one-cycle head ahead by two images on hymenoptera at 48 px).
    Returns the candidate and the measured forward throughput (images/s), used to budget a fine-tune.
    """
    t = time.perf_counter()
    x1, y1 = learn.cached_features("train", "center")
    x2, y2 = learn.cached_features("train", "flip")
    xv, yv = learn.cached_features("valid", "center")
    feat_seconds = time.perf_counter() - t
    fits = fit_linear_probe(torch.cat([x1, x2]), torch.cat([y1, y2]), xv, yv, len(learn.data.classes))
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
    rate = (2 * len(y1) + len(yv)) / max(feat_seconds, 1e-3)
    cand = Candidate(f"probe@{learn.data.size}", "probe", learn.data.size, loss, acc, time.perf_counter() - t,
                     {**chosen, "feature_seconds": feat_seconds, "tried": tried})
    return cand, rate


@dataclass
class AutoFit:
    """What `auto_fit` returns: the learner with the kept weights, the report, and lr_find's result if run."""

    learner: VisionLearner
    report: dict[str, Any]
    lr_find: LRFind | None = None


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
    **learner_kwargs: Any,
) -> AutoFit:
    """Train with the recipe chosen from the data: the learner holding the kept weights and the report
    that `recipe.json` records. `data` gives the items; other sizes are decoded from them.

    `recipe="probe"` stops after the probes; `"auto"` may go on to a fine-tune, at `base_lr` (None: the
    valley of `lr_find` on the chosen probe's cached features). `checkpointer`: save the probe's result and
    the fine-tune's progress there; one that holds a checkpoint (`Checkpointer.load`) resumes from it.
    kwargs go to `vision_learner`.
    """
    if recipe not in ("auto", "probe"):
        raise ValueError(f"auto_fit runs the auto or probe recipe, not {recipe!r}")
    cbs = [CSVLogger(log_csv)] if log_csv else []
    ck = checkpointer
    if ck is not None and "auto" in ck.extra:  # a resumed job: the probe is done
        saved = ck.extra["auto"]
        d = data if saved["size"] == data.size else data.resized(saved["size"])
        learn = vision_learner(d, arch, seed=seed, progress=progress, cbs=cbs, **learner_kwargs)
        ck.attach(learn)
        if ck.loaded and ck.loaded["reason"] == "between fits":
            ck.restore_between_fits(learn)
        learn.model.load_state_dict(saved["probe_state"])  # a checkpoint within the fine-tune overrides it
        learn.phase = "probe"
        finder = LRFind(saved["lr_find"][0], saved["lr_find"][1]) if saved.get("lr_find") else None
        print(f"resumed after the probe at {saved['size']}px ({'fine-tune next' if saved['epochs'] else 'kept'})")
        return _finish_auto(learn, saved["report"], Candidate(**saved["probe"]), saved["why"], saved["epochs"],
                            saved["base_lr"], finder, saved["t_elapsed"])
    t0 = time.perf_counter()
    budget = default_budget(data.n_train) if budget is None else float(budget)
    short = data.native_short_side()
    rec = recommended_size(arch)
    sizes = list(sizes) if sizes else candidate_sizes(short, rec)
    report: dict[str, Any] = {"recipe": recipe, "budget_seconds": budget, "median_short_side": short,
                              "recommended_size": rec, "sizes": sizes, "candidates": []}

    # smallest size first: it is the cheapest, and its measured speed prices the larger ones
    best: tuple[Candidate, VisionLearner, float] | None = None
    last: tuple[int, float] | None = None  # (size, forward images/s) of the last probe
    n_feats = 2 * data.n_train + data.n_valid
    for size in sorted(sizes):
        elapsed = time.perf_counter() - t0
        est = n_feats / last[1] * (size / last[0]) ** 2 if last else 0.0
        if best is not None and elapsed + est > budget:
            report["candidates"].append({"name": f"probe@{size}", "skipped": (
                f"budget: ~{est:.0f}s of features would pass the {budget:.0f}s budget at {elapsed:.0f}s")})
            continue
        d = data if size == data.size else data.resized(size)
        learn = vision_learner(d, arch, seed=seed, progress=progress, cbs=cbs, **learner_kwargs)
        cand, rate = probe_learner(learn)
        report["candidates"].append(asdict(cand))
        last = (size, rate)
        if best is None or cand.valid_loss < best[0].valid_loss:
            best = (cand, learn, rate)
        del learn
    assert best is not None
    probe, learn, rate = best
    learn.phase = "probe"
    learn.recorder.history.append({"epoch": 0, "phase": "probe", "train_loss": probe.detail["train_loss"],
                                   "valid_loss": probe.valid_loss, "accuracy": probe.accuracy,
                                   "seconds": probe.seconds})
    for cb in cbs:
        cb.write_row(learn.recorder.history[-1])
    why = [f"probe at {probe.size}px ({probe.detail['head']} head, weight decay {probe.detail['wd']:g}) had the "
           f"lowest validation loss ({probe.valid_loss:.4f}) of sizes {sizes}"]
    finder: LRFind | None = None
    epochs = 0  # of fine-tune: 0 keeps the probe

    if recipe == "auto":
        n_train, n_valid = learn.data.n_train, learn.data.n_valid
        epoch_seconds = (n_train * TRAIN_COST + n_valid) / rate  # rate was measured at this size
        remaining = budget - (time.perf_counter() - t0)
        try_it, reason = should_try_fine_tune(probe, n_valid, epoch_seconds, remaining)
        why.append(reason)
        if try_it:
            if base_lr is None:
                finder = learn.lr_find()
                base_lr = finder.valley
                report["lr_find"] = finder.suggestions
            report["lr"] = base_lr
            epochs = min(max_epochs, max(1, math.floor(remaining / epoch_seconds)))
    if ck is not None:
        ck.attach(learn)
        ck.extra["auto"] = {
            "size": probe.size, "probe": asdict(probe), "probe_state": copy.deepcopy(learn.model.state_dict()),
            "report": copy.deepcopy(report), "why": list(why), "epochs": epochs, "base_lr": base_lr,
            "t_elapsed": time.perf_counter() - t0,
            "lr_find": [finder.lrs, finder.raw_losses] if finder else None,
        }
        ck.save_between_fits(learn, f"after the probe at {probe.size}px")
    return _finish_auto(learn, report, probe, why, epochs, base_lr, finder, time.perf_counter() - t0)


def _finish_auto(learn: VisionLearner, report: dict[str, Any], probe: Candidate, why: list[str], epochs: int,
                 base_lr: float | None, finder: LRFind | None, t_elapsed: float) -> AutoFit:
    """After the probe: the planned fine-tune (`epochs` > 0), kept only if it beats the probe."""
    t0 = time.perf_counter() - t_elapsed
    chosen = probe.name
    if epochs:
        tuned = _fine_tune(learn, probe, epochs, base_lr)
        probe_state = tuned.detail.pop("probe_state")
        report["candidates"].append(asdict(tuned))
        keep, reason = keep_fine_tune(probe, tuned)
        why.append(reason)
        if keep:
            chosen = tuned.name
        else:
            learn.model.load_state_dict(probe_state)
    report.update(chosen=chosen, why=why, seconds=time.perf_counter() - t0)
    return AutoFit(learn, report, finder)


def _fine_tune(learn: VisionLearner, probe: Candidate, epochs: int, base_lr: float) -> Candidate:
    """Unfreeze and train from the probe's head, stopping when validation loss stops improving."""
    t = time.perf_counter()
    probe_state = copy.deepcopy(learn.model.state_dict())
    learn.unfreeze()
    learn.phase = "unfrozen"
    n_before = len(learn.recorder.history)
    keep_best = SaveBestModel("valid_loss", model=learn.model, across_fits=True)
    keep_best.best, keep_best.best_state = probe.valid_loss, copy.deepcopy(probe_state)
    lr = base_lr / 2
    learn.fit_one_cycle(epochs, slice(lr / 100, lr), cbs=[keep_best, EarlyStopping("valid_loss", patience=1)])
    rows = learn.recorder.history[n_before:]
    rows = [r for r in rows if r["phase"] == "unfrozen"]  # a resumed fit brings the probe's row back too
    top = min(rows, key=lambda r: r["valid_loss"]) if rows else None
    return Candidate(
        f"fine_tune@{learn.data.size}", "fine_tune", learn.data.size,
        top["valid_loss"] if top else math.inf, top["accuracy"] if top else 0.0, time.perf_counter() - t,
        {"epochs_planned": epochs, "epochs_run": len(rows), "best_epoch": top["epoch"] if top else None,
         "probe_state": probe_state},
    )
