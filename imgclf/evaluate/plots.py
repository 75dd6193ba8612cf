"""Figures of an interpretation: confusion matrix, top losses, feature map. Each returns a matplotlib Figure.

Figures are built with `matplotlib.figure.Figure` (no pyplot, no global state, no display needed), so
they render the same in a test, a notebook (`display(fig)`) or a file (`fig.savefig(path)`).
Readable up to ~40 classes: fonts shrink and tick labels turn as classes grow; beyond `max_classes`
the confusion matrix shows the sub-matrix of the classes involved in the most errors and says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from ..data.show import short_names

WRONG, RIGHT = "#c62828", "#2e7d32"  # title colours of a wrong / right prediction


def _tick_font(n: int) -> float:
    return 10 if n <= 10 else 8 if n <= 20 else 7 if n <= 30 else 6


def most_confused_classes(cm: np.ndarray, k: int) -> np.ndarray:
    """Indices (in class order) of the `k` classes with the most errors, as actual or as predicted."""
    off = cm - np.diag(np.diag(cm))
    errors = off.sum(0) + off.sum(1)
    order = np.argsort(-errors, kind="stable")[:k]
    return np.sort(order)


def confusion_matrix_figure(cm: np.ndarray, classes: Sequence[str], normalize: bool = False,
                            max_classes: int = 40, subtitle: str = "") -> Figure:
    """Rows are actual classes, columns predicted; `normalize` divides each row by its total (recall).

    More than `max_classes` classes: the sub-matrix of the `max_classes` most confused ones is drawn
    (normalised by the full rows), the title says how many of how many. `subtitle` is a second title line.
    """
    cm = np.asarray(cm)
    n = len(classes)
    values = cm / np.maximum(cm.sum(1, keepdims=True), 1) if normalize else cm
    idx = np.arange(n)
    if n > max_classes:
        idx = most_confused_classes(cm, max_classes)
    sub = values[np.ix_(idx, idx)]
    shortened = short_names(classes)
    names = [shortened[i] for i in idx]
    m = len(idx)

    side = min(max(0.32 * m + 3.0, 5.0), 17.0)
    font = _tick_font(m)
    label_inches = max(map(len, names)) * 0.6 * font / 72  # a character is about 0.6 em wide
    upright = label_inches > 0.9 * (side - 1.0) / m  # x labels wider than a column: turn them upright
    # room for the labels on top of the matrix, so long class names do not shrink it
    fig = Figure(figsize=(side + 1.0 + label_inches, side + (label_inches if upright else 0.3)),
                 layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(sub, cmap="Blues", vmin=0, vmax=1 if normalize else max(1, int(sub.max())),
                   interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of the actual class" if normalize else "images")
    ax.set_xticks(range(m), names, fontsize=font)
    ax.set_yticks(range(m), names, fontsize=font)
    if upright:
        ax.tick_params(axis="x", labelrotation=90)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    if m <= 25:  # numbers in the cells while they fit
        cut = (1 if normalize else sub.max()) / 2
        for i in range(m):
            for j in range(m):
                v = sub[i, j]
                text = (f"{v:.2f}" if v else "0") if normalize else str(int(v))
                ax.text(j, i, text, ha="center", va="center", fontsize=max(5.0, font - 1),
                        color="white" if v > cut else "black")
    kind = "row-normalised\n(recall on the diagonal)" if normalize else "counts"
    notes = [x for x in (subtitle, f"the {m} most confused of {n} classes" if m < n else "") if x]
    ax.set_title(f"Confusion matrix: {kind}" + "".join(f"\n{x}" for x in notes))
    return fig


def top_losses_figure(images: Sequence[np.ndarray | None], titles: Sequence[str], wrong: Sequence[bool],
                      title: str = "Top losses") -> Figure:
    """A grid of images (H, W, 3 uint8; None for one that cannot be shown), each with its caption."""
    k = len(images)
    ncols = max(1, min(k, math.ceil(math.sqrt(k))))
    nrows = max(1, math.ceil(k / ncols))
    fig = Figure(figsize=(2.7 * ncols, 3.0 * nrows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes:
        ax.set_axis_off()
    for ax, img, text, bad in zip(axes, images, titles, wrong, strict=False):
        if img is None:
            ax.text(0.5, 0.5, "(image not available)", ha="center", va="center", fontsize=8)
        else:
            ax.imshow(img)
        ax.set_title(text, fontsize=8, color=WRONG if bad else RIGHT)
    if k == 0:
        axes[0].text(0.5, 0.5, "no images", ha="center", va="center")
    fig.suptitle(title)
    return fig


def _colours(n: int) -> list:
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["turbo"](x) for x in np.linspace(0.05, 0.95, n)]


def features_figure(pca: np.ndarray, tsne: np.ndarray | None, targets: np.ndarray, classes: Sequence[str],
                    wrong: np.ndarray | None = None, pca_variance: Sequence[float] = (),
                    tsne_targets: np.ndarray | None = None, tsne_wrong: np.ndarray | None = None,
                    note: str = "") -> Figure:
    """PCA and t-SNE of pooled features side by side, coloured by actual class; errors drawn as crosses.

    `tsne` is None when it was skipped (too few points): its panel then says why (`note`).
    `tsne_targets` / `tsne_wrong` describe the t-SNE points when they are a subsample.
    """
    n = len(classes)
    colours = _colours(n)
    legend_names = short_names(classes, 24)
    targets = np.asarray(targets)
    wrong = np.zeros(len(targets), bool) if wrong is None else np.asarray(wrong, bool)
    fig = Figure(figsize=(13, 6), layout="constrained")
    ax_pca, ax_tsne = fig.subplots(1, 2)

    def scatter(ax, xy, t, w) -> None:
        for c in range(n):
            ok, bad = (t == c) & ~w, (t == c) & w
            ax.scatter(xy[ok, 0], xy[ok, 1], s=16, color=colours[c], alpha=0.8, linewidths=0,
                       label=legend_names[c])
            if bad.any():
                ax.scatter(xy[bad, 0], xy[bad, 1], s=44, color=colours[c], marker="X", edgecolors="black",
                           linewidths=0.6)

    scatter(ax_pca, pca, targets, wrong)
    var = list(pca_variance) + [0.0, 0.0]
    ax_pca.set(title="PCA", xlabel=f"PC 1 ({var[0]:.0%} of variance)", ylabel=f"PC 2 ({var[1]:.0%} of variance)")
    if tsne is None:
        ax_tsne.set_axis_off()
        ax_tsne.text(0.5, 0.5, note or "t-SNE skipped", ha="center", va="center", wrap=True)
        ax_tsne.set_title("t-SNE")
    else:
        tt = targets if tsne_targets is None else np.asarray(tsne_targets)
        tw = wrong if tsne_wrong is None else np.asarray(tsne_wrong, bool)
        scatter(ax_tsne, tsne, tt, tw)
        ax_tsne.set(title="t-SNE" + (f" ({note})" if note else ""), xlabel="t-SNE 1", ylabel="t-SNE 2")
    handles, labels = ax_pca.get_legend_handles_labels()
    if wrong.any():
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], marker="X", color="grey", markeredgecolor="black", linestyle=""))
        labels.append("misclassified")
    ncol = max(1, math.ceil(len(labels) / 25))
    fig.legend(handles, labels, loc="outside right upper", fontsize=_tick_font(n) + 1, ncol=ncol,
               title="actual class", markerscale=1.5)
    fig.suptitle(f"Pooled features of {len(targets)} validation images")
    return fig


def reliability_figure(curves: Sequence[tuple[str, dict]], note: str = "") -> Figure:
    """Reliability diagram: per bin of top-1 confidence, the accuracy (markers) against the diagonal a calibrated
    model follows, one line per `(label, reliability dict)` (train/calibrate.py's `reliability`); below, how many
    images fall in each bin. Points under the diagonal are over-confident."""
    fig = Figure(figsize=(5.6, 6.2))
    gs = fig.add_gridspec(2, 1, height_ratios=(3, 1), hspace=0.08)
    ax, axc = fig.add_subplot(gs[0]), fig.add_subplot(gs[1])
    ax.plot([0, 1], [0, 1], ls="--", color="#888888", lw=1, label="calibrated")
    colours = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
    for k, (label, rel) in enumerate(curves):
        edges = np.asarray(rel["edges"])
        conf = [c for c in rel["confidence"] if c is not None]
        acc = [a for a in rel["accuracy"] if a is not None]
        colour = colours[k % len(colours)]
        ax.plot(conf, acc, marker="o", ms=4, lw=1.4, color=colour, label=f"{label} (ECE {rel['ece']:.3f})")
        width = (edges[1] - edges[0]) / (len(curves) + 0.5)
        axc.bar(edges[:-1] + width * (k + 0.25), rel["count"], width=width, align="edge", color=colour, alpha=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_xticklabels([])
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("Reliability: accuracy against confidence" + (f"\n{note}" if note else ""), fontsize=10)
    axc.set_xlim(0, 1)
    axc.set_xlabel("top-1 confidence (bins)")
    axc.set_ylabel("images")
    fig.subplots_adjust(left=0.13, right=0.97, top=0.9, bottom=0.09)
    return fig
