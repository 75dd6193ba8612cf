"""Data: sources of labelled files, decoding and presizing, batch augmentation, loaders.

The names below are imported on first use (PEP 562), as the package's own `imgclf/__init__.py` does: `ImageData`
pulls in torch, and `imgclf train` forks a decoder (`ahead.py`, torch-free) before torch loads, which it could not
do if importing `imgclf.data.ahead` imported torch first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the module that defines it (relative to this package)
_LAZY: dict[str, str] = {
    "Augment": ".augment",
    "ImageData": ".core",
    "BadImage": ".decode",
    "open_image": ".decode",
    "IMAGE_EXTS": ".sources",
    "find_images": ".sources",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:
    from .augment import Augment  # noqa: F401
    from .core import ImageData  # noqa: F401
    from .decode import BadImage, open_image  # noqa: F401
    from .sources import IMAGE_EXTS, find_images  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
