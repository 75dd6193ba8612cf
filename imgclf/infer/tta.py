"""Test-time augmentation as pure functions of a uint8 batch: the views, and how their predictions combine.

airbench's and fastai's TTA: the validation view (the center crop) and its mirror, their softmax averaged.
Measured with probe runs (EfficientNet-Lite0, head fitted on features of the images and their mirrors):
Fashion-MNIST at 32 px (60k train, the 10k test set): plain 80.76% / loss 0.6227, TTA 81.86% / 0.6158;
hymenoptera val at 256 px (153 images): plain 96.1% / 0.1297, TTA 95.4% / 0.1306 (one image apart: a
wash). Four corner crops of the presized square added on hymenoptera did not help (center + corners
95.4% / 0.1319, with flip too 96.1% / 0.1317), so they are not offered.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data.augment import center_batch

TTA_VIEWS = ("center", "flip")


def view(images: torch.Tensor, name: str, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """One deterministic view of a uint8 (B, 3, P, P) batch as normalised float (B, 3, size, size):
    "center" is the validation view, "flip" exactly its mirror image."""
    if name not in TTA_VIEWS:
        raise ValueError(f"unknown TTA view {name!r}; choose from {', '.join(TTA_VIEWS)}")
    x = center_batch(images, size, mean, std)
    return x.flip(-1) if name == "flip" else x


def views(images: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor,
          names: Sequence[str] = TTA_VIEWS) -> torch.Tensor:
    """The named views of a batch stacked view-major: (V * B, 3, size, size), view v in rows v*B..(v+1)*B."""
    return torch.cat([view(images, n, size, mean, std) for n in names])


def combine(probs: torch.Tensor) -> torch.Tensor:
    """Per-view class probabilities (V, B, C) -> the TTA prediction (B, C): their mean (still sums to 1)."""
    return probs.mean(0)
