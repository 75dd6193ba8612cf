"""Architectures by name: timm's, plus ours registered the same way, plus the embedded default.

`create_model` returns the model with a fresh head for the classes and the `ModelMeta` that travels
with its weights (normalisation, input size), so training and prediction cannot drift apart.
"""

from __future__ import annotations

import fnmatch
import os
import socket
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import timm
from torch import nn

from ..errors import UserError
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
    default arch; timm's pretrained weights (cached or downloaded; a `UserError` naming --weights and
    --no-pretrained when they cannot be had: `check_pretrained`).
    kwargs go to the model's constructor (timm's and ours alike): `drop_rate`, `in_chans`...
    """
    if arch in _OWN:
        model = _OWN[arch](num_classes=num_classes, **kwargs)
        meta = ModelMeta(arch, pretrained="none")
    else:
        timm_name = _timm_name(arch)
        embedded = pretrained and weights is None and arch in EMBEDDED
        if embedded:  # the embedded file holds an ImageNet head: load it whole, then replace the head
            model = timm.create_model(timm_name, pretrained=False, **kwargs)
            path = EMBEDDED[arch][1]()
            load_into(model, read_state_dict(path), source=str(path))
            if num_classes != model.num_classes:
                model.reset_classifier(num_classes)
            got_weights = True
        else:
            model, got_weights = _timm_model(arch, timm_name, num_classes, pretrained and weights is None, **kwargs)
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
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def _cached_weights(timm_name: str) -> bool:
    """Whether timm's pretrained weights for `timm_name` are already on disk (Hugging Face or torch hub cache)."""
    cfg = timm.get_pretrained_cfg(timm_name)
    if cfg is None:
        return False
    if cfg.file and os.path.isfile(cfg.file):
        return True
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        if any(isinstance(try_to_load_from_cache(repo, n, revision=revision or None), str) for n in names):
            return True
    if cfg.url:
        import torch.hub

        name = os.path.basename(urllib.parse.urlparse(cfg.url).path)
        return os.path.isfile(os.path.join(torch.hub.get_dir(), "checkpoints", name))
    return False


def _no_weights(arch: str, why: str) -> UserError:
    return UserError(f"--arch {arch}: pretrained weights unavailable ({why}); pass --weights FILE to start from a "
                     "weights file (or URL), or --no-pretrained to train from scratch")


def check_pretrained(arch: str, pretrained: bool = True, weights: str | None = None) -> None:
    """Fail fast, before any data is decoded, when `create_model(arch, pretrained=...)` could not get weights:
    an unknown arch, a timm arch with no published weights, or weights neither cached nor downloadable
    (offline, or `HF_HUB_OFFLINE=1`). Ours and the embedded default never need the network."""
    if weights is not None and not str(weights).startswith(("http://", "https://")) and not os.path.isfile(weights):
        raise UserError(f"{weights}: weights file not found")
    if arch in _OWN:
        return
    timm_name = _timm_name(arch)
    if not pretrained or weights is not None or arch in EMBEDDED:
        return
    cfg = timm.get_pretrained_cfg(timm_name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise _no_weights(arch, "timm publishes none for it")
    if not _cached_weights(timm_name) and not _hub_reachable():
        raise _no_weights(arch, "not in the cache, and the Hugging Face hub cannot be reached")


def _timm_name(arch: str) -> str:
    """timm's name for `arch`, or a `UserError` naming similar ones when there is none."""
    timm_name = EMBEDDED[arch][0] if arch in EMBEDDED else arch
    if not timm.is_model(timm_name):
        close = timm.list_models(f"*{arch}*")[:5]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise UserError(f"--arch {arch}: unknown architecture{hint} (see `imgclf models`)")
    return timm_name


def _timm_model(arch: str, name: str, num_classes: int, pretrained: bool, **kwargs: Any) -> tuple[nn.Module, bool]:
    """timm's model, with its published weights when `pretrained`; (model, whether they loaded). Weights that
    cannot be had are an error, not a silent from-scratch run: the user asked for a pretrained start."""
    if pretrained:
        check_pretrained(arch)
        try:
            return timm.create_model(name, pretrained=True, num_classes=num_classes, **kwargs), True
        except Exception as e:  # the download failed, or the cache holds a broken file
            raise _no_weights(arch, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
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


def model_from_run(run: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """(model with the run's weights, its meta) from a run directory: the one way prediction, export,
    distillation and pruning rebuild a trained model. Never unpickles; weights of another architecture and
    broken files are one-line `UserError`s (rundir)."""
    from ..rundir import MODEL_FILE, load_weights, read_run

    state, meta = read_run(run)
    model, _ = create_model(meta["arch"], len(meta["classes"]), pretrained=False)
    load_weights(model, state, os.path.join(run, MODEL_FILE))
    return model, meta
