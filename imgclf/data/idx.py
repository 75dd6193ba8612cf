"""Images that come as arrays, not files: the IDX format of MNIST and Fashion-MNIST, and presizing arrays.

An IDX file is a magic number (two zero bytes, a type code, the number of dimensions), the dimensions as
big-endian int32, then the values; the sets ship as `train-images-idx3-ubyte(.gz)`,
`train-labels-idx1-ubyte(.gz)`, `t10k-images-idx3-ubyte(.gz)`, `t10k-labels-idx1-ubyte(.gz)`. The
official split is kept: train is train, valid is t10k.

Arrays become the same presized uint8 (3, P, P) tensors that decoding files gives (`decode.presize`'s
geometry and PIL bilinear resize, grey replicated to three channels), so everything after `ImageData`
cannot tell where an image came from. MNIST and Fashion-MNIST have identical file names, so the class
names cannot come from the files: they are `classes=`, else a `classes.txt` beside the files (one name a
line), else Fashion-MNIST's names when the folder (or its parent, as in torchvision's
`FashionMNIST/raw/`) is named with "fashion", else the digits "0".."9".
"""

from __future__ import annotations

import gzip
import math
import re
import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import UserError
from ..progress import bar as progress_bar
from .decode import default_workers, presize, presize_image
from .sources import require_folder

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
DIGITS = "the label digits"  # where the class names came from when nothing names them
ROLES = ("train-images", "train-labels", "t10k-images", "t10k-labels")
_NAME = re.compile(r"^(train|t10k)-(images|labels)[-.]idx\d-ubyte(\.gz)?$")
_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def idx_files(folder: str | Path) -> dict[str, Path]:
    """The IDX files in `folder` by role ("train-images", ...); uncompressed preferred over `.gz`."""
    root = Path(folder)
    found: dict[str, Path] = {}
    if not root.is_dir():
        return found
    for p in sorted(root.iterdir(), key=lambda p: p.suffix == ".gz"):  # plain files first
        m = _NAME.match(p.name)
        if m and p.is_file():
            found.setdefault(f"{m.group(1)}-{m.group(2)}", p)
    return found


def is_idx_folder(folder: str | Path) -> bool:
    """True when `folder` holds an MNIST-style training set (`train-images-idx3-ubyte[.gz]` or its labels)."""
    found = idx_files(folder)
    return "train-images" in found or "train-labels" in found


def _header(f, path: Path) -> tuple[int, tuple[int, ...]]:
    """(type code, dimensions) from an open IDX file's header."""
    head = f.read(4)
    if len(head) < 4 or head[0] or head[1] or head[2] not in _DTYPES or head[3] == 0:
        raise UserError(f"{path}: not an IDX file (bad magic number {head.hex() or 'empty'})")
    return head[2], struct.unpack(f">{head[3]}I", f.read(4 * head[3]))


def idx_shape(path: str | Path) -> tuple[int, ...]:
    """An IDX file's dimensions from its header alone (Fashion-MNIST's train images: (60000, 28, 28))."""
    path = Path(path)
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            return _header(f, path)[1]
    except (OSError, EOFError, struct.error) as e:
        raise UserError(f"{path}: cannot read IDX file ({e})") from None


def read_idx(path: str | Path, limit: int | None = None) -> np.ndarray:
    """The array in an IDX file (gzipped or not), native byte order; only the first `limit` records are read."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            code, dims = _header(f, path)
            n = dims[0] if limit is None else min(limit, dims[0])
            dtype = np.dtype(_DTYPES[code])
            want = n * math.prod(dims[1:]) * dtype.itemsize
            buf = f.read(want)
    except (OSError, EOFError, struct.error) as e:
        raise UserError(f"{path}: cannot read IDX file ({e})") from None
    if len(buf) < want:
        raise UserError(f"{path}: truncated IDX file ({len(buf)} of {want} bytes of data)")
    return np.frombuffer(buf, dtype).astype(dtype.newbyteorder("=")).reshape(n, *dims[1:])


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write `array` as an IDX file (gzipped when the name ends in .gz): for tests and subsets."""
    path = Path(path)
    a = np.asarray(array)
    code = next(c for c, t in _DTYPES.items() if np.dtype(t).kind == a.dtype.kind
                and np.dtype(t).itemsize == a.dtype.itemsize)
    data = a.astype(np.dtype(_DTYPES[code]), copy=False).tobytes()
    head = bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(head + data)
    return path


def class_names(folder: str | Path, n_labels: int, classes: Sequence[str] | None = None) -> tuple[list[str], str]:
    """Names for labels 0..n_labels-1 and where they came from (see the module docstring for the order); names
    given (`classes`, classes.txt) may be fewer, which `load_idx` reports with the first label left without one."""
    root = Path(folder).resolve()
    if classes is not None:
        names, origin = [str(c) for c in classes], "the classes argument"
    elif (root / "classes.txt").is_file():
        lines = (root / "classes.txt").read_text(encoding="utf-8").splitlines()
        names, origin = [s.strip() for s in lines if s.strip()], f"{root / 'classes.txt'}"
    elif any("fashion" in part.lower() for part in (root.name, root.parent.name)) and n_labels <= 10:
        names, origin = list(FASHION_MNIST_CLASSES), "Fashion-MNIST's (the folder name says fashion)"
    else:
        names, origin = [str(i) for i in range(n_labels)], DIGITS
    if len(set(names)) != len(names):
        raise UserError(f"{origin}: class names repeat")
    return names, origin


@dataclass
class IdxSet:
    """A split IDX data set: raw uint8 images (N, H, W), int64 labels, names and item ids."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    valid_images: torch.Tensor
    valid_labels: torch.Tensor
    classes: list[str]
    train_paths: list[Path]
    valid_paths: list[Path]
    names_from: str


def load_idx(folder: str | Path, n_train: int | None = None, n_valid: int | None = None,
             classes: Sequence[str] | None = None) -> IdxSet:
    """The official split of an MNIST-style folder: train-* for training, t10k-* for validation.

    `n_train` / `n_valid` keep the first so many of each (the files are already shuffled), reading only
    those bytes. Item ids name the file and the record: `<folder>/train-images-idx3-ubyte.gz#12345`.
    """
    root = require_folder(folder)
    found = idx_files(root)
    missing = [r for r in ROLES if r not in found]
    if missing:
        raise UserError(f"{root}: IDX data set lacks {', '.join(f'{r}-idx?-ubyte[.gz]' for r in missing)}")
    for flag, n in (("n_train", n_train), ("n_valid", n_valid)):
        if n is not None and n < 1:
            raise UserError(f"{flag} {n}: give at least 1")
    split = {}
    for name, limit in (("train", n_train), ("t10k", n_valid)):
        img_file, lab_file = found[f"{name}-images"], found[f"{name}-labels"]
        images, labels = read_idx(img_file, limit), read_idx(lab_file, limit)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise UserError(f"{img_file}: expected uint8 images (N, rows, cols), found {images.dtype} "
                            f"{tuple(images.shape)}")
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise UserError(f"{lab_file}: expected one integer label per image, found {labels.dtype} "
                            f"{tuple(labels.shape)}")
        if len(images) == 0:
            raise UserError(f"{img_file}: holds no images")
        if len(images) != len(labels):
            raise UserError(f"{img_file.name} holds {len(images)} images but {lab_file.name} {len(labels)} labels")
        if len(labels) and labels.min() < 0:
            raise UserError(f"{lab_file}: negative label {labels.min()}")
        ids = [root / f"{img_file.name}#{i}" for i in range(len(images))]
        split[name] = (torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)), ids)
    names, origin = class_names(root, _labels_in_a_row(split["train"][1], split["t10k"][1]), classes)
    _check_label_range(split, names, origin, found)
    return IdxSet(split["train"][0], split["train"][1], split["t10k"][0], split["t10k"][1], names,
                  split["train"][2], split["t10k"][2], origin)


def _labels_in_a_row(*labels: torch.Tensor) -> int:
    """n where labels 0..n-1 all occur and n does not: the digits' class count. A label past a gap is not a class
    of its own (one training label 42 among 0..9 made 33 classes, 32 of them empty): `_check_label_range` names it."""
    present = set(torch.cat(labels).unique().tolist())
    return next(n for n in range(len(present) + 1) if n not in present)


def _check_label_range(split: dict, names: Sequence[str], origin: str, found: dict[str, Path]) -> None:
    """A UserError naming the file and record of the first label without a class name, train-* first."""
    n = len(names)
    top = max(int(split[s][1].max()) for s in split)
    for name in ("train", "t10k"):
        labels = split[name][1]
        out = torch.nonzero(labels >= n).flatten()
        if len(out):
            i = int(out[0])
            why = (f"{origin}: {n} class names for labels 0..{top}" if origin != DIGITS else
                   f"no image has label {n}; to read {int(labels[i])} as a class, name the classes in a classes.txt "
                   "beside the files, one a line")
            raise UserError(f"{found[f'{name}-labels']}: label {int(labels[i])} at index {i} is outside 0..{n - 1} "
                            f"({why})")


def _presize_grey(a: np.ndarray, size: int) -> np.ndarray:
    """`decode.presize`'s geometry on one grey band (a third of the work of resizing RGB; identical values)."""
    return np.asarray(presize_image(Image.fromarray(a), size))


def presize_arrays(images: torch.Tensor | np.ndarray, size: int, workers: int = 0, desc: str = "presize",
                   progress: bool = True) -> torch.Tensor:
    """uint8 images (N, H, W) grey or (N, 3, H, W) RGB -> (N, 3, size, size) uint8, as decoding files gives.

    Grey images resize one band with PIL (the values `decode.presize` gives the RGB image, a third of the
    work), in chunks; on threads only for images of 64x64 px and more, where each resize is long enough to
    leave the GIL (RGB 128 px: 0.49 s vs 0.78 s per 2,000 on two threads; Fashion-MNIST's 28 px: 2.4 s vs
    2.0 s on one). Measured on the reference 2-core CPU, all 70,000 Fashion-MNIST images: 2.0 s to 37 px
    (`size=32`), 2.8 s to 73 px (`size=64`); `ImageData.from_idx` in all 2.6 s and 3.7 s (reading the
    gzipped files and naming 70,000 items 0.6 s). On the CPU shared with three other jobs, 4.2 s and 6.2 s.
    """
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8 or x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[1] != 3):
        raise ValueError(f"expected uint8 (N, H, W) or (N, 3, H, W) images, got {x.dtype} {tuple(x.shape)}")
    a = x.numpy() if x.ndim == 3 else x.permute(0, 2, 3, 1).numpy()
    out = torch.empty((len(a), 3, size, size), dtype=torch.uint8)
    chunk = 512

    def work(start: int) -> int:
        part = a[start : start + chunk]
        if x.ndim == 3:
            grey = np.stack([_presize_grey(im, size) for im in part])
            out[start : start + len(part)] = torch.from_numpy(grey)[:, None]
        else:
            out[start : start + len(part)] = torch.stack([presize(Image.fromarray(im), size) for im in part])
        return len(part)

    threads = (workers or default_workers()) if a.shape[1] * a.shape[2] >= 64 * 64 else 1
    with ThreadPoolExecutor(threads) as pool, \
            progress_bar(total=len(a), desc=desc, unit="img", enabled=progress) as bar:
        for n in pool.map(work, range(0, len(a), chunk)):
            bar.update(n)
    return out
