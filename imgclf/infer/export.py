"""Export a run for deployment: one ONNX or TorchScript file that takes what a deployment has.

The exported graph's input is a batch of uint8 RGB images at the run's presize, NHWC as decoders return
them; the center crop, float conversion, normalisation and the task's activation (softmax, sigmoid, or the
regression target's units) run inside, and the file's metadata carries the classes, task and sizes, so the
file alone is enough to predict (`ONNX metadata_props`, one key each; TorchScript: `imgclf.json` among the
extra files). Every export checks itself on the run's validation images: eager (fp32) vs exported top-1
agreement and max |Δprob|, written to `export.json` beside the file (one entry per exported file).

ONNX goes through `torch.onnx.export`'s dynamo exporter (torch.export): on EfficientNet-Lite0 it gives a
clean dynamic-batch graph of 111 nodes (the legacy TorchScript-based exporter: 611, with Pad/Ceil/Shape
chains from timm's padding) and ran batch 64 at 111 images/s vs 85 in onnxruntime on the 2-core CPU.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..models import model_from_run
from ..rundir import read_config, read_json, weights_digest, write_json
from .runtime import EXPORT_LOG, FILES, ExportedPredictor

FORMATS = ("onnx", "torchscript")
OPSET = 18
MAX_OPSET = 23  # the highest torch 2.14's exporter writes (torch.onnx._constants); above it, it falls back to 18
# validation images the parity check scores at most (evenly spaced): bounds an export of a large run
MAX_PARITY = 1000
# training images int8 calibration sees (activation ranges settle by ~100; more only costs time)
CALIB_IMAGES = 128
# fp32 targets of the parity check (the issue's): below them an export warns
TARGET_AGREEMENT, TARGET_MAX_DPROB = 0.999, 1e-3


class Deployable(nn.Module):
    """The run's model behind its validation preprocessing: uint8 (B, P, P, 3) RGB at presize P -> (B, C) outputs
    as the task reads them: class probabilities (softmax), tag probabilities (sigmoid) or the targets' units.

    The same maths as `Predictor` (center `size` crop of the presized square, /255, (x - mean) / std), with
    mean and std folded into one multiply-add on the 0..255 values."""

    def __init__(self, model: nn.Module, meta: dict[str, Any]):
        super().__init__()
        self.model = model
        self.task = meta.get("task", "classify")
        self.size, self.presize = int(meta["size"]), int(meta["presize"])
        mean, std = torch.tensor(meta["mean"], dtype=torch.float32), torch.tensor(meta["std"], dtype=torch.float32)
        self.register_buffer("scale", (1 / (255 * std)).view(1, 3, 1, 1))
        self.register_buffer("shift", (-mean / std).view(1, 3, 1, 1))
        self.target_mean = float(meta.get("target_mean", 0.0))
        self.target_std = float(meta.get("target_std", 1.0))
        self.temperature = float(meta.get("temperature", 1.0))  # classes: softmax(logits / T), as the Predictor

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        top = (self.presize - self.size) // 2
        x = images[:, top : top + self.size, top : top + self.size, :].permute(0, 3, 1, 2).float()
        out = self.model(x * self.scale + self.shift)
        if self.task == "multi_label":
            return out.sigmoid()
        if self.task == "regression":
            return out * self.target_std + self.target_mean
        return (out / self.temperature).softmax(-1)


def file_meta(meta: dict[str, Any], fmt: str) -> dict[str, str]:
    """What goes into the exported file's metadata: one string per key, lists and numbers as JSON."""
    from .. import __version__

    keys = ("arch", "task", "classes", "size", "presize", "crop_pct", "mean", "std", "threshold", "target_mean",
            "target_std", "temperature")
    out = {k: meta[k] if isinstance(meta[k], str) else json.dumps(meta[k]) for k in keys if k in meta}
    out.update({"input": "uint8 RGB images (batch, presize, presize, 3): decoded, short side resized to presize, "
                         "center-cropped square",
                "output": {"classify": "class probabilities", "multi_label": "tag probabilities (> threshold: yes)",
                           "regression": "the target, in its units"}[meta.get("task", "classify")],
                "format": fmt, "imgclf_version": __version__})
    return out


def load_deployable(run: str | Path) -> tuple[Deployable, dict[str, Any]]:
    model, meta = model_from_run(run)
    return Deployable(model, meta).eval(), meta


def export_onnx(module: Deployable, path: str | Path, meta: dict[str, str], opset: int = OPSET) -> None:
    """`module` to an ONNX file with a dynamic batch, checked by `onnx.checker`, `meta` as metadata_props."""
    import onnx

    example = torch.zeros(2, module.presize, module.presize, 3, dtype=torch.uint8)  # batch 2: 1 would specialise
    batch = torch.export.Dim("batch", min=1, max=65536)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export's notes on the traced graph are not the user's business
        program = torch.onnx.export(module, (example,), dynamo=True, opset_version=opset, input_names=["images"],
                                    output_names=["outputs"], dynamic_shapes={"images": {0: batch}}, verbose=False)
    model = program.model_proto
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    written = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    if written != opset:  # the exporter fell back to another opset: the file would not be what export.json says
        raise UserError(f"--opset {opset}: torch's exporter wrote opset {written} instead; use --opset {written}")
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def export_torchscript(module: Deployable, path: str | Path, meta: dict[str, str]) -> None:
    """`module` traced (batch dimension free: nothing in the graph depends on it), `meta` as `imgclf.json`."""
    example = torch.zeros(2, module.presize, module.presize, 3, dtype=torch.uint8)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice: tracing is what the issue asks for
        traced = torch.jit.trace(module, example)
        torch.jit.save(traced, str(path), _extra_files={"imgclf.json": json.dumps(meta)})


def quantize_int8(fp32: str | Path, out: str | Path, calib: np.ndarray, meta: dict[str, str]) -> None:
    """Post-training static quantization (onnxruntime, QDQ, per-channel int8 weights, uint8 activations) of the
    convolutions, the classifier and their ReLU6 clips, activation ranges (min/max) calibrated on `calib`
    (N, P, P, 3) training images. The preprocessing, the first convolution and the final activation stay in
    float: the stem's few weights per filter (3 input channels) lose the most to int8; in float, the largest
    |Δprob| vs fp32 on hymenoptera fell from 0.12 to 0.04 (accuracy 97.4% fp32, 96.1% -> 96.7% int8).

    The clips matter: left out, each convolution's output is quantized over its unclipped range and only ~30 of
    256 levels fall inside ReLU6's [0, 6]: on hymenoptera 4 of 153 validation labels changed, accuracy 96.1% ->
    94.8%, max |Δprob| 0.47 (percentile or entropy calibration, or a float classifier, did not help). Quantized
    with them (the quantizer folds each clip's range into its convolution's output), int8 agreed with fp32 on all
    153."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self, x: np.ndarray, bs: int = 16):
            self.it = iter([{"images": x[i : i + bs]} for i in range(0, len(x), bs)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre))  # shape inference + folding: the quantizer needs the shapes
        first_conv = next(n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv")
        quantize_static(str(pre), str(out), Batches(calib), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv", "Gemm", "MatMul", "Clip", "Relu"], nodes_to_exclude=[first_conv])
    model = onnx.load(str(out))
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(out))


def run_images(run: str | Path, meta: dict[str, Any], data: str | Path | None = None, progress: bool = True
               ) -> tuple[Any, str | None]:
    """(the run's `ImageData` rebuilt at the model's size: `train.job.run_data`, None), or (None, why not): an
    export goes on without its parity check when the run's data is gone."""
    from ..train.job import run_data

    try:
        d = run_data(run, int(meta["size"]), float(meta.get("crop_pct", 0.875)), data, progress)
    except UserError as e:
        return None, str(e)
    if d.presize != int(meta["presize"]):
        return None, f"the data presizes to {d.presize}, the model to {meta['presize']}"
    return d, None


def _spaced(n: int, k: int) -> list[int]:
    return list(range(n)) if n <= k else np.linspace(0, n - 1, k).round().astype(int).tolist()


def _targets(data, classes: list[str]) -> torch.Tensor | None:
    """The validation targets as the exported model's outputs read them: class indices in its class order, tag
    columns in its tag order, or numbers in the target's own units; None when the data's labels are not the run's."""
    if data.task == "regression":
        mean, std = data.target_stats
        return torch.as_tensor(data.valid_y).float().reshape(len(data.valid_y), -1)[:, 0] * std + mean
    if any(c not in classes for c in data.classes):
        return None
    if data.task == "multi_label":
        cols = torch.tensor([data.classes.index(c) for c in classes])
        return torch.as_tensor(data.valid_y).float()[:, cols]
    idx = torch.tensor([classes.index(c) for c in data.classes])
    return idx[torch.as_tensor(data.valid_y)]


def _outputs(predictor, images, bs: int = 64) -> torch.Tensor:
    return torch.cat([predictor.view_probs(images[b : b + bs])[0] for b in range(0, len(images), bs)])


def images_per_second(predictor, images: torch.Tensor, bs: int = 64, repeats: int = 3) -> float:
    """Images/s of the model on a pre-decoded uint8 batch (best of `repeats`, after one warm-up)."""
    x = images[:bs]
    predictor.view_probs(x)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        predictor.view_probs(x)
        best = min(best, time.perf_counter() - t)
    return round(len(x) / best, 1)


def parity(reference, exported, images: torch.Tensor, targets: torch.Tensor | None, task: str) -> dict[str, Any]:
    """Eager vs exported on the same uint8 images: top-1 agreement (tags: the share of (image, tag) decisions that
    agree, `decision_agreement`, as accuracy_multi counts them, and of images whose every decision agrees,
    `image_agreement`; numbers: none), max |Δ| of the outputs, and each one's accuracy when the labels are known."""
    ref, out = _outputs(reference, images), _outputs(exported, images)
    res: dict[str, Any] = {"n": len(images), "max_abs_diff": float((ref - out).abs().max()) if len(images) else 0.0}
    if task == "classify":
        res["top1_agreement"] = float((ref.argmax(-1) == out.argmax(-1)).float().mean())
        if targets is not None:
            res["accuracy_eager"] = float((ref.argmax(-1) == targets).float().mean())
            res["accuracy"] = float((out.argmax(-1) == targets).float().mean())
    elif task == "multi_label":
        t = reference.threshold
        same = (ref > t) == (out > t)  # (image, tag): the same yes/no
        res["decision_agreement"] = float(same.float().mean())
        res["image_agreement"] = float(same.all(-1).float().mean())
        if targets is not None:  # accuracy_multi: the (image, tag) decisions right at the run's threshold
            res["accuracy_eager"] = float(((ref > t) == targets.bool()).float().mean())
            res["accuracy"] = float(((out > t) == targets.bool()).float().mean())
    elif targets is not None:  # numbers: the mean absolute error in the target's units
        res["mae_eager"] = float((ref.reshape(-1) - targets).abs().mean())
        res["mae"] = float((out.reshape(-1) - targets).abs().mean())
    return res


def _log_line(name: str, p: dict[str, Any]) -> str:
    parts = [f"parity on {p['n']} validation images: {name}"]
    if "top1_agreement" in p:
        parts.append(f"top-1 agreement {p['top1_agreement']:.2%}")
    if "decision_agreement" in p:
        parts.append(f"tag decisions agree {p['decision_agreement']:.2%} (images whose every tag decision agrees: "
                     f"{p['image_agreement']:.2%})")
    parts.append(f"max |Δ| {p['max_abs_diff']:.2e}")
    for key in ("accuracy", "mae"):
        if key in p:  # tags: accuracy_multi, of the (image, tag) decisions
            name = "accuracy_multi" if key == "accuracy" and "decision_agreement" in p else key
            parts.append(f"{name} {p[key + '_eager']:.4f} eager -> {p[key]:.4f}")
    return ", ".join(parts)


def unfinished_note(run: str | Path) -> str | None:
    """One line when config.json says the run did not finish (interrupted, still running or killed, failed): its
    model is the best epoch so far, and a resume then a new export gives the final one. None for a done run."""
    status = str(read_config(run).get("status", "done"))
    if status not in ("interrupted", "running") and not status.startswith("failed"):
        return None
    how = " (still training, or killed)" if status == "running" else ""
    return (f"{run} is unfinished (status {status}{how}): exporting its best epoch so far; for the final model run "
            f"`imgclf train --resume {run}`, then export again")


def default_path(run: str | Path, fmt: str, int8: bool) -> Path:
    return Path(run) / FILES["int8" if int8 else fmt]


def export_model(run: str | Path, format: str = "onnx", out: str | Path | None = None, int8: bool = False,
                 force: bool = False, data: str | Path | None = None, opset: int = OPSET, progress: bool = True,
                 ) -> dict[str, Any]:
    """Export a run to `out` (default RUN/model.onnx, RUN/model.int8.onnx with `int8`, RUN/model.ts) and check it.

    Returns the entry written to `export.json` beside the file: the file, its size, format, the parity check
    against the eager fp32 model on the run's validation images (or why it was skipped: the data is gone),
    images/s of batch 64 on this machine; with `int8` also the fp32 ONNX model's figures (`fp32`) to compare.
    `int8` calibrates on the run's training images, so it needs the data (`data` when it has moved)."""
    from .predictor import Predictor

    if format not in FORMATS:
        raise UserError(f"--format {format}: choose {' or '.join(FORMATS)}")
    if int8 and format != "onnx":
        raise UserError("--int8 quantizes the ONNX model: use it with --format onnx")
    if not 17 <= opset <= MAX_OPSET:
        raise UserError(f"--opset {opset}: use 17 to {MAX_OPSET} (what torch's exporter writes)")
    path = Path(out) if out else default_path(run, format, int8)
    want = (".onnx",) if format == "onnx" else (".ts", ".pt")
    if path.suffix.lower() not in want:  # predict --backend and load_model tell the format by the name
        kind = "an ONNX" if format == "onnx" else "a TorchScript"
        raise UserError(f"--out {path}: {kind} file is named *{' or *'.join(want)}")
    if path.exists() and not force:
        raise UserError(f"{path}: already exists (pass --force to overwrite)")
    module, meta = load_deployable(run)
    say = print if progress else (lambda *a, **k: None)
    unfinished = unfinished_note(run)
    if unfinished:  # a warning, not progress: --quiet keeps it, as a deployed half-trained model is a surprise
        warnings.warn(unfinished, stacklevel=2)
    d, why = run_images(run, meta, data, progress)
    if int8 and d is None:
        raise UserError(f"{run}: --int8 calibrates on the run's training images, but {why}")
    backend = "int8" if int8 else format
    props = file_meta(meta, backend)
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    say(f"exporting {run} -> {path} ({'ONNX int8' if int8 else format}, input uint8 (batch, {module.presize}, "
        f"{module.presize}, 3))")
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as tmp:  # same disk: the move is atomic
        target = Path(tmp) / path.name
        if format == "torchscript":
            export_torchscript(module, target, props)
        elif not int8:
            export_onnx(module, target, props, opset)
        else:
            fp32 = Path(tmp) / "fp32.onnx"
            export_onnx(module, fp32, file_meta(meta, "onnx"), opset)
            calib = d.train_images[_spaced(len(d.train_images), CALIB_IMAGES)]
            say(f"calibrating int8 on {len(calib)} training images")
            quantize_int8(fp32, target, calib.permute(0, 2, 3, 1).contiguous().numpy(), props)
        entry: dict[str, Any] = {"file": path.name, "format": backend, "opset": None if format != "onnx" else opset,
                                 "bytes": target.stat().st_size, "seconds": None,
                                 "weights_sha1": weights_digest(run)}  # runtime.load_exported checks it
        exported = ExportedPredictor(target, backend)
        if d is None:
            entry["parity"] = {"skipped": why}
            say(f"parity check skipped: {why}")
        else:
            images = d.valid_images[_spaced(len(d.valid_images), MAX_PARITY)]
            targets = _targets(d, exported.classes)
            targets = targets[_spaced(len(d.valid_images), MAX_PARITY)] if targets is not None else None
            # the reference: fp32 on the CPU (CUDA's TF32 convolutions alone differ by ~1e-3)
            eager = Predictor(module.model, meta, device="cpu", precision="fp32")
            entry["parity"] = parity(eager, exported, images, targets, exported.task)
            say(_log_line(f"eager fp32 vs {backend}", entry["parity"]))
            entry["images_per_s"] = images_per_second(exported, images)
            if int8:
                ref = ExportedPredictor(fp32, "onnx")
                entry["fp32"] = {"bytes": fp32.stat().st_size, "images_per_s": images_per_second(ref, images),
                                 "parity": parity(eager, ref, images, targets, exported.task)}
                entry["size_ratio"] = round(entry["fp32"]["bytes"] / entry["bytes"], 2)
                key = "mae" if exported.task == "regression" else "accuracy"  # accuracy_multi for tags
                acc = entry["fp32"]["parity"].get(key), entry["parity"].get(key)
                if None not in acc:
                    entry[key] = {"fp32": acc[0], "int8": acc[1]}
                    name = "accuracy_multi" if exported.task == "multi_label" else key
                    say(f"int8: {name} {acc[0]:.4f} -> {acc[1]:.4f}, {entry['size_ratio']}x smaller, "
                        f"{entry['fp32']['images_per_s']} -> {entry['images_per_s']} images/s (batch 64)")
            elif entry["parity"].get("top1_agreement", 1.0) < TARGET_AGREEMENT or (
                    exported.task != "regression" and entry["parity"]["max_abs_diff"] > TARGET_MAX_DPROB):
                warnings.warn(f"{path}: the exported model departs from the eager one: "
                              f"{_log_line('', entry['parity'])}", stacklevel=2)
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        os.replace(target, path)
    log = path.parent / EXPORT_LOG
    entries = read_json(log) if log.is_file() else {}
    entries[path.name] = entry
    write_json(log, entries)
    rate = f", {entry['images_per_s']:.0f} images/s at batch 64 here" if entry.get("images_per_s") else ""
    say(f"{path} ({entry['bytes'] / 1e6:.1f} MB{rate}); figures in {log}")
    return entry

