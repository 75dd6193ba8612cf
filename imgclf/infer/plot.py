"""Each image beside a bar chart of its top-k classes: the sanity check of PyTorch's flower-classifier tutorial.

A glance shows whether the model is sure, and of what: a tall first bar on the right class, or two
close bars between classes that look alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..data.decode import BadImage, open_image, presize
from ..data.sources import displayable
from .predictor import Prediction

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MAX_PLOTTED = 16
PER_ROW = 2  # image + bars pairs side by side


def plot_topk(preds: Sequence[Prediction], k: int = 5, size: int = 224) -> Figure:
    """A matplotlib Figure: for each prediction (its `path` is the image; at most 16) the image, presized
    to a `size` square as the model saw it before its center crop, beside a horizontal bar chart of its top-k
    classes with their probabilities, best on top. A file that no longer decodes shows as an empty frame."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display (as evaluate/plots.py)

    preds = list(preds)[:MAX_PLOTTED]
    if not preds:
        raise ValueError("plot_topk: no predictions to plot")
    rows = -(-len(preds) // PER_ROW)
    cols = 2 * min(PER_ROW, len(preds))
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False, gridspec_kw={"width_ratios": [1, 1.3] * (cols // 2)})
    for i, ax in enumerate(axes.flat):
        j, is_bars = divmod(i, 2)
        if j >= len(preds):
            ax.axis("off")
            continue
        p = preds[j]
        if is_bars:
            _bars(ax, p, k)
        else:
            _image(ax, p, size)
    fig.tight_layout()
    return fig


def _image(ax, p: Prediction, size: int) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    name = displayable(Path(p.path).name) if p.path else ""  # a non-UTF-8 name: matplotlib refused it
    ax.set_title(name if len(name) <= 28 else name[:25] + "...", fontsize=8)
    if p.path:
        try:
            ax.imshow(presize(open_image(p.path, size), size).permute(1, 2, 0).numpy())
        except BadImage:
            pass


def _bars(ax, p: Prediction, k: int) -> None:
    top = p.topk(k)
    labels = [c for c, _ in top][::-1]
    probs = [q for _, q in top][::-1]
    colours = ["#cccccc"] * (len(top) - 1) + ["#2a6fdb"]
    ax.barh(range(len(top)), probs, color=colours)
    ax.set_yticks(range(len(top)), [c if len(c) <= 18 else c[:15] + "..." for c in labels], fontsize=8)
    ax.set_xlim(0, 1)
    ax.tick_params(axis="x", labelsize=7)
    for y, q in enumerate(probs):  # the figure beside a short bar, inside a long one
        inside = q > 0.8
        ax.text(q - 0.02 if inside else q + 0.02, y, f"{q:.2f}", va="center", ha="right" if inside else "left",
                color="white" if inside else "black", fontsize=7)
    ax.set_title(f"{p.label or '(no tag)'} ({p.confidence:.2f})", fontsize=9)
