"""The one place that reads and writes run directories: weights, their meta, configs, figures.

`model.safetensors` holds weights only (loading never unpickles); `model.json` holds what the weights
need to see images as they were trained to (arch, classes, sizes, normalisation).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UserError

MODEL_FILE, META_FILE = "model.safetensors", "model.json"


def new_run_dir(path: str | Path) -> Path:
    """`path` if it is free, else `path-2`, `path-3`...: a run never overwrites an earlier one."""
    base = Path(path)
    candidate, k = base, 1
    while candidate.exists():
        k += 1
        candidate = base.with_name(f"{base.name}-{k}")
    candidate.mkdir(parents=True)
    return candidate


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically (temp file + rename), so a killed run never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_clean(obj), indent=2) + "\n")
    os.replace(tmp, path)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def save_model(run: str | Path, model: nn.Module, meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    from . import __version__

    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = run / (MODEL_FILE + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, run / MODEL_FILE)
    write_json(run / META_FILE, {**meta, "imgclf_version": __version__})


def read_run(run: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(weights, meta) of a run directory, with a clear error when it is not one."""
    run = Path(run)
    if not run.exists():
        raise UserError(f"{run}: no such run directory")
    if not (run / MODEL_FILE).is_file() or not (run / META_FILE).is_file():
        raise UserError(f"{run}: not a run directory (needs {MODEL_FILE} and {META_FILE}); train one first")
    from safetensors.torch import load_file

    return load_file(str(run / MODEL_FILE)), read_json(run / META_FILE)
