"""`load_model(run)` -> a `Predictor`: the exported weights with their own preprocessing.

Prediction decodes and presizes exactly as validation did (same functions, sizes from `model.json`),
so a prediction on a validation image equals the learner's.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.augment import center_batch
from ..data.decode import BadImage, decode_all, presize, rgb_image
from ..data.decode import open_image as _open
from ..data.sources import find_images
from ..errors import UserError
from ..models import model_from_run
from ..train.learner import inference_dtype, pick_device
from .tta import TTA_VIEWS, combine, views


@dataclass
class Prediction:
    """One image's prediction. `label` is the class, the predicted tags joined by spaces (multi-label, the
    CSV format it trained from), or the number as text (regression, its float in `value`); `probs` maps
    each class or tag to its probability (regression: the target's name to the value). `tags` is the list of
    predicted tags of a multi-label model (maybe empty: no tag above the threshold) and None otherwise."""

    label: str
    confidence: float
    probs: dict[str, float] = field(repr=False)
    path: str | None = None
    tags: list[str] | None = None  # multi-label: every tag above the run's threshold; None for a class or a number
    value: float | None = None  # regression

    def topk(self, k: int = 5) -> list[tuple[str, float]]:
        """The `k` most probable classes with their probabilities, best first (fewer when the model has fewer
        classes; ties keep the classes' order). Multi-label: the `k` likeliest tags, each probability its own
        yes/no, so they need not sum to 1. A regression has no classes to rank: a UserError."""
        if self.value is not None:
            raise UserError("top-k needs classes; a regression run predicts one number")
        if k < 1:
            raise UserError(f"top-k: k must be at least 1, not {k}")
        return sorted(self.probs.items(), key=lambda kv: kv[1], reverse=True)[:k]


class Predictor:
    """A trained classifier ready for images: `predict(path_or_image)` and `predict_files(paths)`."""

    def __init__(self, model: torch.nn.Module, meta: dict[str, Any], device: str = "auto",
                 precision: str = "auto"):
        self.meta = meta
        self.classes: list[str] = list(meta["classes"])
        self.task: str = meta.get("task", "classify")
        self.threshold = float(meta.get("threshold", 0.5))
        # classes: softmax(logits / T), T fitted at training time (train/calibrate.py); runs from before: 1
        self.temperature = float(meta.get("temperature", 1.0))
        self.size, self.presize = int(meta["size"]), int(meta["presize"])
        self.device = pick_device(device)
        self.dtype = inference_dtype(precision, self.device)  # auto: fp32 on a CPU, as train's figures
        self.mean = torch.tensor(meta["mean"], dtype=torch.float32, device=self.device)
        self.std = torch.tensor(meta["std"], dtype=torch.float32, device=self.device)
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()

    @torch.no_grad()
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        ctx = torch.autocast(self.device.type, dtype=self.dtype) if self.dtype else nullcontext()
        with ctx:
            return self.model(x).float().cpu()

    def logits(self, images: torch.Tensor, tta: bool = False) -> torch.Tensor:
        """Scores for a uint8 (B, 3, presize, presize) batch whose softmax is the prediction: the model's logits
        divided by the run's temperature (classes; 1 when uncalibrated), with `tta` the log of the center and
        flip views' mean softmax. Times `temperature`: the model's own logits."""
        if tta:
            return self.view_probs(images, TTA_VIEWS).mean(0).clamp_min(1e-12).log()
        out = self._forward(center_batch(images.to(self.device), self.size, self.mean, self.std))
        return out / self.temperature if self.task == "classify" else out

    def view_probs(self, images: torch.Tensor, names: Sequence[str] = ("center",)) -> torch.Tensor:
        """Outputs of each named view (`infer.tta`) of a uint8 batch: (V, B, C), one forward pass. Class
        probabilities (softmax), tag probabilities (sigmoid) or numbers in the targets' units (regression)."""
        x = views(images.to(self.device), self.size, self.mean, self.std, names)
        return self.activate(self._forward(x)).view(len(names), len(images), -1)

    def activate(self, out: torch.Tensor) -> torch.Tensor:
        """The model's raw outputs as the task reads them."""
        if self.task == "multi_label":
            return out.sigmoid()
        if self.task == "regression":
            return out * float(self.meta["target_std"]) + float(self.meta["target_mean"])
        return (out / self.temperature).softmax(-1)

    def _prediction(self, p: torch.Tensor, path: str | None) -> Prediction:
        scores = dict(zip(self.classes, p.tolist(), strict=True))
        if self.task == "regression":
            v = float(p[0])
            return Prediction(f"{v:.6g}", float("nan"), scores, path, value=v)
        if self.task == "multi_label":
            tags = [c for c, q in scores.items() if q > self.threshold]
            # confidence: the least certain of the tag decisions (each tag is a yes/no)
            conf = float(torch.where(p > self.threshold, p, 1 - p).min())
            return Prediction(" ".join(tags), conf, scores, path, tags=tags)
        i = int(p.argmax())
        return Prediction(self.classes[i], float(p[i]), scores, path)

    def predict(self, image: str | Path | Image.Image | np.ndarray, tta: bool = False) -> Prediction:
        """Label, confidence and per-class probabilities of one image: a path, a PIL image or a uint8 array (H, W)
        grey or (H, W, 3|4) RGB(A), each made RGB as a file is (transparency over white, EXIF orientation).

        Many images: `predict_files`. A file that cannot be decoded raises `BadImage` naming it."""
        if isinstance(image, np.ndarray):
            image = _from_array(image)
        if isinstance(image, Image.Image):
            path, img = None, rgb_image(image)
        elif isinstance(image, (str, Path)):
            path = str(image)
            try:
                img = _open(image, self.presize)
            except BadImage as e:
                raise BadImage(f"{image}: {e}") from None
        else:
            raise UserError(f"predict takes one image (a path, a PIL image or a uint8 array), not a "
                            f"{type(image).__name__}" + ("; for several files use predict_files(paths)"
                                                         if isinstance(image, (list, tuple)) else ""))
        out = self.view_probs(presize(img, self.presize)[None], TTA_VIEWS if tta else ("center",))
        return self._prediction(combine(out)[0], path)

    def predict_batch(self, images: torch.Tensor, tta: bool = False) -> list[Prediction]:
        """Predictions for a uint8 (B, 3, presize, presize) batch of presized images, one forward pass (what
        `serve` runs on the images of requests that arrive together)."""
        out = self.view_probs(images, TTA_VIEWS if tta else ("center",))
        return [self._prediction(p, None) for p in combine(out)]

    def predict_files(self, paths: Sequence[str | Path] | str | Path, bs: int = 64, progress: bool = True,
                      tta: bool = False) -> tuple[list[Prediction], list[tuple[Path, str]]]:
        """Predictions for files, decoded in chunks; files that cannot be decoded are skipped and returned.
        `paths`: a list of files, or one path: a folder (its images, recursively) or a file. `tta`: average the
        center view's softmax with its mirror's."""
        if isinstance(paths, (str, Path)):  # a string is not a sequence of paths: it was read a character at a time
            paths = find_images(paths) if Path(paths).is_dir() else [paths]
        probs, kept, skipped = self.probs_files(paths, bs, progress, TTA_VIEWS if tta else ("center",))
        return [self._prediction(p, str(path)) for p, path in zip(combine(probs), kept, strict=True)], skipped

    def probs_files(self, paths: Sequence[str | Path], bs: int = 64, progress: bool = True,
                    names: Sequence[str] = ("center",)) -> tuple[torch.Tensor, list[Path], list[tuple[Path, str]]]:
        """Per-view probabilities (V, N, C) of the files that decode, those files, and the skipped ones."""
        from ..progress import bar as progress_bar

        paths = [Path(p) for p in paths]
        out: list[torch.Tensor] = []
        kept: list[Path] = []
        skipped: list[tuple[Path, str]] = []
        chunk = max(bs, 256)
        with progress_bar(total=len(paths), desc="predict", unit="img", enabled=progress) as bar:
            for start in range(0, len(paths), chunk):
                part = paths[start : start + chunk]
                images, keep, bad = decode_all(part, self.presize, progress=False)
                skipped += bad
                kept += [part[k] for k in keep]
                out += [self.view_probs(images[b : b + bs], names) for b in range(0, len(keep), bs)]
                bar.update(len(part))
        probs = torch.cat(out, 1) if out else torch.empty(len(names), 0, len(self.classes))
        return probs, kept, skipped


def _from_array(a: np.ndarray) -> Image.Image:
    """A uint8 array as a PIL image: (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA (channels last, as PIL, numpy
    and OpenCV users hold images; OpenCV's BGR must be reversed by the caller: a[..., ::-1])."""
    if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))):
        raise UserError(f"predict: an array image must be uint8 (H, W), (H, W, 3) or (H, W, 4); got {a.dtype} "
                        f"{tuple(a.shape)}")
    return Image.fromarray(np.ascontiguousarray(a))


def check_submission_ids(paths: Sequence[str | Path]) -> None:
    """A submission names each image by its file name without extension: two files must not share one."""
    seen: dict[str, Path] = {}
    for p in map(Path, paths):
        if p.stem in seen:
            raise UserError(f"{p}: Id {p.stem!r} is also the Id of {seen[p.stem]}; a submission needs unique Ids")
        seen[p.stem] = p


def submission_rows(preds: Sequence[Prediction]) -> list[tuple[str, str]]:
    """(Id, Category) rows of the food homework's `submission.csv`: Id the file name without extension,
    Category the predicted class name as it is ("0".."10" there), sorted by Id, numerically when every Id is
    an integer (0001 < 0002 < 10), else as text."""
    rows = [(Path(p.path or "").stem, p.label) for p in preds]
    if all(i.isascii() and i.isdigit() for i, _ in rows):
        return sorted(rows, key=lambda r: (int(r[0]), r[0]))
    return sorted(rows)


def missing_ids(skipped: Sequence[tuple[str | Path, str]], limit: int = 10) -> str:
    """The Ids a submission lacks because their files were skipped, with why, in the submission's order:
    "1 Id whose file could not be decoded: 0004 (empty file (0 bytes))"; past `limit` Ids, "and N more"."""
    rows = submission_rows([Prediction(why, 0.0, {}, str(path)) for path, why in skipped])
    shown = ", ".join(f"{i} ({why})" for i, why in rows[:limit])
    more = f", and {len(rows) - limit} more" if len(rows) > limit else ""
    whose = "Id whose file" if len(rows) == 1 else "Ids whose files"
    return f"{len(rows)} {whose} could not be decoded: {shown}{more}"


def load_model(run: str | Path, device: str = "auto", precision: str = "auto", backend: str = "eager") -> Predictor:
    """The model of a run directory (`model.safetensors` + `model.json`); never unpickles.

    `backend` "onnx", "int8" or "torchscript": the file `imgclf export` wrote into the run (`infer.runtime`),
    behind the same `Predictor` interface. `run` may also be an exported file itself (`export --out
    deploy/model.onnx`): its backend is told by its name (.onnx, .int8.onnx, .ts / .pt)."""
    path = Path(run)
    if backend == "eager" and path.is_file():
        name = path.name.lower()
        backend = ("int8" if name.endswith(".int8.onnx") else "onnx" if name.endswith(".onnx")
                   else "torchscript" if name.endswith((".ts", ".pt")) else "eager")
        if backend == "eager":
            raise UserError(f"{run}: a file, not a run directory or an exported model (.onnx, .ts, .pt)")
    if backend != "eager":
        from .runtime import load_exported

        return load_exported(run, backend, device=device)
    model, meta = model_from_run(run)
    return Predictor(model, meta, device=device, precision=precision)
