"""`ImageData`: labelled images decoded and presized once, split into train and valid, ready to batch."""

from __future__ import annotations

import numbers
import warnings
from collections import Counter, defaultdict, deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..config import DEFAULT_SIZE
from ..errors import UserError
from .augment import Augment
from .decode import CROP_PCT, decode_all, median_short_side, presize_for, warn_skipped
from .dedup import keep_near_duplicates_together
from .idx import load_idx, presize_arrays
from .loaders import BatchLoader
from .sources import Items, items_from_csv, items_from_files, items_from_folder
from .store import LazyImages, fits_in_memory, screen
from .targets import describe_targets, encode_targets

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .audit import DataSummary


# the counts every `ImageData` is built with: name -> (least value, what it counts, an example)
_COUNTS = {"size": (8, "pixels a side", 224), "bs": (1, "images per batch", 64),
           "workers": (0, "decoding threads; 0: one per core", 0)}


def check_settings(settings: Mapping[str, object]) -> None:
    """The counts among `settings` (size, bs, workers) and valid_pct, checked before a file is read: a batch size of
    0 was taken, then failed the first epoch with a ZeroDivisionError, and `size="128"` failed with a TypeError. A
    bool is no count (`bs=True` is a slip, not one image). The CLI's flags pass here too (`job.load_data`).
    valid_pct's range (0 < valid_pct < 1) is checked where a split is drawn (`sources.split_items`): a given
    train/valid split never reads it."""
    for name, (least, what, example) in _COUNTS.items():
        if name not in settings:
            continue
        value = settings[name]
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise UserError(f"{name}={value!r}: {name} must be an integer >= {least} ({what}), e.g. {name}={example}")
        if value < least:
            raise UserError(f"{name}={value}: too small; {name} must be an integer >= {least} ({what}), e.g. "
                            f"{name}={example}")
    pct = settings.get("valid_pct", 0.2)
    if isinstance(pct, bool) or not isinstance(pct, numbers.Real):
        raise UserError(f"valid_pct={pct!r}: valid_pct must be a number between 0 and 1, e.g. valid_pct=0.2")


class ImageData:
    """Train and validation images as uint8 tensors in memory (or decoded per batch when they would not
    fit: `in_memory` says which), with their targets: class indices, multi-hot tag rows or standardised
    numbers, as `task` says (see `targets.py`).

    Build one with `from_folder`, `from_name_re`, `from_csv` or `from_files`, or from arrays with `from_idx`
    or `from_tensors`; the learner asks it for batch loaders with the model's normalisation, so the data never
    needs to know the model.
    """

    def __init__(
        self,
        items: Items,
        size: int = DEFAULT_SIZE,
        bs: int = 64,
        workers: int = 0,
        augment: Augment | None = None,
        source: str = "data",
        progress: bool = True,
        in_memory: bool | None = None,
        labeller: str = "given labels",
        classes: Sequence[str] | None = None,
        arrays: tuple[torch.Tensor, torch.Tensor] | None = None,
        task: str = "classify",
        target_name: str = "value",
        stats: tuple[float, float] | None = None,
        crop_pct: float = CROP_PCT,
    ):
        check_settings({"size": size, "bs": bs, "workers": workers})
        self.targets = encode_targets(items, task, source, names=classes, target_name=target_name, stats=stats)
        self.task = self.targets.task
        self.classes = self.targets.names  # the model's outputs: classes, tags, or the regression target's name
        # images that came as arrays (from_tensors): the raw (train, valid) tensors, presized again by resized()
        self.arrays = arrays
        self.items, self.workers, self.progress = items, workers, progress
        self.source, self.size, self.bs = source, size, bs
        self.labeller = labeller  # where the labels came from, for summary()
        if not 0.2 <= crop_pct <= 1:
            raise UserError(f"--crop-pct {crop_pct}: give a fraction between 0.2 and 1")
        # the validation view is the center `crop_pct` of the presized square; 1 = the whole image (small
        # images trained from scratch, whose borders hold content: Fashion-MNIST's sleeves)
        self.crop_pct = crop_pct
        self.presize = presize_for(size, crop_pct)
        self.augment = augment or Augment()
        self.skipped: list[tuple[Path, str]] = []
        self.unused = items.unused  # entries under the folder that are not images (by kind): one warning line
        self.unused.warn(source)
        splits = {}
        self.in_memory = fits_in_memory(len(items.paths), self.presize) if in_memory is None else in_memory
        if arrays is not None and not self.in_memory:  # arrays have no file to decode later from
            raise UserError(f"{source}: {len(items.paths)} images presized to {self.presize} px would take more than "
                            f"half the memory available; pass a smaller --size (these images are "
                            f"{'x'.join(map(str, arrays[0].shape[-2:]))} px)")
        for name, valid in (("train", False), ("valid", True)):
            rows = [i for i, v in enumerate(items.is_valid) if v == valid]
            paths = [items.paths[i] for i in rows]
            if arrays is not None:
                images, keep, bad = presize_arrays(arrays[int(valid)], self.presize, workers, desc=f"presize {name}",
                                                   progress=progress), list(range(len(paths))), []
            elif self.in_memory:
                images, keep, bad = decode_all(paths, self.presize, workers, desc=f"decode {name}",
                                               progress=progress, warn=False)
            else:
                keep, bad = screen(paths, warn=False)
                images = LazyImages([paths[i] for i in keep], self.presize, workers)
            self.skipped += bad
            targets = self.targets.values[[rows[i] for i in keep]]
            splits[name] = ([paths[i] for i in keep], images, targets)
        if self.skipped:  # one warning naming every file of both splits
            warn_skipped(self.skipped, stacklevel=4)
        self.train_paths, self.train_images, self.train_y = splits["train"]
        self.valid_paths, self.valid_images, self.valid_y = splits["valid"]
        # near duplicates across a split we drew move to train; across a given one, a warning (dedup.py)
        self.near_duplicates = keep_near_duplicates_together(self)
        if len(self.train_y) == 0 or len(self.valid_y) == 0:
            empty = "train" if len(self.train_y) == 0 else "valid"
            raise UserError(f"{source}: no decodable images left in the {empty} split")
        if self.task == "classify":
            missing = [c for i, c in enumerate(self.classes) if not (self.train_y == i).any()]
            if missing:
                raise UserError(f"{source}: class(es) {', '.join(missing)} have no training images")
            unscored = [c for i, c in enumerate(self.classes) if not (self.valid_y == i).any()]
            if unscored:  # trained on, never scored: its recall is unknown, and accuracy cannot show it
                warnings.warn(f"{source}: class(es) {', '.join(unscored[:10])}{' ...' if len(unscored) > 10 else ''} "
                              "have no validation images: their recall will show as n/a; move a few of their "
                              "images into the validation split to score them", stacklevel=2)

    # --- constructors: one per label source, all ending in the same Items ---
    @classmethod
    def from_folder(
        cls, path: str | Path, valid: str | None = None, valid_pct: float = 0.2, seed: int = 42,
        label_re: str | None = None, split: str = "stratified", keep_empty: bool = False, **kwargs,
    ) -> ImageData:
        """Classes from sub-folder names; `train/` + `valid|val/` if present, else a seeded `valid_pct` split
        (`split`: stratified by class with copies kept together, or the plain "random" one of older runs).
        `keep_empty`: an empty class folder is noted among the unused entries, not refused (`imgclf inspect`)."""
        check_settings({**kwargs, "valid_pct": valid_pct})  # before the files are listed and hashed
        multi = kwargs.get("task") == "multi_label"  # the same image in several class folders has each as a tag
        items = items_from_folder(path, valid=valid, valid_pct=valid_pct, seed=seed, label_re=label_re,
                                  multi_label=multi, stratify=kwargs.get("task", "classify") == "classify",
                                  split=split, keep_empty=keep_empty)
        labeller = f"regex {label_re!r} on file names" if label_re else "class folder names"
        if multi:
            labeller += " (an image in several folders has each as a tag)"
        return cls(items, source=str(path), labeller=labeller, **kwargs)

    @classmethod
    def from_name_re(cls, path: str | Path, pattern: str, valid_pct: float = 0.2, seed: int = 42,
                     **kwargs) -> ImageData:
        """Labels from a regex on file names, e.g. the pets' `^(.+)_\\d+\\.jpg$`."""
        return cls.from_folder(path, valid_pct=valid_pct, seed=seed, label_re=pattern, **kwargs)

    @classmethod
    def from_csv(cls, csv_file: str | Path, folder: str | Path | None = None, valid_pct: float = 0.2,
                 seed: int = 42, label_col: str | None = None, split: str = "stratified", **kwargs) -> ImageData:
        """Rows of `file,label[,is_valid]`, files relative to `folder` (default: beside the CSV); with
        `task="multi_label"` the label holds space-separated tags, with `task="regression"` a number
        (`label_col` names its column)."""
        check_settings({**kwargs, "valid_pct": valid_pct})  # before the files are listed and hashed
        items = items_from_csv(csv_file, folder=folder, valid_pct=valid_pct, seed=seed, label_col=label_col,
                               stratify=kwargs.get("task", "classify") == "classify", split=split)
        col = label_col or items.label_column
        kwargs.setdefault("target_name", col)
        return cls(items, source=str(csv_file), labeller=f"the {col} column of {Path(csv_file).name}", **kwargs)

    @classmethod
    def from_tensors(
        cls, train_images: torch.Tensor, train_labels: Sequence[int] | torch.Tensor, valid_images: torch.Tensor,
        valid_labels: Sequence[int] | torch.Tensor, classes: Sequence[str], train_paths: Sequence[str | Path] = (),
        valid_paths: Sequence[str | Path] = (), source: str = "tensors", labeller: str = "given labels", **kwargs,
    ) -> ImageData:
        """Images that are arrays, not files: uint8 (N, H, W) grey or (N, 3, H, W), any size, with class indices
        into `classes`; presized as decoded files are. `*_paths` name the items (default `train#0`, `valid#0`...)."""
        parts = []
        for name, x, y, ids in (("train", train_images, train_labels, train_paths),
                                ("valid", valid_images, valid_labels, valid_paths)):
            x, y = torch.as_tensor(x), torch.as_tensor(y).tolist()
            ids = [p if isinstance(p, Path) else Path(p) for p in ids] or [Path(f"{name}#{i}") for i in range(len(x))]
            if not len(x) == len(y) == len(ids):
                raise UserError(f"{source}: {len(x)} {name} images, {len(y)} labels and {len(ids)} paths")
            if any(not 0 <= i < len(classes) for i in y):
                raise UserError(f"{source}: {name} labels must lie in 0..{len(classes) - 1}")
            parts.append((x, ids, [str(classes[i]) for i in y]))
        (tx, tp, tl), (vx, vp, vl) = parts
        items = Items(tp + vp, tl + vl, [False] * len(tp) + [True] * len(vp))
        return cls(items, source=source, labeller=labeller, classes=[str(c) for c in classes], arrays=(tx, vx),
                   **kwargs)

    @classmethod
    def from_idx(cls, folder: str | Path, n_train: int | None = None, n_valid: int | None = None,
                 classes: Sequence[str] | None = None, **kwargs) -> ImageData:
        """MNIST-style IDX files (Fashion-MNIST's `train-images-idx3-ubyte.gz`...) with the official split:
        train-* to train, t10k-* to validate; `n_train` / `n_valid` keep the first so many. Class names:
        `classes`, else `classes.txt` beside the files, else Fashion-MNIST's when the folder name contains
        "fashion", else the digits (MNIST's files are named the same: the files cannot tell). All 70,000
        Fashion-MNIST images load in 2.6 s at `size=32`, 3.7 s at 64 (see `idx.presize_arrays`)."""
        s = load_idx(folder, n_train=n_train, n_valid=n_valid, classes=classes)
        return cls.from_tensors(s.train_images, s.train_labels, s.valid_images, s.valid_labels, s.classes,
                                s.train_paths, s.valid_paths, source=str(folder),
                                labeller=f"IDX label files, class names from {s.names_from}", **kwargs)

    @classmethod
    def from_files(cls, files: Sequence[str | Path], labels: Sequence[str], valid_pct: float = 0.2,
                   seed: int = 42, **kwargs) -> ImageData:
        check_settings({**kwargs, "valid_pct": valid_pct})  # before the files are listed and hashed
        items = items_from_files(files, labels, valid_pct=valid_pct, seed=seed,
                                 stratify=kwargs.get("task", "classify") == "classify")
        return cls(items, source="files", **kwargs)

    def native_short_side(self) -> float:
        """Median of min(width, height) of the training images as they came, before presizing."""
        if self.arrays is not None:
            return float(min(self.arrays[0].shape[-2:]))
        return median_short_side(self.train_paths)

    def resized(self, size: int, crop_pct: float | None = None, augment: Augment | None = None) -> ImageData:
        """The same images, split and order decoded at another size (the recipe search tries several; distill's
        teacher sees the student's images at its own size and crop, `augment` none).

        The split is this one's, near-duplicate moves included, not drawn and checked again: at another size the
        check could move other images. Files found undecodable are left out up front, so they are not warned
        about twice. Each split keeps its order, so row i is the same image at every size.
        """
        it = self.items
        if self.arrays is not None:  # rows of the given arrays, in their order (a given split: nothing moved)
            bad = {q for q, _ in self.skipped}
            order = [i for i, p in enumerate(it.paths) if p not in bad]
        else:
            where: dict[Path, deque[int]] = defaultdict(deque)
            for i, p in enumerate(it.paths):
                where[p].append(i)
            order = [where[p].popleft() for p in (*self.train_paths, *self.valid_paths)]
        items = Items([it.paths[i] for i in order], [it.labels[i] for i in order], [it.is_valid[i] for i in order],
                      [it.tags[i] for i in order] if it.tags is not None else None,
                      split_origin="checked", label_column=it.label_column)
        out = ImageData(items, size=size, bs=self.bs, workers=self.workers,
                        augment=self.augment if augment is None else augment, source=self.source,
                        progress=self.progress, labeller=self.labeller,
                        classes=self.classes if self.arrays is not None or self.task != "classify" else None,
                        arrays=self.arrays, task=self.task, stats=self.target_stats,
                        crop_pct=self.crop_pct if crop_pct is None else crop_pct)
        out.skipped, out.unused = list(self.skipped), self.unused
        out.near_duplicates = self.near_duplicates
        return out

    # --- loaders ---
    @property
    def target_stats(self) -> tuple[float, float] | None:
        """Regression's (mean, std) standardisation of the targets; None for classes and tags."""
        return (self.targets.mean, self.targets.std) if self.task == "regression" else None

    @property
    def n_train(self) -> int:
        return len(self.train_y)

    @property
    def n_valid(self) -> int:
        return len(self.valid_y)

    def loader(
        self, split: str, mean: Sequence[float], std: Sequence[float], view: str | None = None,
        device: torch.device | str = "cpu", seed: int = 0, bs: int | None = None, channels_last: bool = True,
    ) -> BatchLoader:
        """Batches of `split` ("train" or "valid"); train defaults to the augmented, shuffled view."""
        train = split == "train"
        images, targets = (self.train_images, self.train_y) if train else (self.valid_images, self.valid_y)
        view = view or ("augment" if train else "center")
        return BatchLoader(
            images, targets, self.size, tuple(mean), tuple(std), bs=bs or self.bs, view=view,
            augment=self.augment, shuffle=train and view == "augment", seed=seed, device=device,
            channels_last=channels_last,
        )

    def label_text(self, y: torch.Tensor) -> str:
        """One target row as a person reads it: the class, the tags joined by spaces, or the number."""
        if self.task == "multi_label":
            return " ".join(c for c, v in zip(self.classes, y.tolist(), strict=True) if v > 0.5)
        if self.task == "regression":
            return f"{float(y[0]) * self.targets.std + self.targets.mean:.4g}"
        return self.classes[int(y)]

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per class (per tag for multi-label; images with a target for regression) in each split."""
        def count(y: torch.Tensor) -> dict[str, int]:
            if self.task == "multi_label":
                return {c: int(n) for c, n in zip(self.classes, y.sum(0).tolist(), strict=True)}
            if self.task == "regression":
                return {self.classes[0]: len(y)}
            return {self.classes[k]: v for k, v in sorted(Counter(y.tolist()).items())}

        return {"train": count(self.train_y), "valid": count(self.valid_y)}

    # --- looking at the data (imgclf inspect) ---
    def summary(self, mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5),
                n_samples: int = 4, progress: bool = True) -> DataSummary:
        """Audit before training: counts, imbalance, sizes, skipped files, a pipeline trace, the batch,
        exact and near duplicates and train/valid leaks. `print()` it; `.to_dict()` is inspect.json.
        `mean`/`std`: the model's normalisation (the default backbone's by default)."""
        from .audit import summarize

        return summarize(self, mean, std, n_samples=n_samples, progress=progress)

    def show_batch(self, n: int = 16, mean: Sequence[float] = (0.5, 0.5, 0.5),
                   std: Sequence[float] = (0.5, 0.5, 0.5), seed: int = 0) -> Figure:
        """A matplotlib figure of `n` augmented training images with their labels, de-normalised."""
        from .show import show_batch

        return show_batch(self, n, mean, std, seed=seed)

    def __repr__(self) -> str:
        return (f"ImageData({self.source!r}: {describe_targets(self.task, self.classes)}, {self.n_train} train, "
                f"{self.n_valid} valid, size {self.size}, presize {self.presize})")
