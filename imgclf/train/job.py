"""`train(config)`: the whole job behind `imgclf train`, from a folder to a run directory.

Data -> learner -> (lr_find) -> fine_tune -> export, writing into a fresh run directory:
model.safetensors, model.json, config.json, history.csv, metrics.json, loss.png, lr_find.png, train.log.

A run's life: the directory is made once the data loaded (a user error before that leaves nothing), with
config.json saying `"status": "running"`; checkpoints follow (train/checkpoint.py); the end sets "done", and a
stop sets "interrupted" (Ctrl-C) or "failed: <why>", keeping the best weights so far. `train(resume=RUN)`
goes on from RUN's last checkpoint with RUN's own config.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import DataConfig, ModelConfig, RunConfig, TrainConfig
from ..data import ahead
from ..data.augment import Augment
from ..data.core import CROP_PCT, ImageData, presize_for
from ..data.decode import default_workers, median_short_side
from ..data.idx import idx_files, idx_shape, is_idx_folder
from ..data.samplers import balance_plan
from ..data.shards import ShardData, is_shard_dir, read_manifest
from ..data.sources import items_from_csv, items_from_folder
from ..data.store import largest_in_memory
from ..data.targets import check_task
from ..errors import UserError
from ..models import create_model, recommended_size
from ..models.init import summarize_lsuv
from ..models.registry import check_pretrained, own_models
from ..rundir import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    META_FILE,
    check_resumable,
    check_run_dir,
    check_version,
    early_lines,
    log_to,
    new_run_dir,
    read_config,
    read_json,
    update_config,
    write_json,
)
from . import distributed as dist
from .calibrate import evaluate_classes
from .callbacks import Callback, CSVLogger, CutMix, EarlyStopping, MixUp, NonFiniteLoss, SaveBestModel
from .callbacks.resize import ProgressiveResize
from .checkpoint import Checkpointer, TrainingInterrupted
from .learner import pick_device, resolve_precision
from .metrics import add_intervals
from .plan import (
    DataFacts,
    Plan,
    Rates,
    choose_plan,
    default_budget,
    measure_decode,
    measure_forward,
    measure_training,
    recorded_rate,
    scratch_regime,
)
from .recipes import RECIPES, auto_fit, candidate_sizes
from .schedule import get_schedule
from .scratch import SCRATCH_EPOCHS, SCRATCH_LR, SCRATCH_VALIDATIONS, progressive_start, scratch_recipe
from .vision import VisionLearner, vision_learner

JOB_RECIPES = (*RECIPES, "scratch")
# epochs when --epochs is not given: a pretrained body needs one unfrozen epoch after its head (more rarely
# pays on small data: see bench/recipes.py); random weights need many (16 reach 94% on Fashion-MNIST)
EPOCHS = {"fine_tune": 1, "scratch": SCRATCH_EPOCHS}  # scratch: see train/scratch.py


# peak learning rates when --lr is not given: a pretrained body fine-tunes gently; BN nets from random weights
# take ~4x more with one-cycle AdamW (Fashion-MNIST, xresnet_tiny, 16 epochs: 4e-3 93.9%, 8e-3 94.0%, 1.6e-2 94.0%)
LRS = {"auto": 2e-3, "probe": 2e-3, "fine_tune": 2e-3, "scratch": SCRATCH_LR}


def recipe_epochs(cfg: RunConfig, recipe: str) -> int:
    return cfg.train.epochs if cfg.train.epochs is not None else EPOCHS[recipe]


def recipe_lr(cfg: RunConfig, recipe: str) -> float | str:
    """`--lr` as given (a number or "auto"), else the recipe's default."""
    return cfg.train.lr if cfg.train.lr is not None else LRS[recipe]


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, Any]
    learner: VisionLearner


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def native_short_side(cfg: RunConfig) -> float:
    """The images' own short side (median over a sample, from file headers; IDX from its header), or 0."""
    d, path = cfg.data, Path(cfg.data.path)
    if not d.csv and is_shard_dir(d.path):
        m = read_manifest(d.path)  # the originals' median short side, as the shards hold them (presized or not)
        return min(m["short_side"], m["presize"] or m["short_side"])
    csv_file = d.csv or (d.path if path.suffix.lower() == ".csv" else None)
    if csv_file:
        paths = items_from_csv(csv_file, folder=path if path.is_dir() else None, label_col=d.label_col,
                               split="random").paths  # the paths only: no need to hash the files for a split
    elif is_idx_folder(path):
        return float(min(idx_shape(idx_files(path)["train-images"])[1:3]))
    else:
        paths = items_from_folder(path, valid=d.valid, label_re=d.label_re, split="random").paths
    return median_short_side(paths, sample=64)


def resolve_size(cfg: RunConfig, scratch: bool) -> tuple[int, float]:
    """(size, crop_pct) when the config leaves them open. A pretrained body wants its own size and ImageNet's
    0.875 center crop. A random one gains nothing from upsampling: from scratch, images smaller than the arch's
    size train at their own size (Fashion-MNIST's 28 px, CIFAR's 32), whole (crop 1: their borders hold content)."""
    d = cfg.data
    size, crop = d.size, d.crop_pct
    native = native_short_side(cfg) if scratch and (size is None or crop is None) else 0.0
    if size is None:
        rec = recommended_size(cfg.model.arch)
        size = max(8, round(native)) if native and native < rec else rec
    if crop is None:
        crop = 1.0 if native and size >= native else CROP_PCT
    return size, crop


def data_facts(cfg: RunConfig) -> tuple[DataFacts, list[Path]] | None:
    """What the auto recipe's planner needs before any image is decoded: the counts per split and the native short
    side (file listings and headers; IDX from its header), and the file paths (a few are decoded to time it).
    None when they cannot be had this way (the planner then stands aside)."""
    d, path = cfg.data, Path(cfg.data.path)
    csv_file = d.csv or (d.path if path.suffix.lower() == ".csv" else None)
    if csv_file:
        items = items_from_csv(csv_file, folder=path if path.is_dir() else None, label_col=d.label_col,
                               valid_pct=d.valid_pct, seed=d.seed, split="random")
    elif is_idx_folder(path):
        files = idx_files(path)
        try:
            train, valid = (idx_shape(files[k]) if k in files else None for k in ("train-images", "t10k-images"))
        except UserError:
            return None  # load_data says what is wrong with the file
        if not train or not valid or len(train) < 3:
            return None
        return DataFacts(train[0], valid[0], float(min(train[1:3])), arrays=True,
                         max_presize=largest_in_memory(train[0] + valid[0])), []
    else:
        items = items_from_folder(path, valid=d.valid, valid_pct=d.valid_pct, seed=d.seed, label_re=d.label_re,
                                  split="random")
    train_paths = [p for p, v in zip(items.paths, items.is_valid, strict=True) if not v]
    n_valid = len(items.paths) - len(train_paths)
    return DataFacts(len(train_paths), n_valid, median_short_side(train_paths, sample=64)), list(items.paths)


def plan_job(cfg: RunConfig) -> Plan | None:
    """The auto recipe's plan (train/plan.py), printed before anything runs; None when the job runs another recipe.

    Priced from throughput: the feature rate that earlier jobs' passes recorded on this machine (`record_rate`:
    what the engine really ran at, set-up included), or on a first job a warm-up and two batches of 8 through a
    throwaway eager backbone at the smallest candidate size (random pixels: 1-3 s on two cores); other sizes are
    priced by their pixels (which overestimates larger ones a little: per pixel a conv net runs faster on larger
    images); a few training steps of the from-scratch net at the images' own size when there are many small
    images, and a few files decoded. The from-scratch candidate is
    priced only when the user left the model and size to the recipe (the default backbone, no --size, no --weights).
    """
    tc, d = cfg.train, cfg.data
    if (tc.recipe not in ("auto", "probe") or is_scratch(cfg) or d.task != "classify" or tc.mixup or tc.cutmix
            or tc.schedule != "one_cycle" or (not d.csv and is_shard_dir(d.path))):
        return None
    found = data_facts(cfg)
    if found is None:
        return None
    facts, paths = found
    sizes = [d.size] if d.size else candidate_sizes(facts.short_side, recommended_size(cfg.model.arch))
    device = pick_device(tc.device)
    dtype = resolve_precision(tc.precision, device)
    recorded = recorded_rate(cfg.model.arch, sizes[0], device)  # what earlier jobs' feature passes ran at here
    if recorded:
        rate_size, forward, engine = recorded
    else:  # the first job on this machine: a throwaway body, timed (the speed does not depend on the weights)
        model, _ = create_model(cfg.model.arch, 2, pretrained=False)
        rate_size, forward, engine = sizes[0], measure_forward(model, sizes[0], device, dtype), "eager"
        del model
    presize = presize_for(sizes[0], d.crop_pct or CROP_PCT)
    ready = ahead.done(paths, presize)  # decoded while the job started (data/ahead.py): only the rest is priced
    scratch, scratch_rate = None, None
    may_scratch = (tc.recipe == "auto" and d.size is None and cfg.model.weights is None
                   and cfg.model.arch == ModelConfig.arch and scratch_regime(facts))
    if not paths:  # arrays presize at ~20,000 images/s (70,000 Fashion-MNIST images in 3.7 s at 64 px: from_idx)
        decode = 20000.0 * (73 / presize) ** 2
    elif ready < len(paths) or len(sizes) > 1 or may_scratch:  # some file is still to decode, at some size
        decode = measure_decode(paths, presize, d.workers or default_workers())
    else:
        decode = float("inf")  # every image decoded ahead at the only size: nothing left to price
    if may_scratch:
        scratch = scratch_recipe(facts.n_train, facts.short_side, device.type)
        net, _ = create_model(scratch["arch"], 10, pretrained=False)
        scratch_rate = measure_training(net, scratch["size"], 10, device, dtype, bs=scratch["bs"])
    budget = tc.budget if tc.budget is not None else default_budget(facts.n_train)
    trained = recorded_rate(cfg.model.arch, sizes[-1], device, kind="train")  # earlier fine-tune trials here
    rates = Rates(forward, rate_size, decode, scratch_rate, engine, trained[:2] if trained else None, ready,
                  ahead.features_done(paths, presize))
    plan = choose_plan(facts, rates, budget, sizes, tc.recipe, scratch, tc.max_epochs)
    print(plan.text(), flush=True)
    for line in plan.why:
        print(f"plan: {line}", flush=True)
    return plan


def scratch_config(cfg: RunConfig, settings: dict[str, Any]) -> RunConfig:
    """The config of the from-scratch run the plan chose (`scratch.scratch_recipe`'s settings): what config.json
    records, so that a resume trains it the same way."""
    return replace(
        cfg,
        data=replace(cfg.data, size=settings["size"], crop_pct=settings["crop_pct"], bs=settings["bs"],
                     augment=settings["augment"]),
        model=replace(cfg.model, arch=settings["arch"], pretrained=False, weights=None),
        train=replace(cfg.train, recipe="scratch", epochs=settings["epochs"], lr=settings["lr"],
                      label_smoothing=settings["label_smoothing"], schedule=settings["schedule"],
                      progressive=settings["progressive"] if cfg.train.progressive is None else cfg.train.progressive),
    )


def load_data(cfg: RunConfig, progress: bool = True, audit: bool = False) -> ImageData:
    """The `ImageData` a config describes: a CSV, IDX files (Fashion-MNIST), a regex on names, or class folders.
    `audit` (`imgclf inspect`): what training would refuse but an audit should report, an empty class folder, is
    noted and the data loads without it."""
    d = cfg.data
    common = dict(size=d.size or recommended_size(cfg.model.arch), bs=d.bs, workers=d.workers, progress=progress,
                  task=check_task(d.task), augment=Augment.parse(d.augment),
                  crop_pct=CROP_PCT if d.crop_pct is None else d.crop_pct)
    path = Path(d.path)
    if not d.csv and is_shard_dir(d.path):  # written by `imgclf shard`: streamed, split as written (data/shards.py)
        return ShardData(d.path, **common)
    csv_file = d.csv or (d.path if path.suffix.lower() == ".csv" else None)
    if csv_file:
        folder = path if path.is_dir() else None
        return ImageData.from_csv(csv_file, folder=folder, valid_pct=d.valid_pct, seed=d.seed, label_col=d.label_col,
                                  split=d.split, **common)
    if d.label_col:
        raise UserError("--label-col names a CSV column: give the CSV with --csv")
    if d.task == "regression":
        raise UserError(f"{path}: regression reads its numbers from a CSV column: give one with --csv")
    if is_idx_folder(path):  # train-images-idx3-ubyte(.gz) and friends: the official train/t10k split
        if d.task != "classify":
            raise UserError(f"{path}: IDX files hold one class per image (--task classify)")
        return ImageData.from_idx(path, **common)
    return ImageData.from_folder(path, valid=d.valid, valid_pct=d.valid_pct, seed=d.seed, label_re=d.label_re,
                                 split=d.split, keep_empty=audit, **common)


def warn_unused_valid_pct(cfg: RunConfig, data: Any) -> None:
    """`--valid-pct` given where the data brings its own split (train/ + valid|val/ folders, a CSV's is_valid
    column, IDX's t10k files, shards as written): one warning that it is not used, rather than silence."""
    pct = cfg.data.valid_pct
    if pct == DataConfig.valid_pct:
        return
    if getattr(getattr(data, "items", None), "split_origin", "given") == "given":
        warnings.warn(f"--valid-pct {pct} is not used: {cfg.data.csv or cfg.data.path} has its own validation "
                      "split", stacklevel=2)


def run_data(run: str | Path, size: int, crop_pct: float, data: str | Path | None = None,
             progress: bool = True) -> ImageData:
    """A finished run's data rebuilt by `load_data` from its config.json, at the model's own size and crop (the
    config may leave them to the recipe), or `data` instead (labelled as the run was). The split is seeded and
    recorded, so its validation images are the ones the run was scored on: `interpret` and `export` use this."""
    conf, meta = Path(run) / CONFIG_FILE, Path(run) / META_FILE
    if conf.is_file():
        cfg = RunConfig.from_dict(read_json(conf))
    elif data is not None and meta.is_file():  # a model saved from Python (`learn.export`): labelled as train would
        cfg = RunConfig(data=DataConfig(path=str(data), task=read_json(meta).get("task", "classify")))
    else:
        raise UserError(f"{run}: no config.json to rebuild the validation data from; give the data: --data DIR "
                        "(data=DIR in Python)")
    cfg.data = replace(cfg.data, size=size, crop_pct=crop_pct)
    if data is not None:  # a folder for a CSV-labelled run keeps reading a CSV: its own, or one of that name there
        cfg.data = replace(cfg.data, path=str(data), csv=_run_csv(run, cfg.data, Path(data)))
    elif not Path(cfg.data.csv or cfg.data.path).exists():
        raise UserError(f"{run}: its training data {cfg.data.csv or cfg.data.path} is not there "
                        "(moved, or a relative path from another folder); give it: --data DIR (data=DIR in Python)")
    data = load_data(cfg, progress)
    if isinstance(data, ShardData):
        source = data.manifest.get("source")
        raise UserError(f"{cfg.data.path}: tar shards are streamed, not held for interpretation or export; give the "
                        "image folder they were written from with --data" + (f" ({source})" if source else ""))
    return data


def _run_csv(run: str | Path, d: DataConfig, data: Path) -> str | None:
    """The CSV that labels `data` (a folder given for a CSV-labelled run): the folder's file of the run's CSV's
    name, else the run's CSV where it was; None for a run labelled by folders or names, or when `data` is itself
    a CSV. A UserError when the run had a CSV and neither is there: the folder alone would be labelled by its
    sub-folders, as one class when the images sit in one."""
    csv = d.csv or (d.path if d.path.lower().endswith(".csv") else None)
    if not csv or not data.is_dir():
        return None
    for found in (data / Path(csv).name, Path(csv)):
        if found.is_file():
            return str(found)
    raise UserError(f"{run} was labelled by {Path(csv).name}, which is neither in {data} nor at {csv}: give the "
                    f"CSV with --data (e.g. --data {data / Path(csv).name})")


def default_out(cfg: RunConfig) -> Path:
    """runs/<the images' folder>; runs/<the CSV's name> when the CSV is all there is (`imgclf train labels.csv`)."""
    folder = Path(cfg.data.path).resolve()
    name = folder if folder.is_dir() else Path(cfg.data.csv or cfg.data.path).resolve()
    return Path("runs") / (name.stem if name.suffix else name.name)


def _save_fig(fig, path: Path) -> None:
    fig.savefig(path, dpi=110)


def train(cfg: RunConfig | None = None, progress: bool = True, resume: str | Path | None = None) -> TrainResult:
    """Run the configured training and write its run directory; returns where, and the figures.

    Checkpoints come at each epoch's end and as `cfg.train.ckpt_every` says. `resume`: a run directory to go on
    from, with its own config (give no `cfg`, or the same one)."""
    t_start = time.perf_counter()
    out: Path | None = None
    if resume is not None:
        cfg, out = resume_config(resume, cfg)
    if cfg is None:
        raise UserError("train: give a RunConfig, or a run directory to resume")
    fresh = out is None
    tc = cfg.train
    if not cfg.data.path:
        raise UserError("no data path given")
    if (tc.epochs or 0) < 0 or tc.freeze_epochs < 0:
        raise UserError("--epochs and --freeze-epochs must be >= 0")
    if isinstance(tc.lr, str) and tc.lr != "auto":
        raise UserError(f"--lr {tc.lr}: give a number or 'auto'")
    if isinstance(tc.lr, (int, float)) and not 0 < tc.lr < math.inf:  # torch's "Invalid learning rate", after the
        raise UserError(f"--lr {tc.lr}: give a number above 0 (e.g. 2e-3) or 'auto'")  # data, left a failed run
    if not 0 <= tc.label_smoothing < 1:
        raise UserError(f"--label-smoothing {tc.label_smoothing}: give a number from 0 (off) to below 1")
    if tc.budget is not None and not 0 < tc.budget < math.inf:
        raise UserError(f"--budget {tc.budget}: give the seconds the auto recipe may take, above 0")
    if tc.recipe not in JOB_RECIPES:
        raise UserError(f"--recipe {tc.recipe}: choose {', '.join(JOB_RECIPES)}")
    if tc.selection not in ("cv", "valid"):
        raise UserError(f"--selection {tc.selection}: choose cv or valid")
    get_schedule(tc.schedule)  # a bad name fails before the data loads
    check_pretrained(cfg.model.arch, cfg.model.pretrained, cfg.model.weights)  # so do weights that cannot be had
    if tc.mixup < 0 or tc.cutmix < 0:
        raise UserError("--mixup and --cutmix take an alpha >= 0 (0: off)")
    if tc.balance in ("weights", "sampler") and cfg.data.task != "classify":  # before the data loads, not after
        raise UserError(f"--balance {tc.balance}: for single-label classes only (this is --task {cfg.data.task})")
    if tc.balance == "sampler" and not cfg.data.csv and is_shard_dir(cfg.data.path):
        raise UserError("--balance sampler draws rows by index, which streamed shards do not have; use "
                        "--balance weights")
    if cfg.data.task != "classify" and tc.label_smoothing:  # recorded as used (config.json, the report) when it was not
        if tc.label_smoothing != TrainConfig.label_smoothing:
            warnings.warn(f"--label-smoothing {tc.label_smoothing}: it smooths class labels; "
                          f"{cfg.data.task.replace('_', '-')} targets train without it", stacklevel=2)
        cfg = replace(cfg, train=replace(tc, label_smoothing=0.0))
        tc = cfg.train
    given_out = cfg.out  # an --out that cannot be made is said before any download, plan or decoding
    notice = check_run_dir(given_out, "--out") if fresh and given_out else None
    dist.setup(tc.device)  # under torchrun: join the process group; rank 0 alone writes the run directory
    progress = progress and dist.is_main()
    from ..data.datasets import resolve_config  # a known data set's name -> its cached folder (downloaded first)

    cfg = resolve_config(cfg, progress)
    if fresh and not given_out:
        check_run_dir(cfg.out or default_out(cfg))
    seed_everything(cfg.data.seed)
    with early_lines() as early:  # printed before the run directory exists: into its train.log below
        if notice and dist.is_main():  # "--out X exists: this run goes to X-2" (never over X)
            print(notice, flush=True)
        t_plan = time.perf_counter()
        plan = _job_plan(cfg, out)  # the auto recipe's: priced and printed before any image is decoded
        phases = {"setup": t_plan - t_start, "plan": time.perf_counter() - t_plan}  # seconds, into metrics.json
        if plan and plan["kind"] == "scratch":
            cfg = scratch_config(cfg, plan["scratch"])
        size, crop = resolve_size(cfg, is_scratch(cfg))
        if plan and plan["kind"] != "scratch" and cfg.data.size is None:
            size = plan["sizes"][0]  # the probe's first size: the others are decoded when their turn comes
        t_data = time.perf_counter()
        try:
            data = load_data(replace(cfg, data=replace(cfg.data, size=size, crop_pct=crop)), progress)
        except BaseException:
            ahead.stop()
            raise
        # the images the data did not take are dropped; features the decoder computes of them go on while a probe
        # at its presize will take them (its first feature pass stops it), else it stops now
        ahead.release(data.presize if plan and plan["kind"] != "scratch" else None)
        phases["decode"] = time.perf_counter() - t_data  # listing, decoding, presizing and the near-duplicate check
        if fresh and dist.is_main():
            warn_unused_valid_pct(cfg, data)
    out = out or dist.agree(new_run_dir(cfg.out or default_out(cfg)) if dist.is_main() else None)
    ckpt_every = cfg.train.ckpt_every
    ck = Checkpointer(out, ckpt_every)
    split = split_fingerprint(data)
    begun = read_config(out) if not fresh else {}  # the resumed run's record, read once
    killed = begun.get("status") == "running"  # kill -9, the OOM killer: no clean stop
    if not fresh:
        check_same_split(out, begun.get("split"), data)
    if dist.is_main():
        if fresh:
            write_json(out / CONFIG_FILE, {**saved_config(cfg, out), "status": "running", "split": split,
                                           **({"plan": plan} if plan else {})})
        else:
            update_config(out, status="running")
        with open(out / "train.log", "a") as log:
            log.write(early.getvalue())
    try:  # from here a stop (a signal while the checkpoint loads, too) records its status
        if not fresh and not ck.load() and dist.is_main():  # killed before its first checkpoint: it starts over
            (out / "history.csv").unlink(missing_ok=True)
        if killed and ck.loaded and dist.is_main():
            _count_killed_session(out, ck.loaded.get("session"))
        with ck.catch_interrupts(), log_to(out / "train.log") if dist.is_main() else dist.silenced():
            print(f"{'resuming' if not fresh else 'training'} {out}: checkpoints at each epoch's end"
                  + (f" and every {ckpt_every} steps" if ckpt_every else " and every 5 minutes" if ckpt_every is None
                     else "") + f"; Ctrl-C stops cleanly, `imgclf train --resume {out}` goes on")
            if ck.last:
                print(f"resuming from the checkpoint at {ck.last}")
            return _run(cfg, data, out, ck, progress, t_start, plan, phases)
    except TrainingInterrupted:
        _stopped(out, ck, "interrupted", keep_best=True, t_start=t_start)
        raise
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside training: out at once
        _stopped(out, ck, "interrupted", keep_best=False, t_start=t_start)
        raise
    except NonFiniteLoss as e:
        _stopped(out, ck, f"failed: {e}", keep_best=True, t_start=t_start)
        raise
    except UserError as e:
        if fresh and ck.n_written == 0:  # a user error before training began: leave nothing behind
            if dist.is_main():
                shutil.rmtree(out, ignore_errors=True)
        else:
            _stopped(out, ck, f"failed: {e}", keep_best=False, t_start=t_start)
        raise
    except Exception as e:
        _stopped(out, ck, f"failed: {type(e).__name__}: {e}", keep_best=False, t_start=t_start)
        raise
    finally:
        ahead.stop()  # a decoder still computing features no pass took (the probe's pass stops it first)


def _job_plan(cfg: RunConfig, out: Path | None) -> dict[str, Any] | None:
    """The plan a fresh job makes (on rank 0, shared with the others), or the one a resumed run recorded."""
    if out is not None:
        return read_config(out).get("plan")
    plan = plan_job(cfg) if dist.is_main() else None
    return dist.agree(plan.to_dict() if plan else None)


def _run(cfg: RunConfig, data: ImageData, out: Path, ck: Checkpointer, progress: bool, t_start: float,
         plan: dict[str, Any] | None = None, phases: dict[str, float] | None = None) -> TrainResult:
    """The recipe, then the run directory's files: the part of `train` that a resume replays.

    `phases`: seconds the job spent before (setup, plan, decode); the fit's and the finish's are added, and
    metrics.json records them all (bench/hymenoptera.py prints the breakdown)."""
    phases = dict(phases or {})
    tc = cfg.train
    recipe, why = _pick_recipe(cfg, data)
    lr = recipe_lr(cfg, recipe)
    lr_auto = lr == "auto"
    learner_kwargs = dict(
        pretrained=cfg.model.pretrained, weights=cfg.model.weights, label_smoothing=tc.label_smoothing,
        seed=cfg.data.seed, loss=tc.loss, opt=tc.opt, lr=0.0 if lr_auto else lr, wd=tc.wd, wd_mode=tc.wd_mode,
        clip=tc.clip, drop_rate=cfg.model.drop_rate, device=tc.device, precision=tc.precision,
        channels_last=tc.channels_last, progress=progress, init=tc.init, accum=tc.accum, compile=tc.compile,
        valid_every=tc.valid_every or 1,
    )
    # --balance: data/samplers.py (auto: by ratio and recipe; random weights count as from scratch whatever the
    # recipe's name: `--recipe fine_tune --no-pretrained` trains every layer from random weights too)
    balance = balance_plan(data, tc.balance, "scratch" if random_weights(cfg) else recipe)
    learner_kwargs["balance"] = balance["method"]
    if balance["ratio"] is not None:
        print(f"classes: imbalance ratio {balance['ratio']:.2f} (largest/smallest in training); "
              f"balance {balance['method']} — {balance['why']}")
    selection = (None, None)  # logits the temperature is fitted on: the auto recipe's out-of-fold ones
    valid_preds = None  # the kept probe's validation logits from its cached features: no second pass
    t_fit = time.perf_counter()
    if recipe in ("fine_tune", "scratch"):
        planned = bool(plan and plan["kind"] == "scratch")
        if planned:  # the auto recipe's plan chose a from-scratch run: its reasons, in recipe.json too
            assert plan is not None
            why = "; ".join(plan["why"])
            if dist.is_main():
                write_json(out / "recipe.json", {
                    "recipe": "auto", "selection": tc.selection, "budget_seconds": plan["budget"], "plan": plan,
                    "candidates": plan["priced"], "chosen": f"scratch@{cfg.data.size}", "why": plan["why"]})
        if recipe == "fine_tune":
            learn, resolved, finder = _fine_tune_recipe(cfg, data, out, learner_kwargs, ck)
        else:  # planned under selection="cv": the last epoch, not the best on validation (one-cycle ends best)
            learn, resolved, finder = _scratch_recipe(cfg, data, out, learner_kwargs, ck,
                                                      keep_best=not (planned and tc.selection == "cv"))
        if why:
            resolved["why"] = [why]
            print(f"recipe: {recipe} — {why}")
    else:
        res = auto_fit(
            data, cfg.model.arch, budget=plan["budget"] if plan else tc.budget, recipe=tc.recipe,
            sizes=plan["sizes"] if plan else [cfg.data.size] if cfg.data.size else None,
            max_epochs=tc.max_epochs, base_lr=None if lr_auto else float(lr), selection=tc.selection,
            spent=time.perf_counter() - t_start,
            log_csv=out / "history.csv" if dist.is_main() else None,
            checkpointer=ck, check_balance=tc.balance == "auto",
            **{k: v for k, v in learner_kwargs.items() if k != "seed"}, seed=cfg.data.seed,
        )
        learn, finder = res.learner, res.lr_find
        ck.learner = learn
        if plan:
            res.report["plan"] = plan
        if dist.is_main():
            write_json(out / "recipe.json", res.report)
        resolved = {"recipe": res.report["chosen"], "why": res.report["why"], "lr": res.report.get("lr")}
        check = res.report.get("balance_check")
        if check and not check["kept"]:  # the probe's CV dropped auto's class weights: the record says so
            balance = {**balance, "method": "none", "why": f"{balance['why']}; then {check['why']}"}
        print(f"recipe: {res.report['chosen']} — " + "; ".join(res.report["why"]))
        if res.report["chosen"].startswith("probe"):  # they describe the probe, not a fine-tune that beat it
            selection = (getattr(res, "selection_logits", None), getattr(res, "selection_targets", None))
            valid_preds = res.valid_preds
            # every size's features (engine included) and probe, kept or not: the phases add up to the fit
            probed = [c for c in res.report["candidates"] if "feature_seconds" in c.get("detail", {})]
            if probed:
                phases["features"] = sum(c["detail"]["feature_seconds"] for c in probed)
                phases["probe"] = sum(c["seconds"] - c["detail"]["feature_seconds"] for c in probed)
    if not dist.is_main():  # under torchrun the other ranks are done: rank 0 scores and writes the run
        return TrainResult(out, dict(learn.last_validation), learn)
    if finder is not None:
        _save_fig(finder.plot(), out / "lr_find.png")
        resolved["lr_find"] = finder.suggestions
    fit_seconds = time.perf_counter() - t_fit
    t_finish = time.perf_counter()
    resolved["init"] = learn.init_report or {"method": "default"}
    if resolved["init"]["method"] == "lsuv":
        print(summarize_lsuv(resolved["init"]["layers"]))
    data = learn.data  # the auto recipe may have chosen another size
    resolved.update({**learn.resolved(), "loss": type(learn.loss_func).__name__})
    if data.task == "regression":
        resolved["target_mean"], resolved["target_std"] = data.target_stats
    resolved["balance"] = balance
    if data.task == "classify":  # + balanced accuracy, macro F1, the temperature and ECE (train/calibrate.py)
        final = evaluate_classes(learn, tc.calibrate, *selection, seed=cfg.data.seed, preds=valid_preds)
        resolved["calibration"] = final["calibration"]
        print(f"calibration: {final['calibration']['why']}; ECE {final['calibration']['ece_before']:.4f} -> "
              f"{final['calibration']['ece_after']:.4f} ({final['calibration']['method']})")
    else:
        final = learn.choose_threshold() if data.task == "multi_label" else learn.validate()
    add_intervals(final, data.n_valid)  # 95% Wilson bounds of accuracy (multi-label: choose_threshold's bootstrap)
    learn.export(out, force=True)  # the run's own folder; with train_content.json, which evaluate warns on
    content = learn.exported_content
    begun = read_config(out)  # its plan and split stay
    begun.pop("last_checkpoint", None)  # checkpoints are removed once the run is done
    write_json(out / CONFIG_FILE, {**begun, **saved_config(cfg, out), "status": "done", "resolved": resolved})
    if learn.recorder.losses:  # batches were trained; a probe alone (L-BFGS on features) has no curve to draw
        _save_fig(learn.recorder.plot_loss(), out / "loss.png")
    phases.update(fit=fit_seconds, finish=time.perf_counter() - t_finish)  # finish: final figures, export, files
    metrics = {
        **final, "fit_seconds": fit_seconds, "total_seconds": time.perf_counter() - t_start, "phases": phases,
        # a resumed run: the seconds of the sessions stopped before this one (Ctrl-C, errors; not kill -9)
        **({"earlier_sessions_seconds": begun["earlier_seconds"]} if begun.get("earlier_seconds") else {}),
        "n_train": data.n_train, "n_valid": data.n_valid, "n_classes": len(data.classes),
        "counts": data.counts(),  # images per class and split, as trained: the report reads them here
        "kept": resolved.get("kept") or resolved.get("recipe"),
        "skipped_files": [{"path": str(p), "reason": r} for p, r in data.skipped],
        "unused_entries": data.unused.to_dict(),  # entries under DATA not used as images, by kind
        # near duplicates across the split (data/dedup.py): moved to train when we drew the split
        "near_duplicates_moved": near.to_dict() if (near := getattr(data, "near_duplicates", None)) else None,
        "train_content": content,
    }
    write_json(out / "metrics.json", metrics)
    (out / CHECKPOINT_FILE).unlink(missing_ok=True)  # a done run is not resumed: its weights are the model's
    print(f"checkpoints: {ck.n_written} written in {ck.seconds:.1f}s (removed: the run is done)" if ck.n_written
          else "checkpoints: none was due before the run was done")
    return TrainResult(out, metrics, learn)


def saved_config(cfg: RunConfig, out: Path) -> dict[str, Any]:
    """config.json's settings: the config with paths made absolute (interpret/report and a resume find the data
    from anywhere), where the run is and the imgclf that wrote it."""
    from .. import __version__

    saved = cfg.to_dict()
    saved["data"]["path"] = str(Path(cfg.data.path).resolve())
    if cfg.data.csv:
        saved["data"]["csv"] = str(Path(cfg.data.csv).resolve())
    return {**saved, "out": str(out), "imgclf_version": __version__}


def split_fingerprint(data: Any, anchored: bool = True) -> dict[str, Any] | None:
    """The files of each split, as counts and one digest of their sorted paths (no file is read): a resume checks
    that its data still splits the same way (None for streamed shards, split as written).

    The paths are taken relative to the folder all of them sit in (`anchored`), so `imgclf train gray` and its
    resume, which reads config.json's absolute path, give one digest (the digest of the paths as given refused
    every resume of a run started with a relative path). `anchored=False`: that older digest, which runs recorded
    before this one was used still match."""
    import hashlib

    if not hasattr(data, "train_paths"):
        return None
    every = [os.path.abspath(p) for p in (*data.train_paths, *data.valid_paths)]
    top = os.path.commonpath(every) if every else ""

    def digest(paths: list) -> str:
        names = sorted(os.path.relpath(os.path.abspath(p), top) if anchored else str(p) for p in paths)
        # surrogateescape: a name that is not UTF-8 (b"caf\xe9.jpg", as old Windows zips write) hashes as its bytes
        # on disk; UTF-8 names give the bytes they always did, so recorded digests still match
        return hashlib.sha1("\n".join(names).encode("utf-8", "surrogateescape")).hexdigest()

    out: dict[str, Any] = {name: {"n": len(paths), "sha1": digest(paths)}
                           for name, paths in (("train", data.train_paths), ("valid", data.valid_paths))}
    if anchored:
        out["paths"] = "relative to the folder they share"
    return out


def check_same_split(run: Path, saved: dict[str, Any] | None, data: Any) -> None:
    """A resume on data that changed since the run began (files added, removed or renamed) would draw another split:
    validation could hold images the first session trained on (`saved`: the run's recorded split). Refused, with
    the counts; runs from before the record are not checked, and runs recorded with the older digest are checked
    against it."""
    split = split_fingerprint(data, anchored=bool(saved and "paths" in saved))
    if not saved or not split or saved == split:
        return
    counts = ", ".join(f"{k} {saved[k]['n']} -> {split[k]['n']}" for k in ("train", "valid"))
    raise UserError(f"{run}: its data changed since the run began ({counts} images, or other files): a resume "
                    "would split it differently and could score images the run trained on; start a new run")


def resume_config(run: str | Path, cfg: RunConfig | None = None) -> tuple[RunConfig, Path]:
    """(config, run directory) of a run to resume, from its config.json. A resume takes the
    whole config from there: a `cfg` given as well must train the same way (data paths aside)."""
    run = Path(run)
    check_resumable(run)
    path = run / CONFIG_FILE
    saved = read_json(path)
    if isinstance(saved, dict) and "distill" in saved:
        raise UserError(f"{run}: a distillation run; --resume continues runs of `imgclf train`")
    if not isinstance(saved, dict) or not all(isinstance(saved.get(k), dict) for k in ("data", "model", "train")):
        raise UserError(f"{run}: not an imgclf run (no data, model and train settings in its {CONFIG_FILE})")
    check_version(saved.get("imgclf_version"), path)
    status = saved.get("status", "done")  # runs from before statuses were written are finished ones
    if status == "done":
        model = run / "model.safetensors"
        raise UserError(f"{run}: this run is done, nothing to resume"
                        + (f" (its model: {model})" if model.is_file() else ""))
    resumed = RunConfig.from_dict(saved)
    resumed.out = str(run)
    if cfg is not None:
        diff = [f"{part}.{k}" for part in ("model", "train") for k, v in vars(getattr(cfg, part)).items()
                if getattr(getattr(resumed, part), k) != v]
        if diff:
            raise UserError(f"{run}: a resume trains as the run began; these settings differ: {', '.join(diff)}")
    return resumed, run


def _count_killed_session(out: Path, session: dict[str, Any] | None) -> None:
    """A session that was killed (no `_stopped` to count its seconds): its time up to its last checkpoint joins
    config.json's `earlier_seconds`, once (`counted_session` names it: a second kill before a new checkpoint would
    find the same one)."""
    conf = read_config(out)
    if not session or conf.get("counted_session") == session["began"]:
        return
    update_config(out, earlier_seconds=round(conf.get("earlier_seconds", 0.0) + session["seconds"], 1),
                  counted_session=session["began"])


def _stopped(out: Path, ck: Checkpointer, status: str, keep_best: bool, t_start: float) -> None:
    """A run that stops before its end: the best weights so far into the run directory (when an epoch
    finished and `keep_best`), the status into config.json, and how to go on. Rank 0's job under torchrun.
    This session's seconds (since `t_start`) are added to config.json's `earlier_seconds`: a resumed run's time
    counts them (a killed session cannot say its own)."""
    if not dist.is_main():
        return
    learn = ck.learner
    lines = []
    if keep_best and learn is not None and learn.recorder.history and hasattr(learn, "export"):
        learn.export(out, force=True)  # the fit's end gave the model its best epoch's weights back (SaveBestModel)
        lines.append(f"kept the best epoch so far in {out / 'model.safetensors'}")
    earlier = read_config(out).get("earlier_seconds", 0.0)
    update_config(out, status=status, last_checkpoint=ck.last,
                  earlier_seconds=round(earlier + time.perf_counter() - t_start, 1))
    if status == "interrupted":
        where = f"the checkpoint at {ck.last}" if ck.last else "the start (no checkpoint was written yet)"
        lines.append(f"interrupted; `imgclf train --resume {out}` goes on from {where}")
    if status.startswith("failed"):  # the console has it from the CLI's error line
        with open(out / "train.log", "a") as log:
            log.write(status + "\n")
    with log_to(out / "train.log", sys.stderr):
        for line in lines:
            print(line)


def is_scratch(cfg: RunConfig) -> bool:
    """Whether the job trains from random weights: asked for, or no weights to start from."""
    asked = cfg.train.recipe
    if asked in ("fine_tune", "scratch"):
        return asked == "scratch"
    return random_weights(cfg)


def random_weights(cfg: RunConfig) -> bool:
    """Whether the model starts from random weights: no weights file, and no pretrained ones asked for or to be
    had (our own archs have none)."""
    return cfg.model.weights is None and (not cfg.model.pretrained or cfg.model.arch in own_models())


def _pick_recipe(cfg: RunConfig, data: ImageData) -> tuple[str, str | None]:
    """The recipe to run and, when it is not the one asked for, why."""
    tc, asked = cfg.train, cfg.train.recipe
    if asked in ("fine_tune", "scratch"):
        return asked, None
    if getattr(data, "streaming", False) and not is_scratch(cfg):
        what = ("the auto recipe's search decodes the training set at several sizes" if asked == "auto" else
                "the probe holds every training image's features from a decoded training set")
        return "fine_tune", (f"streamed shards: {what}; fine_tune streams it once per epoch, its head first on "
                             "streamed features (--recipe scratch for random weights)")
    if is_scratch(cfg):
        return "scratch", (f"{cfg.model.arch} starts from random weights: the whole model trains from the first "
                           f"step ({recipe_epochs(cfg, 'scratch')} epochs of {tc.schedule}, --epochs to change)")
    if data.task != "classify":  # the probe is a softmax classifier: tags and numbers take the fixed recipe
        return "fine_tune", f"--task {data.task}: the {asked} recipe's probe fits single-label classes only"
    if tc.mixup or tc.cutmix or tc.schedule != "one_cycle":
        return "fine_tune", "--mixup/--cutmix/--schedule act on whole-model training: the fine_tune recipe"
    return asked, None


def _mix_cbs(cfg: RunConfig) -> list[Callback]:
    tc = cfg.train
    return ([MixUp(tc.mixup, seed=cfg.data.seed)] if tc.mixup else []) + (
        [CutMix(tc.cutmix, seed=cfg.data.seed)] if tc.cutmix else [])


def _learner_and_lr(cfg: RunConfig, data: ImageData, out: Path, learner_kwargs: dict[str, Any], recipe: str,
                    ck: Checkpointer):
    """The learner of a fixed recipe, its peak rate (lr_find's valley for `--lr auto`: the head's sweep on cached
    features when fine-tuning, the whole model's from scratch) and the finder."""
    learn = vision_learner(data, cfg.model.arch, cbs=[CSVLogger(out / "history.csv")], **learner_kwargs)
    ck.attach(learn)
    finder, lr = None, recipe_lr(cfg, recipe)
    if isinstance(lr, str):
        finder = learn.lr_find(cached=recipe == "fine_tune")
        lr = finder.valley
        print(f"lr_find: valley {lr:.2e} (minimum/10 {finder.minimum:.2e}, steep {finder.steep:.2e})")
    return learn, float(lr), finder


def _fit_cbs(cfg: RunConfig, learn: VisionLearner) -> tuple[SaveBestModel, list[Callback]]:
    best = SaveBestModel("valid_loss", model=learn.model, across_fits=True)
    stop = [EarlyStopping("valid_loss", patience=cfg.train.patience)] if cfg.train.patience else []
    start = progressive_start(cfg.train.progressive, is_scratch(cfg))  # progressive resizing: scratch.py
    grow = [ProgressiveResize(start)] if start else []
    return best, [best, *stop, *_mix_cbs(cfg), *grow]


def _fine_tune_recipe(cfg: RunConfig, data: ImageData, out: Path, learner_kwargs: dict[str, Any], ck: Checkpointer):
    """The foundation's fixed recipe: head on cached features, then the whole model, best epoch kept."""
    tc = cfg.train
    learn, lr, finder = _learner_and_lr(cfg, data, out, learner_kwargs, "fine_tune", ck)
    best, fit_cbs = _fit_cbs(cfg, learn)
    print(f"fine_tune: {tc.freeze_epochs} head epoch(s) on cached features, then {recipe_epochs(cfg, 'fine_tune')} "
          f"epoch(s) of the whole model x {len(learn.train_dl)} steps, peak lr {lr:.3g}")
    learn.fine_tune(recipe_epochs(cfg, "fine_tune"), tc.freeze_epochs, base_lr=lr, cbs=fit_cbs, schedule=tc.schedule)
    resolved = {"recipe": "fine_tune", "lr": lr, "kept": best.kept}
    return learn, resolved, finder


def _scratch_recipe(cfg: RunConfig, data: ImageData, out: Path, learner_kwargs: dict[str, Any], ck: Checkpointer,
                    keep_best: bool = True):
    """Random weights: the whole model from the first step, `--epochs` of `--schedule`, best epoch kept
    (`keep_best=False`: the last epoch, where nothing may be chosen on the validation split).
    No frozen phase (a random body's features are not worth a head) and one rate for every layer group."""
    tc = cfg.train
    learn, lr, finder = _learner_and_lr(cfg, data, out, learner_kwargs, "scratch", ck)
    best, fit_cbs = _fit_cbs(cfg, learn)
    if not keep_best:
        fit_cbs = [cb for cb in fit_cbs if cb is not best]
    learn.phase = "scratch"
    epochs = max(1, recipe_epochs(cfg, "scratch"))
    if not keep_best and tc.valid_every is None:  # nothing is chosen on validation: it only shows progress
        learn.valid_every = math.ceil(epochs / SCRATCH_VALIDATIONS)
    print(f"scratch: {epochs} epoch(s) x {len(learn.train_dl)} steps of {tc.schedule}, peak lr {lr:.3g}")
    learn.fit_schedule(epochs, lr, tc.schedule, cbs=fit_cbs)
    kept = best.kept if keep_best else f"the last epoch ({epochs}, scratch)"
    resolved = {"recipe": "scratch", "lr": lr, "kept": kept}
    return learn, resolved, finder
