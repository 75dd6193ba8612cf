"""AirNet: airbench's CIFAR-10 network (Keller Jordan, 2024) for small images trained from scratch.

No residuals and few layers: a conv stem at full resolution, then blocks of conv -> max-pool -> BN -> GELU ->
conv -> BN -> GELU, each halving the map (airbench pools right after the block's first conv, so that conv
still sees the full-resolution map), a global max-pool and a bias-free Linear. On a CPU the number of conv
layers costs more than their FLOPs at these sizes (a small conv's forward and backward cost about the same
whatever its width up to 128 channels, measured at 28 px, batch 256): `airnet_tiny` has 7 convs where
`xresnet_tiny` has 13.

At 28 px the three blocks see 28 -> 14 -> 7 -> 3 (pools round down, as airbench's do); any size >= 8 runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .cnn import kaiming_init
from .registry import register_model
from .xresnet import PooledClassifier


def conv_bn_gelu(c_in: int, c_out: int, pool: bool = False) -> nn.Sequential:
    """3x3 conv (no bias: the BN has one), an optional 2x2 max-pool between the conv and its BN, BN, GELU."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(c_out), nn.GELU()]
    return nn.Sequential(*layers)


class AirNet(PooledClassifier):
    """stem conv -> blocks (conv, pool, BN, GELU, conv, BN, GELU) -> global max-pool -> dropout -> Linear."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, stem: int = 24,
                 widths: Sequence[int] = (64, 128, 256), drop_rate: float = 0.0):
        super().__init__()
        self.num_classes, self.drop_rate = num_classes, drop_rate
        layers: list[nn.Module] = [conv_bn_gelu(in_chans, stem)]
        c = stem
        for w in widths:
            layers.append(nn.Sequential(conv_bn_gelu(c, w, pool=True), conv_bn_gelu(w, w)))
            c = w
        self.features = nn.Sequential(*layers)
        self.num_features = self.head_hidden_size = c
        self.global_pool = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.drop = nn.Dropout(drop_rate)
        self.fc: nn.Module = nn.Linear(c, num_classes, bias=False) if num_classes else nn.Identity()
        kaiming_init(self)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes, bias=False) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@register_model
def airnet(num_classes: int = 1000, **kwargs) -> AirNet:
    """airbench's widths scaled for 28-32 px on a CPU: stem 24, blocks 64-128-256 (1.2M parameters)."""
    return AirNet(num_classes=num_classes, **kwargs)


@register_model
def airnet_tiny(num_classes: int = 1000, **kwargs) -> AirNet:
    """The smallest: stem 16, blocks 32-64-128 (0.29M parameters, 7 convs)."""
    return AirNet(num_classes=num_classes, stem=16, widths=(32, 64, 128), **kwargs)


airnet.recommended_size = airnet_tiny.recommended_size = 32  # type: ignore[attr-defined]
