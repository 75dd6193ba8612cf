"""The GPU figures of issue 14, each printed beside its target, in one run:

1. Fashion-MNIST from scratch through `imgclf.train.job.train` (what `imgclf train` runs) with the recipe the
   planner picks on CUDA (`imgclf.train.scratch.scratch_recipe(..., "cuda")`: bs 1024, no progressive resizing),
   the CPU's recipe, and (`--variants`) batch/rate variants: fit seconds and test accuracy (the official t10k
   split). Targets: >= 94.0% within <= 15 s of fit.
2. Fine-tuning the default backbone (embedded EfficientNet-Lite0) at 224 px from a folder of JPEGs (made from
   hymenoptera: random crops and mirrors, `--n-images` of them, in a temp dir): the first pass's decode rate, the
   loader's feed rate alone (uint8 cache on the device, augmentation on the device), and the whole model's
   training rate in images/s (bf16 + channels_last, as `imgclf train` trains). Target: >= 5,000 images/s.
3. The same fine-tune in fastai beside it (same folder, same arch from timm without weights: the GPU machine has
   no internet; the rate does not depend on the weights), measured only when fastai imports.
4. `imgclf train DATA` as a user runs it, no flags, on hymenoptera (or the part of it at --datasets) and on
   Fashion-MNIST: what the planner chose on the GPU, the job's seconds and its accuracy.
5. (`--only profile`, not in the default run) where a from-scratch step's time goes: loader alone, model step
   alone, whole step, torch.profiler's top operators by host and device time.

Measured on one H200 (bench/README.md, "Issue 14 on a GPU").

    python -P bench/gpu.py                  # on a CUDA machine: everything (~4-6 minutes on one H200)
    python -P bench/gpu.py --only feed      # some parts: fashion | feed | fastai | jobs | profile (repeat --only)
    python -P bench/gpu.py --smoke          # tiny versions on the CPU: the script works (~1-2 min)
    python -P bench/gpu.py --datasets DIR   # the shared sets copied elsewhere (a GPU machine without ../shared)

Each part runs apart: one that fails prints its error and the others still run; --json is rewritten after each.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imgclf.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from imgclf.data.augment import Augment
from imgclf.data.core import ImageData
from imgclf.data.idx import read_idx
from imgclf.models import DEFAULT_ARCH
from imgclf.train import vision_learner
from imgclf.train.callbacks import Callback, CancelFitException
from imgclf.train.job import train
from imgclf.train.scratch import scratch_recipe

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
FASHION, HYMENOPTERA = DATASETS / "fashion-mnist", DATASETS / "hymenoptera"  # --datasets sets them again
TARGET_ACC, TARGET_FIT_S, TARGET_FEED = 0.94, 15.0, 5000.0


def per_s(x: float) -> str:
    """A rate as people read it: thousands separated; two significant digits when small (--smoke on a CPU)."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.2g}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- 1. Fashion-MNIST from scratch
def fashion_config(spec: dict, data: Path, out: Path, device: str) -> RunConfig:
    return RunConfig(
        data=DataConfig(path=str(data), size=spec["size"], crop_pct=spec["crop_pct"], bs=spec["bs"],
                        augment=spec["augment"]),
        model=ModelConfig(arch=spec["arch"], pretrained=False),
        train=TrainConfig(recipe="scratch", epochs=spec["epochs"], lr=spec["lr"], schedule=spec["schedule"],
                          label_smoothing=spec["label_smoothing"], device=device, ckpt_every=0,
                          progressive=spec["progressive"]),
        out=str(out),
    )


def small_idx(src: Path, dst: Path, n_train: int, n_valid: int) -> Path:
    """The first images of an IDX data set written as IDX files again (for --smoke: the same code path, tiny)."""
    dst.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_valid)):
        for kind, magic in (("images-idx3", 0x0803), ("labels-idx1", 0x0801)):
            arr = read_idx(src / f"{split}-{kind}-ubyte.gz", limit=n)
            with gzip.open(dst / f"{split}-{kind}-ubyte.gz", "wb") as f:
                f.write(struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes())
    return dst


def fashion_specs() -> dict[str, dict]:
    cpu = scratch_recipe(60000, 28)  # the CPU's recipe: bs 256, progressive resizing
    big = {**cpu, "bs": 1024, "lr": cpu["lr"] * 2}
    return {
        "GPU recipe": scratch_recipe(60000, 28, "cuda"),  # what the planner chooses on CUDA (scratch.py: GPU_BS)
        "CPU recipe": cpu,
        # a GPU's step costs little whatever the batch: 2x / 4x the batch, the rate by the square-root rule
        "bs 512, lr x1.4": {**cpu, "bs": 512, "lr": cpu["lr"] * 2**0.5},
        "bs 1024, lr x2, progressive": big,
        "bs 1024, lr x2, 20 epochs, progressive": {**big, "epochs": 20},
    }


FASHION_DEFAULT = ("GPU recipe", "CPU recipe")


def fashion(device: str, smoke: bool, tmp: Path, variants: tuple[str, ...] = FASHION_DEFAULT) -> list[dict]:
    data = small_idx(FASHION, tmp / "fashion-small", 1024, 512) if smoke else FASHION
    specs = {k: v for k, v in fashion_specs().items() if k in variants}
    rows = []
    for name, spec in specs.items():
        if smoke:
            spec = {**spec, "epochs": 1, "bs": 128}
        res = train(fashion_config(spec, data, tmp / f"fashion-{len(rows)}", device), progress=False)
        m = res.metrics
        rows.append({"figure": f"Fashion-MNIST {name} ({spec['arch']}, {spec['epochs']} ep, bs {spec['bs']})",
                     "accuracy": m["accuracy"], "fit_s": m["fit_seconds"],
                     "target": f">= {TARGET_ACC:.1%} in <= {TARGET_FIT_S:.0f} s",
                     "met": m["accuracy"] >= TARGET_ACC and m["fit_seconds"] <= TARGET_FIT_S})
        print(f"{rows[-1]['figure']}: test {m['accuracy']:.4f}, fit {m['fit_seconds']:.1f} s "
              f"(target {rows[-1]['target']})", flush=True)
    return rows


# ---------------------------------------------------------------- 2. fine-tune feed rate from JPEGs
def _jpeg(job: tuple[Path, Path, int]) -> None:
    """One JPEG of `jpeg_folder`: a random crop of 60-100% of the side of `src`, half mirrored, quality 90."""
    src, dst, seed = job
    rng = random.Random(seed)
    with Image.open(src) as im:
        im = im.convert("RGB")
        w, h = im.size
        f = rng.uniform(0.6, 1.0)
        cw, ch = int(w * f), int(h * f)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        im = im.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        im.save(dst, quality=90)


def jpeg_folder(dst: Path, n: int, seed: int = 0) -> Path:
    """`n` JPEGs in ants/ and bees/ made from hymenoptera's photos (random crops and mirrors, so no two files are
    the same bytes and the decoder does real work), made by all cores."""
    rng = random.Random(seed)
    sources = {c: sorted((HYMENOPTERA / "train" / c).glob("*.jpg")) for c in ("ants", "bees")}
    for c in sources:
        (dst / c).mkdir(parents=True, exist_ok=True)
    jobs = []
    for i in range(n):
        c = ("ants", "bees")[i % 2]
        jobs.append((rng.choice(sources[c]), dst / c / f"{i:05d}.jpg", rng.randrange(2**31)))
    t0 = time.perf_counter()
    with ProcessPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
        list(pool.map(_jpeg, jobs, chunksize=32))
    print(f"made {n} JPEGs in {time.perf_counter() - t0:.1f} s", flush=True)
    return dst


class EpochTimer(Callback):
    """Seconds of each epoch's training part (the device synchronised at both ends), validation left out."""

    order = 100

    def __init__(self):
        self.seconds: list[float] = []

    def before_train(self, learn) -> None:
        sync(learn.device)
        self.t0 = time.perf_counter()

    def after_train(self, learn) -> None:
        sync(learn.device)
        self.seconds.append(time.perf_counter() - self.t0)


def feed(device: str, smoke: bool, tmp: Path, n_images: int, bs: int, epochs: int,
         compiled: bool = False) -> tuple[list[dict], Path]:
    folder = jpeg_folder(tmp / "jpegs", n_images)
    size = 64 if smoke else 224
    t0 = time.perf_counter()
    data = ImageData.from_folder(folder, valid_pct=0.1, size=size, bs=bs, augment=Augment(), progress=False)
    decode_s = time.perf_counter() - t0
    rows = [{"figure": f"first pass: decode + presize {data.n_train + data.n_valid} JPEGs (CPU)",
             "images_per_s": (data.n_train + data.n_valid) / decode_s, "target": "(once; then the uint8 cache)"}]
    learn = vision_learner(data, DEFAULT_ARCH, device=device, progress=False)
    dev = learn.device
    # the loader alone: the batches a training epoch gets (gather from the uint8 cache, augment, normalise)
    dl = learn.train_dl
    for _ in dl:  # the first pass moves the cache to the device
        pass
    sync(dev)
    t0 = time.perf_counter()
    n = 0
    for xb, _ in dl:
        n += len(xb)
    sync(dev)
    rows.append({"figure": f"loader alone at {size} px (uint8 cache on {dev.type}, augmentation there)",
                 "images_per_s": n / (time.perf_counter() - t0), "target": f">= {TARGET_FEED:,.0f}"})
    learn.unfreeze()
    timer = EpochTimer()
    learn.fit_one_cycle(epochs, 1e-3, cbs=[timer])
    steady = timer.seconds[1:] or timer.seconds  # the first epoch warms up (cudnn autotune, allocator)
    rate = data.n_train / (sum(steady) / len(steady))
    rows.append({"figure": f"imgclf fine-tune {DEFAULT_ARCH} at {size} px, bs {bs}, {learn.dtype or 'fp32'}, "
                           f"channels_last", "images_per_s": rate, "target": f">= {TARGET_FEED:,.0f}",
                 "met": rate >= TARGET_FEED})
    print(f"{rows[-1]['figure']}: {per_s(rate)} images/s, epochs {[round(t, 2) for t in timer.seconds]} s",
          flush=True)
    if compiled:  # the same with --compile: the first epoch pays the compile, the others run the compiled graph
        learn = vision_learner(data, DEFAULT_ARCH, device=device, progress=False, compile=True)
        learn.unfreeze()
        timer = EpochTimer()
        learn.fit_one_cycle(epochs + 1, 1e-3, cbs=[timer])
        rate = data.n_train / (sum(timer.seconds[2:]) / len(timer.seconds[2:]))
        rows.append({"figure": f"imgclf fine-tune as above, --compile (first epoch {timer.seconds[0]:.0f} s: "
                               f"compiling)", "images_per_s": rate, "target": f">= {TARGET_FEED:,.0f}",
                     "met": rate >= TARGET_FEED})
    for r in rows:
        print(f"{r['figure']}: {per_s(r['images_per_s'])} images/s (target {r['target']})", flush=True)
    return rows, folder


# ---------------------------------------------------------------- 3. fastai beside it
def fastai_feed(folder: Path, device: str, smoke: bool, bs: int, epochs: int) -> list[dict]:
    try:
        from fastai.vision.all import ImageDataLoaders, Resize, aug_transforms
        from fastai.vision.all import vision_learner as fastai_learner
    except ImportError as e:
        print(f"fastai: not measured ({e}); `pip install fastai` where the machine has internet", flush=True)
        return [{"figure": "fastai fine-tune", "images_per_s": None, "target": "beside imgclf",
                 "note": f"unmeasured: {e}"}]
    size = 64 if smoke else 224
    dls = ImageDataLoaders.from_folder(folder, valid_pct=0.1, seed=42, item_tfms=Resize(int(size * 8 / 7)),
                                       batch_tfms=aug_transforms(size=size), bs=bs, device=torch.device(device),
                                       num_workers=0 if smoke else min(16, torch.get_num_threads()))
    learn = fastai_learner(dls, "tf_efficientnet_lite0", pretrained=False)
    cuda = torch.device(device).type == "cuda"  # fastai's mixed precision is CUDA's: bf16 as imgclf trains
    learn = learn.to_channelslast(use_amp=cuda, amp_mode="bf16") if cuda else learn.to_channelslast(use_amp=False)
    learn.unfreeze()
    seconds = []
    for _ in range(epochs):  # one fit per epoch, to time each (validation is small: 10%)
        sync(torch.device(device))
        t0 = time.perf_counter()
        with learn.no_bar(), learn.no_logging():
            learn.fit_one_cycle(1, 1e-3)
        sync(torch.device(device))
        seconds.append(time.perf_counter() - t0)
    steady = seconds[1:] or seconds
    rate = len(dls.train_ds) / (sum(steady) / len(steady))
    print(f"fastai fine-tune tf_efficientnet_lite0 at {size} px, bs {bs}: {per_s(rate)} images/s "
          f"(train + 10% validation per epoch; workers decode JPEGs every epoch)", flush=True)
    return [{"figure": f"fastai fine-tune at {size} px, bs {bs}", "images_per_s": rate, "target": "beside imgclf"}]


# ---------------------------------------------------------------- 4. `imgclf train` as a user runs it
def jobs(device: str, smoke: bool, tmp: Path, which: tuple[str, ...] = ("hymenoptera", "fashion-mnist")) -> list[dict]:
    """`imgclf train DATA` with no flags but --device, in its own process: its printed plan and phases, the
    recipe it chose, its wall seconds and accuracy (the validation split: hymenoptera's val/, Fashion's t10k)."""
    cases = [("hymenoptera", HYMENOPTERA, 100)]
    cases.append(("fashion-mnist", small_idx(FASHION, tmp / "fashion-jobs", 1024, 512) if smoke else FASHION, 120))
    rows = []
    for name, data, limit in [c for c in cases if c[0] in which]:
        out = tmp / f"job-{name}"
        cmd = [sys.executable, "-m", "imgclf", "train", str(data), "--out", str(out), "--device", device]
        t = time.perf_counter()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired as e:
            print(f"imgclf train {name}: stopped after {limit} s\n{(e.stderr or b'')[-2000:]}", flush=True)
            rows.append({"figure": f"imgclf train {name} (no flags)", "images_per_s": None, "target": "-",
                         "note": f"over {limit} s"})
            continue
        wall = time.perf_counter() - t
        print(f"---- imgclf train {name} --device {device}: exit {p.returncode}, {wall:.1f} s wall\n"
              f"{p.stdout[-3000:]}{p.stderr[-3000:]}", flush=True)
        if p.returncode:
            rows.append({"figure": f"imgclf train {name} (no flags)", "images_per_s": None, "target": "-",
                         "note": f"exit {p.returncode}"})
            continue
        m = json.loads((out / "metrics.json").read_text())
        rec = json.loads((out / "recipe.json").read_text()) if (out / "recipe.json").exists() else {}
        rows.append({"figure": f"imgclf train {name} (no flags; recipe {rec.get('chosen', '?')})",
                     "accuracy": m["accuracy"], "fit_s": wall, "target": "job wall seconds",
                     "phases": m.get("phases")})
    return rows


# ---------------------------------------------------------------- 5. where a from-scratch step's time goes
class StopAfter(Callback):
    def __init__(self, n: int):
        self.n = n

    def after_batch(self, learn) -> None:
        if learn.training and learn.iter + 1 >= self.n:
            raise CancelFitException


def model_step_seconds(learn, xb: torch.Tensor, yb: torch.Tensor, n: int) -> float:
    """Seconds of one training step of `learn`'s model on the fixed batch `xb` (forward in the learner's precision,
    backward, optimizer step), the mean of `n` after 5 warm-up steps."""
    model, opt, dev = learn.model, learn.opt, learn.device
    model.train()
    for i in range(n + 5):
        if i == 5:
            sync(dev)
            t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=learn.dtype, enabled=learn.dtype is not None):
            out = model(xb)
        learn.loss_func(out.float(), yb).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(dev)
    return (time.perf_counter() - t0) / n


def profile(device: str, smoke: bool, tmp: Path) -> list[dict]:
    """Fashion-MNIST's from-scratch step, taken apart at bs 256 and 1024: the loader alone (gather + augment), the
    model's step alone on one fixed batch (forward, backward, AdamW), a whole training epoch, and torch.profiler's
    top operators by host and by device time over 30 steps of a fit."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from imgclf.train.job import load_data

    data_path = small_idx(FASHION, tmp / "fashion-prof", 1024, 512) if smoke else FASHION
    recipe = scratch_recipe(60000, 28)
    rows = []
    for bs in (256, 1024):
        cfg = fashion_config({**recipe, "bs": bs}, data_path, tmp / f"prof-{bs}", device)
        data = load_data(cfg, progress=False)
        learn = vision_learner(data, recipe["arch"], pretrained=False, device=device, progress=False)
        dev = learn.device
        timer = EpochTimer()
        learn.fit_one_cycle(2, 1e-3, cbs=[timer])  # warm: cudnn's choices, the allocator, the fused optimizer
        epoch = timer.seconds[-1]
        dl = learn.train_dl
        sync(dev)
        t0 = time.perf_counter()
        n = sum(1 for _ in dl)
        sync(dev)
        loader = (time.perf_counter() - t0) / n
        xb, yb = next(iter(dl))
        model_step = model_step_seconds(learn, xb, yb, 50)
        print(f"profile bs {bs}: epoch (train part) {epoch:.2f} s = {epoch / n * 1e3:.2f} ms a step over {n} steps; "
              f"loader alone {loader * 1e3:.2f} ms a batch; model step alone {model_step * 1e3:.2f} ms", flush=True)
        rows.append({"figure": f"profile bs {bs}: ms a step (whole / loader / model)", "images_per_s": bs / (epoch / n),
                     "target": f"{epoch / n * 1e3:.2f} / {loader * 1e3:.2f} / {model_step * 1e3:.2f} ms"})
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with torch_profile(activities=acts) as prof:
            learn.fit_one_cycle(1, 1e-3, cbs=[StopAfter(30)])
            sync(dev)
        ka = prof.key_averages()
        print(ka.table(sort_by="self_cpu_time_total", row_limit=25), flush=True)
        if dev.type == "cuda":
            print(ka.table(sort_by="self_cuda_time_total", row_limit=15), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny versions on the CPU: checks the script runs")
    p.add_argument("--only", choices=("fashion", "feed", "fastai", "jobs", "profile"), action="append",
                   help="run these parts only (profile: not in the default set)")
    p.add_argument("--variants", nargs="+", default=list(FASHION_DEFAULT), metavar="NAME",
                   help=f"Fashion-MNIST recipes to run, of: {'; '.join(fashion_specs())}")
    p.add_argument("--jobs", nargs="+", default=["hymenoptera", "fashion-mnist"], choices=("hymenoptera",
                   "fashion-mnist"), help="the data sets the jobs part trains on")
    p.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    p.add_argument("--datasets", type=Path, default=DATASETS, help=f"the shared data sets (default {DATASETS})")
    p.add_argument("--n-images", type=int, default=None, help="JPEGs to make (default 6000; 64 with --smoke)")
    p.add_argument("--bs", type=int, default=None, help="fine-tune batch (default 256; 16 with --smoke)")
    p.add_argument("--epochs", type=int, default=None, help="fine-tune epochs timed (default 3; 2 with --smoke)")
    p.add_argument("--compile", action="store_true", help="also time the fine-tune with --compile")
    p.add_argument("--json", type=Path, help="write the rows here (again after each part)")
    a = p.parse_args()
    global FASHION, HYMENOPTERA
    FASHION, HYMENOPTERA = a.datasets / "fashion-mnist", a.datasets / "hymenoptera"
    device = a.device or ("cpu" if a.smoke else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        p.error("no CUDA device here: run with --smoke (CPU) or on a GPU machine")
    n_images = a.n_images or (64 if a.smoke else 6000)
    bs, epochs = a.bs or (16 if a.smoke else 256), a.epochs or (2 if a.smoke else 3)
    parts = a.only or ["fashion", "feed", "fastai", "jobs"]
    torch.manual_seed(0)
    np.random.seed(0)
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    print(f"torch {torch.__version__}, device {device} ({name}){', smoke: tiny sizes' if a.smoke else ''}",
          flush=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = None

        def run_part(part: str) -> list[dict]:
            nonlocal folder
            if part == "fashion":
                return fashion(device, a.smoke, Path(tmp), tuple(a.variants))
            if part == "feed":
                feed_rows, folder = feed(device, a.smoke, Path(tmp), n_images, bs, epochs, a.compile)
                return feed_rows
            if part == "fastai":
                return fastai_feed(folder or jpeg_folder(Path(tmp) / "jpegs", n_images), device, a.smoke, bs, epochs)
            if part == "profile":
                return profile(device, a.smoke, Path(tmp))
            return jobs(device, a.smoke, Path(tmp), tuple(a.jobs))

        for part in parts:
            t0 = time.perf_counter()
            try:
                rows += run_part(part)
            except Exception as e:  # one part's failure is a finding: print it, go on with the others
                traceback.print_exc()
                rows.append({"figure": f"part {part}", "images_per_s": None, "target": "-", "note": f"failed: {e}"})
            print(f"== part {part}: {time.perf_counter() - t0:.1f} s", flush=True)
            if a.json:
                a.json.write_text(json.dumps(rows, indent=1, default=str))
    print("\n| figure | measured | target |\n|---|---|---|")
    for r in rows:
        if "accuracy" in r:
            got = f"{r['accuracy']:.2%} in {r['fit_s']:.1f} s"
        else:
            got = f"{per_s(r['images_per_s'])} images/s" if r["images_per_s"] is not None else r.get("note", "-")
        print(f"| {r['figure']} | {got} | {r['target']} |")


if __name__ == "__main__":
    main()
