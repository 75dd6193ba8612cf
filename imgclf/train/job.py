"""`train(config)`: the whole job behind `imgclf train`, from a folder to a run directory.

Data -> learner -> (lr_find) -> fine_tune -> export, writing into a fresh run directory:
model.safetensors, model.json, config.json, history.csv, metrics.json, loss.png, lr_find.png.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import RunConfig
from ..data.core import ImageData
from ..errors import UserError
from ..models import recommended_size
from ..rundir import new_run_dir, write_json
from .callbacks import CSVLogger, EarlyStopping, SaveBestModel
from .vision import VisionLearner, vision_learner


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, Any]
    learner: VisionLearner


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_data(cfg: RunConfig, progress: bool = True) -> ImageData:
    """The `ImageData` a config describes: a CSV, a regex on names, or class folders."""
    d = cfg.data
    common = dict(size=d.size or recommended_size(cfg.model.arch), bs=d.bs, workers=d.workers, progress=progress)
    path = Path(d.path)
    csv_file = d.csv or (d.path if path.suffix.lower() == ".csv" else None)
    if csv_file:
        folder = path if path.is_dir() else None
        return ImageData.from_csv(csv_file, folder=folder, valid_pct=d.valid_pct, seed=d.seed, **common)
    return ImageData.from_folder(path, valid=d.valid, valid_pct=d.valid_pct, seed=d.seed, label_re=d.label_re,
                                 **common)


def default_out(cfg: RunConfig) -> Path:
    name = Path(cfg.data.csv or cfg.data.path).resolve()
    return Path("runs") / (name.stem if name.suffix else name.name)


def _save_fig(fig, path: Path) -> None:
    fig.savefig(path, dpi=110)


def train(cfg: RunConfig, progress: bool = True) -> TrainResult:
    """Run the configured training and write its run directory; returns where, and the figures."""
    t_start = time.perf_counter()
    tc = cfg.train
    if not cfg.data.path:
        raise UserError("no data path given")
    if tc.epochs < 0 or tc.freeze_epochs < 0:
        raise UserError("--epochs and --freeze-epochs must be >= 0")
    lr_auto = isinstance(tc.lr, str)
    if lr_auto and tc.lr != "auto":
        raise UserError(f"--lr {tc.lr}: give a number or 'auto'")
    seed_everything(cfg.data.seed)
    data = load_data(cfg, progress)
    out = new_run_dir(cfg.out or default_out(cfg))
    learn = vision_learner(
        data, cfg.model.arch, pretrained=cfg.model.pretrained, weights=cfg.model.weights,
        label_smoothing=tc.label_smoothing, seed=cfg.data.seed, opt=tc.opt, lr=0.0 if lr_auto else tc.lr,
        wd=tc.wd, clip=tc.clip, device=tc.device, precision=tc.precision, channels_last=tc.channels_last,
        progress=progress, cbs=[CSVLogger(out / "history.csv")],
    )
    resolved: dict[str, Any] = {"device": str(learn.device), "precision": str(learn.dtype or "fp32"),
                                "size": data.size, "presize": data.presize, "classes": data.classes,
                                "augment": data.augment.to_dict()}
    t_fit = time.perf_counter()
    lr = tc.lr
    if lr_auto:
        finder = learn.lr_find()
        _save_fig(finder.plot(), out / "lr_find.png")
        lr = finder.valley
        resolved["lr_find"] = finder.suggestions
        print(f"lr_find: valley {lr:.2e} (minimum/10 {finder.minimum:.2e}, steep {finder.steep:.2e})")
    resolved["lr"] = lr
    best = SaveBestModel("valid_loss", model=learn.model, across_fits=True)
    fit_cbs = [best]
    if tc.patience:
        fit_cbs.append(EarlyStopping("valid_loss", patience=tc.patience))
    learn.fine_tune(tc.epochs, tc.freeze_epochs, base_lr=float(lr), cbs=fit_cbs)
    fit_seconds = time.perf_counter() - t_fit
    resolved["best_epoch"], resolved["best_phase"] = best.best_epoch, best.best_phase
    final = learn.validate()
    learn.export(out)
    write_json(out / "config.json", {**cfg.to_dict(), "out": str(out), "resolved": resolved})
    metrics = {
        **final, "fit_seconds": fit_seconds, "total_seconds": time.perf_counter() - t_start,
        "n_train": data.n_train, "n_valid": data.n_valid, "n_classes": len(data.classes),
        "kept_epoch": best.best_epoch, "kept_phase": best.best_phase,
        "skipped_files": [{"path": str(p), "reason": r} for p, r in data.skipped],
    }
    write_json(out / "metrics.json", metrics)
    if learn.recorder.history:
        _save_fig(learn.recorder.plot_loss(), out / "loss.png")
    return TrainResult(out, metrics, learn)
