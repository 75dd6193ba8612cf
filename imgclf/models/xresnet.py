"""XResNet: ResNet with the "bag of tricks" (He et al. 2019, as in fastai's XResNet), timm's interface.

The three tricks, each a few lines below:
- ResNet-C stem: three 3x3 convs (c_in -> 32 -> 32 -> 64, the first with stride 2) instead of one 7x7;
- ResNet-D shortcut: when a block downsamples, the identity path averages 2x2 (AvgPool2d, ceil mode)
  and only then changes channels with a 1x1 conv + BN, so it no longer drops 3/4 of its input;
- the last BN of every residual branch starts at weight 0, so each block starts as its shortcut (the
  identity where shapes match) and a deep net starts as a shallow one that trains from the first step.
Convs and linears are He-initialised. Basic blocks for xresnet18/34, bottlenecks (x4) for xresnet50.
Any input size runs (pools round up); at 32 px the last stage sees a 1x1 map.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .cnn import ClassifierModel, conv_bn_relu, kaiming_init
from .registry import register_model


class ResBlock(nn.Module):
    """relu(branch(x) + shortcut(x)): a basic block (two 3x3) or a bottleneck (1x1, 3x3, 1x1)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, expansion: int = 1):
        super().__init__()
        mid = c_out // expansion
        if expansion == 1:
            convs = [conv_bn_relu(c_in, mid, stride), conv_bn_relu(mid, c_out, act=False)]
        else:
            convs = [conv_bn_relu(c_in, mid, ks=1), conv_bn_relu(mid, mid, stride),
                     conv_bn_relu(mid, c_out, ks=1, act=False)]
        self.convs = nn.Sequential(*convs)
        nn.init.zeros_(self.convs[-1][1].weight)  # the branch adds nothing at init: the block is its shortcut
        shortcut: list[nn.Module] = []
        if stride != 1:  # ResNet-D: average first, so the 1x1 conv sees every pixel
            shortcut.append(nn.AvgPool2d(stride, ceil_mode=True))
        if c_in != c_out:
            shortcut.append(conv_bn_relu(c_in, c_out, ks=1, act=False))
        self.shortcut = nn.Sequential(*shortcut)  # empty: the identity
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.convs(x) + self.shortcut(x))


class PooledClassifier(ClassifierModel):
    """Global average pool -> dropout -> Linear on `forward_features`: the head both XResNets share."""

    global_pool: nn.Module
    drop: nn.Module

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        return x if pre_logits else self.fc(self.drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class XResNet(PooledClassifier):
    """stem (3 convs + max-pool) -> 4 stages of residual blocks -> global pool -> dropout -> Linear."""

    def __init__(self, layers: Sequence[int], expansion: int = 1, num_classes: int = 1000, in_chans: int = 3,
                 drop_rate: float = 0.0, stem: Sequence[int] = (32, 32, 64),
                 widths: Sequence[int] = (64, 128, 256, 512)):
        super().__init__()
        self.num_classes, self.drop_rate = num_classes, drop_rate
        sizes = [in_chans, *stem]
        self.stem = nn.Sequential(
            *[conv_bn_relu(sizes[i], sizes[i + 1], stride=2 if i == 0 else 1) for i in range(len(stem))],
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        c, stages = stem[-1], []
        for i, (n, w) in enumerate(zip(layers, widths, strict=True)):
            blocks = []
            for j in range(n):
                blocks.append(ResBlock(c, w * expansion, stride=2 if i > 0 and j == 0 else 1, expansion=expansion))
                c = w * expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = c
        self.global_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.drop = nn.Dropout(drop_rate)
        self.fc: nn.Module = nn.Linear(c, num_classes) if num_classes else nn.Identity()
        kaiming_init(self)  # convs and linears only: the zeroed BNs stay zero

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


@register_model
def xresnet18(num_classes: int = 1000, **kwargs) -> XResNet:
    """XResNet-18: basic blocks [2, 2, 2, 2], 512 features (11.7M parameters with 1000 classes)."""
    return XResNet([2, 2, 2, 2], 1, num_classes=num_classes, **kwargs)


@register_model
def xresnet34(num_classes: int = 1000, **kwargs) -> XResNet:
    """XResNet-34: basic blocks [3, 4, 6, 3], 512 features."""
    return XResNet([3, 4, 6, 3], 1, num_classes=num_classes, **kwargs)


@register_model
def xresnet50(num_classes: int = 1000, **kwargs) -> XResNet:
    """XResNet-50: bottleneck blocks [3, 4, 6, 3] (x4 expansion), 2048 features (25.6M parameters with 1000 classes)."""
    return XResNet([3, 4, 6, 3], 4, num_classes=num_classes, **kwargs)


class SmallXResNet(PooledClassifier):
    """For small images (28-64 px) trained from scratch: one conv at full resolution, then stages that each
    halve the map and double the width, global pool, dropout, Linear (the fastai course's Fashion-MNIST
    ResNet, with XResNet's blocks). At 28 px `xresnet_tiny` costs 13 MMACs, about 1/3 of xresnet18's
    stride-4 stem at the same size, yet keeps a 28x28 first map instead of 7x7."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, stem: int = 16,
                 widths: Sequence[int] = (32, 64, 128, 256), blocks: int = 1, drop_rate: float = 0.0):
        super().__init__()
        self.num_classes, self.drop_rate = num_classes, drop_rate
        layers: list[nn.Module] = [conv_bn_relu(in_chans, stem)]
        c = stem
        for w in widths:
            layers += [ResBlock(c if j == 0 else w, w, stride=2 if j == 0 else 1) for j in range(blocks)]
            c = w
        self.features = nn.Sequential(*layers)
        self.num_features = self.head_hidden_size = c
        self.global_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.drop = nn.Dropout(drop_rate)
        self.fc: nn.Module = nn.Linear(c, num_classes) if num_classes else nn.Identity()
        kaiming_init(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@register_model
def xresnet_tiny(num_classes: int = 1000, **kwargs) -> SmallXResNet:
    """Small images from scratch: stem 16, one residual block per stage 32-64-128-256 (1.2M parameters)."""
    return SmallXResNet(num_classes=num_classes, **kwargs)


@register_model
def xresnet_small(num_classes: int = 1000, **kwargs) -> SmallXResNet:
    """Small images from scratch: stem 32, two residual blocks per stage 32-64-128-256 (2.8M parameters)."""
    return SmallXResNet(num_classes=num_classes, stem=32, blocks=2, **kwargs)


xresnet_tiny.recommended_size = xresnet_small.recommended_size = 32  # type: ignore[attr-defined]
