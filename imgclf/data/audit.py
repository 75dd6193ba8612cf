"""Audit a data set before training: what `imgclf inspect` prints and writes to `inspect.json`.

Counts per class and split, class imbalance, image sizes and modes (from file headers), files skipped
and why, entries not used as images (by kind: hidden, other extensions, dangling symlinks...), a trace
of a few items through the pipeline (file -> label -> decoded -> presized -> tensor, fastai's
`DataBlock.summary`), the batch the learner will see, and duplicates:

- exact: the same bytes (blake2b of the file);
- near: the same picture re-saved, resized, brightened, recoloured a little or mirrored (training
  flips, so a mirrored copy leaks like a copy). The fingerprint of an image is its 16x16 RGB thumbnail
  with each channel's best-fit plane (mean and linear ramps) removed, at unit length; two images are
  near duplicates when the cosine of their fingerprints, or of one's and the other's mirror, is >= 0.9.

Measured (hymenoptera, and 10,000 synthetic gradient-and-shapes images, bench/inspect.py): copies
re-saved at JPEG q30, resized to 40%, brightened 15%, desaturated 30%, mirrored or saved as PNG score
>= 0.974; the closest two distinct pictures score 0.81 (hymenoptera) and 0.82 (synthetic). Removing the
plane matters: with the mean alone, distinct synthetic images that share a smooth gradient scored up
to 0.92 in colour and 0.98 in grey. A 64-bit difference hash (dHash, as `imagehash` computes it) did
worse on both sides: copies up to 13 bits away while distinct photos sat 9 bits apart, and on smooth
images its bits are the sign of near-zero differences (it paired thousands of distinct synthetic ones).

Why from the files and not from `ImageData`'s presized tensors: one pass reads each file for its hash,
header and a reduced decode (PIL `draft` to >= 128 px), ~0.5 ms a file; reducing 10,000 presized
293 px tensors with torch took 9 s, and the files show the whole picture, not the center crop.
"""

from __future__ import annotations

import hashlib
import io
import os
import statistics
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from ..progress import bar as progress_bar
from .decode import BadImage, default_workers, file_warnings, open_image, peek_image, presize
from .targets import describe_targets

if TYPE_CHECKING:
    from .core import ImageData

DEFAULT_MEAN = DEFAULT_STD = (0.5, 0.5, 0.5)  # the default backbone's (EfficientNet-Lite0's timm config)
THUMB = 16  # fingerprint side: a 16x16 thumbnail
DRAFT = 128  # JPEGs decode reduced to >= this (PIL draft), so the thumbnail's box filter does the averaging
NEAR = 0.9  # cosine at or above which two fingerprints are the same picture (see the module docstring)
NOT_LOOKED = ", so near duplicates are not looked for"  # how a `TooAlike` message ends
FINE, FINE_NEAR = 32, 0.975  # where the presized images are at hand, pairs are confirmed on 32x32 grey ones
_ORIENTATION = 0x0112  # EXIF tag; values 5..8 turn the picture by 90 degrees, so width and height swap


@dataclass
class FileInfo:
    """What the header and one reduced decode say about a file."""

    path: Path
    split: str
    label: str
    digest: str = ""  # blake2b of the bytes
    width: int = 0  # upright, after EXIF orientation
    height: int = 0
    mode: str = ""
    format: str = ""
    error: str = ""  # why it could not be read, when it could not


@dataclass
class DuplicateGroup:
    """Files showing one picture: `kind` "exact" (same bytes) or "near" (same picture, other bytes)."""

    kind: str
    paths: list[Path]
    splits: list[str]
    labels: list[str]

    @property
    def leak(self) -> bool:
        """In train and in valid: validation scores a picture the model was trained on."""
        return "train" in self.splits and "valid" in self.splits

    @property
    def labels_differ(self) -> bool:
        return len(set(self.labels)) > 1

    @property
    def where(self) -> str:
        return "train+valid" if self.leak else self.splits[0]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "where": self.where, "leak": self.leak, "labels_differ": self.labels_differ,
                "files": [{"path": str(p), "split": s, "label": lab}
                          for p, s, lab in zip(self.paths, self.splits, self.labels, strict=True)]}


# ------------------------------------------------------------------------------------------- file scan
def _plane_basis(side: int) -> np.ndarray:
    """An orthonormal basis (side*side, 3) of the planes a + b*x + c*y over a side x side grid."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64) - (side - 1) / 2
    q, _ = np.linalg.qr(np.stack([np.ones(side * side), xx.ravel(), yy.ravel()], 1))
    return q.astype(np.float32)


_PLANES = {THUMB: _plane_basis(THUMB), FINE: _plane_basis(FINE)}


def thumbnail(img: Image.Image) -> np.ndarray:
    """The 16x16 RGB box-filtered thumbnail of `img`, as 768 uint8 (channel-major)."""
    return np.asarray(img.convert("RGB").resize((THUMB, THUMB), Image.Resampling.BOX)).transpose(2, 0, 1).ravel()


def fingerprints(thumbs: torch.Tensor, side: int = THUMB) -> torch.Tensor:
    """(N, 3 * side * side) thumbnails -> unit-length fingerprints: each channel less its best-fit plane
    (a + bx + cy).

    Zeros where no structure is left (a flat image or a pure gradient): those match only by their bytes.
    """
    plane = torch.from_numpy(_PLANES[side])
    x = thumbs.float().view(len(thumbs), 3, side * side)
    x = (x - (x @ plane) @ plane.T).flatten(1)
    norm = x.norm(dim=1, keepdim=True)
    return torch.where(norm > 4.0, x / norm.clamp(min=1e-6), torch.zeros_like(x))  # 4: ~0.1 level a pixel


def tensor_fingerprints(images: torch.Tensor, chunk: int = 256, side: int = THUMB) -> torch.Tensor:
    """`fingerprints` of presized uint8 (N, 3, P, P) tensors: the 16x16 box thumbnail by area pooling.

    For `ImageData`'s decoded images (the split's near-duplicate check, `dedup.py`): no second read of the files,
    at the cost of seeing only the presized center crop. Each thumbnail pixel averages a 4x4 grid of samples of
    its cell, not every pixel (at 256 px: 16 of 256): converting all 398 hymenoptera images to float took 1.9 s
    under load, the sampled ones 0.1 s; copies sample the same positions, so they still match."""
    n = len(images)
    step = max(1, images.shape[-1] // (side * 4))
    thumbs = torch.empty(n, 3 * side * side)
    for s in range(0, n, chunk):
        x = images[s : s + chunk, :, step // 2 :: step, step // 2 :: step].float()
        thumbs[s : s + chunk] = torch.nn.functional.adaptive_avg_pool2d(x, side).flatten(1).round()
    return fingerprints(thumbs, side)


def scan_files(
    paths: Sequence[Path], splits: Sequence[str], labels: Sequence[str], workers: int = 0, progress: bool = True,
) -> tuple[list[FileInfo], torch.Tensor]:
    """Hash, header and fingerprint of every file, in threads: (infos, (N, 768) float32 fingerprints)."""
    infos = [FileInfo(Path(p), s, lab) for p, s, lab in zip(paths, splits, labels, strict=True)]
    thumbs = np.zeros((len(infos), 3 * THUMB * THUMB), dtype=np.uint8)

    def work(i: int) -> None:
        info = infos[i]
        try:
            data = info.path.read_bytes()
            info.digest = hashlib.blake2b(data, digest_size=16).hexdigest()
            with file_warnings(None), peek_image(io.BytesIO(data)) as im:  # decoding names their warnings
                w, h = im.size
                turned = im.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8)
                info.width, info.height = (h, w) if turned else (w, h)
                info.mode, info.format = im.mode, im.format or ""
            thumbs[i] = thumbnail(open_image(info.path, min_size=DRAFT))
        except BadImage as e:
            info.error = str(e)
        except Exception as e:  # PIL raises several types for files that are not images
            info.error = f"not an image PIL can read ({type(e).__name__})"

    with ThreadPoolExecutor(workers or default_workers()) as pool:
        list(progress_bar(pool.map(work, range(len(infos))), total=len(infos), desc="audit files", unit="img",
                          enabled=progress))
    return infos, fingerprints(torch.from_numpy(thumbs))


def scan_arrays(
    arrays: Sequence[torch.Tensor], paths: Sequence[Path], splits: Sequence[str], labels: Sequence[str],
) -> tuple[list[FileInfo], torch.Tensor]:
    """`scan_files` for images that came as arrays (IDX): hashes, sizes and fingerprints from the pixels."""
    infos = [FileInfo(Path(p), s, lab) for p, s, lab in zip(paths, splits, labels, strict=True)]
    thumbs = np.zeros((len(infos), 3 * THUMB * THUMB), dtype=np.uint8)
    for i, x in enumerate(x for part in arrays for x in part):
        a = x.numpy()
        img = Image.fromarray(a if a.ndim == 2 else a.transpose(1, 2, 0))
        info = infos[i]
        info.digest = hashlib.blake2b(a.tobytes(), digest_size=16).hexdigest()
        info.width, info.height = img.size
        info.mode, info.format = img.mode, "array"
        thumbs[i] = thumbnail(img)
    return infos, fingerprints(torch.from_numpy(thumbs))


# ------------------------------------------------------------------------------------------- duplicates
def _mirror(prints: torch.Tensor, side: int) -> torch.Tensor:
    n = len(prints)
    return prints.view(n, 3, side, side).flip(-1).reshape(n, -1)


class TooAlike(ValueError):
    """The fingerprints cannot tell these images apart: most pairs pass the threshold (small grey images of a few
    kinds, e.g. Fashion-MNIST: at 10k+10k images the candidate pairs alone would take ~80 GB)."""


def _pairs_above(a: torch.Tensor, side: int, threshold: float, chunk: int = 2048,
                 max_pairs: int | None = None) -> torch.Tensor:
    """(K, 2) index pairs i < j with max(cos(a_i, a_j), cos(a_i, mirror(a_j))) >= threshold; `TooAlike` once
    more than `max_pairs` pass (memory stays bounded by one chunk)."""
    n, mirror = len(a), _mirror(a, side)
    out = [torch.zeros(0, 2, dtype=torch.long)]
    found = 0
    for s in range(0, n, chunk):
        block = a[s : s + chunk]
        sim = torch.maximum(block @ a[s:].T, block @ mirror[s:].T)  # columns j >= s: the upper triangle
        ij = torch.nonzero(sim >= threshold) + s
        out.append(ij[ij[:, 1] > ij[:, 0]])
        found += len(out[-1])
        if max_pairs is not None and found > max_pairs:
            raise TooAlike(f"{found}+ of {n * (n - 1) // 2} image pairs look alike to the fingerprint: it cannot "
                           f"tell these images apart{NOT_LOOKED}")
    return torch.cat(out)


def near_pairs(prints: torch.Tensor, threshold: float = NEAR) -> list[tuple[int, int]]:
    """Index pairs (i < j) whose fingerprints, or one's and the other's mirror, have cosine >= `threshold`.

    Two passes: all pairs on 8x8 thumbnails (the 16x16 ones pooled; 192 numbers) with a threshold 0.1
    lower, then the candidates on the full fingerprints. On 10,000 images 0.8 s instead of 3 s; copies
    score >= 0.97 on 8x8 thumbnails too, so the first pass drops none of them.
    """
    n = len(prints)
    if n < 2:
        return []
    coarse = torch.nn.functional.avg_pool2d(prints.view(n, 3, THUMB, THUMB), 2).reshape(n, -1)
    coarse = torch.nn.functional.normalize(coarse, dim=1)
    # real near duplicates are a few per image at most; far more candidates mean the thumbnails cannot tell
    # the images apart (TooAlike), and gathering them would not fit in memory
    cand = _pairs_above(coarse, THUMB // 2, threshold - 0.1, max_pairs=20 * n + 10_000)
    if len(cand) == 0:
        return []
    keep = []
    for s in range(0, len(cand), 65_536):  # bounded memory: 65k pairs x 2 x 768 floats
        c = cand[s : s + 65_536]
        a, b = prints[c[:, 0]], prints[c[:, 1]]
        sim = torch.maximum((a * b).sum(1), (a * _mirror(b, THUMB)).sum(1))
        keep.append(c[sim >= threshold])
    return [tuple(p) for p in torch.cat(keep).tolist()]


def _components(n: int, pairs: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Connected components (of two or more) of the graph on 0..n-1 with `pairs` as edges (union-find)."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        parent[root(i)] = root(j)
    groups = defaultdict(list)
    for i in range(n):
        groups[root(i)].append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


CHAIN_MIN, CHAIN_DENSITY = 5, 0.5  # a group this large whose members mostly do not match each other is a chain


def _copy_groups(n: int, pairs: Sequence[tuple[int, int]]) -> list[list[int]]:
    """`_components`, or `TooAlike` when a group is a chain rather than copies of one picture.

    Copies of one picture all match one another (a group of k has ~k(k-1)/2 pairs); distinct pictures that the
    fingerprint cannot tell apart link in long chains, a few pairs each. Measured on 300 Fashion-MNIST images (28 px
    grey silhouettes on black): 1,083 pairs joined 198 of them into 9 groups, and the split check moved 37-45 of 60
    validation images to training; JPEG-and-resize copies of the same images score >= 0.996."""
    groups = _components(n, pairs)
    big = {g[0]: g for g in groups if len(g) >= CHAIN_MIN}
    if big:
        where = {i: first for first, g in big.items() for i in g}
        edges: dict[int, int] = defaultdict(int)
        for i, _ in pairs:
            if i in where:
                edges[where[i]] += 1
        for first, g in big.items():
            if edges[first] < CHAIN_DENSITY * len(g) * (len(g) - 1) / 2:
                raise TooAlike(f"{len(g)} images form one chain of look-alikes ({edges[first]} matching pairs, copies "
                               f"would match all round): the fingerprint cannot tell these images apart{NOT_LOOKED}")
    return groups


def near_groups(prints: torch.Tensor, threshold: float = NEAR,
                image: Callable[[int], torch.Tensor] | None = None) -> list[list[int]]:
    """Groups (two or more indices, sorted) of fingerprints linked by `near_pairs`, transitively; `TooAlike`
    when the images cannot be told apart (too many pairs, or groups that are chains: `_copy_groups`).

    `image(i)`: the presized uint8 (3, P, P) image of fingerprint i, when at hand: each pair is then confirmed on
    32x32 fingerprints (`confirm_pairs`)."""
    pairs = near_pairs(prints, threshold)
    if image is not None:
        pairs = confirm_pairs(pairs, image)
    return _copy_groups(len(prints), pairs)


def confirm_pairs(pairs: Sequence[tuple[int, int]], image: Callable[[int], torch.Tensor],
                  threshold: float = FINE_NEAR) -> list[tuple[int, int]]:
    """The pairs whose 32x32 grey fingerprints (or one's and the other's mirror) still have cosine >= `threshold`.

    16x16 cannot tell small grey silhouettes apart: on 10 x 6 Fashion-MNIST images (28 px) distinct pictures of
    one kind scored 0.90-0.97 there, and the split check moved 4 of 12 validation images. On 32x32 grey
    fingerprints of the presized images those scored <= 0.964 over three draws, and their copies (upscaled, JPEG
    q70, brightened, mirrored) >= 0.99. Hymenoptera copies re-saved at JPEG q30, resized to 40%, brightened 15%
    or desaturated 30% each scored >= 0.986 (grey: a recoloured copy keeps its luminance); all four at once,
    >= 0.964, 95% of them >= 0.986. Only the few candidate images are pooled."""
    if not pairs:
        return []
    idx = sorted({i for pair in pairs for i in pair})
    at = {i: k for k, i in enumerate(idx)}
    grey = torch.stack([image(i) for i in idx]).float().mean(1, keepdim=True).round().to(torch.uint8)
    fine = tensor_fingerprints(grey.expand(-1, 3, -1, -1), side=FINE)
    mirror = _mirror(fine, FINE)
    return [(i, j) for i, j in pairs
            if max(float(fine[at[i]] @ fine[at[j]]), float(fine[at[i]] @ mirror[at[j]])) >= threshold]


def find_duplicates(
    infos: Sequence[FileInfo], prints: torch.Tensor, threshold: float = NEAR,
) -> tuple[list[DuplicateGroup], list[DuplicateGroup], str]:
    """(exact groups, near groups, why near duplicates were not looked for: "" when they were). A near group
    shows one picture in two or more different files; byte-identical copies inside it are listed too (they are
    also an exact group)."""
    by_digest: dict[str, list[int]] = defaultdict(list)
    for i, info in enumerate(infos):
        if not info.error:
            by_digest[info.digest].append(i)

    def group(kind: str, idx: Sequence[int]) -> DuplicateGroup:
        return DuplicateGroup(kind, [infos[i].path for i in idx], [infos[i].split for i in idx],
                              [infos[i].label for i in idx])

    exact = [group("exact", idx) for idx in by_digest.values() if len(idx) > 1]
    uniques = [idx for idx in by_digest.values()]  # one fingerprint per distinct content
    reps = torch.stack([prints[idx[0]] for idx in uniques]) if uniques else prints[:0]
    note = ""
    try:
        comps = near_groups(reps, threshold)
    except TooAlike as e:
        warnings.warn(str(e), stacklevel=2)
        comps, note = [], str(e)
    near = [group("near", sorted(i for u in comp for i in uniques[u])) for comp in comps]
    return sorted(exact, key=lambda g: g.paths[0]), sorted(near, key=lambda g: g.paths[0]), note


# ------------------------------------------------------------------------------------------- the summary
def _stats(values: Sequence[int]) -> dict[str, float]:
    if not values:
        return {"min": 0, "median": 0, "max": 0}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


@dataclass
class DataSummary:
    """Everything `imgclf inspect` reports; `str()` is the text it prints, `to_dict()` its inspect.json."""

    source: str
    labeller: str
    classes: list[str]
    size: int
    presize: int
    counts: dict[str, dict[str, int]]
    image_sizes: dict[str, dict[str, float]]
    modes: dict[str, int]
    formats: dict[str, int]
    skipped: list[tuple[Path, str]]
    trace: list[dict[str, Any]]
    batch: dict[str, Any]
    exact: list[DuplicateGroup]
    near: list[DuplicateGroup]
    near_threshold: float = NEAR
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    unused: dict[str, Any] = field(default_factory=dict)  # entries not used as images: `Unused.to_dict()`
    task: str = "classify"
    # images per split: the counts' rows add up to more for tags (an image under each of its tags)
    n_images: dict[str, int] = field(default_factory=dict)
    near_note: str = ""  # why the files' near duplicates were not looked for ("": they were)
    # what the split's own check did on the presized images (dedup.NearDuplicates.to_dict()): moves on a drawn split
    split_check: dict[str, Any] = field(default_factory=dict)

    @property
    def totals(self) -> dict[str, int]:
        return self.n_images or {k: sum(c.values()) for k, c in self.counts.items()}

    @property
    def imbalance(self) -> float:
        """Largest over smallest class count in the training split (1.0: balanced)."""
        n = [v for v in self.counts["train"].values() if v]
        return max(n) / min(n) if n else 0.0

    @property
    def leaks(self) -> list[DuplicateGroup]:
        return [g for g in (*self.exact, *self.near) if g.leak]

    def to_dict(self) -> dict[str, Any]:
        train = self.counts["train"]
        return {
            "source": self.source, "labeller": self.labeller, "classes": self.classes,
            "n_classes": len(self.classes), "size": self.size, "presize": self.presize, "counts": self.counts,
            "totals": self.totals, "task": self.task,
            "imbalance_ratio": self.imbalance,
            "largest_class": max(train, key=train.get), "smallest_class": min(train, key=train.get),
            "image_sizes": self.image_sizes, "modes": self.modes, "formats": self.formats,
            "skipped_files": [{"path": str(p), "reason": r} for p, r in self.skipped],
            "unused_entries": self.unused or {"total": 0, "counts": {}, "examples": {}},
            "trace": self.trace, "batch": self.batch,
            "duplicates": {
                "exact_method": "blake2b of the file bytes",
                "near_method": f"cosine of {THUMB}x{THUMB} RGB thumbnails less their best-fit planes (or one's "
                               f"mirror) >= {self.near_threshold}",
                "n_exact_groups": len(self.exact), "n_near_groups": len(self.near), "n_leaks": len(self.leaks),
                "near_checked": not self.near_note, "near_note": self.near_note,
                "exact": [g.to_dict() for g in self.exact], "near": [g.to_dict() for g in self.near],
                "split_check": self.split_check,
            },
            "notes": self.notes, "seconds": self.seconds,
        }

    def __str__(self) -> str:
        return format_summary(self)

    def __repr__(self) -> str:
        return format_summary(self)


def summarize(
    data: ImageData, mean: Sequence[float] = DEFAULT_MEAN, std: Sequence[float] = DEFAULT_STD, n_samples: int = 4,
    threshold: float = NEAR, workers: int = 0, progress: bool = True,
) -> DataSummary:
    """Audit `data` (see the module docstring); `mean`/`std` are the model's, for the batch figures."""
    t0 = time.perf_counter()
    paths = [*data.train_paths, *data.valid_paths]
    splits = ["train"] * data.n_train + ["valid"] * data.n_valid
    labels = [data.label_text(y) for y in (*data.train_y, *data.valid_y)]
    if data.arrays is not None:  # IDX and other array data: no files to open
        infos, prints = scan_arrays(data.arrays, paths, splits, labels)
    else:
        infos, prints = scan_files(paths, splits, labels, workers=workers, progress=progress)
    skipped = list(data.skipped) + [(i.path, i.error) for i in infos if i.error]
    good = [i for i in infos if not i.error]
    exact, near, near_note = find_duplicates(infos, prints, threshold)
    counts = {s: {c: 0 for c in data.classes} for s in ("train", "valid")}
    if data.task == "classify":
        for info in good:
            counts[info.split][info.label] += 1
    else:  # tags and numbers: per-tag counts (or the target's), from the encoded targets
        counts = data.counts()
    s = DataSummary(
        source=data.source, labeller=data.labeller, classes=list(data.classes),
        size=data.size, presize=data.presize, counts=counts,
        image_sizes={"width": _stats([i.width for i in good]), "height": _stats([i.height for i in good])},
        modes=dict(Counter(i.mode for i in good).most_common()),
        formats=dict(Counter(i.format for i in good).most_common()),
        skipped=sorted(skipped), trace=trace_items(data, infos, mean, std, n_samples),
        batch=batch_figures(data, mean, std), exact=exact, near=near, near_threshold=threshold,
        unused=data.unused.to_dict(), task=data.task, n_images={"train": data.n_train, "valid": data.n_valid},
        near_note=near_note, split_check=data.near_duplicates.to_dict() if data.near_duplicates else {},
    )
    s.notes = advice(s, good)
    s.seconds = time.perf_counter() - t0
    return s


def trace_items(data: ImageData, infos: Sequence[FileInfo], mean: Sequence[float], std: Sequence[float],
                n: int = 4) -> list[dict[str, Any]]:
    """A few training items followed through the pipeline: the first file of each of the first `n` classes."""
    dl = data.loader("train", mean, std, channels_last=False, seed=0)
    firsts: dict[str, FileInfo] = {}
    for info in infos:
        if info.split == "train" and not info.error:
            firsts.setdefault(info.label, info)
    out = []
    for label in [c for c in data.classes if c in firsts][:n]:
        info = firsts[label]
        try:
            img = open_image(info.path, min_size=data.presize)
        except BadImage:
            continue
        item = presize(img, data.presize)
        x = dl.transform(item[None])
        out.append({
            "path": str(info.path), "label": label,
            "file": {"format": info.format, "mode": info.mode, "size": [info.width, info.height]},
            "decoded": {"mode": img.mode, "size": list(img.size)},
            "presized": {"shape": list(item.shape), "dtype": str(item.dtype).replace("torch.", "")},
            "tensor": {"shape": list(x.shape[1:]), "dtype": str(x.dtype).replace("torch.", "")},
        })
    return out


def batch_figures(data: ImageData, mean: Sequence[float], std: Sequence[float]) -> dict[str, Any]:
    """Shape, dtype and value range of the first training batch, as the learner's loader yields it."""
    dl = data.loader("train", mean, std, seed=0)
    x, y = next(iter(dl))
    return {
        "x_shape": list(x.shape), "x_dtype": str(x.dtype).replace("torch.", ""),
        "channels_last": bool(x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)),
        "x_min": float(x.min()), "x_max": float(x.max()), "x_mean": float(x.mean()), "x_std": float(x.std()),
        "y_shape": list(y.shape), "y_dtype": str(y.dtype).replace("torch.", ""),
        "batches_per_epoch": len(dl), "mean": list(mean), "std": list(std), "view": dl.view,
    }


# unused kinds that are most likely a mistake (the others, hidden files and notes.txt, are ordinary)
_BROKEN = ("dangling_symlink", "symlink_loop", "directory_named_like_image", "unreadable", "not_a_file")


def advice(s: DataSummary, good: Sequence[FileInfo]) -> list[str]:
    """What to do about what the audit found: one line each, most serious first."""
    notes = []
    empty = s.unused.get("examples", {}).get("empty_class_folder", [])
    if empty:
        n = s.unused["counts"]["empty_class_folder"]
        notes.append(f"{n} class folder(s) without images ({', '.join(Path(p).name for p in empty)}"
                     f"{' ...' if n > len(empty) else ''}): `imgclf train` stops on them; fill or remove them")
    leaks = s.leaks
    if leaks:
        notes.append(f"{len(leaks)} picture(s) in both train and valid: validation overstates accuracy; "
                     "remove one copy of each")
    conflicts = [g for g in (*s.exact, *s.near) if g.labels_differ]
    if conflicts:
        notes.append(f"{len(conflicts)} duplicate group(s) with different labels: at least one label in each is wrong")
    if s.skipped:
        notes.append(f"{len(s.skipped)} file(s) skipped (listed above): fix or delete them")
    broken = {k: n for k, n in s.unused.get("counts", {}).items() if k in _BROKEN}
    if broken:
        notes.append(f"{sum(broken.values())} broken or misleading entr(ies) not used ("
                     + ", ".join(f"{n} {k}" for k, n in broken.items()) + ", listed above): fix or delete them")
    if s.imbalance >= 3:
        train = s.counts["train"]
        notes.append(f"classes are imbalanced ({s.imbalance:.1f}x, {min(train, key=train.get)!r} smallest): "
                     "accuracy can hide a poor recall on the small classes; check per-class scores and balanced "
                     "accuracy (train's --balance auto acts from 3x: class weights for a pretrained body, the sampler "
                     "from scratch; data/samplers.py)")
    missing = [c for c, n in s.counts["valid"].items() if n == 0]
    if missing:
        notes.append(f"no validation images for {', '.join(map(repr, missing[:10]))}"
                     + (" ..." if len(missing) > 10 else ""))
    few = [c for c, n in s.counts["valid"].items() if 0 < n < 5]
    if few:
        notes.append(f"{len(few)} class(es) with fewer than 5 validation images: their scores are noisy")
    small = sum(min(i.width, i.height) < s.size for i in good)
    if good and small / len(good) > 0.25:
        short = statistics.median(min(i.width, i.height) for i in good)
        notes.append(f"{small} of {len(good)} images are smaller than --size {s.size} (median short side "
                     f"{short:g} px) and are upscaled, which adds no detail; a smaller --size trains faster")
    dups = sum(len(g.paths) - 1 for g in s.exact if not g.leak)
    if dups:
        notes.append(f"{dups} exact copies within a split: they weigh those pictures twice; remove them")
    return notes


# ------------------------------------------------------------------------------------------- text
def imbalance_text(counts: dict[str, int]) -> str:
    """`3.00 ('ants' 12 / 'bees' 4)`, or `1.00 (all classes 8)`: a class named once, never as both ends. Names are
    quoted: `ants ` (a trailing space) and `Ants` must read as what they are. Empty classes do not count, as in
    `DataSummary.imbalance`."""
    counts = {c: n for c, n in counts.items() if n}
    if not counts:
        return "n/a (no images)"
    big, small = max(counts, key=counts.get), min(counts, key=counts.get)
    ratio = counts[big] / counts[small] if counts[small] else float("inf")
    if counts[big] == counts[small]:
        return f"{ratio:.2f} (all classes {counts[big]})"
    return f"{ratio:.2f} ({big!r} {counts[big]} / {small!r} {counts[small]})"


def _rel(path: Path, root: str) -> str:
    try:
        return os.path.relpath(path, root) if root else str(path)
    except ValueError:  # another drive on Windows
        return str(path)


def _root(s: DataSummary) -> str:
    paths = [t["path"] for t in s.trace] + [str(p) for g in (*s.exact, *s.near) for p in g.paths]
    paths += [str(p) for p, _ in s.skipped]
    if os.path.isdir(s.source):
        return s.source
    try:
        return os.path.commonpath(paths) if len(paths) > 1 else ""
    except ValueError:
        return ""


def _groups_text(title: str, groups: Sequence[DuplicateGroup], root: str, limit: int) -> list[str]:
    if not groups:
        return [f"{title}: none"]
    n_leak = sum(g.leak for g in groups)
    lines = [f"{title}: {len(groups)} group(s)" + (f", {n_leak} across train and valid (leak)" if n_leak else "")]
    for g in sorted(groups, key=lambda g: (not g.leak, not g.labels_differ))[:limit]:
        tags = ("[leak] " if g.leak else "") + ("[labels differ] " if g.labels_differ else "")
        files = ", ".join(f"{_rel(p, root)} ({lab})" for p, lab in zip(g.paths[:6], g.labels, strict=False))
        more = f" and {len(g.paths) - 6} more" if len(g.paths) > 6 else ""
        lines.append(f"  {tags}{files}{more}")
    if len(groups) > limit:
        lines.append(f"  ... {len(groups) - limit} more in inspect.json")
    return lines


def format_summary(s: DataSummary, max_classes: int = 50, max_groups: int = 10) -> str:
    """The report `imgclf inspect` prints: counts, sizes, trace, batch, duplicates, then advice."""
    root = _root(s)
    train, valid = s.counts["train"], s.counts["valid"]
    width = max(12, *(len(c) for c in s.classes[:max_classes]))
    unit = {"multi_label": "tag", "regression": "target"}.get(s.task, "class")
    lines = [f"data: {s.source}",
             f"{describe_targets(s.task, s.classes)}, labels from {s.labeller}; size {s.size} "
             f"(presized {s.presize})", "",
             f"{unit:<{width}}  {'train':>7}  {'valid':>7}"]
    for c in s.classes[:max_classes]:
        lines.append(f"{c:<{width}}  {train[c]:>7}  {valid[c]:>7}")
    if len(s.classes) > max_classes:
        lines.append(f"... {len(s.classes) - max_classes} more classes in inspect.json")
    lines.append(f"{'images':<{width}}  {s.totals['train']:>7}  {s.totals['valid']:>7}"
                 + ("  (an image counts under each of its tags)" if s.task == "multi_label" else ""))
    if s.task == "classify":
        lines.append(f"imbalance (largest / smallest train class): {imbalance_text(train)}")
    lines.append("")
    w, h = s.image_sizes["width"], s.image_sizes["height"]
    lines += [f"image width  min {w['min']:g}  median {w['median']:g}  max {w['max']:g}",
              f"image height min {h['min']:g}  median {h['median']:g}  max {h['max']:g}",
              "modes: " + ", ".join(f"{m} {n}" for m, n in s.modes.items())
              + "; formats: " + ", ".join(f"{f} {n}" for f, n in s.formats.items())]
    lines.append(f"skipped: {len(s.skipped)} file(s)" + (":" if s.skipped else ""))
    lines += [f"  {_rel(p, root)}: {why}" for p, why in s.skipped[:20]]
    if len(s.skipped) > 20:
        lines.append(f"  ... {len(s.skipped) - 20} more in inspect.json")
    counts = s.unused.get("counts", {})
    lines.append(f"not used: {sum(counts.values())} entr(ies)" + (":" if counts else ""))
    for kind, n in counts.items():
        shown = [_rel(Path(p), root) for p in s.unused["examples"].get(kind, [])]
        more = f" and {n - len(shown)} more" if n > len(shown) else ""
        lines.append(f"  {kind} {n}: {', '.join(shown)}{more}")
    lines += ["", "trace: file -> label -> decoded -> presized -> tensor"]
    for t in s.trace:
        f, d = t["file"], t["decoded"]
        lines += [f"  {_rel(Path(t['path']), root)}",
                  f"      {f['format']} {f['size'][0]}x{f['size'][1]} {f['mode']} -> label {t['label']!r} "
                  f"-> decoded {d['size'][0]}x{d['size'][1]} {d['mode']} "
                  f"-> presized {'x'.join(map(str, t['presized']['shape']))} {t['presized']['dtype']} "
                  f"-> tensor {'x'.join(map(str, t['tensor']['shape']))} {t['tensor']['dtype']}"]
    b = s.batch
    lines += [f"training batch: x {'x'.join(map(str, b['x_shape']))} {b['x_dtype']}"
              f"{' channels_last' if b['channels_last'] else ''}, values {b['x_min']:.2f}..{b['x_max']:.2f} "
              f"(mean {b['x_mean']:.2f}, std {b['x_std']:.2f}); y {'x'.join(map(str, b['y_shape']))} "
              f"{b['y_dtype']}; {b['batches_per_epoch']} batches per epoch", ""]
    lines += _groups_text("exact duplicates (same bytes)", s.exact, root, max_groups)
    near_title = f"near duplicates (same picture, cosine >= {s.near_threshold})"
    if s.near_note:  # "none" would read as "looked for, found none"
        lines.append(f"{near_title}: not looked for: {s.near_note.removesuffix(NOT_LOOKED)}")
    else:
        lines += _groups_text(near_title, s.near, root, max_groups)
    moved = s.split_check.get("moved", [])
    if moved:  # the split's own check, on the presized pixels with a finer confirmation: it found some
        e = s.split_check["examples"][0]
        lines.append(f"split: {len(moved)} validation image(s) moved to training as near duplicates of training "
                     f"images (found on the presized pixels), e.g. {e[0]} ~ {e[1]}; listed in inspect.json")
    if s.notes:
        lines += ["", "to act on:"] + [f"  - {n}" for n in s.notes]
    return "\n".join(lines)
