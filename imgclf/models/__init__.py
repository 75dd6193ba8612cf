"""Models: the registry over timm, the embedded pretrained default, weights files."""

from .registry import (
    DEFAULT_ARCH,
    ModelMeta,
    create_model,
    layer_groups,
    list_models,
    recommended_size,
    register_model,
)

__all__ = [
    "DEFAULT_ARCH", "ModelMeta", "create_model", "layer_groups", "list_models", "recommended_size",
    "register_model",
]
