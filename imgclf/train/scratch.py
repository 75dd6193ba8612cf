"""The from-scratch recipe: what a small random-weight net needs to learn small images well, as one function.

`scratch_recipe(n_train, short_side)` is what the auto recipe planner and `imgclf train --recipe scratch`
(the job's scratch defaults: `SCRATCH_EPOCHS`, `SCRATCH_LR`) train with when no pretrained body applies.
Measured on Fashion-MNIST (60k train, 28 px; test = the official 10k t10k) with bench/fashion_scratch.py:
xresnet_tiny at 28 px, bs 256, one-cycle AdamW at 8e-3, label smoothing 0.1, pad/flip/lighting augmentation
reaches 94.0% in 16 epochs (the job's default since issue 5) and in 18 (8.75 minutes of training on the reference
2-core CPU, quiet).

Issue 14 asks for 94.0% within 5 minutes. The candidates (fewer epochs; the airbench-style `airnet_tiny`, whose
training step costs 0.46-0.78 of xresnet_tiny's in bf16, measured under load) are in bench/fashion_scratch.py
`--speed`; this recipe changes to one of them once a quiet run shows it reaches 94.0% there.
"""

from __future__ import annotations

import math
from typing import Any

SCRATCH_ARCH = "xresnet_tiny"
SCRATCH_EPOCHS = 16  # on a data set the size of Fashion-MNIST (235 steps of 256 per epoch): 94.0%
SCRATCH_LR = 8e-3  # one-cycle AdamW peak: 4e-3 93.9%, 8e-3 94.0%, 1.6e-2 94.0% (Fashion-MNIST, 16 epochs)
SCRATCH_BS = 256
SCRATCH_AUGMENT = "pad=2,flip=1,rotate=0,zoom=1,warp=0,lighting=0.1"  # CIFAR's pad-and-crop, mirror, light
SCRATCH_LABEL_SMOOTHING = 0.1
MAX_SIZE = 64  # from scratch, larger images are trained at this size: pixels cost time, random weights gain little
MIN_STEPS = 2000  # small data sets get more epochs, so that the one-cycle schedule has room (capped below)
MAX_EPOCHS = 100


def scratch_recipe(n_train: int, short_side: float) -> dict[str, Any]:
    """Settings to train `SCRATCH_ARCH` from random weights on `n_train` images whose short side is
    `short_side` pixels: arch, size, crop_pct, bs, epochs, lr, augment, label_smoothing, schedule.

    Small images (<= MAX_SIZE) train at their own size, whole (crop 1: their borders hold content); larger ones
    are resized to MAX_SIZE with ImageNet's 0.875 center crop for validation and the default augmentation
    (zoom crops in). The batch shrinks for small sets (>= 16 steps an epoch) and the epochs grow so that the
    schedule runs at least MIN_STEPS steps (at most MAX_EPOCHS epochs)."""
    n_train = max(1, int(n_train))
    native = short_side > 0 and short_side <= MAX_SIZE
    size = max(8, round(short_side)) if native else MAX_SIZE
    bs = SCRATCH_BS
    while bs > 32 and n_train / bs < 16:
        bs //= 2
    steps = math.ceil(n_train / bs)
    epochs = min(MAX_EPOCHS, max(SCRATCH_EPOCHS, math.ceil(MIN_STEPS / steps)))
    return {
        "arch": SCRATCH_ARCH, "size": size, "crop_pct": 1.0 if native else 0.875, "bs": bs, "epochs": epochs,
        "lr": SCRATCH_LR, "augment": SCRATCH_AUGMENT if native else "default",
        "label_smoothing": SCRATCH_LABEL_SMOOTHING, "schedule": "one_cycle",
    }
