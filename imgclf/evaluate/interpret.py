"""Why does it err? `Interpretation` of a model's validation predictions, and `interpret_run` behind the CLI.

fastai's `ClassificationInterpretation` ideas (confusion matrix, `most_confused`, top losses) plus
per-class precision / recall / F1, a misclassified list, a 2-D map of the pooled features (PCA and
t-SNE) and a model summary. Build one from a learner (`from_learner`), from a run directory
(`from_run`: the exported model with its own preprocessing, on the run's validation split rebuilt from
`config.json`), or from tensors directly (`Interpretation(classes, paths, logits, targets)`).

    interp = Interpretation.from_run("runs/hymenoptera")
    interp.most_confused()            # [('ants', 'bees', 4), ('bees', 'ants', 2)]
    interp.plot_confusion_matrix()    # a matplotlib Figure
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from ..rundir import CONFIG_FILE, write_json
from ..train.metrics import bootstrap_f1_per_class, class_figures, wilson_interval
from .model_summary import ModelSummary, model_summary

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..data.core import ImageData

MIN_TSNE = 10  # fewer validation images than this: t-SNE is skipped (its perplexity must stay < n)
MAX_TSNE = 2000  # t-SNE on more points is a seeded subsample: minutes otherwise on a 2-core CPU
DPI = 110

FILES = ("confusion_matrix.png", "confusion_matrix_normalized.png", "top_losses.png", "features.png", "reliability.png",
         "per_class.csv", "most_confused.csv", "misclassified.csv", "model_summary.txt", "interpret.json")


@dataclass
class Projection:
    """Pooled features in 2-D: PCA of all points, t-SNE of `tsne_index` (None when skipped), and why."""

    pca: np.ndarray
    pca_variance: tuple[float, float]
    tsne: np.ndarray | None
    tsne_index: np.ndarray
    note: str = ""


def project_features(features: torch.Tensor | np.ndarray, seed: int = 0, max_tsne: int = MAX_TSNE) -> Projection:
    """PCA (all points) and t-SNE (at most `max_tsne` points, after PCA to 50 dimensions) to 2-D.

    t-SNE's perplexity must be below the number of points: it is min(30, (n - 1) / 3), and t-SNE is
    skipped under `MIN_TSNE` points with a note saying so.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = np.asarray(features, dtype=np.float32)
    n, d = x.shape
    k = min(2, n, d)
    pca = np.zeros((n, 2), np.float32)
    variance = (0.0, 0.0)
    if k >= 1 and n >= 2:
        fit = PCA(n_components=k, random_state=seed)
        pca[:, :k] = fit.fit_transform(x)
        variance = tuple([float(v) for v in fit.explained_variance_ratio_] + [0.0] * (2 - k))
    if n < MIN_TSNE:
        return Projection(pca, variance, None, np.arange(0), f"t-SNE skipped: {n} points, it needs {MIN_TSNE}+")
    index = np.arange(n)
    note = ""
    if n > max_tsne:
        index = np.sort(np.random.default_rng(seed).choice(n, max_tsne, replace=False))
        note = f"random {max_tsne} of {n}"
    xs = x[index]
    if xs.shape[1] > 50:
        xs = PCA(n_components=min(50, len(xs)), random_state=seed).fit_transform(xs)
    perplexity = min(30.0, (len(xs) - 1) / 3)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
    # one OpenMP thread: on a busy 2-core CPU two threads spin-wait on each other, measured 0.4 s on one
    # thread against 11 s on two for 153 points; 2000 points take ~15 s on one
    with threadpool_limits(1, user_api="openmp"):
        xy = tsne.fit_transform(xs).astype(np.float32)
    return Projection(pca, variance, xy, index, note)


class Interpretation:
    """Validation predictions of a classifier and what they say about its errors.

    `logits` (N, C) and `targets` (N,) index into `classes`; `paths` name the N images; `features`
    (N, D) are the pooled backbone features. `images` (uint8 (N, 3, P, P), or anything indexable like
    it) lets the top-losses grid show what the model saw (center crop of `size`); without it the grid
    decodes `paths`. `summary` is the model's `ModelSummary`. `temperature`: the T the model's probabilities
    are softmax(logits / T) at (model.json; 1 = uncalibrated); `logits` are those already divided by it.
    """

    def __init__(self, classes: Sequence[str], paths: Sequence[str | Path], logits: torch.Tensor,
                 targets: torch.Tensor, features: torch.Tensor | None = None, *, images: Any = None,
                 size: int | None = None, summary: ModelSummary | None = None, source: str | None = None,
                 temperature: float = 1.0):
        self.classes = list(classes)
        self.paths = [str(p) for p in paths]
        self.logits = torch.as_tensor(logits).detach().float().cpu()
        self.targets = torch.as_tensor(targets).detach().long().cpu()
        n, c = len(self.targets), len(self.classes)
        if self.logits.shape != (n, c) or len(self.paths) != n:
            raise ValueError(f"logits {tuple(self.logits.shape)}, {len(self.paths)} paths and {n} targets "
                             f"do not describe {n} images of {c} classes")
        if n and (self.targets.min() < 0 or self.targets.max() >= c):
            raise ValueError(f"targets must be class indices in 0..{c - 1}")
        self.features = None if features is None else torch.as_tensor(features).detach().float().cpu()
        self.images, self.size, self.summary, self.source = images, size, summary, source
        self.probs = self.logits.softmax(-1)
        self.preds = self.logits.argmax(-1)
        self.losses = F.cross_entropy(self.logits, self.targets, reduction="none")  # plain, no smoothing
        self._projection: Projection | None = None
        self.seen: dict[str, Any] = {}  # from_run: n_seen_in_training, accuracy_unseen (infer.evaluate.seen_figures)
        self.temperature = float(temperature)
        self.run: Path | None = None  # from_run: the run directory, whose own `RUN/interpret/` write() may replace

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_learner(cls, learn) -> Interpretation:
        """From a `VisionLearner` as it stands: its validation predictions and cached pooled features. Single-label
        classification only (a UserError for tags or numbers, before any predicting)."""
        _require_single_label(learn.data.task, "this learner",
                              "learn.validate() (or `imgclf evaluate RUN DATA` once exported)")
        logits, targets = learn.get_preds()
        features, _ = learn.cached_features("valid", "center")
        data, t = learn.data, float(getattr(learn, "temperature", 1.0))
        return cls(data.classes, data.valid_paths, logits / t, targets, features, images=data.valid_images,
                   size=data.size, summary=model_summary(learn.model, data.size), source=data.source, temperature=t)

    @classmethod
    def from_run(cls, run: str | Path, data: ImageData | str | Path | None = None, bs: int = 64,
                 device: str = "auto", progress: bool = True) -> Interpretation:
        """From a run directory: its exported model (`load_model`) on validation images.

        `data` None rebuilds the run's own validation split from its `config.json` (the split is
        seeded: the same images as in training); a path is labelled as the run's config says (its
        `--label-re`; a CSV when it ends in .csv) and its validation split is used; an `ImageData` is
        used as it is. Labels the model does not know are a `UserError`.
        """
        from ..data.core import ImageData
        from ..data.dedup import validation_keys
        from ..data.targets import check_known
        from ..infer.evaluate import seen_figures
        from ..infer.predictor import load_model
        from ..train.job import run_data

        predictor = load_model(run, device=device)
        _require_single_label(predictor.task, f"{run}: this run", f"`imgclf evaluate {run} DATA`")
        if isinstance(data, ImageData):
            _require_single_label(data.task, f"{data.source}: this data", f"`imgclf evaluate {run} DATA`")
        elif data is None and not (Path(run) / CONFIG_FILE).is_file():  # a model saved from Python: `learn.export`
            raise UserError(f"{run}: no {CONFIG_FILE} to rebuild the validation data from; pass the labelled "
                            "images: data=DIR or an ImageData (--data DIR on the command line)")
        if not isinstance(data, ImageData):
            data = run_data(run, predictor.size, float(predictor.meta.get("crop_pct", 0.875)), data, progress)
        if data.presize != predictor.presize:
            raise UserError(f"{data.source}: images prepared for size {data.size}, the model sees "
                            f"{predictor.size}: build the data with size={predictor.size}")
        check_known(data.classes, predictor.classes, data.source, "classes", "run's")
        idx = {c: i for i, c in enumerate(predictor.classes)}
        targets = torch.tensor([idx[c] for c in data.classes], dtype=torch.long)[data.valid_y]
        logits, features = _predict(predictor, data.valid_images, bs, progress)
        interp = cls(predictor.classes, data.valid_paths, logits, targets, features, images=data.valid_images,
                     size=predictor.size, summary=model_summary(predictor.model, predictor.size), source=data.source,
                     temperature=getattr(predictor, "temperature", 1.0))
        # images the run trained on (same bytes) among those scored: counted, warned, figures without them
        interp.seen = seen_figures(run, validation_keys(data), interp.probs, interp.targets, predictor)
        interp.run = Path(run)
        return interp

    # ------------------------------------------------------------------ figures
    @property
    def n(self) -> int:
        return len(self.targets)

    @property
    def accuracy(self) -> float:
        return int((self.preds == self.targets).sum()) / self.n if self.n else 0.0

    def confusion_matrix(self) -> np.ndarray:
        """Counts (C, C): row = actual class, column = predicted class."""
        c = len(self.classes)
        flat = self.targets * c + self.preds
        return torch.bincount(flat, minlength=c * c).reshape(c, c).numpy()

    def most_confused(self, min_val: int = 1) -> list[tuple[str, str, int]]:
        """(actual, predicted, count) of the off-diagonal cells with at least `min_val` images, most first."""
        cm = self.confusion_matrix()
        pairs = [(self.classes[i], self.classes[j], int(cm[i, j])) for i in range(len(cm)) for j in range(len(cm))
                 if i != j and cm[i, j] >= max(min_val, 1)]
        return sorted(pairs, key=lambda p: -p[2])  # stable: ties stay in class order

    def per_class(self) -> list[dict[str, Any]]:
        """Precision, recall, F1 and support of each class, with 95% bounds: `recall_low`/`recall_high` (Wilson,
        over the class's images) and `f1_low`/`f1_high` (bootstrap over images, 1000 resamples, seed 0: the same
        figures every call). A class with no images here has no recall or F1 (None, "n/a" in the table): a 0 would
        read as a class the model always misses. Precision is 0 when nothing was predicted as the class."""
        cm = self.confusion_matrix()
        f1_lo, f1_hi = bootstrap_f1_per_class(self.preds, self.targets, len(self.classes))
        out = []
        for i, name in enumerate(self.classes):
            tp, predicted, support = int(cm[i, i]), int(cm[:, i].sum()), int(cm[i].sum())
            precision = tp / predicted if predicted else 0.0
            if not support:
                out.append({"class": name, "precision": precision, "recall": None, "f1": None, "support": 0,
                            "recall_low": None, "recall_high": None, "f1_low": None, "f1_high": None})
                continue
            recall = tp / support
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            r_lo, r_hi = wilson_interval(tp, support)
            out.append({"class": name, "precision": precision, "recall": recall, "f1": f1, "support": support,
                        "recall_low": r_lo, "recall_high": r_hi, "f1_low": f1_lo[i], "f1_high": f1_hi[i]})
        return out

    def calibration(self) -> dict[str, Any]:
        """ECE (15 bins of top-1 confidence) of the probabilities as shipped and before the temperature, with the
        reliability data of each (train/calibrate.py). Where the run fitted T on these validation images (fixed
        recipes) the "after" figure is in-sample: the run's metrics.json holds the cross-fitted one."""
        from ..train.calibrate import reliability

        after = reliability(self.probs, self.targets)
        before = reliability((self.logits * self.temperature).softmax(-1), self.targets)
        return {"temperature": self.temperature, "ece": after["ece"], "ece_before": before["ece"],
                "reliability": after, "reliability_before": before}

    def top_loss_indices(self, k: int | None = None) -> list[int]:
        """Indices of the `k` images with the highest loss (all when None), highest first."""
        order = torch.argsort(self.losses, descending=True, stable=True)
        return order[: self.n if k is None else k].tolist()

    def top_losses(self, k: int | None = 9) -> list[dict[str, Any]]:
        """The `k` highest-loss images: path, actual, predicted, loss, and the predicted class's probability."""
        return [{"path": self.paths[i], "actual": self.classes[int(self.targets[i])],
                 "predicted": self.classes[int(self.preds[i])], "loss": float(self.losses[i]),
                 "probability": float(self.probs[i, self.preds[i]])} for i in self.top_loss_indices(k)]

    def misclassified(self) -> list[dict[str, Any]]:
        """Every wrong prediction (path, actual, predicted, confidence in the prediction), most confident first."""
        wrong = (self.preds != self.targets).nonzero().flatten().tolist()
        conf = self.probs.max(-1).values
        wrong.sort(key=lambda i: -float(conf[i]))
        return [{"path": self.paths[i], "actual": self.classes[int(self.targets[i])],
                 "predicted": self.classes[int(self.preds[i])], "confidence": float(conf[i])} for i in wrong]

    def projection(self) -> Projection | None:
        """PCA and t-SNE of the features (computed once); None without features."""
        if self.features is None:
            return None
        if self._projection is None:
            self._projection = project_features(self.features)
        return self._projection

    # ------------------------------------------------------------------ plots
    def plot_confusion_matrix(self, normalize: bool = False, max_classes: int = 40) -> Figure:
        """Counts (or row-normalised) of actual (rows) against predicted (columns) classes."""
        from . import plots  # matplotlib loads when a figure is asked for, not with `import imgclf`

        note = f"accuracy {self.accuracy:.1%} of {self.n} images"
        return plots.confusion_matrix_figure(self.confusion_matrix(), self.classes, normalize, max_classes, note)

    def plot_top_losses(self, k: int = 9) -> Figure:
        """The `k` highest-loss images, captioned predicted (probability) / actual / loss; red when wrong."""
        from . import plots

        idx = self.top_loss_indices(k)
        names = plots.short_names(self.classes)
        titles = [f"pred {names[int(self.preds[i])]} ({float(self.probs[i, self.preds[i]]):.2f})\n"
                  f"actual {names[int(self.targets[i])]}\nloss {float(self.losses[i]):.2f}" for i in idx]
        wrong = [bool(self.preds[i] != self.targets[i]) for i in idx]
        return plots.top_losses_figure([self._image(i) for i in idx], titles, wrong,
                                       title=f"Top {len(idx)} losses: predicted (probability) / actual / loss")

    def plot_features(self) -> Figure:
        """Pooled validation features in 2-D (PCA, t-SNE), coloured by actual class; crosses are errors."""
        from . import plots

        proj = self.projection()
        targets, wrong = self.targets.numpy(), (self.preds != self.targets).numpy()
        if proj is None:
            empty = np.zeros((self.n, 2), np.float32)
            return plots.features_figure(empty, None, targets, self.classes, wrong, note="no features given")
        return plots.features_figure(
            proj.pca, proj.tsne, targets, self.classes, wrong, proj.pca_variance,
            tsne_targets=targets[proj.tsne_index], tsne_wrong=wrong[proj.tsne_index], note=proj.note)

    def plot_reliability(self) -> Figure:
        """Reliability diagram of the probabilities (and, when calibrated, of the uncalibrated ones)."""
        from . import plots

        cal = self.calibration()
        curves = [(f"T={self.temperature:.2f}", cal["reliability"])]
        if self.temperature != 1.0:
            curves.insert(0, ("uncalibrated", cal["reliability_before"]))
        return plots.reliability_figure(curves, note=f"{self.n} validation images")

    def _image(self, i: int) -> np.ndarray | None:
        """Image `i` as the model saw it (center crop of `size`), H x W x 3 uint8; None if unreadable."""
        from ..data.core import presize_for
        from ..data.decode import load_presized

        try:
            if self.images is not None:
                img = self.images[i]
            else:
                img = load_presized(self.paths[i], presize_for(self.size or 224))
        except Exception:  # a display nicety: an image that cannot be read shows as a blank tile
            return None
        p = img.shape[-1]
        if self.size and self.size < p:
            top = (p - self.size) // 2
            img = img[:, top : top + self.size, top : top + self.size]
        return img.permute(1, 2, 0).numpy()

    # ------------------------------------------------------------------ files
    def to_dict(self, k: int = 9, min_val: int = 1) -> dict[str, Any]:
        """The figures `interpret.json` holds."""
        lo, hi = wilson_interval(int((self.preds == self.targets).sum()), self.n)  # 95% bounds of accuracy
        return {
            "accuracy": self.accuracy, "accuracy_low": lo, "accuracy_high": hi, "n_valid": self.n,
            "classes": self.classes,
            "confusion_matrix": self.confusion_matrix().tolist(), "per_class": self.per_class(),
            "most_confused": [list(p) for p in self.most_confused(min_val)], "top_losses": self.top_losses(k),
            "model": self.summary.to_dict() if self.summary else None, "data": self.source,
            **{k: v for k, v in class_figures(self.logits, self.targets).items() if k != "class_recall"},
            "calibration": self.calibration(),
            **self.seen,
        }

    def write(self, out: str | Path, k: int = 9, min_val: int = 1, force: bool = False) -> Path:
        """Write every figure, table and plot of the interpretation into `out` (created): see `FILES`.

        Files of yours are not written over: when `out` already holds any of `FILES` (an earlier interpret's, or
        your own per_class.csv) it is a UserError naming them, before anything is written, unless `force`. The
        run's own `RUN/interpret/` (an `Interpretation.from_run(RUN)` written there) is replaced as
        `imgclf interpret` replaces it. The check is `check_write_folder`, the one the command line makes."""
        out = check_write_folder(out, force or self._own_folder(out))
        out.mkdir(parents=True, exist_ok=True)
        for name, fig in (("confusion_matrix.png", self.plot_confusion_matrix()),
                          ("confusion_matrix_normalized.png", self.plot_confusion_matrix(normalize=True)),
                          ("top_losses.png", self.plot_top_losses(k)), ("features.png", self.plot_features()),
                          ("reliability.png", self.plot_reliability())):
            fig.savefig(out / name, dpi=DPI)
        fields = ("class", "precision", "recall", "f1", "support")
        _write_csv(out / "per_class.csv", fields, [[r[f] for f in fields] for r in self.per_class()])
        _write_csv(out / "most_confused.csv", ("actual", "predicted", "count"), self.most_confused(min_val))
        fields = ("path", "actual", "predicted", "confidence")
        _write_csv(out / "misclassified.csv", fields, [[r[f] for f in fields] for r in self.misclassified()])
        (out / "model_summary.txt").write_text(str(self.summary) if self.summary else "no model given\n")
        write_json(out / "interpret.json", self.to_dict(k, min_val))
        return out

    def _own_folder(self, out: str | Path) -> bool:
        """Whether `out` is the `RUN/interpret/` of the run this came from (`from_run`): interpret's own folder."""
        return self.run is not None and _same(out, interpret_dir(self.run))


def _require_single_label(task: str, what: str, instead: str) -> None:
    """A UserError unless `task` is single-label classification: confusion matrices and most-confused pairs are
    single-label ideas (a regression's one output read as one class, tags' 0/1 rows as class probabilities, failed
    deep in torch). Tags and numbers get their figures from `instead` (per-tag F1; MAE/RMSE)."""
    if task != "classify":
        raise UserError(f"{what}'s task is {task.replace('_', '-')}; interpret covers single-label classification: "
                        f"use {instead} for its figures")


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows([[round(v, 6) if isinstance(v, float) else v for v in r] for r in rows])


def _predict(predictor, images, bs: int, progress: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits from `Predictor.logits` (validation's preprocessing), and the pooled features of the same pass.

    The features are what the classifier layer receives, i.e. `forward_head(..., pre_logits=True)`,
    caught by a hook rather than by a second forward pass; None if the classifier is never called.
    """
    from ..progress import bar as progress_bar

    feats: list[torch.Tensor] = []
    hook = predictor.model.get_classifier().register_forward_pre_hook(
        lambda m, args: feats.append(args[0].detach().float().cpu()))
    logits = []
    try:
        for b in progress_bar(range(0, len(images), bs), desc="interpret", unit="batch", enabled=progress):
            logits.append(predictor.logits(images[b : b + bs]))
    finally:
        hook.remove()
    features = torch.cat(feats) if len(feats) == len(logits) else None
    return torch.cat(logits), features


def interpret_dir(run: str | Path, out: str | Path | None = None) -> Path:
    """Where `interpret_run` writes: `out`, else `RUN/interpret/`."""
    return Path(out) if out else Path(run) / "interpret"


def _same(a: str | Path, b: str | Path) -> bool:
    return Path(a).absolute().resolve() == Path(b).absolute().resolve()


def check_write_folder(folder: str | Path, force: bool = False, *, out_name: str = "out",
                       force_name: str = "force=True") -> Path:
    """The folder `Interpretation.write` fills, or a UserError saying why it cannot; nothing is written.

    A file where the folder (or a parent folder) should be, or a folder where one of `FILES` goes, is refused
    either way; a folder that already holds any of `FILES` (an earlier interpret's, or the user's own
    per_class.csv) is refused, naming them, unless `force`. Other files in it are left alone. `out_name` and
    `force_name` are how the caller spells them in the message (the command line: --out, --force)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: is a file; {out_name} takes a folder")
    above = next(a for a in folder.absolute().parents if a.exists())
    if not folder.exists() and not above.is_dir():
        raise UserError(f"{folder}: {above} is a file, so the folder cannot be made")
    present = [name for name in FILES if (folder / name).exists()]
    blocked = [name for name in present if (folder / name).is_dir()]
    if blocked:
        raise UserError(f"{folder / blocked[0]}: is a folder where interpret writes a file")
    if present and not force:
        raise UserError(f"{folder}: already holds {', '.join(present)} (pass {force_name} to overwrite)")
    return folder


def check_interpret_dir(run: str | Path, out: str | Path | None = None, force: bool = False) -> Path:
    """Before any predicting: the folder `interpret_run` will write, or a UserError saying why it cannot.

    `RUN/interpret/` is the run's own and is replaced by each interpret (as documented); an `out` of the user's
    is not written over: when it already holds one of `FILES`, only with `force` (`check_write_folder`, the check
    `Interpretation.write` makes). A file where the folder or a parent folder should be is refused either way (it
    was a FileExistsError after all the work)."""
    folder = interpret_dir(run, out)
    own = _same(folder, interpret_dir(run))
    return check_write_folder(folder, force or own, out_name="--out", force_name="--force")


def interpret_run(run: str | Path, data: ImageData | str | Path | None = None, out: str | Path | None = None,
                  k: int = 9, min_val: int = 1, bs: int = 64, device: str = "auto", progress: bool = True,
                  force: bool = False) -> Path:
    """`Interpretation.from_run(run, data)` written to `RUN/interpret/` (or `out`); returns the folder. An `out`
    that holds an earlier interpret's files is replaced only with `force` (`check_interpret_dir`, made before any
    predicting; `write` makes the same check again)."""
    folder = check_interpret_dir(run, out, force)
    interp = Interpretation.from_run(run, data, bs=bs, device=device, progress=progress)
    return interp.write(folder, k, min_val, force=force)


def format_summary(result: dict[str, Any], limit: int = 10) -> str:
    """The text `imgclf interpret` prints: accuracy, the per-class table and the most confused pairs."""
    cm = np.asarray(result["confusion_matrix"])
    ci = f"{result['accuracy_low']:.2f}-{result['accuracy_high']:.2f}, " if "accuracy_low" in result else ""
    lines = [f"accuracy {result['accuracy']:.4f} ({ci}{int(np.trace(cm))}/{result['n_valid']} validation images)",
             ""]
    width = max([5, *(len(r["class"]) for r in result["per_class"])])
    lines.append(f"{'class'.ljust(width)}  precision  {'recall (95%)':20}  {'f1 (95%)':20}  support")

    def figure(r: dict, k: str) -> str:  # "0.9500 (0.88-0.98)", or n/a for a class with no images here
        if r[k] is None:
            return f"{'n/a':6} {'':13}"
        b = f"({r[k + '_low']:.2f}-{r[k + '_high']:.2f})" if r.get(k + "_low") is not None else ""
        return f"{r[k]:6.4f} {b:13}"

    for r in result["per_class"]:
        lines.append(f"{r['class'].ljust(width)}  {r['precision']:9.4f}  {figure(r, 'recall')}  {figure(r, 'f1')}"
                     f"  {r['support']:7d}")
    empty = [r["class"] for r in result["per_class"] if not r["support"]]
    if empty:
        lines.append(f"n/a: {len(empty)} class(es) have no validation images ({', '.join(empty[:5])}"
                     f"{', ...' if len(empty) > 5 else ''}), so their recall and F1 are unknown")
    if "balanced_accuracy" in result:
        lines += ["", f"balanced accuracy {result['balanced_accuracy']:.4f} ({result['balanced_accuracy_low']:.2f}-"
                      f"{result['balanced_accuracy_high']:.2f}), macro F1 {result['macro_f1']:.4f} "
                      f"({result['macro_f1_low']:.2f}-{result['macro_f1_high']:.2f})"]
    cal = result.get("calibration")
    if cal:
        lines.append(f"calibration: ECE {cal['ece']:.4f} at T={cal['temperature']:.3f}"
                     + (f" (uncalibrated {cal['ece_before']:.4f})" if cal["temperature"] != 1.0 else "")
                     + ", 15 bins; reliability.png")
    if result.get("n_seen_in_training"):
        lo, hi = result.get("accuracy_unseen_low"), result.get("accuracy_unseen_high")
        unseen = (f"{result['accuracy_unseen']:.4f} ({lo:.2f}-{hi:.2f})" if "accuracy_unseen" in result else "none")
        lines.append(f"{result['n_seen_in_training']} of {result['n_valid']} images were training images (same "
                     f"bytes); accuracy on the {result['n_unseen']} unseen: {unseen}")
    pairs = result["most_confused"]
    lines += ["", "most confused (actual -> predicted: images):" if pairs else "most confused: none"]
    lines += [f"  {a} -> {p}: {n}" for a, p, n in pairs[:limit]]
    if len(pairs) > limit:
        lines.append(f"  ... {len(pairs) - limit} more pairs in most_confused.csv")
    return "\n".join(lines)
