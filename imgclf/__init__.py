"""imgclf: turn a folder of images into an accurate image classifier, fast.

The public API is imported on first use (PEP 562 module `__getattr__`), not at `import imgclf`: the names
below pull in torch, timm and matplotlib, which `imgclf --help` and `imgclf.cli.parser()` never need. Measured
on the 2-core machine under load (bench/startup.py): `imgclf --help` took 7.2 s when this file imported them
all, 0.26 s now. `from imgclf import vision_learner` works as ever, so do `imgclf.data.ImageData` and the
other subpackages; `dir(imgclf)` and `__all__` list every name. To add a name: one line in `_LAZY`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it (relative to this package)
_LAZY: dict[str, str] = {
    "Augment": ".data",
    "ImageData": ".data",
    "get_dataset": ".data.datasets",
    "register_dataset": ".data.datasets",
    "ShardData": ".data.shards",
    "write_shards": ".data.shards",
    "UserError": ".errors",
    "Interpretation": ".evaluate",
    "evaluate": ".infer",
    "export_model": ".infer",
    "load_model": ".infer",
    "create_model": ".models",
    "list_models": ".models",
    "register_model": ".models",
    "Learner": ".train",
    "vision_learner": ".train",
    "distill": ".train.distill",
    "prune_model": ".train.prune",
    "prune_run": ".train.prune",
    "auto_fit": ".train.recipes",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # for type checkers and IDEs (same names as _LAZY); at run time `__getattr__` imports
    from .data import Augment, ImageData  # noqa: F401
    from .data.datasets import get_dataset, register_dataset  # noqa: F401
    from .data.shards import ShardData, write_shards  # noqa: F401
    from .errors import UserError  # noqa: F401
    from .evaluate import Interpretation  # noqa: F401
    from .infer import evaluate, export_model, load_model  # noqa: F401
    from .models import create_model, list_models, register_model  # noqa: F401
    from .train import Learner, vision_learner  # noqa: F401
    from .train.distill import distill  # noqa: F401
    from .train.prune import prune_model, prune_run  # noqa: F401
    from .train.recipes import auto_fit  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        # a subpackage not imported yet (`import imgclf; imgclf.data.ImageData`, as when this file imported all)
        if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
            return importlib.import_module(f".{name}", __name__)
        raise AttributeError(f"module 'imgclf' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """`imgclf.evaluate` is the function (`infer.evaluate`), as it was when this file imported everything; but
    importing the subpackage `imgclf.evaluate` (which `Interpretation` does) binds the subpackage on this module,
    after which `from imgclf import evaluate` would give the package. So a subpackage never replaces a public
    function here. (Setting a module's `__class__` is the way the Python docs give for this: "Customizing
    module attribute access".)"""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and name in _LAZY and _LAZY[name] != f".{name}":
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
