"""The Learner: one small training loop with named events, and the fine-tuning recipes built on it.

Read `fit` top to bottom to know the loop. Everything else that hooks into training (schedules,
precision, progress, logging, early stopping, save-best) is a callback in `callbacks/`.

Under torchrun (see train/distributed.py) the same loop trains with DistributedDataParallel: each process takes
its share of every epoch (`BatchLoader.shard`), its forward passes go through a DDP wrapper made at the start of
each fit (so it knows which parameters that fit trains), gradients are averaged across processes in backward,
and only rank 0 shows progress and writes logs. `accum=K` steps the optimizer every K batches (skipping DDP's
gradient all-reduce on the K-1 batches between: `no_sync`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.loaders import BatchLoader, TensorLoader
from ..errors import UserError
from . import distributed as dist
from .callbacks import (
    Callback,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    CSVLogger,
    MixedPrecision,
    ParamScheduler,
    ProgressCallback,
    Recorder,
)
from .callbacks.nonfinite import TerminateOnNaN
from .callbacks.precision import best_dtype
from .checkpoint import Checkpointer
from .metrics import get_metric, metric_list
from .optim import apply_decoupled_wd, make_optimizer
from .schedule import constant, get_schedule, one_cycle_lr, one_cycle_mom

LR = float | slice | Sequence[float]
# per-process batches smaller than this synchronise batch-norm statistics across processes (SyncBatchNorm, CUDA
# only in PyTorch): below ~32 images a batch's mean and variance get noisy enough to hurt; above, the extra
# all-reduce per BN layer costs time for nothing
SYNC_BN_BELOW = 32


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    """CUDA when present (or Apple's MPS), else CPU; an explicit name is checked, not trusted."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine")
    return dev


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        return best_dtype(device)
    table = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in table:
        raise UserError(f"--precision {precision}: choose auto, fp32, bf16 or fp16")
    return table[precision]


def inference_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """What figures and predictions are computed in: `resolve_precision`'s dtype, except that "auto" is fp32 on a
    CPU. bf16 autocast speeds training there ~1.7x, but it moves a probability by up to ~0.02: a borderline image
    came out "ants 0.502" from `predict` and "bees 0.512" from the figures `train` reported (fp32 features) and
    from the ONNX export, and `evaluate` scored 16/16 where `train` had said 15/16. On CUDA autocast stays (the
    figures and predictions are made there alike)."""
    return None if precision == "auto" and device.type == "cpu" else resolve_precision(precision, device)


class Learner:
    """Model + data loaders + loss + optimizer, trained by `fit` with callbacks.

    `groups` are the layer groups (lists of parameters; body parts first, head last) that freezing and
    discriminative learning rates act on. Loaders yield `(x, y)` already on `device`.
    """

    def __init__(
        self,
        model: nn.Module,
        train_dl: Iterable,
        valid_dl: Iterable | None = None,
        loss_func: Callable | None = None,
        valid_loss_func: Callable | None = None,
        metrics: str | Callable | Sequence[str | Callable] = ("accuracy",),
        opt: str = "adamw",
        lr: float = 1e-3,
        wd: float = 0.01,
        wd_mode: str | None = None,
        groups: Sequence[Sequence[nn.Parameter]] | None = None,
        cbs: Sequence[Callback] = (),
        device: str | torch.device | None = "auto",
        precision: str = "auto",
        channels_last: bool = True,
        clip: float | None = None,
        progress: bool = True,
        recorder: Recorder | None = None,
        accum: int = 1,
        distributed: bool | None = None,
        compile: bool = False,
        valid_every: int = 1,
    ):
        if accum < 1:
            raise UserError(f"--accum {accum}: give a whole number of batches >= 1")
        self.device = pick_device(device)
        self.model = model.to(self.device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.train_dl, self.valid_dl = train_dl, valid_dl
        self.loss_func = loss_func or nn.CrossEntropyLoss()
        # what `valid_loss` reports: plain cross-entropy even when training smooths labels
        self.valid_loss_func = valid_loss_func or self.loss_func
        self.metrics = [get_metric(m) for m in metric_list(metrics)]  # one name or a list of them
        self.opt_name, self.lr, self.wd, self.clip = opt, lr, wd, clip
        self.wd_mode = wd_mode  # None: the optimizer's own convention (see make_optimizer)
        self.groups = [list(g) for g in groups] if groups else [list(model.parameters())]
        self.opt: torch.optim.Optimizer | None = None
        self.grad_scaler: torch.amp.GradScaler | None = None
        self.dtype = resolve_precision(precision, self.device)
        self.eval_dtype = inference_dtype(precision, self.device)  # get_preds: the final figures, predictions
        # batch-norm layers keep their running statistics in training (their scale and shift still learn): set for
        # a pretrained body, whose head was fitted on eval-mode features (VisionLearner)
        self.bn_eval = False
        self.recorder = recorder or Recorder()
        self.cbs: list[Callback] = [self.recorder, TerminateOnNaN()]
        if self.dtype is not None:
            self.cbs.append(MixedPrecision(self.dtype))
        # several processes: progress and logs come from rank 0 only; the others train silently
        self.distributed = dist.is_distributed() if distributed is None else distributed
        if progress and dist.is_main():
            self.cbs.append(ProgressCallback())
        self.cbs += [cb for cb in cbs if dist.is_main() or not isinstance(cb, CSVLogger)]
        self.accum, self.accumulating = accum, False
        # validate every Nth epoch and the last (Keras's validation_freq); `validating` says it for this epoch, and
        # callbacks that follow a validation figure (early stopping, keeping the best epoch) skip the others
        self.valid_every, self.validating = max(1, int(valid_every)), valid_dl is not None
        # torch.compile the training forward (and so its backward): `_forward_module`
        self.compile = compile
        self._compiled: tuple[nn.Module, nn.Module] | None = None  # (what was compiled, its compiled wrapper)
        self.ddp: nn.Module | None = None  # the DistributedDataParallel wrapper of the fit in progress
        self._valid_shard: tuple[Any, Any, int] | None = None  # (valid_dl, this rank's share, its size): valid_share
        if self.distributed:
            self._distribute()
        self.phase = "train"
        self.epoch, self.n_epoch, self.iter, self.pct_train, self.training = 0, 0, 0, 0.0, False
        self.last_validation: dict[str, float] = {}
        self.checkpointer: Checkpointer | None = None  # checkpoints and resume: see `save_checkpoints`

    # ------------------------------------------------------------------ several processes
    def _distribute(self) -> None:
        """Take this rank's share of the training data; on CUDA with small per-process batches, share batch-norm
        statistics across processes (on the CPU PyTorch's SyncBatchNorm does not run: each process normalises
        with its own batch's statistics, as a 1-process run with that batch would)."""
        if hasattr(self.train_dl, "shard") and getattr(self.train_dl, "world", 1) == 1:
            self.train_dl.shard(dist.rank(), dist.world_size())
        bs = getattr(self.train_dl, "bs", SYNC_BN_BELOW)
        if self.device.type == "cuda" and bs < SYNC_BN_BELOW:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)

    def _wrap_ddp(self) -> nn.Module | None:
        """A DDP wrapper over the parameters this fit trains (made per fit: freezing changes them). Making it
        broadcasts rank 0's weights and buffers, so every fit starts from identical models on all ranks."""
        if not self.distributed or not any(p.requires_grad for p in self.model.parameters()):
            return None
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
            if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=ids)

    def _forward_module(self) -> nn.Module:
        """What training batches go through: the DDP wrapper of this fit or the model, `torch.compile`d when
        `compile` (the compiled wrapper is kept while the module is the same: the model's across fits, DDP's for its
        fit). Validation, `get_preds` and exports use the plain model: eval-mode graphs would be compiled again
        for the ~5% of the time validation takes.
        Measured on 2 CPU cores (bf16, xresnet_tiny, 28 px, bs 256): a step 0.099 s compiled vs 0.13 s eager, after
        ~48 s of compiling (gcc); each new batch shape (the epoch's last batch, each size of progressive resizing)
        compiles again."""
        module = self.ddp if self.ddp is not None else self.model
        if not self.compile:
            return module
        if self._compiled is None or self._compiled[0] is not module:  # once per model, or per fit's DDP wrapper
            self._compiled = (module, torch.compile(module))
        return self._compiled[1]

    def _step_due(self, i: int) -> bool:
        """Whether batch `i` of this pass (0-based) ends an accumulation: every `accum` batches of the epoch
        (counted by the loader's position, so a resumed epoch counts alike) and at the epoch's last batch."""
        if self.accum <= 1:
            return True
        pos = getattr(self.train_dl, "position", None)
        k = pos.batches if pos is not None and pos.batches else i + 1
        return k % self.accum == 0 or k >= len(self.train_dl)

    # ------------------------------------------------------------------ events
    def _event(self, name: str, cbs: Sequence[Callback]) -> None:
        for cb in cbs:
            getattr(cb, name)(self)

    def add_cb(self, cb: Callback) -> None:
        self.cbs.append(cb)

    # ------------------------------------------------------------------ the loop
    def save_checkpoints(self, run_dir: str | Path, every: int | None = None) -> Checkpointer:
        """Checkpoint every fit from now on into `run_dir/checkpoint.safetensors`: at each epoch's end, every
        `every` steps (None: every few minutes; 0: epoch ends only) and on Ctrl-C (see `train/checkpoint.py`)."""
        self.checkpointer = Checkpointer(run_dir, every, model=self.model)
        return self.checkpointer

    def resume_from(self, run_dir: str | Path, every: int | None = None) -> Checkpointer:
        """Go on from `run_dir`'s checkpoint: call the same fits as the interrupted run, in the same order
        (`fit(..., resume=run_dir)` does this); those the checkpoint finished are skipped, the one it stopped
        in goes on from its step, the rest run. Checkpoints keep being written there."""
        ck = self.save_checkpoints(run_dir, every)
        if not ck.load():
            raise UserError(f"{ck.path}: no checkpoint to resume from")
        return ck

    def fit(self, n_epoch: int, lr: LR | None = None, cbs: Sequence[Callback] = (),
            lr_sched: Callable[[float], float] = constant, mom_sched: Callable[[float], float] | None = None,
            resume: str | Path | None = None) -> None:
        """Train `n_epoch` epochs; the rate of each layer group follows `lr_sched(progress)`.

        `resume`: a run directory whose checkpoint this fit goes on from (see `resume_from`)."""
        if resume is not None:
            self.resume_from(resume)
        ck = self.checkpointer
        mode = ck.begin_fit() if ck else "run"
        if mode == "skip":  # a resumed job: the checkpoint is past this fit
            return
        if self.opt is None:
            self.opt = make_optimizer(self.opt_name, self.groups, self.lr, self.wd, self.wd_mode)
        sched = ParamScheduler(self.group_lrs(self.lr if lr is None else lr), lr_sched, mom_sched)
        all_cbs = sorted([*self.cbs, sched, *cbs], key=lambda c: c.order)
        self.n_epoch, self.iter = n_epoch, 0
        if self.distributed and hasattr(self.train_dl, "shard") and getattr(self.train_dl, "world", 1) == 1:
            self.train_dl.shard(dist.rank(), dist.world_size())  # a loader set after __init__ gets its share too
        self._n_iter = max(1, n_epoch * len(self.train_dl))
        # CPU: flush denormal floats to zero while training. Tiny gradients late in training turn denormal
        # and x86 computes on them ~100x slower: Fashion-MNIST epochs took 27 s with this, 35 s without.
        flush = self.device.type == "cpu" and torch.set_flush_denormal(True)
        # CUDA: cuDNN times its algorithms once per input shape and keeps the fastest (as timm's train.py does):
        # training runs a few shapes many steps each. Turned on by the first fit, not at the learner's creation:
        # on one H200 the default job's feature pass over 160 images took 10.9 s with it on from the start (every
        # conv timed at each batch shape for one or two batches; not measured since)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.ddp = self._wrap_ddp()
        try:
            self._event("before_fit", all_cbs)
            start = ck.restore(self, all_cbs) if mode == "restore" else 0
            if ck:
                ck.in_fit = True
            for self.epoch in range(start, n_epoch):
                stop = False
                try:
                    self.validating = self._validation_due()
                    self._event("before_epoch", all_cbs)
                    self._train_epoch(all_cbs)
                    if self.validating:
                        self._validate(all_cbs)
                    else:  # the epoch's row shows no figure (NaN) rather than the last epoch's
                        self.last_validation = dict.fromkeys(["valid_loss", *(n for n, _ in self.metrics)], math.nan)
                    self._event("after_epoch", all_cbs)
                except CancelEpochException:
                    pass
                except CancelFitException:
                    if self.ddp is None:
                        raise
                    stop = True
                if self.ddp is not None:  # a rank that stops (a deadline on its own clock) stops them all
                    (stop,) = dist.any_rank(stop)
                if stop:
                    raise CancelFitException
                if ck:
                    ck.after_epoch(self, all_cbs)
        except CancelFitException:
            pass
        finally:
            self.ddp = None
            if ck:
                ck.in_fit = False
            self._event("after_fit", all_cbs)
            if flush:  # a process-wide switch: off again, as torch leaves it, for whatever runs next
                torch.set_flush_denormal(False)
        if ck:
            ck.after_fit(self, all_cbs)

    def _validation_due(self) -> bool:
        if self.valid_dl is None:
            return False
        return self.valid_every == 1 or self.epoch + 1 >= self.n_epoch or (self.epoch + 1) % self.valid_every == 0

    def _train_epoch(self, cbs: Sequence[Callback]) -> None:
        self.training = True
        self.model.train()
        if self.bn_eval:
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._NormBase):
                    m.eval()
        self._event("before_train", cbs)
        forward = self._forward_module()
        for i, (xb, yb) in enumerate(self.train_dl):
            self.xb, self.yb = xb, yb
            self.pct_train = self.iter / self._n_iter
            self.accumulating = not self._step_due(i)
            try:
                self._event("before_batch", cbs)
                self.pred = forward(self.xb)
                self._event("after_pred", cbs)
                self.loss = self.loss_func(self.pred.float(), self.yb)
                if self.ddp is not None:  # the loss over all ranks' batches: logs, NaN checks and lr_find agree
                    self.loss = dist.global_mean(self.loss)
                self._event("after_loss", cbs)
                self._backward_step(cbs)
            except CancelBatchException:
                pass
            self._event("after_batch", cbs)
            self.iter += 1
            if self.checkpointer:
                self.checkpointer.after_step(self, cbs)
        if self.ddp is not None:  # one set of batch-norm statistics on all ranks before validating
            dist.average_buffers(self.model)
        self._event("after_train", cbs)
        self.training = False

    def _backward_step(self, cbs: Sequence[Callback]) -> None:
        """Backward; then, unless the batch is one of an accumulation's first K-1, clip and step. Accumulated
        losses are divided by K: K batches of b step as one batch of K*b would (batch-norm statistics aside)."""
        scaler = self.grad_scaler
        loss = self.loss / self.accum if self.accum > 1 else self.loss
        sync = self.ddp.no_sync() if self.ddp is not None and self.accumulating else nullcontext()
        with sync:
            (scaler.scale(loss) if scaler else loss).backward()
        if self.accumulating:
            return
        if scaler:
            scaler.unscale_(self.opt)
        if self.clip:
            nn.utils.clip_grad_norm_([p for g in self.groups for p in g if p.grad is not None], self.clip)
        self._event("before_step", cbs)
        apply_decoupled_wd(self.opt)  # sgd/rmsprop/adagrad with wd_mode="decoupled"; a no-op otherwise
        if scaler:
            scaler.step(self.opt)
            scaler.update()
        else:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def valid_share(self) -> tuple[Iterable, int | None]:
        """The validation batches this process scores, and the whole set's size when they are a share: under
        torchrun each rank scores its strided share of an indexable loader (`shard`, on a copy: `get_preds` and
        exports keep the whole one) and the ranks' logits are gathered, so validation takes 1/world of the time."""
        dl = self.valid_dl
        # indexable (strided shares: `shard_order`, which gather_shards undoes), not already a share
        shardable = isinstance(dl, (BatchLoader, TensorLoader)) and dl.world == 1
        if not (self.distributed and dist.world_size() > 1 and shardable):
            return dl, None
        if self._valid_shard is None or self._valid_shard[0] is not dl:
            self._valid_shard = (dl, copy.copy(dl).shard(dist.rank(), dist.world_size(), bs=dl.bs), dl.n_shard)
        return self._valid_shard[1], self._valid_shard[2]

    def _validate(self, cbs: Sequence[Callback]) -> None:
        self.model.eval()
        self._event("before_validate", cbs)
        dl, n = self.valid_share()
        preds, targets = [], []
        with torch.no_grad():
            for xb, yb in dl:
                self.xb, self.yb = xb, yb
                try:
                    self._event("before_batch", cbs)
                    self.pred = self.model(self.xb)
                    self._event("after_pred", cbs)
                    self.loss = self.valid_loss_func(self.pred.float(), self.yb)
                    self._event("after_loss", cbs)
                    preds.append(self.pred.float() if n else self.pred.float().cpu())
                    targets.append(self.yb if n else self.yb.cpu())
                except CancelBatchException:
                    pass
                self._event("after_batch", cbs)
        logits, y = torch.cat(preds), torch.cat(targets)
        if n:  # every rank gets every share, in order (the gather runs where the process group's backend does)
            logits, y = dist.gather_shards(logits, n).cpu(), dist.gather_shards(y, n).cpu()
        self.last_validation = self.score(logits, y)
        self._event("after_validate", cbs)

    def score(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """valid_loss and every metric over a full set of predictions."""
        out = {"valid_loss": float(self.valid_loss_func(logits, targets))}
        out.update({name: fn(logits, targets) for name, fn in self.metrics})
        return out

    # ------------------------------------------------------------------ predictions
    @torch.no_grad()
    def get_preds(self, dl: Iterable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, targets) over a loader (default: validation), in eval mode, without callbacks, in
        `eval_dtype` (fp32 on a CPU unless a precision was asked for: the figures `predict` gives again)."""
        self.model.eval()
        ctx = torch.autocast(self.device.type, dtype=self.eval_dtype) if self.eval_dtype else nullcontext()
        preds, targets = [], []
        for xb, yb in dl if dl is not None else self.valid_dl:
            with ctx:
                preds.append(self.model(xb).float().cpu())
            targets.append(yb.cpu())
        return torch.cat(preds), torch.cat(targets)

    def validate(self, dl: Iterable | None = None) -> dict[str, float]:
        return self.score(*self.get_preds(dl))

    # ------------------------------------------------------------------ rates and freezing
    def group_lrs(self, lr: LR) -> list[float]:
        """Per layer group rates: a number for all; `slice(lo, hi)` spread geometrically (fastai)."""
        n = len(self.groups)
        if isinstance(lr, slice):
            hi = lr.stop
            if lr.start is None:
                return [hi / 10] * (n - 1) + [hi]
            if n == 1:
                return [hi]
            lo = lr.start
            return [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]
        if isinstance(lr, Sequence):
            if len(lr) != n:
                raise ValueError(f"{len(lr)} rates for {n} layer groups")
            return [float(x) for x in lr]
        return [float(lr)] * n

    def freeze_to(self, n: int, train_bn: bool = True) -> None:
        """Train only layer groups from `n` on; batch-norm layers stay trainable when `train_bn`."""
        bn_ids = set()
        if train_bn:
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._NormBase):
                    bn_ids |= {id(p) for p in m.parameters()}
        for i, g in enumerate(self.groups):
            for p in g:
                p.requires_grad_(i >= n or id(p) in bn_ids)

    def freeze(self, train_bn: bool = True) -> None:
        """Train only the head (and batch-norm layers, fastai's default). The history's phase says "frozen"."""
        self.freeze_to(len(self.groups) - 1, train_bn)
        self.phase = "frozen"

    def unfreeze(self) -> None:
        """Train every layer group; the history's phase says "unfrozen" (a `freeze(); fit_one_cycle()` from
        Python was recorded as unfrozen)."""
        self.freeze_to(0)
        self.phase = "unfrozen"

    # ------------------------------------------------------------------ recipes
    def fit_one_cycle(self, n_epoch: int, lr_max: LR | None = None, cbs: Sequence[Callback] = (),
                      div: float = 25.0, div_final: float = 1e5, pct_start: float = 0.25,
                      resume: str | Path | None = None) -> None:
        """Smith's one-cycle: warm up to `lr_max`, anneal to nearly zero; momentum the other way."""
        self.fit(n_epoch, lr_max, cbs,
                 lr_sched=lambda p: one_cycle_lr(p, pct_start, div, div_final),
                 mom_sched=lambda p: one_cycle_mom(p, pct_start), resume=resume)

    def fit_schedule(self, n_epoch: int, lr_max: LR | None = None, schedule: str = "one_cycle",
                     cbs: Sequence[Callback] = (), resume: str | Path | None = None) -> None:
        """Train with a named schedule (`one_cycle`, `cosine`, `step`, `constant`; see `schedule.SCHEDULES`)
        peaking at `lr_max`; `one_cycle` here is `fit_one_cycle` with its defaults."""
        lr_sched, mom_sched = get_schedule(schedule)
        self.fit(n_epoch, lr_max, cbs, lr_sched=lr_sched, mom_sched=mom_sched, resume=resume)

    def lr_find(self, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100):
        """Sweep the rate exponentially for `num_it` batches; the model and optimizer are restored after.

        Returns an `LRFind` with the curve, its suggestions and `plot()`.
        """
        from .lr_finder import LRFind, LRFinder

        state = copy.deepcopy(self.model.state_dict())
        opt_state = copy.deepcopy(self.opt.state_dict()) if self.opt is not None else None
        finder = LRFinder(start_lr, end_lr, num_it)
        n_accum, self.accum = self.accum, 1  # the sweep steps every batch
        # the sweep is not training: no history, no logs, no validation; precision stays as it is
        # the sweep is not checkpointed either: a resumed job sweeps again (seconds; same seed, same result)
        saved_cbs, saved_valid, saved_ck = self.cbs, self.valid_dl, self.checkpointer
        self.cbs, self.valid_dl = [cb for cb in self.cbs if isinstance(cb, MixedPrecision)], None
        self.checkpointer = None
        try:
            self.fit(math.ceil(num_it / max(1, len(self.train_dl))), start_lr, cbs=[finder])
        finally:
            self.cbs, self.valid_dl, self.checkpointer = saved_cbs, saved_valid, saved_ck
            self.accum = n_accum
            self.model.load_state_dict(state)
            if opt_state is not None:
                self.opt.load_state_dict(opt_state)
            else:
                self.opt = None
        # each rank swept on its own shard: rank 0's curve is everyone's, so all pick the same rate
        lrs, losses = dist.agree((finder.lrs, finder.losses))
        return LRFind(lrs, losses)

    def state(self) -> dict[str, Any]:
        """What a resumed run needs from the callbacks (Lightning's habit)."""
        return {type(cb).__name__: cb.state_dict() for cb in self.cbs}

