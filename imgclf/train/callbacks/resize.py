"""Progressive resizing: train the early epochs on smaller images, the last ones at full size.

A conv net's step costs about its pixels, so early epochs at ~20 px cost a fraction of those at 28 px (airnet_tiny:
0.57x at 20 px, measured bf16 on one thread), while what the net learns early (edges, coarse shapes) survives the
change of scale. The last part of training runs at full size, so that batch-norm statistics and the filters settle
at the size validation and prediction see (Touvron et al. 2019's train-test resolution effect: a net trained on
smaller images than it is tested on does worse until it is fine-tuned at the test size). fast.ai's DAWNBench
ImageNet runs and Keller Jordan's ResNet-18 CIFAR speedruns trained this way.

The size is a pure function of training progress (`progressive_size`), so a resumed run picks up the same size;
each training batch (already augmented, on the device) is resized with an antialiased bilinear filter, one op per
batch. Validation, `get_preds` and the rate finder see full-size batches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .core import Callback


def progressive_size(pct: float, full: int, start: float, until: float = 0.5, step: int = 4) -> int:
    """The training size at progress `pct` (0..1): `start * full` px at 0 (`start` a fraction of the full size),
    growing linearly to `full` by `until`, full size from then on; rounded down to a multiple of `step` (fewer
    distinct sizes: fewer recompiled kernels), never below 8 px."""
    first = max(8, round(start * full))
    if start <= 0 or first >= full or until <= 0 or pct >= until:
        return full
    size = first + (full - first) * pct / until
    return max(first, min(full, int(size // step * step)))


def progressive_cost(start: float, full: int, until: float = 0.5, step: int = 4) -> float:
    """The mean share of full-size pixels a training run's batches have under `progressive_size` (1.0: none
    resized), what the planner scales a from-scratch epoch's cost by: a conv net's step costs about its pixels
    (airnet_tiny at 20 and 24 px: 0.55 and 0.74 of its 28 px step, pixels 0.51 and 0.73)."""
    if full <= 0:
        return 1.0
    points = [progressive_size((i + 0.5) / 200, full, start, until, step) for i in range(200)]
    return sum((p / full) ** 2 for p in points) / len(points)


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """`x` (N, C, H, W) resized to `size` x `size` (antialiased bilinear), in `x`'s memory format."""
    if x.shape[-2:] == (size, size):
        return x
    out = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    if x.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


class ProgressiveResize(Callback):
    """Resizes training batches to `progressive_size(learn.pct_train, full, start, until)`, full being the batch's
    own size and `start` the first size as a fraction of it (0.72: 20 px at 28). Stateless: the size follows from
    progress alone."""

    order = 5  # after the schedule (-5), before mixed precision enters autocast (10)

    def __init__(self, start: float, until: float = 0.5, step: int = 4):
        self.start, self.until, self.step = start, until, step
        self.size: int | None = None  # the last batch's size, for logs and tests

    def before_batch(self, learn) -> None:
        if not learn.training or learn.xb.dim() != 4:
            return
        full = learn.xb.shape[-1]
        self.size = progressive_size(learn.pct_train, full, self.start, self.until, self.step)
        learn.xb = resize_batch(learn.xb, self.size)
