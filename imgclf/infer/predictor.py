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

import torch
from PIL import Image

from ..data.augment import center_batch
from ..data.decode import decode_all, presize
from ..data.decode import open_image as _open
from ..models import create_model
from ..rundir import read_run
from ..train.learner import pick_device, resolve_precision


@dataclass
class Prediction:
    label: str
    confidence: float
    probs: dict[str, float] = field(repr=False)
    path: str | None = None


class Predictor:
    """A trained classifier ready for images: `predict(path_or_image)` and `predict_files(paths)`."""

    def __init__(self, model: torch.nn.Module, meta: dict[str, Any], device: str = "auto",
                 precision: str = "auto"):
        self.meta = meta
        self.classes: list[str] = list(meta["classes"])
        self.size, self.presize = int(meta["size"]), int(meta["presize"])
        self.device = pick_device(device)
        self.dtype = resolve_precision(precision, self.device)
        self.mean = torch.tensor(meta["mean"], dtype=torch.float32, device=self.device)
        self.std = torch.tensor(meta["std"], dtype=torch.float32, device=self.device)
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Raw scores for a uint8 (B, 3, presize, presize) batch."""
        x = center_batch(images.to(self.device), self.size, self.mean, self.std)
        x = x.contiguous(memory_format=torch.channels_last)
        ctx = torch.autocast(self.device.type, dtype=self.dtype) if self.dtype else nullcontext()
        with ctx:
            return self.model(x).float().cpu()

    def _prediction(self, p: torch.Tensor, path: str | None) -> Prediction:
        i = int(p.argmax())
        return Prediction(self.classes[i], float(p[i]), dict(zip(self.classes, p.tolist(), strict=True)), path)

    def predict(self, image: str | Path | Image.Image) -> Prediction:
        """Label, confidence and per-class probabilities of one image (a path or a PIL image)."""
        path = None if isinstance(image, Image.Image) else str(image)
        img = image.convert("RGB") if isinstance(image, Image.Image) else _open(image, self.presize)
        probs = self.logits(presize(img, self.presize)[None]).softmax(-1)[0]
        return self._prediction(probs, path)

    def predict_files(self, paths: Sequence[str | Path], bs: int = 64, progress: bool = True
                      ) -> tuple[list[Prediction], list[tuple[Path, str]]]:
        """Predictions for files, decoded in chunks; files that cannot be decoded are skipped and returned."""
        from tqdm.auto import tqdm

        paths = [Path(p) for p in paths]
        out: list[Prediction] = []
        skipped: list[tuple[Path, str]] = []
        chunk = max(bs, 256)
        with tqdm(total=len(paths), desc="predict", unit="img", disable=None if progress else True, leave=False) as bar:
            for start in range(0, len(paths), chunk):
                part = paths[start : start + chunk]
                images, keep, bad = decode_all(part, self.presize, progress=False)
                skipped += bad
                for b in range(0, len(keep), bs):
                    probs = self.logits(images[b : b + bs]).softmax(-1)
                    out += [self._prediction(p, str(part[k])) for p, k in zip(probs, keep[b : b + bs], strict=True)]
                bar.update(len(part))
        return out, skipped


def load_model(run: str | Path, device: str = "auto", precision: str = "auto") -> Predictor:
    """The model of a run directory (`model.safetensors` + `model.json`); never unpickles."""
    state, meta = read_run(run)
    model, _ = create_model(meta["arch"], len(meta["classes"]), pretrained=False)
    model.load_state_dict(state)
    return Predictor(model, meta, device=device, precision=precision)
