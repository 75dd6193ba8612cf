"""MixUp and CutMix: train on blends of two images with targets blended in the same proportion.

MixUp (Zhang et al. 2018) averages whole images, `lam * x + (1 - lam) * x[perm]`; CutMix (Yun et al.
2019) pastes a box of `x[perm]` into `x` and sets `lam` to the share of `x` that is left. The targets
become `lam * y + (1 - lam) * y[perm]`: class indices turn into soft one-hot rows, float targets
(multi-hot, regression) are blended as they are. `nn.CrossEntropyLoss` takes such class-probability
targets directly (label smoothing still applies), so the learner's loss needs no wrapper; the loss
must accept probabilities.

Both act on training batches only: validation, `get_preds` and the rate finder see plain batches.
The blending itself is three pure functions of batch tensors (`mixup_batch`, `cutmix_batch`,
`mix_targets`), usable in your own loop.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .core import Callback


def mixup_batch(x: torch.Tensor, lam: float, perm: torch.Tensor) -> torch.Tensor:
    """`lam * x + (1 - lam) * x[perm]`, in `x`'s memory format (channels_last stays channels_last)."""
    out = x.lerp(x[perm], 1.0 - lam)  # x + (1 - lam) * (x[perm] - x)
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def cutmix_batch(x: torch.Tensor, perm: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """`x` (N, C, H, W) with the region `box = (y0, y1, x0, x1)` of every image taken from `x[perm]`."""
    y0, y1, x0, x1 = box
    out = x.clone()  # keeps the memory format
    out[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
    return out


def mix_targets(y: torch.Tensor, lam: float, perm: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Soft targets: class indices (N,) become `lam * one_hot(y) + (1 - lam) * one_hot(y[perm])` (float32,
    rows summing to 1); float targets (multi-hot, regression) become `lam * y + (1 - lam) * y[perm]`."""
    if not y.is_floating_point():
        y = F.one_hot(y, num_classes).float() if y.dim() == 1 else y.float()
    return y.lerp(y[perm], 1.0 - lam)


class _Mix(Callback):
    """Draws one `lam` per batch and a permutation of the batch, mixes `learn.xb` in `before_batch` and
    `learn.yb` in `after_pred` (where the prediction tells the class count).

    One `lam` per batch, as timm does by default and fastai does: the whole batch is one vectorised op
    (for CutMix a single box, one slice assignment) and the permutation already pairs every image with a
    different partner, so the batch still sees a spread of blends over an epoch.

    Draws come from a private NumPy generator seeded by `seed`: runs repeat exactly, and torch's global
    RNG (dropout, init) is untouched, so adding the callback does not reshuffle the rest of training.
    (NumPy rather than a `torch.Generator` because torch's Beta sampler takes no generator.) Its state
    is in `state_dict()`, so a resumed run continues the same sequence.
    """

    def __init__(self, alpha: float, seed: int = 0):
        self.alpha, self.seed = alpha, seed
        self.rng = np.random.default_rng(seed)
        # the batch in flight: its lam and permutation, None when it is not mixed
        self.lam: float | None = None
        self.perm: torch.Tensor | None = None

    def _draw_lam(self) -> float:
        return float(self.rng.beta(self.alpha, self.alpha)) if self.alpha > 0 else 1.0

    def _draw_perm(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.from_numpy(self.rng.permutation(n)).to(device)

    def mix_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, float, torch.Tensor] | None:
        """(mixed x, lam, perm), or None to leave the batch alone."""
        raise NotImplementedError

    def before_batch(self, learn) -> None:
        self.lam, self.perm = None, None
        if not learn.training or len(learn.xb) < 2:
            return
        out = self.mix_inputs(learn.xb)
        if out is not None:
            learn.xb, self.lam, self.perm = out

    def after_pred(self, learn) -> None:
        if self.lam is None or self.perm is None or not learn.training:
            return
        learn.yb = mix_targets(learn.yb, self.lam, self.perm.to(learn.yb.device), learn.pred.shape[-1])

    def after_batch(self, learn) -> None:
        self.lam, self.perm = None, None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "rng" in state:
            self.rng.bit_generator.state = state["rng"]


class MixUp(_Mix):
    """MixUp: each training image blended with a partner, `lam ~ Beta(alpha, alpha)` per batch.

    `alpha=0.4` is fastai's default (timm's is 0.8); small alphas keep most blends close to one image.
    `alpha <= 0` turns mixing off.
    """

    def __init__(self, alpha: float = 0.4, seed: int = 0):
        super().__init__(alpha, seed)

    def mix_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, float, torch.Tensor] | None:
        lam = self._draw_lam()
        perm = self._draw_perm(len(x), x.device)
        if lam >= 1.0:
            return None
        return mixup_batch(x, lam, perm), lam, perm


class CutMix(_Mix):
    """CutMix: a box of a partner image pasted into each training image.

    The box has area `(1 - lam)` of the image for `lam ~ Beta(alpha, alpha)` and a uniform random
    centre; clipped at the borders, so `lam` is then recomputed from the box actually pasted (timm's
    `correct_lam`), and the targets match the pixels exactly. Needs (N, C, H, W) images: on other
    batches (cached features) it warns once and leaves them alone.
    """

    def __init__(self, alpha: float = 1.0, seed: int = 0):
        super().__init__(alpha, seed)
        self._warned = False

    def draw_box(self, lam: float, h: int, w: int) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1): a box of about `(1 - lam) * h * w` pixels centred uniformly, clipped to the image."""
        r = math.sqrt(1.0 - lam)
        ch, cw = int(h * r), int(w * r)
        cy, cx = int(self.rng.integers(h)), int(self.rng.integers(w))
        return (min(max(cy - ch // 2, 0), h), min(max(cy + ch // 2, 0), h),
                min(max(cx - cw // 2, 0), w), min(max(cx + cw // 2, 0), w))

    def mix_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, float, torch.Tensor] | None:
        if x.dim() != 4:
            if not self._warned:
                warnings.warn(f"CutMix: batch of shape {tuple(x.shape)} is not (N, C, H, W) images; "
                              "left unmixed", stacklevel=2)
                self._warned = True
            return None
        h, w = x.shape[-2:]
        box = self.draw_box(self._draw_lam(), h, w)
        perm = self._draw_perm(len(x), x.device)
        area = (box[1] - box[0]) * (box[3] - box[2])
        if area == 0:
            return None
        return cutmix_batch(x, perm, box), 1.0 - area / (h * w), perm
