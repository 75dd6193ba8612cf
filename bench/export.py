"""Benchmark: the exported backends (ONNX fp32, ONNX int8, TorchScript) beside the eager predictor.

Trains the default run on hymenoptera first when no RUN is given (`imgclf.train.job.train`, ~20 s), exports
the three files into a copy of the run, and prints per backend (eager: the predictor as `load_model` gives it,
bf16 autocast where the CPU has it natively, and in fp32): images/s of the model alone on pre-decoded
uint8 batches (batch 64 and batch 1), images/s end to end (`predict_files` on the validation files: decode +
presize + model), accuracy on the run's validation images, file size, and the ratio to the eager predictor.
Then onnxruntime's graph optimisation levels and intra-op thread counts on the fp32 file (batch 64).
The issue's targets on the 2-core CPU: ONNX >= 1.5x the eager predictor at batch 64 and at batch 1; int8 within
1 point of fp32's accuracy, >= 3x smaller and faster than fp32 ONNX.

Usage: python bench/export.py [RUN] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from imgclf.infer.export import images_per_second

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared/datasets/hymenoptera"


def speed(predictor, images: torch.Tensor, bs: int, repeats: int) -> float:
    """Images/s of `view_probs` on pre-decoded uint8 images: batch 64 best of `repeats` (export's own timing);
    batch 1 over 32 images in turn."""
    if bs != 1:
        return images_per_second(predictor, images, bs, repeats)
    predictor.view_probs(images[:1])
    t = time.perf_counter()
    for i in range(32):
        predictor.view_probs(images[i : i + 1])
    return 32 / (time.perf_counter() - t)


def train_default(out: Path) -> Path:
    from imgclf.config import DataConfig, RunConfig
    from imgclf.train.job import train

    print(f"training the default run on {DEFAULT_DATA} ...", flush=True)
    return train(RunConfig(data=DataConfig(path=str(DEFAULT_DATA)), out=str(out)), progress=False).run_dir


def ort_levels(path: Path, images: torch.Tensor, repeats: int) -> None:
    import onnxruntime as ort

    from imgclf.infer.runtime import physical_cores

    x = images[:64].permute(0, 2, 3, 1).contiguous().numpy()
    print(f"\nonnxruntime on {path.name}, batch {len(x)}: images/s by graph optimisation level and intra-op threads")
    for threads in sorted({1, physical_cores()}):
        for level in ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL"):
            so = ort.SessionOptions()
            so.intra_op_num_threads, so.graph_optimization_level = threads, getattr(ort.GraphOptimizationLevel, level)
            s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            s.run(None, {"images": x})
            best = float("inf")
            for _ in range(repeats):
                t = time.perf_counter()
                s.run(None, {"images": x})
                best = min(best, time.perf_counter() - t)
            print(f"  threads {threads}  {level:<20} {len(x) / best:8.1f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", type=Path, help="a run directory (default: train one on hymenoptera)")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()

    from imgclf import export_model, load_model
    from imgclf.infer.export import run_images
    from imgclf.rundir import read_json

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        if a.run:
            shutil.copytree(a.run, run, ignore=shutil.ignore_patterns("model.onnx", "model.int8.onnx", "model.ts",
                                                                      "export.json"))
        else:
            run = train_default(run)
        t = time.perf_counter()
        for kwargs in ({}, {"int8": True}, {"format": "torchscript"}):
            export_model(run, progress=True, **kwargs)
        print(f"exports: {time.perf_counter() - t:.0f} s", flush=True)
        log = read_json(run / "export.json")
        data, why = run_images(run, read_json(run / "model.json"), progress=False)
        if data is None:
            raise SystemExit(f"no validation images: {why}")
        images, paths = data.valid_images, data.valid_paths
        rows = []
        for backend in ("eager", "eager-fp32", "onnx", "int8", "torchscript"):
            p = load_model(run, precision="fp32") if backend == "eager-fp32" else load_model(run, backend=backend)
            preds, _ = p.predict_files(paths, progress=False)  # warm, and the accuracy
            t = time.perf_counter()
            p.predict_files(paths, progress=False)
            e2e = len(paths) / (time.perf_counter() - t)
            truth = [data.classes[int(y)] for y in data.valid_y]
            acc = sum(q.label == y for q, y in zip(preds, truth, strict=True)) / len(truth)
            size = (run / "model.safetensors").stat().st_size if backend.startswith("eager") else \
                log[{"onnx": "model.onnx", "int8": "model.int8.onnx", "torchscript": "model.ts"}[backend]]["bytes"]
            name = f"eager ({p.dtype or 'fp32'})".replace("torch.", "") if backend.startswith("eager") else backend
            rows.append({"backend": name, "b64": speed(p, images, 64, a.repeats), "b1": speed(p, images, 1, a.repeats),
                         "e2e": e2e, "accuracy": acc, "mb": size / 1e6})
            print(rows[-1], flush=True)
        print(f"\nhymenoptera validation ({len(paths)} images, {data.size} px from {data.presize}), "
              f"torch threads {torch.get_num_threads()}")
        print(f"{'backend':<18}{'b64 img/s':>10}{'b1 img/s':>10}{'e2e img/s':>10}{'accuracy':>10}{'MB':>8}"
              f"{'x eager b64':>12}{'x eager b1':>11}")
        e = rows[0]
        for r in rows:
            print(f"{r['backend']:<18}{r['b64']:>10.1f}{r['b1']:>10.1f}{r['e2e']:>10.1f}{r['accuracy']:>10.4f}"
                  f"{r['mb']:>8.1f}{r['b64'] / e['b64']:>12.2f}{r['b1'] / e['b1']:>11.2f}")
        q = log["model.int8.onnx"]
        print(f"int8 (export.json): accuracy {q['fp32']['parity']['accuracy']:.4f} -> {q['parity']['accuracy']:.4f}, "
              f"{q['size_ratio']}x smaller, {q['fp32']['images_per_s']} -> {q['images_per_s']} images/s (batch 64)")
        o = log["model.onnx"]["parity"]
        print(f"fp32 parity: top-1 agreement {o['top1_agreement']:.4f}, max |Δprob| {o['max_abs_diff']:.2e}")
        ort_levels(run / "model.onnx", images, a.repeats)


if __name__ == "__main__":
    main()
