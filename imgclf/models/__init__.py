"""Models: the registry over timm, the embedded pretrained default, weights files, our own archs, LSUV."""

from . import cnn, xresnet  # noqa: F401  (importing registers simple_cnn and xresnet18/34/50)
from .init import lsuv_init
from .registry import (
    DEFAULT_ARCH,
    ModelMeta,
    create_model,
    layer_groups,
    list_models,
    model_from_run,
    recommended_size,
    register_model,
)

__all__ = [
    "DEFAULT_ARCH", "ModelMeta", "create_model", "layer_groups", "list_models", "model_from_run", "recommended_size",
    "register_model", "lsuv_init",
]
