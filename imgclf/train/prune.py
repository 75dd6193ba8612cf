"""Magnitude pruning: zero the smallest weights of a trained run, fine-tune briefly, write a new run.

`prune_model(model, 0.5)` ranks every conv and linear weight of the model together by magnitude and zeroes the
smallest half (`torch.nn.utils.prune.global_unstructured` with L1, then `prune.remove`: the zeros are plain
values of plain parameters, so the weights save and load as any model's). Global ranking lets layers that
matter less lose more. `KeepSparse` re-zeroes them after every optimizer step of the fine-tune that follows, so
momentum and weight decay cannot bring them back.

What it buys, honestly: dense CPU and GPU kernels multiply zeros as fast as any other number, so a pruned model
is no faster, and `model.safetensors` stores every zero, so it is no smaller; only a compressed copy is (gzip:
see `file_sizes` and bench/compress.py for the figures). Speed needs structured pruning (whole channels) or
sparse kernels, neither of which this is.

`prune_run(run, sparsity=0.5)` is the job behind `imgclf prune RUN [DATA]`: it never writes into RUN.
"""

from __future__ import annotations

import copy
import gzip
import shutil
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from ..config import RunConfig
from ..data.dedup import write_training_content
from ..errors import UserError
from ..models import ModelMeta, model_from_run
from ..rundir import MODEL_FILE, new_run_dir, read_json, read_run, save_model, write_json
from .callbacks import Callback, CSVLogger
from .job import load_data
from .vision import VisionLearner, task_losses, task_metrics

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def prunable_weights(model: nn.Module, head: bool = False) -> list[tuple[nn.Module, str]]:
    """(module, "weight") of every conv and linear layer, the classifier only with `head`: what global magnitude
    pruning ranks together.

    The classifier is left dense by default (common practice: Zhu & Gupta 2017 and Gale et al. 2019 keep an end
    layer dense): it is a sliver of the weights (3 x 1,280 of EfficientNet-Lite0's 3.3 M) that every output passes
    through, and its scale is not the body's: ranked with the body, a probe's head (weights ~10x smaller than the
    body's) came out 96.5% zero at 50% global sparsity."""
    skip = set() if head or not hasattr(model, "get_classifier") else {id(m) for m in model.get_classifier().modules()}
    return [(m, "weight") for m in model.modules()
            if isinstance(m, PRUNABLE) and m.weight is not None and id(m) not in skip]


def sparsity(model: nn.Module, head: bool = False) -> float:
    """The fraction of conv and linear weights (the classifier's only with `head`) that are exactly zero."""
    ws = [m.weight for m, _ in prunable_weights(model, head)]
    total = sum(w.numel() for w in ws)
    return sum(int((w == 0).sum()) for w in ws) / max(total, 1)


def check_amount(amount: float) -> None:
    if not 0 <= amount < 1:
        raise UserError(f"--sparsity {amount}: give a fraction in [0, 1), e.g. 0.5")


def prune_model(model: nn.Module, amount: float, head: bool = False) -> dict[str, float]:
    """Zero the `amount` fraction of smallest-magnitude conv and linear weights, ranked across all layers
    (global L1 unstructured; the classifier too only with `head`, see `prunable_weights`); permanent.
    Returns the measured sparsity and the weights counted."""
    check_amount(amount)
    params = prunable_weights(model, head)
    if not params:
        raise UserError(f"{type(model).__name__}: no conv or linear weights to prune")
    if amount > 0:
        # torch's global ranking flattens weights with `view`, which channels_last conv weights refuse: prune in
        # the default layout, then give the model its layout back (same Parameter objects throughout)
        channels_last = any(m.weight.dim() == 4 and not m.weight.is_contiguous() for m, _ in params)
        if channels_last:
            model.to(memory_format=torch.contiguous_format)
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
        for module, name in params:
            prune.remove(module, name)
        if channels_last:
            model.to(memory_format=torch.channels_last)
    return {"sparsity": sparsity(model, head), "weights": float(sum(m.weight.numel() for m, _ in params))}


class KeepSparse(Callback):
    """Keeps pruned weights at zero while training: the zeros found at the start of the fit are the mask,
    and they are zeroed again after every optimizer step (AdamW's momentum would revive them)."""

    order = 70

    def __init__(self) -> None:
        self.masks: list[tuple[torch.Tensor, torch.Tensor]] = []

    def before_fit(self, learn) -> None:
        self.masks = [(m.weight, m.weight != 0) for m, _ in prunable_weights(learn.model, head=True)]

    def after_batch(self, learn) -> None:
        if not learn.training:
            return
        with torch.no_grad():
            for w, mask in self.masks:
                w.mul_(mask)


def file_sizes(path: str | Path) -> dict[str, int]:
    """Bytes of a weights file as it is and gzipped (level 6): zeros compress, the raw file does not shrink."""
    raw = Path(path).read_bytes()
    return {"bytes": len(raw), "gzip_bytes": len(gzip.compress(raw, compresslevel=6))}


@dataclass
class PruneResult:
    run_dir: Path
    metrics: dict[str, Any]
    learner: VisionLearner


def run_learner(run: str | Path, data_path: str | Path | None = None, bs: int | None = None, lr: float = 5e-4,
                device: str = "auto", progress: bool = True, cbs: list[Callback] | None = None) -> VisionLearner:
    """A learner over a trained run's model, with its own preprocessing (size, crop, mean/std from model.json)
    and its data (`data_path`, else the path in its config.json, read with the same data settings)."""
    model, meta = model_from_run(run)
    conf_file = Path(run) / "config.json"
    cfg = RunConfig.from_dict(read_json(conf_file)) if conf_file.is_file() else RunConfig()
    path = str(data_path) if data_path else cfg.data.path
    if not path or not Path(path).exists():
        raise UserError(f"{run}: its data {path or '(not recorded)'} is not there; give DATA")
    crop = float(meta.get("crop_pct") or meta["size"] / meta["presize"])
    cfg = replace(cfg, data=replace(cfg.data, path=path, size=int(meta["size"]), crop_pct=crop,
                                    task=meta.get("task", "classify"), bs=bs or cfg.data.bs))
    data = load_data(cfg, progress)
    if list(data.classes) != list(meta["classes"]):
        raise UserError(f"{path}: its classes {data.classes} are not the run's {meta['classes']}")
    mmeta = ModelMeta(meta["arch"], tuple(meta["mean"]), tuple(meta["std"]), meta.get("interpolation", "bilinear"),
                      meta.get("pretrained", "none"))
    train_loss, valid_loss = task_losses(data, cfg.train.label_smoothing, cfg.train.loss)
    learn = VisionLearner(data, model, mmeta, seed=cfg.data.seed, progress=progress, device=device,
                          metrics=task_metrics(data), loss_func=train_loss, valid_loss_func=valid_loss, lr=lr,
                          wd=cfg.train.wd, clip=cfg.train.clip, cbs=cbs or [])
    if "threshold" in meta:
        learn.threshold = float(meta["threshold"])
    return learn


def prune_run(run: str | Path, data: str | Path | None = None, amount: float = 0.5, epochs: int = 1,
              lr: float = 5e-4, out: str | Path | None = None, bs: int | None = None, device: str = "auto",
              head: bool = False, progress: bool = True) -> PruneResult:
    """Prune RUN's model to `amount` sparsity, fine-tune `epochs` (one-cycle at `lr`, zeros kept), and write a
    new run directory (`out`, default `RUN-pruned50`; -2, -3... if taken; never RUN itself) whose
    metrics.json holds the sparsity and the validation figures before, right after pruning and after the
    fine-tune, and the weights file's size raw and gzipped beside the original's."""
    t_start = time.perf_counter()
    run = Path(run)
    if epochs < 0:
        raise UserError("--epochs must be >= 0")
    check_amount(amount)  # a bad amount fails before anything loads
    target = Path(out) if out else run.with_name(f"{run.name}-pruned{round(amount * 100)}")
    if target.resolve() == run.resolve():
        raise UserError(f"--out {target}: that is the run being pruned; a pruned run is always a new directory")
    read_run(run)  # a clear error before the data loads
    dest = new_run_dir(target)
    try:
        learn = run_learner(run, data, bs, lr, device, progress, cbs=[CSVLogger(dest / "history.csv")])
    except BaseException:
        shutil.rmtree(dest)
        raise
    before = learn.validate()
    stats = prune_model(learn.model, amount, head)
    after_prune = learn.validate()
    learn.phase = "pruned"
    t_fit = time.perf_counter()
    kept = "fine-tuned"
    if epochs:
        pruned = copy.deepcopy(learn.model.state_dict())
        learn.fit_one_cycle(epochs, lr, cbs=[KeepSparse()])
    fit_seconds = time.perf_counter() - t_fit
    final = learn.validate()
    if epochs and final["valid_loss"] > after_prune["valid_loss"]:
        # the fine-tune made it worse (one rate for the whole body: a regression run's MAE 19.1 -> 35.7 at 5e-4):
        # the pruned weights without it are written, as a best-epoch choice would keep them
        warnings.warn(f"prune: the fine-tune raised the validation loss {after_prune['valid_loss']:.4f} -> "
                      f"{final['valid_loss']:.4f}; keeping the pruned weights without it (a lower --lr may help)",
                      stacklevel=2)
        learn.model.load_state_dict(pruned)
        final, kept = after_prune, "pruned, without its fine-tune"
    meta = {k: v for k, v in read_run(run)[1].items() if k != "imgclf_version"}
    save_model(dest, learn.model, meta)
    conf = read_json(run / "config.json") if (run / "config.json").is_file() else {}
    conf["prune"] = {"from": str(run.resolve()), "sparsity": amount, "head": head, "epochs": epochs, "lr": lr}
    write_json(dest / "config.json", conf)
    metrics = {
        **final, "sparsity": sparsity(learn.model, head), "asked_sparsity": amount, "head_pruned": head,
        "weights_counted": stats["weights"],
        "before": before, "after_prune": after_prune, "kept": kept, "fit_seconds": fit_seconds,
        **({"threshold": learn.threshold} if learn.data.task == "multi_label" else {}),
        "total_seconds": time.perf_counter() - t_start, "from": str(run.resolve()),
        "file": file_sizes(dest / MODEL_FILE), "original_file": file_sizes(run / MODEL_FILE),
        "n_train": learn.data.n_train, "n_valid": learn.data.n_valid,
        "note": "dense kernels do not skip zeros: no faster; the raw weights file is no smaller, a compressed one is",
    }
    write_training_content(dest, learn.data)  # the original run's training images: evaluate warns on them too
    write_json(dest / "metrics.json", metrics)
    return PruneResult(dest, metrics, learn)
