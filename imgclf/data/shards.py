"""Data larger than memory: tar shards in the WebDataset layout, written once, streamed every epoch.

`write_shards(DATA, SHARDS)` splits DATA exactly as `imgclf train DATA` does (same sources, same seeded stratified
split), shuffles each split once (seeded, so every shard holds every class) and writes `train-000000.tar`... and
`valid-000000.tar`..., each holding `KEY.jpg` (or the source's own extension) + `KEY.cls` (the class index as text)
+ `KEY.json` (the source path and class), plus `manifest.json`: classes, per-split counts, per-shard sample count,
size and sha256, the presize, the source and the imgclf version. Images larger than the presize are re-encoded
presized (JPEG q=95), so training never decodes a large photo again; smaller ones keep their bytes.

`ShardData(SHARDS)` quacks like `ImageData` where the learner needs it; its loaders stream the shards (local files
or, with `fsspec`, URLs such as s3://) through `tar_members`, a tar reader 5-10x faster than `tarfile`'s stream mode
on small samples: shard order shuffled per epoch, a shuffle buffer of samples across shards, decoding in a thread
pool ahead of the training step, then the same batch augmentation and normalisation as the in-memory path. Memory
holds the buffer and a few batches, never the data set. `imgclf shard --pixels` stores presized uint8 pixels
(`.npy`, read by `npy_array` without a copy), so a streamed epoch decodes nothing. Figures: bench/shards.py and
bench/README.md (issue 13).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import queue
import random
import shutil
import statistics
import tarfile
import threading
import warnings
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image

from ..config import DEFAULT_SIZE
from ..errors import UserError
from .audit import TooAlike, near_groups, tensor_fingerprints
from .augment import Augment
from .core import CROP_PCT, presize_for
from .decode import BadImage, default_workers, open_image, peek_image, presize, presize_image, warn_skipped
from .dedup import MAX_IMAGES, NearDuplicates
from .loaders import ViewBatches, _Position
from .sources import Unused, is_number, items_from_csv, items_from_folder
from .targets import encode_targets

MANIFEST = "manifest.json"
FORMAT = 1
SHUFFLE_BUFFER = 2000  # samples held for shuffling across shards (~2 shards of the default size)
BUFFER_BYTES = 256 << 20  # at most this much of raw samples in the buffer (2,000 original 3 MB photos would be 6 GB)
PREFETCH_BYTES = 512 << 20  # at most this much of decoded batches waiting ahead of the training step


# ---------------------------------------------------------------------------------------------- opening paths/URLs
def _is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def open_shard_file(path: str) -> IO[bytes]:
    """A local path with plain `open`; a URL (s3://, gs://, http://...) with `fsspec`, when installed."""
    if _is_url(path):
        try:
            import fsspec
        except ImportError:
            raise UserError(f"{path}: reading shards from a URL needs fsspec (pip install fsspec, plus s3fs/gcsfs "
                            "for object stores)") from None
        return fsspec.open(path, "rb").open()
    return open(path.removeprefix("file://"), "rb", buffering=1 << 20)


def _join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}" if _is_url(root) else str(Path(root.removeprefix("file://")) / name)


def is_shard_dir(path: str | Path) -> bool:
    """A folder written by `write_shards` (it holds manifest.json), or a URL: only shards are read from URLs."""
    p = str(path)
    return _is_url(p) or Path(p.removesuffix("/" + MANIFEST), MANIFEST).is_file()


def read_manifest(path: str | Path) -> dict[str, Any]:
    root = str(path).removesuffix("/" + MANIFEST)
    try:
        with open_shard_file(_join(root, MANIFEST)) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{root}: no {MANIFEST}: not a folder written by `imgclf shard`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{_join(root, MANIFEST)}: not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT:
        raise UserError(f"{_join(root, MANIFEST)}: shard format {manifest.get('format')!r}, this imgclf reads "
                        f"{FORMAT}; write the shards again with `imgclf shard`")
    return manifest


# ---------------------------------------------------------------------------------------------- writing
def _encode(path: Path, size: int | None, pixels: bool = False) -> tuple[bytes, str, int] | str:
    """(bytes to store, extension, short side as it came) for one image, or why it cannot be used.

    Every file is decoded once here, so a broken one is found now, not in the middle of training; one larger
    than `size` on its short side is stored presized (JPEG q=95), others keep their own bytes. `pixels`: every
    image stored presized to `size` as uint8 (3, size, size) `.npy`, so reading it back decodes nothing."""
    try:
        img = open_image(path, min_size=size)
        with peek_image(path) as raw:  # the header's size: open_image's draft may have decoded it reduced
            short = min(raw.size)
    except BadImage as e:
        return str(e)
    if pixels and size is not None:
        buf = io.BytesIO()
        np.save(buf, presize(img, size).numpy(), allow_pickle=False)
        return buf.getvalue(), "npy", short
    ext = path.suffix.lower().lstrip(".") or "jpg"
    if size is None or min(img.size) <= size:
        return path.read_bytes(), ext, short
    buf = io.BytesIO()
    presize_image(img, size).save(buf, "JPEG", quality=95)
    return buf.getvalue(), "jpg", short


def _check_out(out: Path, data: Path, force: bool) -> None:
    """`out` may be replaced (--force) only when it is a shard folder this command wrote, and never when it is, holds
    or sits inside the data: --force once replaced a folder of images with their shards."""
    src, dst = data.resolve(), out.resolve()
    # a CSV: a new folder beside it is not the data (its rows name the files); only its folder or one above it is
    inside = src in dst.parents and not src.is_file()
    src = src.parent if src.is_file() else src
    if dst == src or dst in src.parents or inside:
        raise UserError(f"--out {out}: that is, holds or sits inside the data ({data}); write the shards elsewhere")
    if not out.exists() and not out.is_symlink():
        return
    if not force:
        raise UserError(f"{out}: already exists; pass --force to replace it, or another --out")
    if not (out.is_dir() and (out / MANIFEST).is_file()):
        raise UserError(f"--out {out}: exists and is not a shard folder (no {MANIFEST}), so --force will not replace "
                        "it; choose another --out, or move it away yourself")


def _presized(path: Path, size: int) -> torch.Tensor | None:
    try:
        return presize(open_image(path, min_size=size), size)
    except BadImage:
        return None


def _near_duplicates(items: Any, size: int, pool: ThreadPoolExecutor) -> NearDuplicates:
    """Move validation items that are near duplicates of training ones to training, as `ImageData` does on a split
    it drew (dedup.py), so SHARDS' validation images are DATA's. Fingerprints at `size`: the default training
    presize gives the very same moves; another may differ at the threshold's edge."""
    origin = items.split_origin
    if origin != "drawn":
        return NearDuplicates(False, origin, note="a given split: nothing moves (imgclf inspect lists them)")
    if len(items.paths) > MAX_IMAGES:
        return NearDuplicates(False, origin, note=f"more than {MAX_IMAGES} images: not checked")
    rows = [i for i, v in enumerate(items.is_valid) if not v] + [i for i, v in enumerate(items.is_valid) if v]
    ok: list[tuple[int, torch.Tensor]] = []
    for start in range(0, len(rows), 512):  # the fingerprints `ImageData` takes of its presized images (dedup.py)
        chunk = rows[start:start + 512]
        images = [(i, x) for i, x in zip(chunk, pool.map(lambda i: _presized(items.paths[i], size), chunk),
                                         strict=True) if x is not None]
        if images:
            prints = tensor_fingerprints(torch.stack([x for _, x in images]))
            ok += [(i, p) for (i, _), p in zip(images, prints, strict=True)]
    if not ok:
        return NearDuplicates(True, origin)
    moved = []
    try:
        groups = near_groups(torch.stack([p for _, p in ok]),  # the few candidates read again to confirm
                             image=lambda k: _presized(items.paths[ok[k][0]], size))
    except TooAlike as e:
        return NearDuplicates(False, origin, note=str(e))
    for group in groups:
        rows_in = [ok[k][0] for k in group]
        if any(items.is_valid[i] for i in rows_in) and not all(items.is_valid[i] for i in rows_in):
            moved += [i for i in rows_in if items.is_valid[i]]
    out = NearDuplicates(True, origin, groups_straddling=sum(
        1 for g in groups if len({items.is_valid[ok[k][0]] for k in g}) == 2))
    for i in sorted(moved):
        items.is_valid[i] = False
    out.moved = [str(items.paths[i]) for i in sorted(moved)]
    if moved:
        warnings.warn(f"moved {len(moved)} validation image(s) to training: near duplicates (same picture re-saved, "
                      f"resized or mirrored) of training images, as `imgclf train` does; e.g. {out.moved[0]}",
                      stacklevel=3)
    return out


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: the same input gives the same bytes
    tar.addfile(info, io.BytesIO(data))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# the default backbone's presize: EfficientNet-Lite0 trains at its recommended 256 px, presized to 293 (what
# `imgclf train DATA` decodes to). A constant, so writing shards never imports the model layer (timm: seconds);
# tests/test_shards.py checks it against models.recommended_size.
DEFAULT_PRESIZE = presize_for(256)


def write_shards(
    data: str | Path, out: str | Path, shard_size: int = 1000, presize: int | None = 0, csv: str | Path | None = None,
    valid: str | None = None, valid_pct: float = 0.2, seed: int = 42, label_re: str | None = None,
    label_col: str | None = None, split: str = "stratified", workers: int = 0, force: bool = False,
    progress: bool = True, pixels: bool = False,
) -> dict[str, Any]:
    """Write DATA as tar shards into `out`, split as `imgclf train DATA` splits it; returns the manifest.

    `presize`: images larger than this on their short side are stored presized to it (0: the default backbone's,
    `DEFAULT_PRESIZE`; None: every file's original bytes). Bad files are warned about, named, skipped and listed
    in the manifest. Written into a temporary folder beside `out` and renamed into place: an existing `out` is
    refused unless `force`, and a failed write leaves nothing."""
    from .. import __version__
    from ..progress import bar as progress_bar

    out = Path(out)
    if shard_size < 1:
        raise UserError(f"--shard-size {shard_size}: give at least 1")
    for source in (data, csv):
        if source:
            _check_out(out, Path(source), force)
    size = DEFAULT_PRESIZE if presize == 0 else presize
    if size is not None and size < 8:
        raise UserError(f"--presize {size}: too small (at least 8 pixels)")
    if pixels and size is None:
        raise UserError("--pixels stores presized pixels, --original the files' own bytes: choose one")
    csv_file = csv or (data if str(data).lower().endswith(".csv") else None)
    if csv_file:
        folder = data if Path(data).is_dir() else None
        items = items_from_csv(csv_file, folder=folder, valid_pct=valid_pct, seed=seed, label_col=label_col,
                               split=split)
    else:
        if not Path(data).is_dir():
            raise UserError(f"{data}: no such folder")
        items = items_from_folder(data, valid=valid, valid_pct=valid_pct, seed=seed, label_re=label_re, split=split)
    source = str(csv_file or data)
    items.unused.warn(source)
    distinct = set(items.labels)
    if len(distinct) > 20 and len(distinct) > len(items.labels) / 4 and all(is_number(v) for v in distinct):
        raise UserError(f"{source}: its labels are numbers ({len(distinct)} distinct among {len(items.labels)} "
                        "images), a regression target rather than classes; shards hold one class per image: train "
                        "on the data itself (`imgclf train DATA --csv ... --task regression`)")
    targets = encode_targets(items, "classify", source)
    classes = list(targets.names)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shards: list[dict[str, Any]] = []
    skipped: list[tuple[Path, str]] = []
    splits: dict[str, dict[str, Any]] = {}
    shorts: list[int] = []
    try:
        with ThreadPoolExecutor(workers or default_workers()) as pool:
            near = _near_duplicates(items, size or DEFAULT_PRESIZE, pool)
            for name, is_valid in (("train", False), ("valid", True)):
                rows = [i for i, v in enumerate(items.is_valid) if v == is_valid]
                random.Random(f"{seed}-{name}").shuffle(rows)  # every shard a sample of every class
                counts: Counter[str] = Counter()
                bar = progress_bar(total=len(rows), desc=f"shard {name}", unit="img", enabled=progress)
                n_written, k = 0, 0
                for start in range(0, len(rows), shard_size):
                    chunk = rows[start:start + shard_size]
                    encoded = list(pool.map(lambda i: _encode(items.paths[i], size, pixels), chunk))
                    good = [(i, e) for i, e in zip(chunk, encoded, strict=True) if not isinstance(e, str)]
                    skipped += [(items.paths[i], e) for i, e in zip(chunk, encoded, strict=True) if isinstance(e, str)]
                    bar.update(len(chunk))
                    if not good:
                        continue
                    shard = f"{name}-{k:06d}.tar"
                    with tarfile.open(tmp / shard, "w", format=tarfile.USTAR_FORMAT) as tar:
                        for i, (blob, ext, short) in good:
                            key = f"{name}{n_written:07d}"
                            label = int(targets.values[i])
                            _add(tar, f"{key}.{ext}", blob)
                            _add(tar, f"{key}.cls", str(label).encode())
                            _add(tar, f"{key}.json", json.dumps({"path": str(items.paths[i]),
                                                                 "class": classes[label]}).encode())
                            counts[classes[label]] += 1
                            shorts.append(short)
                            n_written += 1
                    shards.append({"name": shard, "split": name, "count": len(good),
                                   "bytes": (tmp / shard).stat().st_size, "sha256": _sha256(tmp / shard)})
                    k += 1
                bar.close()
                splits[name] = {"count": n_written, "counts": {c: counts[c] for c in classes if counts[c]}}
        if skipped:
            warn_skipped(skipped)
        for name in ("train", "valid"):
            if splits[name]["count"] == 0:
                raise UserError(f"{source}: no decodable images left in the {name} split")
        manifest = {
            "format": FORMAT, "layout": "webdataset", "imgclf_version": __version__,
            "source": str(Path(source).resolve()), "task": "classify", "classes": classes, "presize": size,
            "encoding": "npy" if pixels else "image",
            "shard_size": shard_size,
            "split": {"method": split, "seed": seed, "valid_pct": valid_pct, "valid": valid, "label_re": label_re},
            "short_side": float(statistics.median(shorts)) if shorts else 0.0,
            "splits": splits, "shards": shards,
            "skipped": [{"path": str(p), "reason": r} for p, r in sorted(skipped)], "unused": items.unused.to_dict(),
            "near_duplicates": near.to_dict(),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():  # --force: the old folder goes only once the new one is complete
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def verify_shards(path: str | Path) -> list[str]:
    """Each shard's problem (missing, wrong size, checksum differs), named; empty when all match the manifest.
    Reads every byte: the full check `ShardData`'s size check at load time stands in for."""
    root = str(path)
    manifest = read_manifest(root)
    problems = []
    for s in manifest["shards"]:
        where = _join(root, s["name"])
        try:
            h = hashlib.sha256()
            with open_shard_file(where) as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    h.update(block)
        except FileNotFoundError:
            problems.append(f"{where}: missing")
            continue
        if h.hexdigest() != s["sha256"]:
            problems.append(f"{where}: sha256 differs from the manifest (changed or truncated)")
    return problems


# ---------------------------------------------------------------------------------------------- reading
TAR_BLOCK = 512
_REGULAR, _SKIPPED = (b"0", b"\0", b"7"), (b"1", b"2", b"3", b"4", b"5", b"6")  # files; links, devices, dirs


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256: sizes of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _pax(data: bytes) -> dict[str, str]:
    """A pax extended header's records ("LEN key=value\n"...), of which `path` and `size` matter here."""
    out, i = {}, 0
    while i < len(data):
        length = int(data[i:data.index(b" ", i)])
        key, _, value = data[data.index(b" ", i) + 1:i + length - 1].partition(b"=")
        out[key.decode()] = value.decode("utf-8", "surrogateescape")
        i += length
    return out


def tar_members(f: IO[bytes]) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each regular file of a tar stream, in order.

    Why not `tarfile`: its stream mode spends ~30 us of Python on each member's header, which for shards of small
    presized images is most of an epoch's reading (three members a sample: ~11k samples/s on one thread, sharing
    the GIL with the training step). This reads the fixed 512-byte headers directly, 5-10x faster per member
    (measured): the name, the size, the type and the header checksum (a corrupt header raises `tarfile.ReadError`,
    a short read `EOFError`).
    It reads what `write_shards` and other WebDataset writers produce: ustar and GNU/pax long names and sizes."""
    read = f.read
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        header = read(TAR_BLOCK)
        if not header or header == bytes(TAR_BLOCK):  # the end-of-archive blocks (or the end of the stream)
            return
        if len(header) < TAR_BLOCK:
            raise EOFError("unexpected end of data in a tar header")
        if _octal(header[148:156]) != sum(header) - sum(header[148:156]) + 8 * 32:
            raise tarfile.ReadError("bad checksum in a tar header")
        size, kind = _octal(header[124:136]), header[156:157]
        size = int(pax.get("size", size))
        data = read(size)
        if len(data) < size:
            raise EOFError(f"unexpected end of data: {len(data)} of {size} bytes")
        if size % TAR_BLOCK:
            read(TAR_BLOCK - size % TAR_BLOCK)
        if kind == b"L":  # GNU long name: the next member's
            long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            continue
        if kind == b"x":
            pax = _pax(data)
            continue
        if kind in (b"g", b"K"):  # global pax records, GNU long link names: nothing a sample needs
            continue
        name = long_name or pax.get("path")
        if name is None:
            name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
            if prefix:
                name = prefix.decode("utf-8", "surrogateescape") + "/" + name
        long_name, pax = None, {}
        if kind in _REGULAR:
            yield name, data
        elif kind not in _SKIPPED:
            raise tarfile.ReadError(f"unknown tar member type {kind!r} ({name})")


def _read_shard(url: str, expected: int) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) for each sample of one shard, in order, streamed; a shard that is truncated or
    corrupt, or holds fewer samples than the manifest says, is a `UserError` naming it."""
    n = 0
    try:
        with open_shard_file(url) as f:
            key, parts = None, {}
            for name, data in tar_members(io.BufferedReader(f, 1 << 20) if _is_url(url) else f):
                k, _, ext = name.rpartition("/")[2].partition(".")
                if k != key and key is not None:
                    yield key, parts
                    n += 1
                    parts = {}
                key = k
                parts[ext] = data
            if key is not None:
                yield key, parts
                n += 1
    except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error) as e:
        raise UserError(f"{url}: truncated or corrupt shard ({e or type(e).__name__}); write the shards again "
                        "with `imgclf shard`") from None
    if n != expected:
        raise UserError(f"{url}: {n} samples where the manifest says {expected} (truncated?); write the shards "
                        "again with `imgclf shard`")


_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...]]] = {}


def npy_array(blob: bytes) -> np.ndarray:
    """The array of one `.npy` file's bytes, read-only, without a copy.

    `np.load(BytesIO(...))` parses the header's text with `ast` for every sample (~40 us: half of a pixel
    shard's reading); the samples of a shard share one header, so its parse is kept (`np.load` remains the
    fallback for what this does not cover: Fortran order, object arrays)."""
    if blob[:6] != b"\x93NUMPY":
        raise ValueError("not a .npy file")
    start = 10 if blob[6] == 1 else 12
    end = start + int.from_bytes(blob[8:start], "little")
    spec = _NPY_HEADERS.get(blob[start:end])
    if spec is None:
        arr = np.load(io.BytesIO(blob), allow_pickle=False)
        if arr.dtype.hasobject or not arr.flags.c_contiguous or len(_NPY_HEADERS) > 64:
            return arr
        _NPY_HEADERS[blob[start:end]] = spec = (arr.dtype, arr.shape)
    dtype, shape = spec
    return np.frombuffer(blob, dtype, count=int(np.prod(shape)), offset=end).reshape(shape)


def _shuffled(samples: Iterator[Any], buffer: int, rng: random.Random) -> Iterator[Any]:
    """A shuffle buffer (WebDataset's): fill `buffer` samples, then give a random one for each that comes in."""
    buf: list[Any] = []
    for s in samples:
        if len(buf) < buffer:
            buf.append(s)
            continue
        i = rng.randrange(len(buf))
        buf[i], s = s, buf[i]
        yield s
    rng.shuffle(buf)
    yield from buf


class _Stop(Exception):
    pass


class ShardLoader(ViewBatches):
    """Yields `(x, y)` batches streamed from shards, as `BatchLoader` yields them from memory: the same views
    ("augment", "center", "flip"), the same batch maths, the same resume position (`state_dict`).

    An epoch: the shard order shuffled and a shuffle buffer across shards (both from a seed drawn from the
    loader's generator, so a resumed epoch replays them and skips what it had given); raw samples are read on a
    thread, decoded and presized `bs` at a time in a thread pool (PIL releases the GIL), `prefetch` batches ahead
    of the training step."""

    def __init__(self, shards: Sequence[tuple[str, int]], presize: int, size: int, mean: tuple[float, ...],
                 std: tuple[float, ...], bs: int = 64, view: str = "center", augment: Augment | None = None,
                 shuffle: bool = False, seed: int = 0, device: torch.device | str = "cpu", channels_last: bool = True,
                 workers: int = 0, buffer: int = SHUFFLE_BUFFER, prefetch: int | None = None):
        if view not in ("augment", "center", "flip"):
            raise ValueError(f"view must be augment, center or flip, not {view!r}")
        self.shards, self.presize, self.size = list(shards), presize, size
        self.n = sum(c for _, c in self.shards)
        self.bs, self.view, self.shuffle, self.buffer = bs, view, shuffle, buffer
        self.augment = augment or Augment()
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device)
        self.channels_last = channels_last
        self.workers = workers or default_workers()
        batch_bytes = bs * 3 * presize * presize
        self.prefetch = prefetch or max(2, min(self.workers + 2, PREFETCH_BYTES // batch_bytes))
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.aug_generator = self.generator  # a rank's own under torchrun (`shard`), as BatchLoader's
        self.rank, self.world = 0, 1
        self.drop_last = shuffle and self.n > 1 and self.n % bs == 1  # as BatchLoader: no batch of one in training
        self.position = _Position(self.generator)
        self.bad: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return self.n_shard // self.bs if self.drop_last else -(-self.n_shard // self.bs)

    @property
    def n_shard(self) -> int:
        """Samples this loader gives an epoch: all of them, or this rank's share (padded as `shard_order` pads)."""
        return -(-self.n // self.world)

    @property
    def sampler(self) -> None:
        return None

    @sampler.setter
    def sampler(self, value: Any) -> None:  # BatchLoader's hook for --balance sampler: an order over indices
        if value is not None:
            raise UserError("--balance sampler draws rows by index, which streamed shards do not have; use "
                            "--balance weights")

    @property
    def images(self) -> range:
        """`range(n)`: the item count, for callers that count a loader's items as `len(dl.images)`."""
        return range(self.n)

    def shard(self, rank: int, world: int, bs: int | None = None) -> ShardLoader:
        """Give only rank `rank`'s strided share of each epoch's stream (`shard_order`'s rows: every rank reads
        every shard and keeps its own samples), `bs` a batch (default: this loader's batch / world); augmentation
        then draws from a generator of the rank's own. Returns the loader."""
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside a world of {world}")
        self.rank, self.world = rank, world
        self.bs = max(1, bs if bs is not None else self.bs // world)
        self.drop_last = self.shuffle and self.n_shard > 1 and self.n_shard % self.bs == 1
        if world > 1:
            self.aug_generator = torch.Generator().manual_seed(self.seed * 7919 + 104729 * (rank + 1))
        return self

    # --- the sample stream
    def samples(self, epoch_seed: int) -> Iterator[tuple[str, str, dict[str, bytes]]]:
        """(shard, key, parts) of one epoch, in the epoch's order."""
        order = list(self.shards)
        rng = random.Random(epoch_seed)
        if self.shuffle:
            rng.shuffle(order)
        stream = ((url, key, parts) for url, count in order for key, parts in _read_shard(url, count))
        return self._mine(_shuffled(stream, self.buffer, rng) if self.shuffle else stream)

    def _mine(self, stream: Iterator[Any]) -> Iterator[Any]:
        """This rank's samples of the epoch's stream: i % world == rank, then the wrap-round padding."""
        if self.world == 1:
            yield from stream
            return
        pad, head = -self.n % self.world, []
        for i, s in enumerate(stream):
            if i < pad:
                head.append(s)
            if i % self.world == self.rank:
                yield s
        for j in range(pad):
            if (self.n + j) % self.world == self.rank:
                yield head[j]

    def _decode(self, raw: list[tuple[str, str, dict[str, bytes]]]) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.presize
        x = torch.empty((len(raw), 3, p, p), dtype=torch.uint8)
        x_np = x.numpy()
        y = torch.empty(len(raw), dtype=torch.long)
        keep = []
        for i, (url, key, parts) in enumerate(raw):
            ext, blob = next(((k, v) for k, v in parts.items() if k not in ("cls", "json")), (None, None))
            try:
                if blob is None or "cls" not in parts:
                    raise BadImage("no image or no .cls in the sample")
                if ext == "npy":  # presized pixels (`write_shards(pixels=True)`): nothing to decode at their size
                    a = npy_array(blob)
                    if a.shape[-1] == p:
                        x_np[i] = a
                    else:
                        x[i] = presize(Image.fromarray(a.transpose(1, 2, 0)), p)
                else:
                    x[i] = presize(open_image(blob, min_size=p), p)
                y[i] = int(parts["cls"])
                keep.append(i)
            except (BadImage, ValueError) as e:
                self.bad.append((f"{url}:{key}", str(e)))
                warnings.warn(f"{url}: sample {key} skipped: {e}", stacklevel=2)
        return (x, y) if len(keep) == len(raw) else (x[keep], y[keep])

    def _batches(self, epoch_seed: int, skip: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        pool = ThreadPoolExecutor(self.workers)

        def put(item: Any) -> None:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue
            raise _Stop

        def produce() -> None:
            try:
                raw: list[Any] = []
                for i, s in enumerate(self.samples(epoch_seed)):
                    if i < skip:  # a resumed epoch: read past what was given, without decoding it
                        continue
                    raw.append(s)
                    if len(raw) == self.bs:
                        put(pool.submit(self._decode, raw))
                        raw = []
                if raw:
                    put(pool.submit(self._decode, raw))
                put(None)
            except _Stop:
                pass
            except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
                try:
                    put(e)
                except _Stop:
                    pass

        reader = threading.Thread(target=produce, daemon=True, name="imgclf-shard-reader")
        reader.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, Future)
                yield item.result()
        finally:
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            reader.join(timeout=5)

    # --- batches
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        start = self.position.begin()
        # the epoch's shard order and shuffle buffer come from one seed drawn here: a resume replays them
        epoch_seed = int(torch.randint(0, 2**62, (1,), generator=self.generator)) if self.shuffle else 0
        start = self.position.seek(start)
        stream = self._batches(epoch_seed, start * self.bs)
        try:
            for b, (xb, yb) in enumerate(stream, start):
                if b >= len(self):
                    break
                batch = self.transform(self._to_device(xb)), self._to_device(yb)
                self.position.batches = b + 1
                yield batch
        finally:
            stream.close()
        self.position.end()

class ShardData:
    """Shards written by `write_shards`, with what the learner asks of `ImageData`: classes, counts, sizes and
    `loader(...)`. Nothing is decoded up front; each loader streams its split's shards.

    `presize` follows `size` and `crop_pct` as for `ImageData`; shards written at a smaller presize are upsampled
    (warned). Local shards missing or of the wrong size are a `UserError` naming them, before training starts."""

    streaming = True  # the job picks a recipe that streams (see job._pick_recipe)

    def __init__(self, path: str | Path, size: int = DEFAULT_SIZE, bs: int = 64, workers: int = 0,
                 augment: Augment | None = None, progress: bool = True, crop_pct: float = CROP_PCT,
                 task: str = "classify", buffer: int = SHUFFLE_BUFFER, check: bool = True):
        self.source = str(path).removesuffix("/" + MANIFEST)
        self.manifest = read_manifest(self.source)
        if task != "classify":
            raise UserError(f"{self.source}: shards hold one class per image (--task classify)")
        if size < 8:
            raise UserError(f"--size {size}: too small (at least 8 pixels)")
        if not 0.2 <= crop_pct <= 1:
            raise UserError(f"--crop-pct {crop_pct}: give a fraction between 0.2 and 1")
        self.task, self.classes = "classify", list(self.manifest["classes"])
        self.size, self.bs, self.workers, self.progress, self.crop_pct = size, bs, workers, progress, crop_pct
        self.presize = presize_for(size, crop_pct)
        self.augment = augment or Augment()
        self.buffer = buffer
        self.labeller = f"shards written by imgclf {self.manifest.get('imgclf_version')} from " \
                        f"{self.manifest.get('source')}"
        self.skipped = [(Path(s["path"]), s["reason"]) for s in self.manifest.get("skipped", [])]
        unused = self.manifest.get("unused") or {}
        self.unused = Unused(dict(unused.get("counts", {})),
                             {k: [Path(p) for p in v] for k, v in unused.get("examples", {}).items()})
        self.arrays = None
        near = self.manifest.get("near_duplicates") or {}
        self.near_duplicates = NearDuplicates(
            near.get("checked", False), near.get("split_origin", "given"), near.get("groups_straddling", 0),
            list(near.get("moved", [])), [tuple(e) for e in near.get("examples", [])], note=near.get("note", ""))
        stored = self.manifest.get("presize")
        if stored is not None and stored < self.presize:
            warnings.warn(f"{self.source}: shards presized to {stored} px, training presizes to {self.presize} "
                          f"(--size {size}): images are upsampled; write the shards with --presize {self.presize} "
                          "or --original", stacklevel=2)
        if check:
            self.check()

    def shards(self, split: str) -> list[tuple[str, int]]:
        return [(_join(self.source, s["name"]), s["count"]) for s in self.manifest["shards"] if s["split"] == split]

    def check(self) -> None:
        """Local shards: present, and of the size the manifest says (a truncated copy is named here, not
        halfway through an epoch). `verify_shards` checks every byte against the sha256."""
        if _is_url(self.source):
            return
        bad = []
        for s in self.manifest["shards"]:
            p = Path(_join(self.source, s["name"]))
            if not p.is_file():
                bad.append(f"{p}: missing")
            elif p.stat().st_size != s["bytes"]:
                bad.append(f"{p}: {p.stat().st_size} bytes where the manifest says {s['bytes']} (truncated?)")
        if bad:
            raise UserError("; ".join(bad) + "; write the shards again with `imgclf shard`")

    @property
    def n_train(self) -> int:
        return int(self.manifest["splits"]["train"]["count"])

    @property
    def n_valid(self) -> int:
        return int(self.manifest["splits"]["valid"]["count"])

    @property
    def target_stats(self) -> None:
        return None

    @property
    def train_y(self) -> torch.Tensor:
        """The training split's class indices from the manifest's counts, in class order, not stream order: for
        what counts classes (`--balance`'s ratio and class weights); a loader streams the samples' own labels."""
        counts = self.manifest["splits"]["train"]["counts"]
        return torch.repeat_interleave(torch.arange(len(self.classes)),
                                       torch.tensor([int(counts.get(c, 0)) for c in self.classes]))

    def counts(self) -> dict[str, dict[str, int]]:
        return {name: {c: int(n) for c, n in self.manifest["splits"][name]["counts"].items()}
                for name in ("train", "valid")}

    def native_short_side(self) -> float:
        """Median short side of the images as they came (recorded when the shards were written)."""
        return float(self.manifest.get("short_side", 0.0))

    def resized(self, size: int) -> ShardData:
        """The same shards seen at another size: nothing to decode again, the loaders presize as they stream."""
        return ShardData(self.source, size=size, bs=self.bs, workers=self.workers, augment=self.augment,
                         progress=self.progress, crop_pct=self.crop_pct, buffer=self.buffer, check=False)

    def label_text(self, y: torch.Tensor) -> str:
        return self.classes[int(y)]

    def loader(self, split: str, mean: Sequence[float], std: Sequence[float], view: str | None = None,
               device: torch.device | str = "cpu", seed: int = 0, bs: int | None = None, channels_last: bool = True,
               ) -> ShardLoader:
        """Batches of `split` ("train" or "valid") streamed from its shards; train defaults to the augmented,
        shuffled view, as `ImageData.loader`."""
        train = split == "train"
        view = view or ("augment" if train else "center")
        shards = self.manifest["shards"]
        per_sample = sum(s["bytes"] for s in shards) / max(1, sum(s["count"] for s in shards))
        buffer = max(1, min(self.buffer, int(BUFFER_BYTES // per_sample)))
        return ShardLoader(self.shards(split), self.presize, self.size, tuple(mean), tuple(std), bs=bs or self.bs,
                           view=view, augment=self.augment, shuffle=train and view == "augment", seed=seed,
                           device=device, channels_last=channels_last, workers=self.workers, buffer=buffer)

    def __repr__(self) -> str:
        return (f"ShardData({self.source!r}: {len(self.classes)} classes, {self.n_train} train, {self.n_valid} "
                f"valid, {len(self.manifest['shards'])} shards, size {self.size}, presize {self.presize})")
