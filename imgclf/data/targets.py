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
from .sources import Items, warn_once

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
        if items.split_origin == "drawn":  # our stratified split holds out nothing only when no class can spare one
            raise UserError(f"{where}: the validation split is empty: every class has a single image (or copies of "
                            "one), so nothing can be held out for validation; add images or give a valid/ folder (in a "
                            "CSV, an is_valid column)")
        raise UserError(f"{where}: the validation split is empty")
    if all(items.is_valid):
        raise UserError(f"{where}: the training split is empty")


def encode_targets(items: Items, task: str, where: str, names: Sequence[str] | None = None,
                   target_name: str = "value", stats: tuple[float, float] | None = None,
                   require_split: bool = True, whose: str | None = None) -> Targets:
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
        if names is None:
            _warn_if_tags(items, where)
        names = list(names) if names is not None else found
        check_known(found, names, where, "classes", whose)
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
        check_known(found, names, where, "tags", whose)
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
        if len(train) > 1 and bool((train == train[0]).all()):
            label = names[0] if names else target_name
            warnings.warn(f"{where}: the target {label!r} is {float(train[0]):g} for every training image: a model "
                          "learns nothing from it (the wrong column? --label-col names the target)", stacklevel=2)
    mean, std = stats
    name = names[0] if names else target_name
    return Targets(task, [name], (values - mean) / std, mean, std)


def _warn_if_tags(items: Items, where: str) -> None:
    """One warning when single-label labels read like a multi-label CSV's tags: labels of several words, each word
    found in other labels too (`ant bright wide`, `ant dark`, `bee bright`: each combination trains as a class of its
    own). Class names of several words that name a thing (`golden retriever`, `labrador retriever`) have words of
    their own and pass, as do folder names (the label is a folder in the item's path)."""
    labels = {label for p, label in zip(items.paths, items.labels, strict=True) if label not in p.parts}
    words: dict[str, int] = {}
    for label in labels:
        for w in set(label.split()):
            words[w] = words.get(w, 0) + 1
    several = [label for label in labels if len(label.split()) > 1]
    shared = [label for label in several if all(words[w] > 1 for w in label.split())]
    if len(shared) >= 2 and 2 * len(shared) >= len(several):
        warn_once(f"{where}: labels look like space-separated tags ({', '.join(map(repr, sorted(shared)[:3]))}"
                  f"{', ...' if len(shared) > 3 else ''}: each combination is a class of its own); for multi-label "
                  "pass --task multi_label", stacklevel=3)


def check_known(found: Sequence[str], names: Sequence[str], where: str, what: str, whose: str | None = None
                 ) -> None:
    """Labels outside the fixed `names`: one error naming them (at most 10) and the names (at most 20), `whose`
    they are ("run's": "the run's classes"; None: "the classes given")."""
    unknown = sorted(set(found) - set(names))
    if unknown:
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        shown = ", ".join(map(repr, names[:20])) + (f", ... {len(names)} in all" if len(names) > 20 else "")
        among = f"{whose} {what}" if whose else f"{what} given"
        raise UserError(f"{where}: label(s) {', '.join(map(repr, unknown[:10]))}{more} not among the {among} "
                        f"({shown})")
