"""Typed settings for a training run. The defaults are the recipe; `config.json` records them resolved."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

# models.recommended_size(ModelConfig.arch), known without importing timm: `imgclf train` decodes ahead at it
# while torch loads (data/ahead.py), and `ImageData` presizes for it unless told a size, as the CLI does;
# tests/test_ahead.py keeps the two equal
DEFAULT_SIZE = 256


def cache_home() -> Path:
    """Where imgclf keeps what it fetches or builds once and reuses across runs (downloaded weights, exported
    feature graphs and their records, measured rates, data sets unless `$IMGCLF_DATA` says otherwise):
    `$IMGCLF_CACHE`, default ~/.cache/imgclf. Read when asked, so a process that sets it later is obeyed."""
    return Path(os.environ.get("IMGCLF_CACHE") or Path.home() / ".cache/imgclf").expanduser()


@dataclass
class DataConfig:
    path: str = ""
    valid: str | None = None  # name of an existing validation folder; None = look for valid/val, else split
    valid_pct: float = 0.2
    # the random split: stratified (by class, byte-identical copies on one side) | random (plain seeded: the split
    # of runs written before 2026-11-30, which their config.json lacks the key for: see from_dict)
    split: str = "stratified"
    seed: int = 42
    label_re: str | None = None  # regex on the file name whose first group is the label
    csv: str | None = None  # CSV with file,label[,is_valid]
    label_col: str | None = None  # the CSV's label column (default: label/class/target/... or the second)
    task: str = "classify"  # classify | multi_label (space-separated tags, or an image in several folders) | regression
    # None = the backbone's recommended size (256 for the default: see models.recommended_size); from scratch,
    # the images' own size when smaller (upsampling gains a random net nothing)
    size: int | None = None
    crop_pct: float | None = None  # validation view: the center crop_pct of the presized square (1 = whole image);
    # None = 0.875 (ImageNet's), or 1 when a from-scratch model trains at the images' own size (job.resolve_size)
    bs: int = 64
    augment: str = "default"  # a preset (none, light, default, strong) and/or name=strength overrides: data/augment.py
    workers: int = 0  # decoding threads; 0 = one per CPU core


@dataclass
class ModelConfig:
    arch: str = "efficientnet_lite0"
    weights: str | None = None  # local file or URL; None = the arch's own pretrained weights
    pretrained: bool = True
    drop_rate: float | None = None  # dropout before the classifier; None = the arch's own (simple_cnn 0.25, others 0)


@dataclass
class TrainConfig:
    recipe: str = "auto"  # auto | probe | fine_tune | scratch (see train/recipes.py and train/job.py)
    budget: float | None = None  # seconds for the auto recipe; None = sized for the data
    max_epochs: int = 3  # the auto recipe's cap on fine-tune epochs (early stopping may end it sooner)
    # what the auto recipe chooses on: cv (k-fold CV on training features, an inner holdout: the validation split is
    # scored once, at the end) | valid (the validation split itself: the behaviour before, for comparisons)
    selection: str = "cv"
    epochs: int | None = None  # None = the recipe's: fine_tune 1 unfrozen epoch, scratch 17 (see job.EPOCHS)
    freeze_epochs: int = 8  # fine_tune recipe: head-only epochs (on cached features: well under a second each)
    lr: float | str | None = None  # a number, "auto" (lr_find's valley), or None: the recipe's (job.LRS)
    schedule: str = "one_cycle"  # one_cycle | cosine (warmup + cosine) | step | constant: train/schedule.py
    opt: str = "adamw"
    wd: float = 0.01
    wd_mode: str | None = None  # decoupled | l2; None = the optimizer's own (adamw decoupled, the others L2)
    mixup: float = 0.0  # MixUp's alpha; 0 = off (0.2-0.4 typical)
    cutmix: float = 0.0  # CutMix's alpha; 0 = off (1.0 typical)
    label_smoothing: float = 0.1  # classification only
    # progressive resizing: training batches start at this fraction of the size and grow to full size by half-way
    # (0 = off; train/callbacks/resize.py); None = the recipe's (from scratch: train/scratch.py; fine-tuning: off)
    progressive: float | None = None
    loss: str = "auto"  # regression: mse (auto) or l1; classes and tags get cross-entropy / binary cross-entropy
    clip: float | None = 1.0
    patience: int | None = None  # early stopping on valid_loss; None = off
    # validate every Nth epoch and the last; None = every epoch, except a planned from-scratch run that keeps its
    # last epoch (nothing is chosen on validation there): SCRATCH_VALIDATIONS times (train/scratch.py)
    valid_every: int | None = None
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    channels_last: bool = True
    compile: bool = False  # torch.compile the training forward: pays on long runs (learner._forward_module)
    init: str = "default"  # default (the arch's own) | lsuv (from-scratch models only: see models/init.py)
    accum: int = 1  # gradient accumulation: the optimizer steps every `accum` batches (an effective batch of bs*accum)
    calibrate: str = "auto"  # auto | on | off: temperature scaling (train/calibrate.py); auto keeps it if NLL drops
    balance: str = "auto"  # auto|none|weights|sampler: class imbalance (data/samplers.py); auto: ratio and recipe
    # a checkpoint every N training steps besides each epoch's end; None = every 5 minutes of training, 0 = epoch
    # ends only (train/checkpoint.py)
    ckpt_every: int | None = None


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        def build(kind, values):
            names = {f.name for f in fields(kind)}
            return kind(**{k: v for k, v in (values or {}).items() if k in names})

        data = dict(d.get("data") or {})
        if data and "split" not in data:  # a run written before splits were stratified: rebuild its own split
            data["split"] = "random"
        return cls(
            data=build(DataConfig, data),
            model=build(ModelConfig, d.get("model")),
            train=build(TrainConfig, d.get("train")),
            out=d.get("out"),
        )


# `imgclf distill`'s defaults (train/distill.py says why); here, not there, so that `imgclf distill --help`
# imports no torch
DISTILL_TEMPERATURE, DISTILL_ALPHA = 4.0, 0.9
