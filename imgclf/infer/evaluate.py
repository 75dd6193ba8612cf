"""Score a trained run on labelled images it has not seen: accuracy, loss, per-class accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..data.sources import Items, find_images, items_from_folder, label_from_re
from ..errors import UserError
from .predictor import Predictor, load_model
from .tta import TTA_VIEWS, combine


def labelled_items(path: str | Path, label_re: str | None = None) -> Items:
    """Images with labels from `path`: its validation split when it has train/ + valid/, else all of it."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"{root}: no such directory")
    if any((root / n).is_dir() for n in ("valid", "val", "validation")) and (root / "train").is_dir():
        items = items_from_folder(root, label_re=label_re)
        paths, labels = items.split(valid=True)
        return Items(paths, labels, [True] * len(paths))
    paths = find_images(root)
    if not paths:
        raise UserError(f"{root}: no images found")
    labeller = label_from_re(label_re) if label_re else (lambda p: p.parent.name)
    return Items(paths, [labeller(p) for p in paths], [True] * len(paths))


def evaluate(run: str | Path | Predictor, data: str | Path, label_re: str | None = None, bs: int = 64,
             progress: bool = True, tta: bool = False) -> dict[str, Any]:
    """accuracy, loss (plain cross-entropy), n, skipped files and per-class accuracy of `run` on `data`;
    with `tta` also tta_accuracy and tta_loss (center + flip views, softmax averaged), from the same pass."""
    predictor = run if isinstance(run, Predictor) else load_model(run)
    items = labelled_items(data, label_re)
    unknown = sorted(set(items.labels) - set(predictor.classes))
    if unknown:
        raise UserError(f"{data}: label(s) {', '.join(unknown)} not among the model's classes "
                        f"({', '.join(predictor.classes)})")
    view_probs, kept, skipped = predictor.probs_files(items.paths, bs=bs, progress=progress,
                                                     names=TTA_VIEWS if tta else ("center",))
    label_of = dict(zip(map(str, items.paths), items.labels, strict=True))
    idx = {c: i for i, c in enumerate(predictor.classes)}
    probs = view_probs[0]  # the center view: the plain figure
    targets = torch.tensor([idx[label_of[str(p)]] for p in kept], dtype=torch.long)
    hits = probs.argmax(-1) == targets
    per_class = {c: float(hits[targets == i].float().mean()) for c, i in idx.items() if (targets == i).any()}
    res = {
        "accuracy": float(hits.float().mean()),
        "loss": float(F.nll_loss(probs.clamp_min(1e-12).log(), targets)),
        "n": len(kept),
        "per_class_accuracy": per_class,
        "skipped_files": [{"path": str(p), "reason": r} for p, r in skipped],
    }
    if tta:
        tp = combine(view_probs)
        res.update(tta_accuracy=float((tp.argmax(-1) == targets).float().mean()),
                   tta_loss=float(F.nll_loss(tp.clamp_min(1e-12).log(), targets)), tta_views=list(TTA_VIEWS))
    return res
