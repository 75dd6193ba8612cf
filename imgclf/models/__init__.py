"""Models: the registry over timm, the embedded pretrained default, weights files, our own archs, LSUV."""

from . import airnet, cnn, xresnet  # noqa: F401  (importing registers simple_cnn, xresnet18/34/50, airnet)
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
