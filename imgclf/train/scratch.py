"""The from-scratch recipe: what a small random-weight net needs to learn small images well, as one function.

`scratch_recipe(n_train, short_side)` is what the auto recipe planner and `imgclf train --recipe scratch`
(the job's scratch defaults: `SCRATCH_EPOCHS`, `SCRATCH_LR`, `SCRATCH_PROGRESSIVE`) train with when no pretrained
body applies. Measured on Fashion-MNIST (60k train, 28 px; test = the official 10k t10k) with
bench/fashion_scratch.py:

- issue 5: xresnet_tiny at 28 px, bs 256, 16 epochs one-cycle AdamW at 8e-3, label smoothing 0.1, pad/flip/lighting
  augmentation: 94.0% (~467 s of fit on the reference 2-core CPU, quiet);
- issue 14 (this recipe): airbench's plain conv net, `airnet_tiny` (7 convs, no residuals), 17 epochs at the same
  rate, smoothing and augmentation, with progressive resizing: training batches at 20 px for the first quarter of
  the steps, 24 px for the second, 28 px from half-way (`SCRATCH_PROGRESSIVE`). 94.20% plain, 94.36% with TTA
  (center + mirror), in 0.59x the fit of the issue-5 recipe timed beside it (one thread, shared machine; <= 0.64x
  is 300 s of the reference CPU's 467 s). 16 epochs: 93.99% (TTA 94.31%) in 0.49x and 0.56x (two runs); 18:
  94.08% (TTA 94.38%) in 0.70x. By interleaved per-step timing (airnet_tiny's step at 20/24/28 px costs 0.40/0.54/
  0.73 of xresnet_tiny's at 28, bf16, one thread) 16/17/18 epochs cost 0.61/0.65/0.69x: the 17-epoch margin is thin.
"""

from __future__ import annotations

import math
from typing import Any

SCRATCH_ARCH = "airnet_tiny"  # xresnet_tiny: 94.0% in 16 epochs at 1.7x the cost (see above)
SCRATCH_EPOCHS = 17  # on a data set the size of Fashion-MNIST (235 steps of 256 per epoch): 94.2% (airnet_tiny)
SCRATCH_LR = 8e-3  # one-cycle AdamW peak (xresnet_tiny, 16 epochs: 4e-3 93.9%, 8e-3 94.0%, 1.6e-2 94.0%)
SCRATCH_BS = 256
SCRATCH_AUGMENT = "pad=2,flip=1,rotate=0,zoom=1,warp=0,lighting=0.1"  # CIFAR's pad-and-crop, mirror, light
SCRATCH_LABEL_SMOOTHING = 0.1
# progressive resizing (train/callbacks/resize.py): training batches start at this fraction of the size (0.72: 20 px
# at 28) and reach full size half-way; 0 = off. Early low-resolution epochs cost airnet_tiny 0.40-0.54 of a 28 px one
SCRATCH_PROGRESSIVE = 0.72
# On a GPU a small net's step is bound by the host launching its kernels, not by its pixels (Fashion-MNIST on one
# H200, bench/gpu.py --only profile: a step takes ~6 ms whether its batch is 256 or 1024 images): larger batches
# and no progressive resizing (smaller images save nothing there, and each new size re-times cuDNN). Measured
# there, 17 epochs: bs 256 (the CPU recipe) 94.02% in 43.2 s of fit; bs 1024 at lr x2, progressive: 93.91% in
# 16.0 s; bs 1024 at lr x2, no progressive: 94.14% in 11.7 s.
GPU_BS = 1024
GPU_MIN_STEPS = 32  # the batch grows only while an epoch keeps at least this many steps
# a planned from-scratch run keeps its last epoch, so validation there only shows progress: this many passes
# (every ceil(epochs / 4)th epoch and the last), not one per epoch (Fashion-MNIST on 2 cores: ~1 s each of ~17 s)
SCRATCH_VALIDATIONS = 4
MAX_SIZE = 64  # from scratch, larger images are trained at this size: pixels cost time, random weights gain little
MIN_STEPS = 2000  # small data sets get more epochs, so that the one-cycle schedule has room (capped below)
MAX_EPOCHS = 100


def scratch_recipe(n_train: int, short_side: float, device: str = "cpu") -> dict[str, Any]:
    """Settings to train `SCRATCH_ARCH` from random weights on `n_train` images whose short side is
    `short_side` pixels on a `device` ("cpu", "cuda", "mps"): arch, size, crop_pct, bs, epochs, lr, augment,
    label_smoothing, schedule, progressive.

    Small images (<= MAX_SIZE) train at their own size, whole (crop 1: their borders hold content); larger ones
    are resized to MAX_SIZE with ImageNet's 0.875 center crop for validation and the default augmentation
    (zoom crops in). The batch shrinks for small sets (>= 16 steps an epoch) and the epochs grow so that the
    schedule runs at least MIN_STEPS steps (at most MAX_EPOCHS epochs). On CUDA the batch then grows up to
    GPU_BS while an epoch keeps GPU_MIN_STEPS steps, the peak rate by the square root of the batch's growth, the
    epochs as on the CPU, and progressive resizing is off (see GPU_BS)."""
    n_train = max(1, int(n_train))
    native = short_side > 0 and short_side <= MAX_SIZE
    size = max(8, round(short_side)) if native else MAX_SIZE
    bs = SCRATCH_BS
    while bs > 32 and n_train / bs < 16:
        bs //= 2
    steps = math.ceil(n_train / bs)
    epochs = min(MAX_EPOCHS, max(SCRATCH_EPOCHS, math.ceil(MIN_STEPS / steps)))
    lr, progressive = SCRATCH_LR, SCRATCH_PROGRESSIVE
    if device == "cuda":
        grown = bs
        while grown < GPU_BS and n_train / (2 * grown) >= GPU_MIN_STEPS:
            grown *= 2
        lr, bs, progressive = SCRATCH_LR * (grown / bs) ** 0.5, grown, 0.0
    return {
        "arch": SCRATCH_ARCH, "size": size, "crop_pct": 1.0 if native else 0.875, "bs": bs, "epochs": epochs,
        "lr": lr, "augment": SCRATCH_AUGMENT if native else "default",
        "label_smoothing": SCRATCH_LABEL_SMOOTHING, "schedule": "one_cycle", "progressive": progressive,
    }


def progressive_start(progressive: float | None, scratch: bool) -> float:
    """The first training size as a fraction of the full one (0: no progressive resizing): `--progressive` as
    given, else the recipe's: `SCRATCH_PROGRESSIVE` from scratch, off when fine-tuning (a pretrained body was
    trained at its own size and is fine-tuned there)."""
    if progressive is not None:
        return max(0.0, float(progressive))
    return SCRATCH_PROGRESSIVE if scratch else 0.0
