"""`vision_learner`: a pretrained backbone with a new head on `ImageData`, and the fine-tuning recipe.

`fine_tune` follows fastai's recipe (train the head with the body frozen, then everything with
discriminative rates) with one change measured to pay on CPU: the frozen phase trains the head on
cached pooled features of each image and its mirror, so it costs one forward pass, not one per epoch.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import ahead
from ..data.core import ImageData
from ..data.dedup import write_training_content
from ..data.loaders import TensorLoader
from ..data.samplers import BalancedSampler, class_counts, class_weights
from ..errors import UserError
from ..models import ModelMeta, create_model, layer_groups, lsuv_init
from ..rundir import META_FILE, MODEL_FILE, save_model
from . import distributed as dist
from .callbacks import Callback, CSVLogger, CutMix, MixUp
from .features import PARITY_IMAGES, FeatureCache, extract_features, glue, pick_engine
from .learner import Learner, pick_device
from .metrics import (
    METRIC_TASK,
    METRICS,
    TASK_METRICS,
    accuracy_multi,
    best_threshold,
    cross_fitted_decisions,
    fbeta_multi,
    metric_list,
    multi_label_intervals,
    per_tag,
    scaled,
)


class VisionLearner(Learner):
    """A `Learner` that knows its `ImageData` and `ModelMeta`: it can cache features, fine-tune and export."""

    init_report: dict[str, Any] | None = None  # what `vision_learner(init=...)` did to the weights, for config.json
    threshold: float = 0.5  # multi-label: a tag is predicted above this sigmoid (`choose_threshold` sets it)
    temperature: float = 1.0  # classes: probabilities are softmax(logits / T) (train/calibrate.py), in model.json
    balance: str = "none"  # none | weights | sampler (data/samplers.py)
    exported_content: dict[str, Any] | None = None  # export()'s train_content.json record (images, seconds)
    class_weights: torch.Tensor | None = None  # inverse-frequency weights when balancing (the probe uses them too)

    def __init__(self, data: ImageData, model: nn.Module, meta: ModelMeta, seed: int = 42,
                 progress: bool = True, channels_last: bool = True, device: str | torch.device | None = "auto",
                 **kwargs: Any):
        check_data(data, "VisionLearner")
        dev = pick_device(device)
        self.data, self.meta, self.seed, self.progress = data, meta, seed, progress
        train_dl = data.loader("train", meta.mean, meta.std, device=dev, seed=seed, channels_last=channels_last)
        valid_dl = data.loader("valid", meta.mean, meta.std, device=dev, channels_last=channels_last)
        super().__init__(model, train_dl, valid_dl, groups=layer_groups(model), device=dev, progress=progress,
                         channels_last=channels_last, **kwargs)
        self.features = FeatureCache()
        self.phase = "unfrozen"
        # Keras's rule for fine-tuning a pretrained body: batch-norm in inference mode. The head was fitted on
        # features computed with the running statistics; batch statistics of images unlike ImageNet shift every
        # feature at the first unfrozen step, and a good head fell to chance (Fashion-MNIST at 64 px: probe 0.86,
        # one unfrozen epoch 0.48 with batch statistics, 0.86 with running ones)
        self.bn_eval = meta.pretrained != "none"

    def set_balance(self, balance: str) -> None:
        """How training treats uneven classes (data/samplers.py): "none"; "weights" (the training loss weighs
        each class by its inverse frequency; the probe uses the weights too); "sampler" (batches draw each class
        equally often). Changed as one: the auto recipe drops weights that do not pay (recipes.keep_class_weights)."""
        cw = class_weights(class_counts(self.data.train_y, len(self.data.classes))) if balance != "none" else None
        self.balance, self.class_weights = balance, cw
        if isinstance(self.loss_func, nn.CrossEntropyLoss):  # validation keeps the plain loss: figures compare
            self.loss_func.weight = cw.to(self.device) if balance == "weights" else None
        self.train_dl.sampler = BalancedSampler(self.data.train_y) if balance == "sampler" else None

    def resolved(self) -> dict[str, Any]:
        """What this learner trained with, as config.json's "resolved" records it (the auto recipe may have chosen
        another size than was asked)."""
        d = self.data
        return {"device": str(self.device), "precision": str(self.dtype or "fp32").removeprefix("torch."),
                "size": d.size, "presize": d.presize, "crop_pct": d.crop_pct, "classes": d.classes,
                "augment": d.augment.describe(), "task": d.task}

    # ------------------------------------------------------------------ cached features
    def cached_features(self, split: str, view: str = "center") -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled body features of `split` seen through `view` ("center" or "flip"), computed once. Under
        torchrun each rank computes its strided share and the shares are gathered: every rank holds them all.

        The body runs on `features.pick_engine`'s choice (onnxruntime fp32 on a CPU when installed and its features
        match eager fp32's on the first images; `self.features.engine_name = "eager"` forces eager). Asked for the
        training split's mirrored views, the center views come from the same pass over its batches; asked for the
        center views first, they come alone (the auto recipe's probe without mirrors: probe.PROBE_MIRRORS off)."""
        pair = split == "train" and view == "flip"

        def make():
            dl = self.data.loader(split, self.meta.mean, self.meta.std, view="center" if pair else view,
                                  device=self.device, channels_last=self.model_channels_last)
            engine = self.features.get_engine(self.model, lambda: pick_engine(
                self.model, self._parity_batch(split), self.dtype, self.features.engine_name))
            dl.channels_last = dl.channels_last and engine.channels_last  # onnxruntime reads NCHW: no layout copy
            if engine.batch and dl.device.type == "cpu":  # a few calls' worth at a time (features.PASS_PIXELS)
                dl.bs = engine.batch
            n, world = len(dl.images), dist.world_size()
            views = 2 if pair else 1
            # what the CLI's decoder computed while the job started (data/ahead.py), with this very graph
            # (and the decoder stopped, whatever this engine: the pass wants every core). Streamed shards hold no
            # files and no indexable images: nothing to take
            paths = getattr(self.data, f"{split}_paths", None)
            early = ahead.take_features(paths or [], engine.graph if world == 1 and paths is not None
                                        and isinstance(dl.images, torch.Tensor) else None)
            if early and engine.primed is not None:  # the engine's check just ran the split's first images: the
                for i in range(len(engine.primed[0])):  # pass starts with them and reuses those features instead
                    early.pop(i, None)
            self.features.ahead_rows += len(early) * views
            if early:  # the pass runs on the rest
                ys = dl.targets
                rest = torch.tensor([i for i in range(n) if i not in early], dtype=torch.long)
                dl.images, dl.targets = dl.images[rest], dl.targets[rest]
            if world > 1:
                dl.shard(dist.rank(), world, bs=dl.bs)
            desc = f"features {split}/{'center+flip' if pair else view} [{engine.name}]"
            told = {"total": n * views, "initial": len(early) * views,
                    "start": f"{n * views} img ({len(early) * views} computed while starting)"} if early else {}
            batches = _progress(dl, desc, self.progress, views, **told)
            # closing: a Ctrl-C mid-pass ends the bar ("stopped at N img") before the CLI's "interrupted" line
            with glue(engine), closing(batches):
                out = None
                if len(dl.images):
                    out = extract_features(self.model, batches, self.dtype, self.device, engine=engine, flip=pair)
                else:  # every image's features came from the start: the bar's lines say so all the same
                    list(batches)
            if early:
                out = _with_early(out, early, rest, ys, pair, view)
            out = tuple(dist.gather_shards(t, n) for t in out) if world > 1 else out
            return {(split, "center"): out[:2], (split, "flip"): (out[2], out[1])} if pair else out

        return self.features.get((split, view), self.model, make)

    def _parity_batch(self, split: str) -> torch.Tensor:
        """The first images of `split` as the model sees them, for the feature engine's parity check: indexed from
        memory, or the first batch of a fresh loader when the data stream (tar shards hold no indexable images)."""
        dl = self.data.loader(split, self.meta.mean, self.meta.std, view="center", device=self.device,
                              channels_last=self.model_channels_last)
        if isinstance(dl.images, torch.Tensor):
            return dl.transform(dl.images[:PARITY_IMAGES])
        return next(iter(dl))[0][:PARITY_IMAGES]

    @property
    def model_channels_last(self) -> bool:
        return self.train_dl.channels_last

    def head_learner(self, log: bool = True) -> Learner:
        """A `Learner` over the head alone on cached features (image + mirror), sharing this one's head.

        Same loop, same loss, optimizer settings, history and logs: only the model and the data differ.
        `log=False` keeps its epochs out of this learner's history, CSV log and console (a trial).
        """
        x2, y2 = self.cached_features("train", "flip")  # first: the center views come from the same pass
        x1, y1 = self.cached_features("train", "center")
        xv, yv = self.cached_features("valid", "center")
        return self.feature_learner(torch.cat([x1, x2]), torch.cat([y1, y2]), xv, yv, self.model.get_classifier(),
                                    log)

    def fit_head_copy(self, x: torch.Tensor, y: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor,
                      init: dict[str, torch.Tensor], seed: int, epochs: int, lr: float) -> nn.Module:
        """A copy of the classifier started from `init`, fitted by the head phase's loop (`feature_learner`, this
        process alone) on rows `x`: the one-cycle probe head of a CV fold, of all training rows, or of the
        fine-tune trial's fit part."""
        head = copy.deepcopy(self.model.get_classifier())
        head.load_state_dict(init)
        torch.manual_seed(seed)  # dropout
        self.feature_learner(x, y, xv, yv, head, distributed=False).fit_one_cycle(epochs, lr)
        return head

    def feature_learner(self, x: torch.Tensor, y: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor,
                        head: nn.Module, log: bool = False, distributed: bool | None = None) -> Learner:
        """A `Learner` training `head` (behind this model's dropout) on feature rows `x` and scoring `xv`: the head
        phase's loop, loss, optimizer and balance, on any rows (`head_learner`'s, or a CV fold's).
        `distributed=False`: this process alone fits it, on every row (under torchrun each rank then fits the
        same; the probe's CV folds, which every rank holds whole)."""
        wrapped = nn.Sequential(nn.Dropout(getattr(self.model, "drop_rate", 0.0)), head)
        logs = [cb for cb in self.cbs if isinstance(cb, CSVLogger)] if log else []
        # small sets get smaller batches, so each head epoch still takes ~16 steps
        bs = max(8, min(self.data.bs, len(x) // 16))
        feats = TensorLoader(x, y, bs, shuffle=True, seed=self.seed)
        if self.balance == "sampler":
            feats.sampler = BalancedSampler(feats.y)
        learn = Learner(
            wrapped, feats,
            TensorLoader(xv, yv, 1024), loss_func=self.loss_func, valid_loss_func=self.valid_loss_func,
            metrics=[fn for _, fn in self.metrics],
            opt=self.opt_name, lr=self.lr, wd=self.wd, wd_mode=self.wd_mode, device=self.device, precision="fp32",
            channels_last=False, clip=self.clip, progress=self.progress and log,
            recorder=self.recorder if log else None, cbs=logs, distributed=distributed,
        )
        learn.phase = "frozen"
        learn.checkpointer = self.checkpointer if log else None  # its fits are the job's: checkpointed alike
        return learn

    def fit_head(self, n_epoch: int, lr: float | None = None, cbs: Sequence[Callback] = ()) -> None:
        """One-cycle on the head alone, on cached features: the frozen phase in seconds. Batch mixing (MixUp,
        CutMix) is left to the phases that see images: blending pooled features is another method."""
        cbs = [cb for cb in cbs if not isinstance(cb, (MixUp, CutMix))]
        if self.checkpointer and self.checkpointer.skip_done_fit():
            return  # a resumed job past this fit: no features to compute
        self.head_learner().fit_one_cycle(n_epoch, self.lr if lr is None else lr, cbs=cbs)

    def lr_find(self, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100, cached: bool | None = None):
        """The head's rate sweep on cached features (seconds); `cached=False` sweeps the whole model. By default
        (None) the head's for pretrained weights, the whole model's for random ones: the features of a random
        body say nothing about the rate that trains it (a from-scratch learner's sweep gave 1.6e-3 on its head,
        7.6e-4 whole)."""
        if cached is None:
            cached = self.meta.pretrained != "none"
        if cached:
            return self.head_learner().lr_find(start_lr, end_lr, num_it)
        return super().lr_find(start_lr, end_lr, num_it)

    # ------------------------------------------------------------------ recipes
    def fine_tune(self, epochs: int, freeze_epochs: int = 1, base_lr: float | None = None,
                  lr_mult: float | None = None, cached: bool = True, cbs: Sequence[Callback] = (),
                  schedule: str = "one_cycle", resume: str | Path | None = None) -> None:
        """Head first (body frozen), then everything with rates spread from base_lr/2/lr_mult to base_lr/2,
        following `schedule` (one-cycle by default; see `schedule.SCHEDULES`).

        `lr_mult` defaults to 100 for pretrained weights (early layers change least) and to 1 for a
        randomly initialised body, which has nothing to preserve and everything to learn.
        `resume`: a run directory whose checkpoint the same call goes on from (see `Learner.resume_from`).
        """
        if resume is not None:
            self.resume_from(resume)
        base_lr = self.lr if base_lr is None else base_lr
        if lr_mult is None:
            lr_mult = 1.0 if self.meta.pretrained == "none" else 100.0
        if freeze_epochs:
            if cached:
                self.fit_head(freeze_epochs, base_lr, cbs=cbs)
            else:
                self.freeze()
                self.fit_one_cycle(freeze_epochs, base_lr, cbs=cbs)
        if epochs:
            self.unfreeze()
            base_lr /= 2
            self.fit_schedule(epochs, slice(base_lr / lr_mult, base_lr), schedule, cbs=cbs)

    def score(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """`Learner.score`, with a multi-label model's named figures at its own `threshold` (0.5 until
        `choose_threshold`, or the run's when it came from one: `prune` scored a run tuned to 0.35 at 0.5)."""
        out = super().score(logits, targets)
        if self.data.task == "multi_label" and self.threshold != 0.5:
            at = {"accuracy_multi": accuracy_multi, "f1_multi": lambda x, y, t: fbeta_multi(x, y, 1.0, t)}
            out.update({k: fn(logits, targets, self.threshold) for k, fn in at.items() if k in out})
        return out

    def choose_threshold(self, beta: float = 1.0) -> dict[str, float]:
        """Multi-label: set `threshold` to the one maximising F-beta on validation; returns the validation figures
        (valid_loss, accuracy_multi, f1_multi, threshold) and their bootstrap bounds over images.

        The figures are cross-fitted (`metrics.cross_fitted_decisions`: each half of validation at the threshold
        chosen on the other half), not those at the threshold chosen on all of them, which were chosen on the very
        images they score (`*_at_chosen`, beside them)."""
        if self.data.task != "multi_label":
            raise UserError("choose_threshold is for multi-label data (--task multi_label)")
        logits, targets = self.get_preds()
        self.threshold, _ = best_threshold(logits, targets, beta)
        chosen = {"accuracy_multi_at_chosen": accuracy_multi(logits, targets, self.threshold),
                  "f1_multi_at_chosen": fbeta_multi(logits, targets, 1.0, self.threshold)}
        fair = cross_fitted_decisions(logits, targets, beta)
        scored, at = (fair, 0.5) if fair is not None else (logits, self.threshold)
        return {**self.score(logits, targets), "accuracy_multi": accuracy_multi(scored, targets, at),
                "f1_multi": fbeta_multi(scored, targets, 1.0, at), "threshold": self.threshold,
                "threshold_figures": "cross-fitted: each half of validation at the threshold chosen on the other half"
                if fair is not None else "at the threshold chosen on these images (under 4 of them)", **chosen,
                "per_tag": per_tag(scored, targets, self.data.classes, at),
                **(multi_label_intervals(scored, targets, at) if len(targets) else {})}

    # ------------------------------------------------------------------ export
    def model_meta(self) -> dict[str, Any]:
        meta = {
            **self.meta.to_dict(), "classes": self.data.classes, "size": self.data.size,
            "presize": self.data.presize, "crop_pct": self.data.crop_pct, "task": self.data.task,
        }
        if self.data.task == "multi_label":
            meta["threshold"] = self.threshold
        if self.data.task == "classify":
            meta["temperature"] = self.temperature
        if self.data.task == "regression":
            meta["target_mean"], meta["target_std"] = self.data.target_stats
        return meta

    def export(self, path: str | Path, force: bool = False) -> Path:
        """Write `model.safetensors` + `model.json` into `path` (created if needed), and `train_content.json` (the
        training images' content keys: `evaluate` warns when it scores them). A folder that already holds a model
        is refused unless `force` (as the CLI never overwrites a run): its metrics, report and config would go on
        describing the old one. What the content record cost is kept in `exported_content`."""
        path = Path(path)
        held = [n for n in (MODEL_FILE, META_FILE) if (path / n).is_file()]
        if held and not force:
            raise UserError(f"{path}: already holds a model ({', '.join(held)}); export to a new folder, or pass "
                            "force=True to replace it")
        save_model(path, self.model, self.model_meta())
        self.exported_content = write_training_content(path, self.data)
        return path


def _progress(dl, desc: str, enabled: bool, views: int = 1, **told: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The loader's batches under a bar that counts the images through the engine (`views` a batch image: its
    center and mirror from one pass), as the decode's bar does: `490 img in 2.2 s (223/s)`, not `4 batches`.
    `told`: the bar's total, initial count and first line, where some images' features were computed ahead."""
    from ..progress import bar

    told = {"total": dl.n_shard * views, **told}
    with bar(desc=desc, unit="img", enabled=enabled and dist.is_main(), **told) as b:
        for xb, yb in dl:
            yield xb, yb
            b.update(len(xb) * views)


def _with_early(out: tuple[torch.Tensor, ...] | None, early: dict[int, Any], rest: torch.Tensor, ys: torch.Tensor,
                pair: bool, view: str) -> tuple[torch.Tensor, ...]:
    """A pass's features over the `rest` of a split merged with those computed ahead (`early`: {row: (2, dim)
    center and mirror}), in the split's order: (features, targets) or, for `pair`, (center, targets, mirrors)."""
    rows = torch.tensor(sorted(early), dtype=torch.long)
    got = torch.from_numpy(np.stack([early[i] for i in sorted(early)]))
    dim = got.shape[-1]
    center, mirror = torch.empty(len(ys), dim), torch.empty(len(ys), dim)
    center[rows] = got[:, 1] if view == "flip" and not pair else got[:, 0]
    mirror[rows] = got[:, 1]
    if out is not None:
        center[rest] = out[0].to(center)
        if pair:
            mirror[rest] = out[2].to(mirror)
    return (center, ys, mirror) if pair else (center, ys)


def task_losses(data: ImageData, label_smoothing: float = 0.1, loss: str = "auto") -> tuple[nn.Module, nn.Module]:
    """(training loss, validation loss) for the data's task. Classes: cross-entropy, smoothed in training only
    (`VisionLearner.set_balance` weighs it by class; validation reports the plain figure); tags: binary
    cross-entropy on each tag; numbers: MSE, or L1 (`loss="l1"`, robust to outliers in the targets)."""
    if data.task == "classify":
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing), nn.CrossEntropyLoss()
    if data.task == "multi_label":
        return nn.BCEWithLogitsLoss(), nn.BCEWithLogitsLoss()
    if loss not in ("auto", "mse", "l1"):
        raise UserError(f"--loss {loss}: choose mse or l1 for regression")
    fn = nn.L1Loss() if loss == "l1" else nn.MSELoss()
    return fn, fn


def task_metrics(data: ImageData, names: str | Callable | Sequence[str | Callable] | None = None,
                 ) -> list[str | Callable]:
    """`names` (default: the data's task's own; one name or function is a list of one) checked against the task: a
    named metric of another task is a UserError now, not a shape error after the first epoch. Regression errors are
    reported in the targets' units."""
    names = TASK_METRICS[data.task] if names is None else metric_list(names)
    for n in names:
        if isinstance(n, str) and METRIC_TASK.get(n, data.task) != data.task:
            fits = ", ".join(m for m, t in METRIC_TASK.items() if t == data.task)
            raise UserError(f"metric {n} scores {METRIC_TASK[n].replace('_', '-')} data; this data's task is "
                            f"{data.task.replace('_', '-')}: choose {fits}")
    if data.task == "regression":
        return [scaled(METRICS[n], data.targets.std) if isinstance(n, str) and n in METRICS else n for n in names]
    return list(names)


def check_data(data: Any, where: str = "vision_learner") -> None:
    """`data` must be built data (`ImageData` or `ShardData`), not the folder it comes from: a path string failed
    with "'str' object has no attribute 'task'"."""
    if isinstance(data, (str, os.PathLike)):
        raise UserError(f"{where}: data is a path ({str(data)!r}); build the data first: "
                        f"data = ImageData.from_folder({str(data)!r}) (or from_csv, from_name_re), then pass data")
    if not all(hasattr(data, a) for a in ("task", "classes", "loader")):
        raise UserError(f"{where}: data must be an ImageData (ImageData.from_folder(path)) or a ShardData, "
                        f"not {type(data).__name__}")


def check_arch(arch: Any) -> None:
    """`arch` must be an architecture's name (`list_models()`): `vision_learner(data, 18)` failed with an
    AttributeError deep inside timm's registry."""
    if isinstance(arch, nn.Module):
        raise UserError("vision_learner: arch takes an architecture name, not a model; train a model of your own "
                        "with Learner(model, data.loader('train', mean, std), data.loader('valid', mean, std))")
    if not isinstance(arch, str):
        raise UserError(f"vision_learner: arch={arch!r}: arch takes an architecture name (a str), e.g. "
                        "'efficientnet_lite0', 'resnet18' or 'simple_cnn'; imgclf.list_models() lists them")


def vision_learner(
    data: ImageData, arch: str = "efficientnet_lite0", metrics: str | Callable | Sequence[str | Callable] | None = None,
    pretrained: bool = True, weights: str | None = None, label_smoothing: float = 0.1, seed: int = 42,
    init: str = "default", loss: str = "auto", drop_rate: float | None = None, balance: str = "none",
    **kwargs: Any,
) -> VisionLearner:
    """A backbone (embedded ImageNet weights by default) with a new head for `data.classes`.

    `data`: an `ImageData` (`ImageData.from_folder(path)`...) or a `ShardData`; `arch`: a name `list_models()` lists.
    The loss and metrics follow `data.task` (see `task_losses`, `task_metrics`) unless given: one metric's name
    (`metrics="accuracy"`) or function, or a list of them.
    `init="lsuv"` re-initialises a from-scratch model with LSUV on the first training batch (the
    statistics land in `learn.init_report`); on pretrained weights it warns and leaves them alone.
    `drop_rate`: dropout before the classifier (None keeps the arch's default).
    `balance` (classes): "weights" weighs the training loss by inverse class frequency, "sampler" draws each
    epoch's batches with classes evenly (data/samplers.py); either way the probe gets the class weights.
    kwargs go to `Learner`: opt, lr, wd, wd_mode, clip, cbs, device, precision, channels_last, progress.
    """
    check_data(data)
    check_arch(arch)
    if init not in ("default", "lsuv"):
        raise UserError(f"--init {init}: choose default or lsuv")
    metric_fns = task_metrics(data, metrics or None)  # a metric of another task: refused before the model is built
    torch.manual_seed(seed)
    model_kwargs = {} if drop_rate is None else {"drop_rate": drop_rate}
    model, meta = create_model(arch, len(data.classes), pretrained=pretrained, weights=weights, **model_kwargs)
    if balance not in ("none", "weights", "sampler") or (balance != "none" and data.task != "classify"):
        raise UserError(f"--balance {balance}: choose none, weights or sampler (single-label classes only)")
    train_loss, valid_loss = task_losses(data, label_smoothing, loss)
    learn = VisionLearner(data, model, meta, seed=seed, metrics=metric_fns, loss_func=train_loss,
                          valid_loss_func=valid_loss, **kwargs)
    learn.set_balance(balance)
    learn.init_report = {"method": "default"}
    if init == "lsuv":
        learn.init_report = _lsuv(learn, seed)
    return learn


def _lsuv(learn: VisionLearner, seed: int) -> dict[str, Any]:
    """LSUV on the batch the first training step will see (a fresh loader, so training's order is untouched)."""
    if learn.meta.pretrained != "none":
        warnings.warn(f"--init lsuv: skipped, {learn.meta.arch} starts from pretrained weights "
                      f"({learn.meta.pretrained}); LSUV is for models trained from scratch", stacklevel=3)
        return {"method": "default", "skipped": "lsuv: the weights are pretrained"}
    dl = learn.data.loader("train", learn.meta.mean, learn.meta.std, device=learn.device, seed=seed,
                           channels_last=learn.model_channels_last)
    xb = next(iter(dl))[0]
    return {"method": "lsuv", "batch": len(xb), "layers": lsuv_init(learn.model, xb)}
