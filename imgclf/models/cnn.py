"""`simple_cnn`: the food homework's from-scratch baseline, with timm's model interface.

Five conv-BN-ReLU-maxpool blocks (64 -> 128 -> 256 -> 512 -> 512 channels, each halving the map), a
global average pool, then an MLP head: Linear 512 -> 256, ReLU, Dropout, Linear -> classes.

Any input size works. The pools round up (`ceil_mode`), so a map never shrinks below 1x1, and the
global pool makes the head independent of the size: 32 px and up ends the blocks on a 1x1 map or
larger; 28 px (Fashion-MNIST) goes 28 -> 14 -> 7 -> 4 -> 2 -> 1; below ~16 px the last blocks already
see 1x1 maps, so they act as per-pixel layers and add parameters without adding context.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1, ks: int = 3, act: bool = True) -> nn.Sequential:
    """Conv (no bias: the BN has one) -> BatchNorm -> ReLU; the building block of both our CNNs."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, ks, stride=stride, padding=ks // 2, bias=False),
                               nn.BatchNorm2d(c_out)]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ClassifierModel(nn.Module):
    """timm's head interface for our own archs: `fc` on `num_features`, swappable for a new class count."""

    num_features: int
    num_classes: int
    fc: nn.Module

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh final Linear for `num_classes` (0: none, the model returns pre-logits features)."""
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()


class SimpleCNN(ClassifierModel):
    """conv-BN-ReLU-maxpool blocks, global pool, MLP head; `forward_head(pre_logits=True)` is the
    hidden layer's output (`num_features` wide), which is what the classifier and cached-feature probes see.
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, widths: tuple[int, ...] = (64, 128, 256, 512, 512),
                 hidden: int = 256, drop_rate: float = 0.25):
        super().__init__()
        self.num_classes, self.drop_rate = num_classes, drop_rate
        blocks, c = [], in_chans
        for w in widths:
            blocks.append(nn.Sequential(conv_bn_relu(c, w), nn.MaxPool2d(2, ceil_mode=True)))
            c = w
        self.features = nn.Sequential(*blocks)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.pre_logits = nn.Sequential(nn.Flatten(), nn.Linear(c, hidden), nn.ReLU(inplace=True))
        self.num_features = self.head_hidden_size = hidden
        self.drop = nn.Dropout(drop_rate)
        self.fc: nn.Module = nn.Linear(hidden, num_classes) if num_classes else nn.Identity()
        kaiming_init(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pre_logits(self.global_pool(x))
        return x if pre_logits else self.fc(self.drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def kaiming_init(model: nn.Module) -> None:
    """He-normal weights for convs and linears (fan-in, ReLU gain), zero biases; BNs keep weight 1, bias 0."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@register_model
def simple_cnn(num_classes: int = 1000, **kwargs) -> SimpleCNN:
    """The homework baseline: 5 conv-BN-ReLU-maxpool blocks (64..512), GAP, MLP head (256, dropout 0.25)."""
    return SimpleCNN(num_classes=num_classes, **kwargs)
