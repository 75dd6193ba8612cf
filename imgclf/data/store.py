"""Where presized images live: one uint8 tensor in memory when they fit, else decoded batch by batch.

In memory is the fast path (decode once, then a batch is one indexing op); a data set larger than
half the available memory is decoded per batch in threads instead, after a quick header check that
finds zero-byte and non-image files up front.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from .decode import BadImage, check_header, default_workers, load_presized, warn_skipped


def available_memory() -> int:
    """Bytes of memory available now (Linux MemAvailable), or 8 GiB when it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def fits_in_memory(n_images: int, size: int, fraction: float = 0.5) -> bool:
    return size <= largest_in_memory(n_images, fraction)


def largest_in_memory(n_images: int, fraction: float = 0.5) -> int:
    """The largest presize at which `n_images` RGB uint8 squares take at most `fraction` of the memory available."""
    return int((fraction * available_memory() / (3 * max(n_images, 1))) ** 0.5)


def screen(paths: Sequence[Path], warn: bool = True) -> tuple[list[int], list[tuple[Path, str]]]:
    """Indices of files whose header reads as an image, and (path, reason) for the rest; no decoding (`warn`: as
    `decode_all`'s)."""
    keep, bad = [], []
    for i, p in enumerate(paths):
        try:
            check_header(p)  # the same reasons decoding gives: empty, not an image, too large
            keep.append(i)
        except BadImage as e:
            bad.append((p, str(e)))
    if bad and warn:
        warn_skipped(bad)
    return keep, bad


class LazyImages:
    """Indexable like the in-memory uint8 tensor: `images[idx]` decodes those files now, in threads."""

    def __init__(self, paths: Sequence[Path], size: int, workers: int = 0):
        self.paths, self.size = list(paths), size
        self.pool = ThreadPoolExecutor(workers or default_workers())
        self.warned: set[Path] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, i: int) -> torch.Tensor:
        try:
            return load_presized(self.paths[i], self.size)
        except BadImage as e:  # truncated files pass the header check: a black image, and one warning
            if self.paths[i] not in self.warned:
                self.warned.add(self.paths[i])
                warnings.warn(f"{self.paths[i]}: {e}; used as a black image", stacklevel=2)
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8)

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, slice):
            idx = range(*idx.indices(len(self)))
        elif isinstance(idx, int):
            return self._load(idx)
        elif isinstance(idx, torch.Tensor):
            idx = idx.tolist()
        return torch.stack(list(self.pool.map(self._load, idx)))
