"""Knowledge distillation: a small student trained on a teacher run's soft targets (Hinton et al. 2015).

`distill(cfg, teacher_run)` is the job behind `imgclf distill TEACHER_RUN DATA --arch xresnet_tiny`: it writes
a normal run directory (model.safetensors + model.json + config.json + metrics.json + history.csv), so
`predict`, `evaluate`, `export` and `serve` take the student as they take any run.

The loss is Hinton's, `alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)` (`distill_loss`).
T^2 keeps the soft term's gradients the same size whatever the temperature (they scale as 1/T^2 otherwise), so
alpha alone sets the balance. Defaults T=4, alpha=0.9: a fine-tuned teacher is far better than a small student
from scratch on a small set, and with few labels its probabilities over the wrong classes carry most of what
there is to learn; 0.1 of plain cross-entropy keeps the student right where the teacher is wrong. (Hinton weighted
the soft term heavily too; PyTorch's tutorial uses T=2 with 0.25/0.75 for students near the teacher's size.)

Teacher targets are cached, not recomputed. The teacher (any run: its own arch, size and normalisation, e.g.
EfficientNet-Lite0 at 256 px, mean/std 0.5) sees each training image once through its own validation view and
once mirrored; the mean of the two softmaxes is that image's target under every augmentation the student draws
(the mirror makes the target flip-invariant, as the student's flips need). The other way, "consistent teaching"
(Beyer et al. 2022: the teacher on the student's own augmented view each step), costs a teacher forward per
student step: EfficientNet-Lite0 at 256 px is ~30x the compute of xresnet_tiny at 64 px, so on a CPU the job
would be the teacher's; it pays for long schedules, not for the few epochs run here. Both views of the
teacher's images come from a second decode of the same items at the teacher's size (checked item by item).

The training targets are packed as one float tensor (N, 2, C): row 0 the teacher's log-probabilities, row 1
the one-hot label. `DistillLoss` splits them again. Packing keeps the learner's loop, loader and callbacks
as they are: MixUp/CutMix blend both rows with the batch's lambda (the labels exactly; the teacher's
log-probabilities linearly, i.e. a geometric blend of its distributions: an approximation of the teacher on
the mixed image). Label smoothing (`--label-smoothing`, 0.1 by default as in `train`) applies to the hard term
only: with `alpha=0` the loss is exactly the plain training loss, which is how the comparison student trains.

The comparison (`compare=True`, the default): the same student, same seed, init, batches and augmentation,
trained with `alpha=0`, i.e. without the teacher. It doubles the student's training time (the teacher pass is
shared) and is on by default because a distilled student is only worth keeping when it beats that one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DISTILL_ALPHA, DISTILL_TEMPERATURE, RunConfig
from ..data.augment import Augment
from ..data.core import ImageData
from ..data.loaders import BatchLoader
from ..errors import UserError
from ..models import model_from_run
from ..rundir import new_run_dir, read_json, write_json
from .callbacks import Callback, CSVLogger, CutMix, EarlyStopping, MixUp, SaveBestModel
from .callbacks.precision import best_dtype
from .job import default_out, is_scratch, load_data, recipe_epochs, recipe_lr, resolve_size, seed_everything
from .learner import pick_device
from .schedule import get_schedule
from .vision import VisionLearner, vision_learner

TEMPERATURE, ALPHA = DISTILL_TEMPERATURE, DISTILL_ALPHA  # the defaults live in config.py (light to import)


def distill_loss(student: torch.Tensor, teacher_logp: torch.Tensor, target: torch.Tensor,
                 temperature: float = TEMPERATURE, alpha: float = ALPHA, label_smoothing: float = 0.0) -> torch.Tensor:
    """Hinton's loss: `alpha * T^2 * KL(p_t^T || p_s^T) + (1 - alpha) * CE(student, target)`.

    `teacher_logp`: the teacher's log-probabilities (or logits: any per-row shift gives the same softmax).
    `target`: class indices (N,) or class probabilities (N, C). The KL is averaged over the batch.
    """
    hard = F.cross_entropy(student, target, label_smoothing=label_smoothing)
    if alpha == 0:
        return hard
    t = temperature
    soft = F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher_logp / t, -1),
                    reduction="batchmean", log_target=True)
    return alpha * t * t * soft + (1 - alpha) * hard


def pack_targets(teacher_logp: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N, 2, C) float: the teacher's log-probabilities and the one-hot labels, one training target per image."""
    onehot = F.one_hot(labels.long(), teacher_logp.shape[-1]).float()
    return torch.stack([teacher_logp.float(), onehot], 1)


class DistillLoss(nn.Module):
    """`distill_loss` on packed targets (see `pack_targets`); plain class indices get the hard term alone."""

    def __init__(self, temperature: float = TEMPERATURE, alpha: float = ALPHA, label_smoothing: float = 0.0):
        super().__init__()
        if temperature <= 0:
            raise UserError(f"--temperature {temperature}: must be > 0")
        if not 0 <= alpha <= 1:
            raise UserError(f"--alpha {alpha}: give a weight between 0 and 1")
        self.temperature, self.alpha, self.label_smoothing = temperature, alpha, label_smoothing

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.dim() != 3:
            return F.cross_entropy(pred, target, label_smoothing=self.label_smoothing)
        return distill_loss(pred, target[:, 0], target[:, 1], self.temperature, self.alpha, self.label_smoothing)


# ---------------------------------------------------------------------------------------------- the teacher
@dataclass
class Teacher:
    """A run directory's model and its meta (arch, classes, size, normalisation), and its recorded metrics."""

    run: Path
    model: nn.Module
    meta: dict[str, Any]
    metrics: dict[str, Any]

    @property
    def crop_pct(self) -> float:
        return float(self.meta.get("crop_pct") or self.meta["size"] / self.meta["presize"])


def load_teacher(run: str | Path) -> Teacher:
    """The run's model with its weights (the layer below `imgclf.infer.load_model`, which this module may not
    import); only single-label classifiers can teach."""
    model, meta = model_from_run(run)
    if meta.get("task", "classify") != "classify":
        raise UserError(f"{run}: a {meta['task']} run cannot teach; distillation needs a single-label classifier")
    metrics_file = Path(run) / "metrics.json"
    metrics = read_json(metrics_file) if metrics_file.is_file() else {}
    return Teacher(Path(run), model.eval(), meta, metrics)


def check_classes(teacher: Teacher, data: ImageData) -> None:
    """Same class names in the same order, or the soft targets would teach the wrong outputs."""
    if data.task != "classify":
        raise UserError(f"distillation trains single-label classifiers; the data is --task {data.task}")
    t, s = list(teacher.meta["classes"]), list(data.classes)
    if t != s:
        only_t, only_s = sorted(set(t) - set(s)), sorted(set(s) - set(t))
        why = (f"teacher only: {', '.join(only_t) or '-'}; data only: {', '.join(only_s) or '-'}"
               if only_t or only_s else f"same names in another order: teacher {t}, data {s}")
        raise UserError(f"{teacher.run}: the teacher's classes do not match the data's ({why})")


@torch.no_grad()
def teacher_log_probs(teacher: Teacher, data: ImageData, split: str, views: tuple[str, ...] = ("center", "flip"),
                      device: str | torch.device | None = "auto", progress: bool = True) -> torch.Tensor:
    """(N, C) log of the teacher's softmax on `split`, averaged over `views` ("center", "flip") in probability.

    `data` must be presized for the teacher (its size and crop, see `distill`). Runs under the device's best
    autocast dtype (bf16 on recent CPUs and GPUs), as prediction does."""
    from ..progress import bar as progress_bar

    dev = pick_device(device)
    model = teacher.model.to(dev, memory_format=torch.channels_last).eval()
    dtype = best_dtype(dev)
    mean, std = teacher.meta["mean"], teacher.meta["std"]
    outs = []
    for view in views:
        dl = data.loader(split, mean, std, view=view, device=dev)
        lps = []
        for xb, _ in progress_bar(dl, desc=f"teacher {split}/{view}", unit="batch", enabled=progress):
            with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
                lps.append(model(xb).float().log_softmax(-1).cpu())
        outs.append(torch.cat(lps))
    return torch.logsumexp(torch.stack(outs), 0) - math.log(len(outs))


# ---------------------------------------------------------------------------------------------- the student
def student_learner(cfg: RunConfig, data: ImageData, targets: torch.Tensor, temperature: float = TEMPERATURE,
                    alpha: float = ALPHA, cbs: list[Callback] | None = None, progress: bool = True) -> VisionLearner:
    """The student's learner: `cfg`'s arch and training settings, `DistillLoss` on packed `targets` (N, 2, C)
    for the training split (same order, seed, batches and augmentation as `data.loader("train")`)."""
    tc, recipe = cfg.train, "scratch" if is_scratch(cfg) else "fine_tune"
    lr = recipe_lr(cfg, recipe)
    learn = vision_learner(
        data, cfg.model.arch, pretrained=cfg.model.pretrained, weights=cfg.model.weights, seed=cfg.data.seed,
        label_smoothing=tc.label_smoothing, drop_rate=cfg.model.drop_rate, init=tc.init, opt=tc.opt,
        lr=0.0 if lr == "auto" else float(lr), wd=tc.wd, wd_mode=tc.wd_mode, clip=tc.clip, device=tc.device,
        precision=tc.precision, channels_last=tc.channels_last, progress=progress, cbs=cbs or [],
    )
    learn.loss_func = DistillLoss(temperature, alpha, tc.label_smoothing)
    learn.train_dl = BatchLoader(
        data.train_images, targets, data.size, tuple(learn.meta.mean), tuple(learn.meta.std), bs=data.bs,
        view="augment", augment=data.augment, shuffle=True, seed=cfg.data.seed, device=learn.device,
        channels_last=tc.channels_last,
    )
    return learn


def fit_student(cfg: RunConfig, learn: VisionLearner) -> dict[str, Any]:
    """Train the whole student for the recipe's epochs (16 from scratch; see `job.EPOCHS`) on `--schedule`,
    best epoch kept. A pretrained student trains whole from the first step at the fine-tune rate: the cached
    head phase of `fine_tune` sees pooled features, not images, and has no teacher targets."""
    tc, recipe = cfg.train, "scratch" if is_scratch(cfg) else "fine_tune"
    lr = recipe_lr(cfg, recipe)
    if lr == "auto":
        lr = learn.lr_find(cached=False).valley
    lr = float(lr)
    best = SaveBestModel("valid_loss", model=learn.model, across_fits=True)
    cbs: list[Callback] = [best]
    cbs += [EarlyStopping("valid_loss", patience=tc.patience)] if tc.patience else []
    cbs += [MixUp(tc.mixup, seed=cfg.data.seed)] if tc.mixup else []
    cbs += [CutMix(tc.cutmix, seed=cfg.data.seed)] if tc.cutmix else []
    learn.phase = "distill" if learn.loss_func.alpha else "alone"
    epochs = max(1, recipe_epochs(cfg, recipe))
    learn.fit_schedule(epochs, lr, tc.schedule, cbs=cbs)
    return {"recipe": recipe, "lr": lr, "epochs": epochs, "kept": best.kept}


@dataclass
class DistillResult:
    run_dir: Path
    metrics: dict[str, Any]
    learner: VisionLearner


def distill(cfg: RunConfig, teacher_run: str | Path, temperature: float = TEMPERATURE, alpha: float = ALPHA,
            compare: bool = True, progress: bool = True) -> DistillResult:
    """Train `cfg.model.arch` on `cfg.data` with the teacher run's soft targets; write a run directory.

    With `compare`, the same student also trains without the teacher (alpha 0, same seed and batches) and
    metrics.json holds both (`accuracy`, `without_teacher`, `gain`) beside the teacher's own accuracy on the
    same validation images (`teacher.valid_accuracy`)."""
    t_start = time.perf_counter()
    if not cfg.data.path:
        raise UserError("no data path given")
    if (cfg.train.epochs or 0) < 0:
        raise UserError("--epochs must be >= 0")
    if isinstance(cfg.train.lr, str) and cfg.train.lr != "auto":
        raise UserError(f"--lr {cfg.train.lr}: give a number or 'auto'")
    if cfg.train.mixup < 0 or cfg.train.cutmix < 0:
        raise UserError("--mixup and --cutmix take an alpha >= 0 (0: off)")
    get_schedule(cfg.train.schedule)
    DistillLoss(temperature, alpha)  # bad values fail before anything loads
    teacher = load_teacher(teacher_run)
    seed_everything(cfg.data.seed)
    size, crop = resolve_size(cfg, is_scratch(cfg))
    cfg = replace(cfg, data=replace(cfg.data, size=size, crop_pct=crop))
    data = load_data(cfg, progress)
    if not isinstance(data, ImageData):  # tar shards stream: the teacher's targets are kept per image, in memory
        source = getattr(data, "manifest", {}).get("source")
        raise UserError(f"{cfg.data.path}: distill holds each training image and its teacher's targets in memory, "
                        "so it reads an image folder or CSV, not streamed shards"
                        + (f"; the shards were written from {source}" if source else ""))
    check_classes(teacher, data)

    # the teacher's view of the same items: its own size and crop, no augmentation
    t_teach = time.perf_counter()
    # the student's split as it stands, not drawn and checked again at the teacher's size, where the near-duplicate
    # check could move other images (ImageData.resized): row i is the same image on both sides
    tdata = data.resized(int(teacher.meta["size"]), crop_pct=teacher.crop_pct, augment=Augment.parse("none"))
    train_lp = teacher_log_probs(teacher, tdata, "train", ("center", "flip"), cfg.train.device, progress)
    valid_lp = teacher_log_probs(teacher, tdata, "valid", ("center",), cfg.train.device, progress)
    teacher_acc = float((valid_lp.argmax(-1) == tdata.valid_y).float().mean())
    teacher.model.cpu()
    del tdata
    teach_seconds = time.perf_counter() - t_teach
    targets = pack_targets(train_lp, data.train_y)
    print(f"teacher {teacher.meta['arch']} ({teacher.run}): valid accuracy {teacher_acc:.4f} on these images; "
          f"soft targets for {len(targets)} training images in {teach_seconds:.1f}s")

    out = new_run_dir(cfg.out or default_out(cfg).with_name(f"{default_out(cfg).name}-{cfg.model.arch}-distill"))
    without = None
    if compare:
        seed_everything(cfg.data.seed)
        alone = student_learner(cfg, data, targets, temperature, 0.0, progress=progress)
        t0 = time.perf_counter()
        fit_student(cfg, alone)
        without = {**alone.validate(), "fit_seconds": time.perf_counter() - t0,
                   "history": alone.recorder.history}
        print(f"without the teacher: accuracy {without['accuracy']:.4f}  valid_loss {without['valid_loss']:.4f}")
        del alone

    seed_everything(cfg.data.seed)
    learn = student_learner(cfg, data, targets, temperature, alpha, cbs=[CSVLogger(out / "history.csv")],
                            progress=progress)
    t_fit = time.perf_counter()
    resolved = fit_student(cfg, learn)
    fit_seconds = time.perf_counter() - t_fit
    final = learn.validate()
    learn.export(out, force=True)  # with train_content.json: evaluate warns when it scores the student's images

    teacher_info = {"run": str(teacher.run.resolve()), "arch": teacher.meta["arch"], "size": teacher.meta["size"],
                    "accuracy": teacher.metrics.get("accuracy"), "valid_accuracy": teacher_acc,
                    "seconds": teach_seconds}
    distill_info = {"teacher": teacher_info, "temperature": temperature, "alpha": alpha,
                    "targets": "cached: the teacher's mean softmax over each training image and its mirror"}
    resolved.update({**learn.resolved(), "loss": "DistillLoss"})
    saved = cfg.to_dict()
    saved["data"]["path"] = str(Path(cfg.data.path).resolve())
    if cfg.data.csv:
        saved["data"]["csv"] = str(Path(cfg.data.csv).resolve())
    write_json(out / "config.json", {**saved, "out": str(out), "distill": distill_info, "resolved": resolved})
    metrics: dict[str, Any] = {
        **final, "fit_seconds": fit_seconds, "total_seconds": time.perf_counter() - t_start,
        "n_train": data.n_train, "n_valid": data.n_valid, "n_classes": len(data.classes), "counts": data.counts(),
        "kept": resolved["kept"], "skipped_files": [{"path": str(p), "reason": r} for p, r in data.skipped],
        "teacher": teacher_info, "temperature": temperature, "alpha": alpha,
    }
    if without is not None:
        metrics["without_teacher"] = {k: v for k, v in without.items() if k != "history"}
        metrics["gain"] = final["accuracy"] - without["accuracy"]
    write_json(out / "metrics.json", metrics)
    if learn.recorder.history:
        learn.recorder.plot_loss().savefig(out / "loss.png", dpi=110)
    return DistillResult(out, metrics, learn)
