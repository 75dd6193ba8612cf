"""Decoding ahead: a job's images decoded by a second process while the job is still starting.

`imgclf train` spends its first ~2 s importing torch, timm and onnxruntime on one core while the other idles; on
the default job that is about as long as decoding every hymenoptera photo takes one core. So the CLI forks a
decoder first (`start`, before torch is imported) and the job's `decode_all` takes what it finished (`take`)
instead of decoding it again.

A process, not a thread: PIL parses headers and EXIF in Python, and a decoding thread held the GIL so often that
the imports beside it slowed from 1.8 to 2.5 s while it decoded half the photos (2-core Xeon): slower than
decoding after. Beside the feature pass instead of the imports, decoding was measured slower too
(bench/limits.py --overlap: both want the same two cores).

The child writes each presized image into an anonymous shared mapping and then marks it done; anything it could
not decode cleanly (a bad file, a warning such as a huge image's) it marks for the job to decode itself, so every
message a user sees comes from the job as before. Only what the job will ask for is worth decoding: the CLI starts
this only where the first presize is known before the plan, and `take` gives nothing for another size.

Torch-free on purpose (PIL and numpy only): it starts before torch is imported.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import signal
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

MAX_BYTES = 512 << 20  # decoded images held for the job at most (~2,000 photos presized to 293 px)
TODO, DONE, REDO = 0, 1, 2  # a file's state in the shared status bytes


class Ahead:
    """A forked process decoding `paths` in order at `presize` into shared memory, until stopped."""

    def __init__(self, paths: Sequence[Path], presize: int):
        self.presize = presize
        per = 3 * presize * presize
        self.paths = [os.path.abspath(p) for p in paths][: max(1, MAX_BYTES // per)]
        n = len(self.paths)
        self._buf = mmap.mmap(-1, n + n * per)  # anonymous and shared: the child writes, this process reads
        self.status = np.frombuffer(self._buf, np.uint8, n)
        self.images = np.frombuffer(self._buf, np.uint8, n * per, offset=n).reshape(n, presize, presize, 3)
        self.index = {p: i for i, p in enumerate(self.paths)}
        ctx = multiprocessing.get_context("fork")  # before torch is imported: a small process, cheap to fork
        self.process = ctx.Process(target=self._run, name="imgclf-decode-ahead", daemon=True)

    def _run(self) -> None:
        """In the child: decode each file, write it, then mark it (a half-written image is never marked)."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the job's: it stops this process itself
        from .decode import BadImage, open_image, presized_array

        for i, p in enumerate(self.paths):
            with warnings.catch_warnings(record=True) as said:  # this process's own filters: no one else's
                warnings.simplefilter("always")
                try:
                    self.images[i] = presized_array(open_image(p, self.presize), self.presize)
                    self.status[i] = REDO if said else DONE
                except BadImage:
                    self.status[i] = REDO
                except Exception:
                    return

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
            self.process.join()

    def take(self, paths: Sequence[Path], presize: int) -> dict[int, np.ndarray]:
        """{index into `paths`: image} for the files done at `presize`: views of the shared mapping, which the
        caller copies out before `stop` drops it."""
        if presize != self.presize:
            return {}
        got = {}
        for j, p in enumerate(paths):
            i = self.index.get(os.path.abspath(p))
            if i is not None and self.status[i] == DONE:
                got[j] = self.images[i]
        return got


_current: Ahead | None = None


def start(paths: Sequence[Path], presize: int) -> Ahead | None:
    """Fork a process that decodes `paths` at `presize`; the job's `decode_all` takes the results. None when
    there is nothing to decode, torch is already imported, this platform cannot fork, or `IMGCLF_DECODE_AHEAD=0`
    (bench/limits.py times the job both ways with it)."""
    global _current
    stop()
    # fork only a small process: one that has loaded torch runs threads that a fork copies in whatever state
    if (not paths or "torch" in sys.modules or "fork" not in multiprocessing.get_all_start_methods()
            or os.environ.get("IMGCLF_DECODE_AHEAD", "1") == "0"):
        return None
    _current = Ahead(paths, presize)
    _current.process.start()
    return _current


def take(paths: Sequence[Path], presize: int) -> dict[int, np.ndarray]:
    """{index into `paths`: (presize, presize, 3) uint8 image} for the files decoded ahead at `presize`. The
    decoder stops at the first call (the job decodes the rest itself, on every core); later calls (the validation
    split) take what it had finished. Another presize: nothing."""
    if _current is None:
        return {}
    _current.stop()
    return _current.take(paths, presize)


def done(paths: Sequence[Path], presize: int) -> int:
    """How many of `paths` are decoded ahead at `presize` so far (the decoder goes on): the plan prices only the
    rest."""
    return len(_current.take(paths, presize)) if _current is not None else 0


def stop() -> None:
    """Stop decoding ahead and drop what was not taken (the job has decoded all it needs)."""
    global _current
    if _current is not None:
        _current.stop()
        _current = None


def default_start(data: str | Path, size: int | None, crop_pct: float, default_size: int) -> Ahead | None:
    """Decode a folder's images ahead at the presize the job's first decode will ask for, when the command line
    alone tells it: `size` when given, else `default_size` (the default backbone's) when the images' median short
    side is at least `crop_pct` of it (on smaller images the planner weighs smaller sizes and from-scratch models
    first). None when the folder holds no images, or they are smaller."""
    from .decode import median_short_side, presize_for
    from .sources import find_images

    root = Path(data)
    if not root.is_dir():
        return None
    try:
        paths = find_images(root)
    except Exception:  # a folder the job will say what is wrong with
        return None
    if size is None:
        with warnings.catch_warnings():  # nothing else runs yet: headers read here warn again when decoded
            warnings.simplefilter("ignore")
            if not paths or median_short_side(paths, sample=64) < crop_pct * default_size:
                return None
        size = default_size
    return start(paths, presize_for(size, crop_pct))
