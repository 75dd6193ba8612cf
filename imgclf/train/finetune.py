"""The auto recipe's fine-tune from its probe (train/recipes.py `auto_fit` decides whether it runs).

Under `selection="cv"` (`cv_fine_tune`): on the fit part of an inner split of the training data, a trial of
`plan.TRIAL_FRACTION` of an epoch first, judged on the inner holdout against the probe refitted on the fit part;
the epochs only when the trial beats it; early stopping, the best epoch and the keep decision on that holdout, so
the validation split stays unseen. Under `selection="valid"` (`fine_tune`): the epochs on the real split, judged
on validation (the behaviour before; bench/trust.py compares the two).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any

import torch

from ..data.core import ImageData
from ..data.store import LazyImages
from . import distributed as dist
from .callbacks import Callback, CancelFitException, EarlyStopping, SaveBestModel
from .candidate import Candidate
from .plan import EXPORT_SECONDS, HOLDOUT, TRAIN_COST, TRIAL_FRACTION, record_rate
from .probe import HEAD_EPOCHS, HEAD_LR, PROBE_MIRRORS, ProbeFit, fit_linear_probe, head_fit, load_head, score_head
from .vision import VisionLearner


def inner_holdout(y: torch.Tensor, frac: float = HOLDOUT, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit rows, holdout rows) of the training split: a seeded, stratified `frac` of each class held out."""
    y = y.cpu()
    g = torch.Generator().manual_seed(seed)
    hold = []
    for c in torch.unique(y).tolist():
        rows = torch.nonzero(y == c).flatten()
        rows = rows[torch.randperm(len(rows), generator=g)]
        hold.append(rows[: int(round(len(rows) * frac))])
    mask = torch.zeros(len(y), dtype=torch.bool)
    mask[torch.cat(hold)] = True
    return torch.nonzero(~mask).flatten(), torch.nonzero(mask).flatten()


def subset_data(data: ImageData, train_rows: torch.Tensor, valid_rows: torch.Tensor) -> ImageData:
    """The same data with train and valid both drawn from `data`'s TRAINING rows (an inner split): the
    fine-tune's trial and epochs are judged on it, so the validation split stays unseen."""
    out = copy.copy(data)
    images, paths = data.train_images, data.train_paths

    def take(rows: torch.Tensor):
        if isinstance(images, LazyImages):
            return LazyImages([images.paths[i] for i in rows.tolist()], images.size, data.workers)
        return images[rows]

    out.train_images, out.train_y = take(train_rows), data.train_y[train_rows]
    out.train_paths = [paths[i] for i in train_rows.tolist()]
    out.valid_images, out.valid_y = take(valid_rows), data.train_y[valid_rows]
    out.valid_paths = [paths[i] for i in valid_rows.tolist()]
    return out


class _StopAtDeadline(Callback):
    """Ends a fit at an epoch's end when another epoch like the last would pass `deadline` (perf_counter)."""

    order = 90  # after save-best, the CSV log and early stopping have seen the epoch

    def __init__(self, deadline: float):
        self.deadline, self.started = deadline, 0.0
        self.stopped = False

    def before_epoch(self, learn) -> None:
        self.started = time.perf_counter()

    def after_epoch(self, learn) -> None:
        now = time.perf_counter()
        if learn.epoch + 1 < learn.n_epoch and now + (now - self.started) > self.deadline:
            self.stopped = True
            print("budget: another epoch would pass the budget; the fine-tune ends here")
            raise CancelFitException()


def epochs_that_fit(pace: float, n_fit: int, n_hold: int, left: float) -> tuple[float, int]:
    """(seconds an epoch takes, whole epochs that fit in `left` seconds) at `pace` training images/s: an epoch
    trains on `n_fit` images and scores `n_hold` (a forward pass each, TRAIN_COST to a training step)."""
    epoch_s = (n_fit + n_hold / TRAIN_COST) / max(pace, 1e-9)
    return epoch_s, int(max(0.0, left) // epoch_s)


def _reference_head(learn: VisionLearner, sel_info: dict[str, Any], x: torch.Tensor, y: torch.Tensor,
                    xh: torch.Tensor, yh: torch.Tensor) -> ProbeFit:
    """The probe refitted on the fit part's features, as the probe was chosen: the one-cycle head from its
    starting classifier, or L-BFGS at the chosen decay; scored on the holdout. The trial starts from it and is
    judged against it."""
    if sel_info.get("head") != "one_cycle" or sel_info.get("init") is None:
        return fit_linear_probe(x, y, xh, yh, len(learn.data.classes), wds=(sel_info["wd"],))[0]
    t = time.perf_counter()
    head = learn.fit_head_copy(x, y, xh, yh, sel_info["init"], learn.seed, HEAD_EPOCHS, HEAD_LR)
    return head_fit(head, x, y, *score_head(xh, yh, head.weight, head.bias),
                    time.perf_counter() - t)


def cv_fine_tune(learn: VisionLearner, probe: Candidate, sel_info: dict[str, Any], epochs: int, base_lr: float,
                  make_learner: Callable[..., VisionLearner], deadline: float, why: list[str],
                  ) -> tuple[Candidate, tuple[torch.Tensor, torch.Tensor] | None]:
    """Fine-tune on the fit part of an inner split of the training data, judged on its holdout against the
    probe refitted on the fit part's cached features (the same decay: no extra forward pass). A trial of
    TRIAL_FRACTION of an epoch first; the epochs run only when it beats the probe; early stopping, the best
    epoch and the keep decision on the holdout. Kept weights are copied into `learn` (which holds the real
    split); returns the candidate and, when kept, the holdout (logits, targets)."""
    t = time.perf_counter()
    data = learn.data
    fit_rows, hold_rows = inner_holdout(data.train_y, HOLDOUT, learn.seed)
    x1, y1 = learn.cached_features("train", "center")
    xf, yf = x1[fit_rows], y1[fit_rows]
    if PROBE_MIRRORS:
        xf, yf = torch.cat([xf, learn.cached_features("train", "flip")[0][fit_rows]]), torch.cat([yf, yf])
    ref = _reference_head(learn, sel_info, xf, yf, x1[hold_rows], y1[hold_rows])
    tuner = make_learner(subset_data(data, fit_rows, hold_rows), log=False)
    tuner.model.load_state_dict(learn.model.state_dict())
    load_head(tuner.model.get_classifier(), ref)
    g = torch.Generator().manual_seed(learn.seed)
    n_trial = min(len(fit_rows), max(2 * data.bs, round(len(fit_rows) * TRIAL_FRACTION)))
    trial_rows = fit_rows[torch.randperm(len(fit_rows), generator=g)[:n_trial]]
    full_dl = tuner.train_dl
    tuner.train_dl = subset_data(data, trial_rows, hold_rows).loader(
        "train", tuner.meta.mean, tuner.meta.std, device=tuner.device, seed=learn.seed,
        channels_last=tuner.model_channels_last)
    lr = base_lr / 2
    tuner.unfreeze()
    tuner.phase = "trial"
    frac = round(1 / TRIAL_FRACTION)
    print(f"fine-tune trial: 1/{frac} epoch ({n_trial} images) from the probe, judged on an inner holdout of "
          f"{len(hold_rows)} training images", flush=True)
    t_fit = time.perf_counter()
    tuner.fit_one_cycle(1, slice(lr / 100, lr))
    t_fit = time.perf_counter() - t_fit
    trial = dict(tuner.last_validation)
    trial_s = time.perf_counter() - t
    # the trial's pace in training images/s (its holdout pass counted as forward passes, TRAIN_COST to a step):
    # the epochs are priced from it below, and the next jobs' plans here too (plan.recorded_rate kind "train")
    units = n_trial + len(hold_rows) / TRAIN_COST
    pace = units / max(t_fit, 1e-3)
    if dist.is_main():
        record_rate(tuner.meta.arch, data.size, tuner.device, "eager", round(units), t_fit, kind="train")
    tuner.train_dl = full_dl
    detail: dict[str, Any] = {"holdout": len(hold_rows), "fit_images": len(fit_rows),
                              "probe_holdout": {"loss": ref.valid_loss, "accuracy": ref.accuracy,
                                                "head": sel_info.get("head", "lbfgs")},
                              "trial": {"images": n_trial, "loss": trial["valid_loss"],
                                        "accuracy": trial["accuracy"], "seconds": trial_s},
                              "epochs_planned": epochs, "epochs_run": 0}
    sel_fig = {"method": f"inner holdout of {len(hold_rows)} training images", "loss": trial["valid_loss"],
               "accuracy": trial["accuracy"], "probe_loss": ref.valid_loss, "probe_accuracy": ref.accuracy}
    verdict = (f"trial: fine-tune loss {trial['valid_loss']:.2f} vs probe {ref.valid_loss:.2f} on the inner holdout "
               f"after 1/{frac} epoch")
    if not trial["valid_loss"] < ref.valid_loss:
        # what the epochs would have cost, at most what the budget had left (they stop at its deadline)
        saved = min(epochs * (trial_s / TRIAL_FRACTION), max(0.0, deadline - time.perf_counter()))
        stopped = f"{verdict}: keeping the probe, {trial_s:.0f} s spent instead of up to ~{trial_s + saved:.0f} s"
    else:  # the epochs were priced before any training step ran: the trial's measured pace decides how many fit
        left = max(0.0, deadline - EXPORT_SECONDS - time.perf_counter())
        epoch_s, fits = epochs_that_fit(pace, len(fit_rows), len(hold_rows), left)
        fits = dist.agree(fits)
        detail["epoch_seconds_measured"] = epoch_s
        stopped = "" if fits else (f"{verdict}, but at the trial's pace an epoch takes ~{epoch_s:.0f} s and "
                                   f"{left:.0f} s of the budget are left: keeping the probe")
    if stopped:
        why.append(stopped)
        print(stopped, flush=True)
        return Candidate(f"fine_tune@{data.size}", "fine_tune", data.size, None, None, trial_s,
                         {**detail, "kept": False}, sel_fig), None
    if fits < epochs:
        detail["epochs_planned"] = epochs = fits
    print(f"{verdict}: fine-tuning up to {epochs} epoch(s) of ~{epoch_s:.0f} s (the trial's pace; {left:.0f} s of "
          "the budget left)", flush=True)
    keep_best = SaveBestModel("valid_loss", model=tuner.model, across_fits=True)
    keep_best.best, keep_best.best_state = trial["valid_loss"], copy.deepcopy(tuner.model.state_dict())
    stop = _StopAtDeadline(deadline - EXPORT_SECONDS)
    tuner.phase = "unfrozen"
    tuner.fit_one_cycle(epochs, slice(lr / 100, lr), cbs=[keep_best, EarlyStopping("valid_loss", patience=1), stop])
    rows = [r for r in tuner.recorder.history if r["phase"] == "unfrozen"]
    logits, targets = tuner.get_preds()  # the best state is loaded: the holdout's figures at it
    best = tuner.score(logits, targets)
    detail.update(epochs_run=len(rows), stopped_by_budget=stop.stopped,
                  history=[{k: r[k] for k in ("epoch", "train_loss", "valid_loss", "accuracy", "seconds") if k in r}
                           for r in rows])
    sel_fig.update(loss=best["valid_loss"], accuracy=best["accuracy"])
    keep = best["valid_loss"] < ref.valid_loss and best["accuracy"] >= ref.accuracy
    if keep:
        learn.model.load_state_dict(tuner.model.state_dict())
        valid = learn.validate()  # the validation split, for the record: the choice was made above
        why.append(f"fine-tune improved the inner holdout's loss {ref.valid_loss:.4f} -> {best['valid_loss']:.4f}, "
                   f"accuracy {ref.accuracy:.4f} -> {best['accuracy']:.4f}: kept")
        cand = Candidate(f"fine_tune@{data.size}", "fine_tune", data.size, valid["valid_loss"], valid["accuracy"],
                         time.perf_counter() - t, {**detail, "kept": True}, sel_fig)
        return cand, (logits, targets)
    why.append(f"fine-tune did not beat the probe on the inner holdout (loss {best['valid_loss']:.4f} vs "
               f"{ref.valid_loss:.4f}, accuracy {best['accuracy']:.4f} vs {ref.accuracy:.4f}): the probe is kept")
    return Candidate(f"fine_tune@{data.size}", "fine_tune", data.size, None, None, time.perf_counter() - t,
                     {**detail, "kept": False}, sel_fig), None


def fine_tune(learn: VisionLearner, probe: Candidate, epochs: int, base_lr: float) -> Candidate:
    """Unfreeze and train from the probe's head, stopping when validation loss stops improving."""
    t = time.perf_counter()
    probe_state = copy.deepcopy(learn.model.state_dict())
    learn.unfreeze()
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
