"""Batch augmentation as pure functions of a uint8 batch tensor, on whatever device trains.

One random projective transform per image (flip, rotate, zoom/crop, perspective warp) is composed
into a single 3x3 matrix and resampled once with `grid_sample` (fastai's GPU augmentation idea), then
brightness/contrast, then normalisation with the backbone's statistics. Random numbers come from a
CPU `torch.Generator`, so a seed gives the same batch on CPU and CUDA.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass
class Augment:
    """Strengths of the default augmentation (fastai's `aug_transforms` defaults, zoom sized to presize)."""

    flip: bool = True
    max_rotate: float = 10.0  # degrees
    max_zoom: float = 1.25  # 1 = the whole presized square; larger crops in
    max_warp: float = 0.2  # perspective strength
    max_lighting: float = 0.2  # brightness shift and contrast factor
    p_affine: float = 0.75
    p_lighting: float = 0.75

    def to_dict(self) -> dict:
        return asdict(self)


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g, dtype=torch.float64) * (hi - lo) + lo


def _bernoulli(n: int, p: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g, dtype=torch.float64) < p


def random_transforms(n: int, aug: Augment, g: torch.Generator) -> torch.Tensor:
    """(n, 3, 3) matrices mapping output coords in [-1, 1] to input coords (projective)."""
    eye = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
    m = eye.clone()
    if aug.flip:
        flip = _bernoulli(n, 0.5, g)
        m[flip, 0, 0] = -1.0
    use = _bernoulli(n, aug.p_affine, g)
    theta = _uniform(n, -aug.max_rotate, aug.max_rotate, g) * math.pi / 180 * use
    cos, sin = torch.cos(theta), torch.sin(theta)
    rot = eye.clone()
    rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1] = cos, -sin, sin, cos
    zoom = torch.where(use, _uniform(n, 1.0, aug.max_zoom, g), torch.ones(n, dtype=torch.float64))
    room = 1.0 - 1.0 / zoom  # how far the crop centre can move and stay inside
    crop = eye.clone()
    crop[:, 0, 0] = crop[:, 1, 1] = 1.0 / zoom
    crop[:, 0, 2] = _uniform(n, -1, 1, g) * room
    crop[:, 1, 2] = _uniform(n, -1, 1, g) * room
    warp = eye.clone()
    half = aug.max_warp / 2
    warp[:, 2, 0] = _uniform(n, -half, half, g) * use
    warp[:, 2, 1] = _uniform(n, -half, half, g) * use
    return crop @ rot @ warp @ m


def _grid(mats: torch.Tensor, size: int, device: torch.device) -> torch.Tensor:
    lin = (torch.arange(size, device=device, dtype=torch.float32) * 2 + 1) / size - 1
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    pts = torch.stack([xx, yy, torch.ones_like(xx)], -1).reshape(-1, 3)  # (S*S, 3)
    out = pts @ mats.to(device=device, dtype=torch.float32).transpose(1, 2)  # (B, S*S, 3)
    out = out[..., :2] / out[..., 2:].clamp(min=1e-3)
    return out.reshape(-1, size, size, 2)


def _lighting(x: torch.Tensor, aug: Augment, g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    use = _bernoulli(n, aug.p_lighting, g)
    lim = aug.max_lighting
    shift = (_uniform(n, -lim, lim, g) * 0.5 * use).float()
    contrast = torch.exp(_uniform(n, math.log(1 - lim), -math.log(1 - lim), g) * use).float()
    shift, contrast = shift.to(x.device).view(-1, 1, 1, 1), contrast.to(x.device).view(-1, 1, 1, 1)
    return ((x - 0.5) * contrast + 0.5 + shift).clamp_(0, 1)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def augment_batch(
    x: torch.Tensor, size: int, aug: Augment, g: torch.Generator, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """uint8 (B, 3, P, P) -> normalised float (B, 3, size, size), randomly transformed."""
    xf = x.float() / 255  # not in place: a float input stays the caller's
    grid = _grid(random_transforms(x.shape[0], aug, g), size, x.device)
    xf = F.grid_sample(xf, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return normalize(_lighting(xf, aug, g), mean, std)


def center_batch(x: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, P, P) -> the normalised center `size` crop: the deterministic validation view."""
    p = x.shape[-1]
    if p < size:
        xf = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=False, align_corners=False)
    else:
        top = (p - size) // 2
        xf = x[..., top : top + size, top : top + size].float()
    return normalize(xf / 255, mean, std)
