"""Figures of the data: a training batch as the learner sees it (`show_batch`), and images per class.

Built with `matplotlib.figure.Figure` (no pyplot, no global state, no display needed), so a figure is
the same in a test, a notebook or a file. Readable up to ~40 classes: names are cut to fit their cell,
fonts shrink and the counts chart grows with the class count.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from os.path import commonprefix
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .sources import displayable

if TYPE_CHECKING:
    from .core import ImageData

TRAIN_COLOUR, VALID_COLOUR = "#1f77b4", "#ff7f0e"


def short(name: str, n: int = 20) -> str:
    """A class name cut to `n` characters for tick labels and legends, in the middle: names that share a
    prefix (`species_017`, `species_018`) often differ only at the end. Made `displayable` first."""
    name = displayable(name)
    if len(name) <= n:
        return name
    head = (n - 1) // 2
    return name[:head] + "…" + name[len(name) - (n - 1 - head):]


SEPARATORS = " _-./"


def short_names(names: Sequence[str], n: int = 20) -> list[str]:
    """Each name cut by `short`, kept distinct: names that `short` makes equal (`very long class name number one
    xxxxxxxxxx` and `... two xxxxxxxxxx` both read `very long…xxxxxxxxxx`) keep their start and the part where they
    differ instead (`very…one xxxxxxxxxx`, `very…two xxxxxxxxxx`), as does every other cut name then; if even that
    leaves two alike, every name is numbered (`1 very…`, `2 very…`) in `names` order, so that a legend or an axis
    never shows one label for two classes. Every name is made `displayable` first (every figure's names pass
    through here or `short`)."""
    names = [displayable(x) for x in names]
    out = [short(x, n) for x in names]
    if len(set(out)) == len(set(names)):
        return out
    distinct = set(names)  # every cut name is re-cut, so that alike names read alike
    out = [_differing(x, distinct - {x}, n) if len(x) > n else x for x in names]
    if len(set(out)) == len(set(names)):
        return out
    width = len(str(len(names)))
    return [f"{i + 1:>{width}} {short(x, max(n - width - 1, 4))}" for i, x in enumerate(names)]


def _differing(name: str, others: Collection[str], n: int) -> str:
    """`name` in at most `n` characters showing its start and where it parts from each of `others` (the first
    position it differs from the closest of them), e.g. `very…three xxxxxxx…`."""
    start = max((len(commonprefix([name, o])) for o in others), default=0)
    # begin the visible part at the word that differs (`…number one` -> `one`) when that word starts nearby
    back = max((name.rfind(c, max(0, start - 6), start) for c in SEPARATORS), default=-1)
    start = back + 1 if back >= 0 else start
    head = name[: max(1, n // 4)]
    head = head[: max((head.rfind(c) for c in SEPARATORS), default=-1)].rstrip(SEPARATORS) or head
    room = n - len(head) - 1  # the head and one "…"
    if start <= len(head):
        return short(name, n)
    tail = name[start:]
    return head + "…" + (tail if len(tail) <= room else tail[: room - 1] + "…")


def show_batch(
    data: ImageData, n: int = 16, mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5),
    seed: int = 0, ncols: int | None = None,
) -> Figure:
    """A grid of `n` augmented training images with their labels: the train loader's first batch,
    de-normalised (so `mean`/`std` change nothing you see, only the path the pixels take)."""
    dl = data.loader("train", mean, std, seed=seed, bs=max(1, min(n, data.n_train)), channels_last=False)
    x, y = next(iter(dl))
    m, s = dl.mean.view(1, -1, 1, 1), dl.std.view(1, -1, 1, 1)
    images = (x * s + m).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    labels = [data.label_text(t) for t in y]
    return image_grid(images, labels, ncols=ncols,
                      title=f"training batch: {len(labels)} augmented images at {data.size} px, as the model sees them")


def image_grid(images: Sequence[np.ndarray], titles: Sequence[str], title: str = "", ncols: int | None = None,
               cell: float = 2.2) -> Figure:
    """Images (H, W, 3 floats in 0..1 or uint8) in a grid, each titled; titles are cut to fit their cell."""
    k = len(images)
    ncols = ncols or max(1, math.ceil(math.sqrt(k)))
    nrows = max(1, math.ceil(k / ncols))
    fig = Figure(figsize=(cell * ncols, cell * nrows + 0.5), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    font = 10 if cell >= 2 else 8
    fit = int(cell * 72 / (0.6 * font))  # characters of ~0.6 em that fit the cell's width
    for ax in axes:
        ax.set_axis_off()
    for ax, img, t in zip(axes, images, titles, strict=False):
        ax.imshow(img)
        ax.set_title(short(t, fit), fontsize=font)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def plot_counts(counts: Mapping[str, Mapping[str, int]], title: str = "Images per class",
                max_classes: int = 60) -> Figure:
    """Horizontal bars of the images per class, train and valid side by side; class names on the y axis.

    More than `max_classes` classes: the largest and smallest halves by train count, and the title says so.
    """
    train, valid = counts["train"], counts.get("valid", {})
    classes = list(train)
    tr_all = [train[c] for c in classes]
    ratio = max(tr_all) / min(tr_all) if tr_all and min(tr_all) else float("inf")
    note = ""
    if len(classes) > max_classes:
        by_size = sorted(classes, key=lambda c: -train[c])
        keep = set(by_size[: max_classes // 2] + by_size[-(max_classes // 2):])
        note = f", the {max_classes // 2} largest and smallest of {len(classes)} classes"
        classes = [c for c in classes if c in keep]
    n = len(classes)
    font = 10 if n <= 20 else 8 if n <= 40 else 6
    fig = Figure(figsize=(7.5, max(2.5, n * font * 2.0 / 72 + 1.5)), layout="constrained")
    ax = fig.subplots()
    pos = np.arange(n)
    bar = 0.4
    ax.barh(pos - bar / 2, [train[c] for c in classes], bar, color=TRAIN_COLOUR, label="train")
    ax.barh(pos + bar / 2, [valid.get(c, 0) for c in classes], bar, color=VALID_COLOUR, label="valid")
    ax.set_yticks(pos, short_names(classes, 28), fontsize=font)
    ax.set_ylim(n - 0.5, -0.5)  # first class on top, as in the printed table
    ax.set_xlabel("images")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)  # beside the bars, never over them
    ax.set_title(f"{title} (train imbalance {ratio:.1f}x{note})", fontsize=11)
    return fig
