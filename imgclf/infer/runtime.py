"""Predict with an exported file (ONNX through onnxruntime, or TorchScript): the `Predictor` interface, other engines.

An exported file takes uint8 RGB images at the run's presize, NHWC, and returns the task's outputs (see
`infer.export`), and carries its own metadata, so `ExportedPredictor` needs nothing else: the same decoding and
presizing as the eager predictor, the same `Prediction`s, TTA by mirroring the uint8 input (shifted one column
when presize - size is odd, as 293 - 256 is, so the file's center crop is exactly the mirror of the eager one's).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..train.features import ort_chunk, ort_run
from .predictor import Predictor

EXPORT_LOG = "export.json"  # beside the exported files: what each was made from and how it compared
# backend -> the file `imgclf export` writes into the run directory
FILES = {"onnx": "model.onnx", "int8": "model.int8.onnx", "torchscript": "model.ts"}
BACKENDS = ("eager", *FILES)


def physical_cores() -> int:
    """Cores this process may use, counting hyper-threads once: onnxruntime's intra-op threads (siblings of one
    core share its vector units, which convolutions already fill)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open("/proc/cpuinfo") as f:
            blocks = f.read().strip().split("\n\n")
        ids = set()
        for b in blocks:
            fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in b.splitlines() if ":" in line)}
            ids.add((fields.get("physical id", ""), fields.get("core id", "")))
        cores = len(ids) if len(ids) > 1 else usable
    except OSError:
        cores = usable
    return max(1, min(cores, usable))


def _jit_load(path: str | Path, device: str | torch.device, extra: dict[str, Any] | None = None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice: the user chose the format
        return torch.jit.load(str(path), map_location=device, _extra_files=extra or {})


def _decode(raw: dict[str, str], path: str | Path) -> dict[str, Any]:
    if "classes" not in raw:
        raise UserError(f"{path}: no imgclf metadata in the file; export it with `imgclf export`")
    meta: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError:
            meta[k] = v
    return meta


def _session(path: str | Path, device: torch.device, threads: int | None = None):
    """An onnxruntime session: CUDA's provider when the device is CUDA and onnxruntime-gpu is installed, else the CPU
    with one intra-op thread per physical core and every graph optimisation: ORT_ENABLE_ALL (which adds the CPU's
    blocked NCHWc layouts) ran hymenoptera's batch 64 at 2-2.5x the basic and extended levels (bench/export.py)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or physical_cores()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # onnxruntime's notes on unused initializers and the like: not the user's
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(str(path), so, providers=providers)
    return session, session.get_inputs()[0].name


class ExportedPredictor(Predictor):
    """A `Predictor` over an exported file: `predict`, `predict_files`, `probs_files`, `view_probs` as the eager one.

    ONNX runs in onnxruntime (hymenoptera's EfficientNet-Lite0 at 256 px on the 2-core Xeon, bench/export.py:
    217 images/s at batch 64 run in calls of 2 (172 in one call), 87-112 at batch 1; the eager predictor 66 and 71
    in bf16, 41 and 59 in fp32); TorchScript
    in torch. The file's own metadata gives the classes, task and sizes."""

    def __init__(self, path: str | Path, backend: str = "onnx", device: str = "auto", threads: int | None = None):
        from ..train.learner import pick_device

        self.path, self.backend = Path(path), backend
        self.device = pick_device(device)
        if backend == "torchscript":
            extra = {"imgclf.json": ""}
            self._module = _jit_load(path, self.device, extra).eval()
            meta = _decode(json.loads(extra["imgclf.json"] or "{}"), path)
        else:
            self._session, self._input = _session(path, self.device, threads)
            self._on_gpu = self._session.get_providers()[0] != "CPUExecutionProvider"
            meta = _decode(self._session.get_modelmeta().custom_metadata_map, path)
        self.meta = meta
        self.classes = list(meta["classes"])
        self.task = meta.get("task", "classify")
        self.threshold = float(meta.get("threshold", 0.5))
        self.temperature = float(meta.get("temperature", 1.0))  # applied inside the file; evaluate's "before" needs it
        self.size, self.presize = int(meta["size"]), int(meta["presize"])
        self.dtype = None
        self.model = None  # no torch module: interpret's feature hooks and model summaries need the eager backend

    def _run(self, nhwc: torch.Tensor) -> torch.Tensor:
        if self.backend == "torchscript":
            with torch.inference_mode():
                return self._module(nhwc.to(self.device)).float().cpu()
        x = nhwc.contiguous().numpy()
        # on a CPU in calls of a few images, as the feature pass (features.ORT_CALL_PIXELS: their activations stay
        # in the caches); a GPU takes the batch whole
        step = len(x) if self._on_gpu else ort_chunk(self.size)
        return torch.from_numpy(ort_run(self._session, self._input, x, max(1, step)))

    def view_probs(self, images: torch.Tensor, names: Sequence[str] = ("center",)) -> torch.Tensor:
        """Outputs (V, B, C) of each named view of a uint8 (B, 3, P, P) batch: the file's outputs (probabilities,
        or the targets' units), "flip" from the mirrored input."""
        nhwc = images.cpu().permute(0, 2, 3, 1)
        outs = []
        for n in names:
            if n not in ("center", "flip"):
                raise ValueError(f"unknown TTA view {n!r}; choose from center, flip")
            x = nhwc
            if n == "flip":  # the crop starts at (P - S) // 2 from the left: mirrored, from the right
                x = nhwc.flip(2).roll(-1, 2) if (self.presize - self.size) % 2 else nhwc.flip(2)
            outs.append(self._run(x))
        return torch.stack(outs)

    def logits(self, images: torch.Tensor, tta: bool = False) -> torch.Tensor:
        """Scores whose activation gives the file's outputs back (log-probabilities; logits of tag probabilities;
        regression: the standardised target), for code written against the eager predictor."""
        p = self.view_probs(images, ("center", "flip") if tta else ("center",)).mean(0)
        if self.task == "regression":
            return (p - float(self.meta.get("target_mean", 0.0))) / float(self.meta.get("target_std", 1.0))
        if self.task == "multi_label":
            return p.clamp(1e-7, 1 - 1e-7).logit()
        return p.clamp_min(1e-12).log()


def load_exported(run: str | Path, backend: str, device: str = "auto") -> ExportedPredictor:
    """The exported file of a run directory for `backend` (or a file given directly), with a one-line error naming
    the command that writes it when it is missing."""
    if backend not in FILES:
        raise UserError(f"--backend {backend}: choose {', '.join(BACKENDS)}")
    run = Path(run)
    path = run if run.is_file() else run / FILES[backend]
    how = {"onnx": "", "int8": " --int8", "torchscript": " --format torchscript"}[backend]
    if not path.is_file():
        if not run.exists():
            raise UserError(f"{run}: no such run directory")
        raise UserError(f"{run}: no {FILES[backend]} for --backend {backend}; write it with `imgclf export {run}{how}`")
    if run.is_dir():
        _check_fresh(run, path, how)
    return ExportedPredictor(path, backend, device=device)


def _check_fresh(run: Path, path: Path, how: str) -> None:
    """A one-line error when `path` was exported from other weights than the run's model.safetensors now holds
    (trained on since: `train --resume`), instead of predictions from the old model with the new one's name."""
    from ..rundir import weights_digest

    log = run / EXPORT_LOG
    try:
        made_from = json.loads(log.read_text()).get(path.name, {}).get("weights_sha1") if log.is_file() else None
    except (OSError, ValueError, AttributeError):
        return
    if made_from and made_from != weights_digest(run):
        raise UserError(f"{path}: exported from other weights than {run / 'model.safetensors'} holds now (the run "
                        f"was trained on since); export it again: `imgclf export {run}{how} --force`")
