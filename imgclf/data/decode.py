"""Decode any image file into an RGB uint8 tensor at a presized resolution, once per item.

Presizing (fastai's idea) resizes each image once to a square a little larger than the training size;
the random augmentation later crops and warps that on the batch, resampling only once. Large JPEGs
decode reduced with PIL's `draft` (DCT scaling): a 2592x1944 photo presized to 256 decodes about 8x
faster than at full size.
"""

from __future__ import annotations

import io
import os
import re
import statistics
import threading
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..progress import bar as progress_bar
from . import ahead

if TYPE_CHECKING:
    import torch


CROP_PCT = 0.875  # validation crop: the ImageNet convention the pretrained backbones were scored with


def presize_for(size: int, crop_pct: float = CROP_PCT) -> int:
    """The presized square that a `size` training crop is taken from (256 for 224)."""
    return int(round(size / crop_pct))


class BadImage(Exception):
    """A file that is not a decodable image; the message says why."""


class TooLarge(BadImage):
    """An image with more pixels than allowed (a decompression bomb, or over a server's stricter limit)."""


def _to_rgb(img: Image.Image) -> Image.Image:
    """Every PIL mode to 8-bit RGB: palette/alpha over white, 16/32-bit and float rescaled by range."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        if img.mode.startswith("I;16") or hi > 255:
            lo, hi = (0.0, 65535.0) if lo >= 0 and hi <= 65535 else (lo, hi)
        elif img.mode == "F" and hi <= 1.0:
            lo, hi = 0.0, 1.0
        else:
            lo, hi = 0.0, 255.0
        a = np.clip((a - lo) / max(hi - lo, 1e-12) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def rgb_image(img: Image.Image) -> Image.Image:
    """A PIL image the caller opened, made as `open_image` makes a file: upright per its EXIF orientation, then
    RGB with transparency over white. `img.convert("RGB")` would keep the pixels under the alpha and ignore the
    orientation: the same PNG scored 0.778 from its path and 0.798 as a PIL image."""
    return _to_rgb(ImageOps.exif_transpose(img))


def _reason(e: Exception) -> str:
    """Why PIL could not read a file, in a few words (its exception types vary by format)."""
    if isinstance(e, UnidentifiedImageError):
        return "not an image PIL can read"
    if isinstance(e, Image.DecompressionBombError):  # > 2x MAX_IMAGE_PIXELS: refused before decoding
        n = [int(d) for d in re.findall(r"\d+", str(e))] + [0, 0]
        return (f"too large ({n[0] / 1e6:.0f} Mpx, over PIL's decompression-bomb limit of {n[1] / 1e6:.0f} Mpx; "
                "raise PIL.Image.MAX_IMAGE_PIXELS if the image is genuine)")
    if isinstance(e, FileNotFoundError):
        return "file not found"
    if isinstance(e, PermissionError):
        return "permission denied"
    return f"cannot decode ({e or type(e).__name__})"


def _huge(img: Image.Image) -> list[str]:
    """Between 1x and 2x PIL's pixel limit (89-179 Mpx) PIL decodes with an anonymous warning; ours says the size
    (`file_warnings` puts the file's name in front)."""
    limit = Image.MAX_IMAGE_PIXELS
    w, h = img.size
    if limit and w * h > limit:
        return [f"{w}x{h} px ({w * h / 1e6:.0f} Mpx, over PIL's {limit / 1e6:.0f} Mpx decompression-bomb warning "
                f"limit); decoded anyway, ~{w * h * 3 >> 20} MiB"]
    return []


# `warnings.catch_warnings` swaps process-wide state (the filters and the hook), so two threads inside it at once
# can leave each other's hook in place; reading a header or EXIF under it is one thread at a time (an RLock:
# `file_warnings` may hold it around `peek_image`). Those parts are Python that holds the GIL anyway; the pixel
# decoding, where PIL releases the GIL and the threads pay off, runs outside it.
_PIL_LOCK = threading.RLock()
_SAID: set[tuple[str, str]] = set()  # (kind, message) already said in this process: once per file and kind


@contextmanager
def file_warnings(name: str | Path | None, kind: str = "decode", once: bool = True) -> Iterator[list[str]]:
    """PIL's warnings while the file `name` is read, said again with its name in front: PIL's name no file
    (`Corrupt EXIF data.  Expecting to read 12 bytes but only got 8.`, from the EXIF parsed when a JPEG opens).
    Yields a list to which the caller adds messages of its own about the file (`_huge`).

    Each message is said once per file and `kind` ("header": `check_header`; "decode": `open_image`) in this
    process: `imgclf inspect` opens a file three times (decoding, the audit's scan, its trace) and `imgclf train`
    twice (the plan's timing sample, decoding), and a user saw the same warning once per opening. `once=False`
    (an upload's bytes, all named "upload"): said every time. `name` None (a caller that only peeks, whose files
    are named when they are decoded): PIL's warnings are dropped. PIL's own decompression-bomb warning, which
    names no file, is never passed on."""
    with _PIL_LOCK:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            extra: list[str] = []
            try:
                yield extra
            finally:
                said = [(w.category, str(w.message).strip()) for w in caught] + [(UserWarning, m) for m in extra]
        # re-warned here, outside `catch_warnings` but still under the lock: no other thread is recording then
        if name is None:
            return
        for category, message in said:
            text = f"{name}: {message}"
            if once:
                if (kind, text) in _SAID:
                    continue
                _SAID.add((kind, text))
            warnings.warn(text, category, stacklevel=4)


def peek_image(source: str | Path | io.BytesIO) -> Image.Image:
    """`Image.open` (the header only) with PIL's warnings dropped: its decompression-bomb warning and its EXIF
    warnings name no file, and a caller that only peeks (sizes, the audit's scan) has its files named where they
    are checked or decoded (`check_header`, `open_image`). EXIF parsed after this, e.g. a PNG's `getexif()`, may
    warn: do it inside `file_warnings(None)`."""
    with file_warnings(None):
        return Image.open(source)


def check_header(path: str | Path) -> None:
    """Raise `BadImage` for what the header alone shows (empty, not an image, too large); nothing decoded."""
    try:
        if os.path.getsize(path) == 0:
            raise BadImage("empty file (0 bytes)")
        with file_warnings(path, "header") as said, Image.open(path) as img:
            said += _huge(img)
    except BadImage:
        raise
    except Exception as e:  # PIL raises many types for broken files; each becomes one named skip
        raise BadImage(_reason(e)) from None


def open_image(source: str | Path | bytes, min_size: int | None = None, max_pixels: int | None = None
               ) -> Image.Image:
    """An RGB image upright per its EXIF orientation; JPEGs decode reduced to >= `min_size` on each side.

    `source` is a path or a file's bytes (an upload: the server decodes exactly as `predict` does).
    Any failure is a `BadImage` whose message says why (empty, not an image, truncated, too large): the
    caller skips the file and names it. The first frame of an animation is the image. `max_pixels` refuses
    larger images from the header (`TooLarge`), before decoding: PIL itself only warns up to twice its limit,
    and a 20 MB PNG can hold gigapixels of zeros. PIL's warnings while the header and EXIF are read come back
    naming the file (`file_warnings`)."""
    upload = isinstance(source, bytes)
    name = "upload" if upload else source  # every upload is "upload": its warnings are said each time
    try:
        if (len(source) if upload else os.path.getsize(source)) == 0:
            raise BadImage("empty file (0 bytes)")
        with io.BytesIO(source) if upload else open(source, "rb") as f:
            with file_warnings(name, once=not upload) as said:  # the header (a JPEG's EXIF is parsed as it opens)
                img = Image.open(f)
                w, h = img.size
                if max_pixels and w * h > max_pixels:
                    raise TooLarge(f"{w}x{h} pixels is over the limit of {max_pixels:,} (a decompression bomb?)")
                said += _huge(img)
                if min_size and img.format == "JPEG":
                    img.draft("RGB", (min_size, min_size))
            img.load()  # the pixels, outside the lock: PIL releases the GIL here
            with file_warnings(name, once=not upload):  # other formats: a PNG may hold its EXIF after its pixels
                img.getexif()
            return _to_rgb(ImageOps.exif_transpose(img))
    except BadImage:
        raise
    except Image.DecompressionBombError as e:
        raise TooLarge(_reason(e)) from None
    except Exception as e:  # PIL raises many types for broken files (OSError, SyntaxError, struct.error...)
        raise BadImage(_reason(e)) from None


def presize_image(img: Image.Image, size: int) -> Image.Image:
    """The center square of `img` resampled to `size` x `size`, in any PIL mode: presizing's one geometry.

    The square is cut from the source before resampling (`resize(box=...)`), so an image of extreme shape
    (4000x3) costs what its square does: resizing it whole first would make a 341,333x256 image."""
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side),
                      reducing_gap=3.0 if size / side < 0.5 else None)


def presize(img: Image.Image, size: int) -> torch.Tensor:
    """Resize the short side to `size` and center-crop a square: a (3, size, size) uint8 tensor."""
    import torch  # here, not at the top: `ahead` decodes with this module while torch is still loading

    return torch.from_numpy(presized_array(img, size)).permute(2, 0, 1).contiguous()


def presized_array(img: Image.Image, size: int) -> np.ndarray:
    """`presize` as a (size, size, 3) uint8 array, without torch."""
    return np.asarray(presize_image(img, size), dtype=np.uint8).copy()


def load_presized(path: str | Path, size: int) -> torch.Tensor:
    return presize(open_image(path, min_size=size), size)


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def decode_all(
    paths: Sequence[Path], size: int, workers: int = 0, desc: str = "decode", progress: bool = True,
    warn: bool = True,
) -> tuple[torch.Tensor, list[int], list[tuple[Path, str]]]:
    """Presize every file into one (N, 3, size, size) uint8 tensor, in parallel threads.

    PIL releases the GIL while decoding and resizing, so threads scale across cores without the
    start-up cost of worker processes. Returns the tensor of the good images, the indices (into
    `paths`) they came from, and (path, reason) for each file skipped. What `ahead` already decoded at this size
    (while `imgclf train` was starting) is taken from it, not decoded again. `warn=False`: the caller names the
    skipped files itself (one warning for both splits).
    """
    import torch  # here, not at the top: see `presize`

    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    ok = [False] * len(paths)
    bad: list[tuple[Path, str]] = []
    done = ahead.take(paths, size)
    for i, image in done.items():
        out[i] = torch.from_numpy(image).permute(2, 0, 1)
        ok[i] = True
    todo = [i for i in range(len(paths)) if i not in done]

    def work(i: int) -> None:
        try:
            out[i] = load_presized(paths[i], size)
            ok[i] = True
        except BadImage as e:
            bad.append((paths[i], str(e)))

    n_threads = workers or default_workers()
    with ThreadPoolExecutor(n_threads) as pool:
        early = {"initial": len(done), "start": f"{len(paths)} img ({len(done)} decoded while starting)"}
        list(progress_bar(pool.map(work, todo), total=len(paths), desc=desc, enabled=progress, unit="img",
                          **(early if done else {})))
    keep = [i for i, good in enumerate(ok) if good]
    if bad and warn:
        warn_skipped(bad)
    if len(keep) < len(paths):
        out = out[keep]
    return out, keep, sorted(bad)


def warn_skipped(bad: Sequence[tuple[Path, str]], stacklevel: int = 3) -> None:
    lines = "\n".join(f"  {p}: {why}" for p, why in sorted(bad))
    warnings.warn(f"skipped {len(bad)} file(s) that could not be decoded:\n{lines}", stacklevel=stacklevel)


def median_short_side(paths: Sequence[Path], sample: int = 256) -> float:
    """Median of min(width, height) over (a spread sample of) the images, read from headers only."""
    step = max(1, len(paths) // sample)
    sides = []
    for p in list(paths)[::step]:
        try:
            with peek_image(p) as im:
                sides.append(min(im.size))
        except Exception:  # unreadable files are reported by decoding; here they just do not count
            continue
    return float(statistics.median(sides)) if sides else 0.0
