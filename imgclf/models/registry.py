"""Architectures by name: timm's, plus ours registered the same way, plus the embedded default.

`create_model` returns the model with a fresh head for the classes and the `ModelMeta` that travels
with its weights (normalisation, input size), so training and prediction cannot drift apart.
"""

from __future__ import annotations

import fnmatch
import os
import socket
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import timm
from torch import nn

from .weights import embedded_lite0_path, load_into, read_state_dict, resolve

DEFAULT_ARCH = "efficientnet_lite0"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# name -> (timm architecture, embedded weights loader)
EMBEDDED: dict[str, tuple[str, Callable]] = {DEFAULT_ARCH: ("tf_efficientnet_lite0", embedded_lite0_path)}
_OWN: dict[str, Callable[..., nn.Module]] = {}


@dataclass
class ModelMeta:
    """What a model needs beside its weights to see images as it was trained to."""

    arch: str
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    pretrained: str = "none"  # "embedded", "timm", a weights path, or "none"

    def to_dict(self) -> dict:
        return asdict(self)


def recommended_size(arch: str) -> int:
    """The image size to train and predict at: ~8/7 of the size the weights were trained at.

    Networks trained with random-resized crops see objects larger than a center crop shows them, so
    they score best a little above their training size (Touvron et al. 2019, "FixRes"; timm's
    `test_input_size`). Measured with the embedded EfficientNet-Lite0 as a linear probe on hymenoptera:
    valid loss 0.15 at 224 px, 0.09 at 256, 0.10 at 288.
    """
    name = EMBEDDED[arch][0] if arch in EMBEDDED else arch
    if arch in _OWN:  # ours: 224, or what the arch says it is built for (the small-image nets: 32)
        return int(getattr(_OWN[arch], "recommended_size", 224))
    if not timm.is_model(name):
        return 224
    cfg = timm.get_pretrained_cfg(name)
    if cfg is None:
        return 256
    cfg = cfg.to_dict()
    if cfg.get("fixed_input_size"):  # e.g. ViTs with learned position embeddings for one size
        return int(cfg["input_size"][-1])
    test = cfg.get("test_input_size") or cfg.get("input_size") or (3, 224, 224)
    base = test[-1] if cfg.get("test_input_size") else round(test[-1] * 8 / 7 / 32) * 32
    return int(base)


def default_norm(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean/std `create_model(arch)` puts in its ModelMeta, read from timm's config without building it."""
    name = EMBEDDED[arch][0] if arch in EMBEDDED else arch
    cfg = timm.get_pretrained_cfg(name) if arch not in _OWN and timm.is_model(name) else None
    return tuple(getattr(cfg, "mean", None) or IMAGENET_MEAN), tuple(getattr(cfg, "std", None) or IMAGENET_STD)


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register `fn(num_classes=..., **kw)` under its name, for `--arch` and `list_models()`."""
    _OWN[fn.__name__] = fn
    return fn


def own_models() -> list[str]:
    """Our registered architectures (simple_cnn, xresnet*): built here, never with pretrained weights."""
    return list(_OWN)


def list_models(pattern: str = "*") -> list[str]:
    """Names `create_model` accepts: the embedded default and our own first, then timm's."""
    ours = [n for n in (*EMBEDDED, *_OWN) if fnmatch.fnmatch(n, pattern)]
    return ours + [n for n in timm.list_models(pattern) if n not in ours]


def create_model(
    arch: str = DEFAULT_ARCH, num_classes: int = 1000, pretrained: bool = True, weights: str | None = None,
    **kwargs: Any,
) -> tuple[nn.Module, ModelMeta]:
    """A classifier for `num_classes` and its meta.

    Weights, in order of precedence: a `weights` file or URL; the embedded ImageNet weights of the
    default arch; timm's pretrained download (falls back to random init with a warning when offline).
    kwargs go to the model's constructor (timm's and ours alike): `drop_rate`, `in_chans`...
    """
    from ..errors import UserError

    if arch in _OWN:
        model = _OWN[arch](num_classes=num_classes, **kwargs)
        meta = ModelMeta(arch, pretrained="none")
    else:
        timm_name = EMBEDDED[arch][0] if arch in EMBEDDED else arch
        if not timm.is_model(timm_name):
            close = timm.list_models(f"*{arch}*")[:5]
            hint = f"; similar: {', '.join(close)}" if close else ""
            raise UserError(f"--arch {arch}: unknown architecture{hint} (see `imgclf models`)")
        embedded = pretrained and weights is None and arch in EMBEDDED
        if embedded:  # the embedded file holds an ImageNet head: load it whole, then replace the head
            model = timm.create_model(timm_name, pretrained=False, **kwargs)
            path = EMBEDDED[arch][1]()
            load_into(model, read_state_dict(path), source=str(path))
            if num_classes != model.num_classes:
                model.reset_classifier(num_classes)
            got_weights = True
        else:
            model, got_weights = _timm_model(timm_name, num_classes, pretrained and weights is None, **kwargs)
        cfg = model.pretrained_cfg
        meta = ModelMeta(
            arch, tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)),
            cfg.get("interpolation", "bilinear"),
            pretrained="embedded" if embedded else ("timm" if got_weights else "none"),
        )
    if weights is not None:  # a head of another class count is skipped by load_into
        path = resolve(weights)
        load_into(model, read_state_dict(path), source=str(path))
        meta.pretrained = str(weights)
    return model, meta


def _hub_reachable(host: str = "huggingface.co") -> bool:
    """A quick DNS look-up, so an offline machine does not sit through the hub client's retries (~45 s)."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def _timm_model(name: str, num_classes: int, pretrained: bool, **kwargs: Any) -> tuple[nn.Module, bool]:
    """timm's model, with its published weights when they can be had; (model, whether they loaded)."""
    if pretrained:
        why = "no network"
        if _hub_reachable():
            try:
                return timm.create_model(name, pretrained=True, num_classes=num_classes, **kwargs), True
            except Exception as e:  # no weights published for this arch, or the download failed
                why = type(e).__name__
        warnings.warn(
            f"{name}: pretrained weights unavailable ({why}); training from random init. "
            "Pass --weights FILE (or URL) to start from other weights.", stacklevel=3,
        )
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs), False


def layer_groups(model: nn.Module, n_body: int = 2) -> list[list[nn.Parameter]]:
    """Parameters as [body part 1, ..., body part n, head], for freezing and discriminative rates.

    The head is the classifier (timm's `get_classifier()`); the body is split into `n_body` runs of
    roughly equal parameter count in registration order, early layers first.
    """
    head_ids = {id(p) for p in model.get_classifier().parameters()}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    head = [p for p in model.parameters() if id(p) in head_ids]
    total = sum(p.numel() for p in body)
    groups: list[list[nn.Parameter]] = [[] for _ in range(n_body)]
    seen = 0
    for p in body:
        groups[min(n_body - 1, seen * n_body // max(total, 1))].append(p)
        seen += p.numel()
    return [g for g in groups if g] + [head]
