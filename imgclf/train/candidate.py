"""A recipe the auto recipe tried (train/recipes.py, train/finetune.py): what `recipe.json` lists per candidate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Candidate:
    """One recipe tried: its validation figures (for the record) and, beside them, the figures it was chosen on
    (`selection`: method, loss, loss_se, accuracy; empty when chosen on validation, `selection="valid"`)."""

    name: str
    kind: str  # "probe" or "fine_tune"
    size: int
    valid_loss: float | None
    accuracy: float | None
    seconds: float
    detail: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, Any] = field(default_factory=dict)
