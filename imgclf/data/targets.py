"""What a model learns to output, from the items' labels: one class, a set of tags, or a number.

- `classify`: one class per image; int64 class indices (softmax + cross-entropy).
- `multi_label`: any number of tags per image (space-separated in a CSV, or the same image in several
  class folders); float multi-hot rows (sigmoid + binary cross-entropy). An image may have no tag.
- `regression`: a number per image (an age, a coordinate); float column, standardised with the training
  split's mean and standard deviation so one learning rate suits ages and pixel coordinates alike;
  predictions are mapped back to the original units.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import UserError
from .sources import Items

TASKS = ("classify", "multi_label", "regression")


def describe_targets(task: str, names: Sequence[str]) -> str:
    """What a data set's labels (or a model's answers) are, in a user's words: "4 classes", "1 tag", "a number
    (age)"."""
    if task == "regression":
        return f"a number ({names[0] if names else 'value'})"
    noun = ("tag", "tags") if task == "multi_label" else ("class", "classes")
    return f"{len(names)} {noun[len(names) != 1]}"


@dataclass
class Targets:
    """Encoded targets aligned with `items`: `values[i]` is item i's target row."""

    task: str
    names: list[str]  # the model's outputs: class names, tag names, or the target's name
    values: torch.Tensor
    mean: float = 0.0  # regression: the standardisation applied (value = (raw - mean) / std)
    std: float = 1.0

    @property
    def n_out(self) -> int:
        return len(self.names)


def check_task(task: str) -> str:
    if task not in TASKS:
        raise UserError(f"--task {task}: choose {', '.join(TASKS)}")
    return task


def _check_split(items: Items, where: str) -> None:
    if not any(items.is_valid):
        raise UserError(f"{where}: the validation split is empty")
    if all(items.is_valid):
        raise UserError(f"{where}: the training split is empty")


def encode_targets(items: Items, task: str, where: str, names: Sequence[str] | None = None,
                   target_name: str = "value", stats: tuple[float, float] | None = None,
                   require_split: bool = True) -> Targets:
    """The targets of every item, after the checks each task needs. `names` fixes the classes or tags (a
    model's own); `stats` fixes regression's (mean, std), else the training split's are used.
    `require_split=False` for a set that is only scored (no training split)."""
    check_task(task)
    if require_split:
        _check_split(items, where)
    if task == "classify":
        empty = next((p for p, label in zip(items.paths, items.labels, strict=True) if not label), None)
        if empty is not None:
            raise UserError(f"{empty}: empty label (an image with no tag? use --task multi_label)")
        found = sorted(set(items.labels))
        if len(found) < 2 and names is None:
            what = f"one class ({found[0]!r})" if found else "no classes"
            raise UserError(f"{where}: found {what}; a classifier needs at least two "
                            "(several tags per image? use --task multi_label)")
        names = list(names) if names is not None else found
        _check_known(found, names, where, "classes")
        idx = {c: i for i, c in enumerate(names)}
        return Targets(task, names, torch.tensor([idx[c] for c in items.labels], dtype=torch.long))
    if task == "multi_label":
        tags = items.item_tags()
        found = sorted({t for ts in tags for t in ts})
        if not found:
            raise UserError(f"{where}: no tags found; multi-label rows hold space-separated tags")
        joined = [t for t in found if ("," in t or ";" in t) and items.tags is None]  # CSV rows, not folder names
        if joined:
            warnings.warn(f"{where}: tag(s) {', '.join(repr(t) for t in joined[:3])} hold a comma or semicolon: tags "
                          "are separated by spaces, so each is one tag; write 'ant bee' for two", stacklevel=2)
        names = list(names) if names is not None else found
        _check_known(found, names, where, "tags")
        idx = {c: i for i, c in enumerate(names)}
        values = torch.zeros(len(tags), len(names))
        for row, ts in enumerate(tags):
            values[row, [idx[t] for t in ts]] = 1.0
        return Targets(task, names, values)
    raw = []
    for path, label in zip(items.paths, items.labels, strict=True):
        try:
            v = float(label)
        except ValueError:
            raise UserError(f"{path}: target {label!r} is not a number (--task regression)") from None
        if not math.isfinite(v):
            raise UserError(f"{path}: target {label!r} is not a finite number")
        raw.append(v)
    values = torch.tensor(raw, dtype=torch.float32)[:, None]
    if stats is None:
        train = values[~torch.tensor(items.is_valid)]
        mean, std = float(train.mean()), float(train.std()) if len(train) > 1 else 1.0
        stats = (mean, std if std > 1e-12 else 1.0)
    mean, std = stats
    name = names[0] if names else target_name
    return Targets(task, [name], (values - mean) / std, mean, std)


def _check_known(found: Sequence[str], names: Sequence[str], where: str, what: str) -> None:
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise UserError(f"{where}: label(s) {', '.join(unknown)} not among the {what} given ({', '.join(names)})")
