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

Features too. Decoding hymenoptera's 398 photos takes the second core ~2 s of the ~4 s the imports take the first;
then it idled. Where an earlier job recorded the exported feature graph of this backbone at this size
(`remember_graph`, written by the probe: the pretrained body is the same from job to job), the process goes on
to run it (onnxruntime, one thread) on each image it decoded: the center view and its mirror, the views the
probe's pass needs, normalised exactly as `augment.center_batch` does (onnxruntime's features come out bitwise
the same whatever the batch or thread count). The job takes them when its own pass starts (`take_features`),
only for the very graph it runs itself, and computes the rest.

Torch-free on purpose (PIL, numpy and onnxruntime only): it starts before torch is imported.
"""

from __future__ import annotations

import json
import mmap
import multiprocessing
import os
import signal
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..config import cache_home

MAX_BYTES = 512 << 20  # decoded images held for the job at most (~2,000 photos presized to 293 px)
TODO, DONE, REDO = 0, 1, 2  # a file's state in the shared status bytes
GRAPHS = "ahead.json"  # beside the exported graphs (features.engine_cache): each backbone and size's latest graph


@dataclass(frozen=True)
class Graph:
    """An exported feature graph (features.onnx_engine) and how its input is made: the center `size` crop of the
    presized image, normalised by `mean` and `std` (features come out `dim` wide)."""

    path: str
    size: int
    dim: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def engine_cache() -> Path:
    """Where exported feature graphs are kept (features.onnx_engine) and their records (`remember_graph`):
    `config.cache_home()/engines`. Here, torch-free, so the decoder can read them."""
    return cache_home() / "engines"


def graphs_file() -> Path:
    """Where `remember_graph` keeps its records: beside the graphs."""
    return engine_cache() / GRAPHS


def remember_graph(arch: str, graph: Graph) -> None:
    """Record `graph` as `arch`'s pretrained body at `graph.size` px, for the next job's decoder to run. Written
    whole; a home that cannot be written only loses the head start."""
    path = graphs_file()
    try:
        got = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        got = {}
    got = got if isinstance(got, dict) else {}
    got[f"{arch}|{graph.size}"] = asdict(graph)
    from ..rundir import write_json  # the job's side (torch loaded): not the decoder's

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, got)
    except OSError:
        pass


def recorded_graph(arch: str, size: int) -> Graph | None:
    """The graph an earlier job recorded for `arch` at `size` px, when its file is still there (else None)."""
    try:
        got = json.loads(graphs_file().read_text()).get(f"{arch}|{size}")
        graph = Graph(str(got["path"]), int(got["size"]), int(got["dim"]), tuple(map(float, got["mean"])),
                      tuple(map(float, got["std"])))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    return graph if Path(graph.path).is_file() and len(graph.mean) == len(graph.std) == 3 else None


class Ahead:
    """A forked process decoding `paths` in order at `presize` into shared memory, then (with a `graph`) computing
    their features, until stopped."""

    def __init__(self, paths: Sequence[Path], presize: int, graph: Graph | None = None):
        self.presize = presize
        per = 3 * presize * presize
        self.graph = graph if graph is not None and graph.size <= presize else None
        dim = self.graph.dim if self.graph is not None else 0
        self.paths = [os.path.abspath(p) for p in paths][: max(1, MAX_BYTES // (per + 8 * dim))]
        n = len(self.paths)
        # anonymous and shared: the child writes, this process reads. Bytes: 1 control (decoding is over), a status
        # per image, a features status per image (1: both views done), then the features (n, 2, dim) float32,
        # aligned, then the images
        self._feats_at = -(-(1 + 2 * n) // 8) * 8
        self._images_at = self._feats_at + n * 2 * dim * 4
        self._buf = mmap.mmap(-1, self._images_at + n * per)
        self.control = np.frombuffer(self._buf, np.uint8, 1)
        self.status = np.frombuffer(self._buf, np.uint8, n, offset=1)
        self.feature_status = np.frombuffer(self._buf, np.uint8, n, offset=1 + n)
        self.features = np.frombuffer(self._buf, np.float32, n * 2 * dim, offset=self._feats_at).reshape(n, 2, dim)
        self.images = np.frombuffer(self._buf, np.uint8, n * per, offset=self._images_at).reshape(
            n, presize, presize, 3)
        self.index = {p: i for i, p in enumerate(self.paths)}
        ctx = multiprocessing.get_context("fork")  # before torch is imported: a small process, cheap to fork
        self.process = ctx.Process(target=self._run, name="imgclf-decode-ahead", daemon=True)

    def _run(self) -> None:
        """In the child: decode each file, write it, then mark it (a half-written image is never marked); then the
        features of what it decoded, unless the job said decoding is over first."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the job's: it stops this process itself
        from .decode import BadImage, open_image, presized_array

        for i, p in enumerate(self.paths):
            if self.control[0]:  # the job decodes the rest itself: features of what is here, if any
                break
            with warnings.catch_warnings(record=True) as said:  # this process's own filters: no one else's
                warnings.simplefilter("always")
                try:
                    self.images[i] = presized_array(open_image(p, self.presize), self.presize)
                    self.status[i] = REDO if said else DONE
                except BadImage:
                    self.status[i] = REDO
                except Exception:
                    return
        if self.graph is not None:
            self._features(self.graph)

    def _features(self, graph: Graph) -> None:
        """In the child: each decoded image's center view and its mirror through `graph`, one call for the pair
        (what features.ORT_CALL_PIXELS makes of 256 px), then marked."""
        try:
            import onnxruntime as ort
        except ImportError:
            return
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1  # the job's imports hold the other core
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        try:
            session = ort.InferenceSession(graph.path, so, providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
        except Exception:  # a graph this onnxruntime cannot read: the job computes everything
            return
        # augment.center_batch's arithmetic in the same float32 steps: (x - 255 mean) / (255 std)
        shift = (np.asarray(graph.mean, np.float32) * np.float32(255)).reshape(1, 3, 1, 1)
        scale = (np.asarray(graph.std, np.float32) * np.float32(255)).reshape(1, 3, 1, 1)
        top = (self.presize - graph.size) // 2
        for i in range(len(self.paths)):
            if self.status[i] != DONE:
                continue
            crop = self.images[i, top:top + graph.size, top:top + graph.size].transpose(2, 0, 1)[None]
            x = (crop.astype(np.float32) - shift) / scale
            f = session.run(None, {name: np.concatenate([x, x[..., ::-1]])})[0]
            if f.shape != (2, graph.dim):
                return
            self.features[i] = f
            self.feature_status[i] = DONE

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
            self.process.join()

    def decoding_over(self) -> None:
        """Tell the child the job decodes what is left: it stops decoding and goes on to features (without a
        graph it has nothing left to do, and is stopped)."""
        if self.graph is None:
            self.stop()
        else:
            self.control[0] = 1

    def take_features(self, paths: Sequence[Path], graph: Path | None) -> dict[int, np.ndarray]:
        """{index into `paths`: (2, dim) float32 features of its center view and mirror} for the images done, when
        `graph` is the graph the child ran (else, or None, nothing). Stops the child: the job's own pass wants the
        cores."""
        self.stop()
        if self.graph is None or graph is None or os.path.abspath(graph) != os.path.abspath(self.graph.path):
            return {}
        return {j: self.features[i].copy() for j, i in self.finished(paths, self.feature_status)}

    def take(self, paths: Sequence[Path], presize: int) -> dict[int, np.ndarray]:
        """{index into `paths`: image} for the files done at `presize`: views of the shared mapping, which the
        caller copies out before `stop` drops it."""
        return {j: self.images[i] for j, i in self.finished(paths, self.status)} if presize == self.presize else {}

    def finished(self, paths: Sequence[Path], status: np.ndarray) -> list[tuple[int, int]]:
        """(index into `paths`, index here) of each of `paths` whose `status` (decoding's or the features') is
        DONE."""
        found = ((j, self.index.get(os.path.abspath(p))) for j, p in enumerate(paths))
        return [(j, i) for j, i in found if i is not None and status[i] == DONE]


_current: Ahead | None = None


def start(paths: Sequence[Path], presize: int, graph: Graph | None = None) -> Ahead | None:
    """Fork a process that decodes `paths` at `presize` (then, with `graph`, computes their features); the job's
    `decode_all` takes the images, its feature pass the features. None when there is nothing to decode, torch is
    already imported, this platform cannot fork, or `IMGCLF_DECODE_AHEAD=0` (bench/limits.py times the job both
    ways with it). `IMGCLF_FEATURES_AHEAD=0`: decoding only."""
    global _current
    stop()
    # fork only a small process: one that has loaded torch runs threads that a fork copies in whatever state
    if (not paths or "torch" in sys.modules or "fork" not in multiprocessing.get_all_start_methods()
            or os.environ.get("IMGCLF_DECODE_AHEAD", "1") == "0"):
        return None
    if os.environ.get("IMGCLF_FEATURES_AHEAD", "1") == "0":
        graph = None
    _current = Ahead(paths, presize, graph)
    _current.process.start()
    return _current


def take(paths: Sequence[Path], presize: int) -> dict[int, np.ndarray]:
    """{index into `paths`: (presize, presize, 3) uint8 image} for the files decoded ahead at `presize`. The
    decoder stops decoding at the first call (the job decodes the rest itself, on every core) and goes on to the
    features of what it decoded, if it has a graph; later calls (the validation split) take what it had finished.
    Another presize: nothing."""
    if _current is None:
        return {}
    _current.decoding_over()
    return _current.take(paths, presize)


def take_features(paths: Sequence[Path], graph: Path | None) -> dict[int, np.ndarray]:
    """{index into `paths`: (2, dim) float32 center-view and mirror features} computed ahead by `graph` (the path
    of the exported graph the job's engine runs; None or another graph: nothing). Stops the process."""
    return _current.take_features(paths, graph) if _current is not None else {}


def release(presize: int | None) -> None:
    """The job's data is loaded: what the decoder holds and the data did not take is dropped. A decoder computing
    features at `presize` goes on until the probe's first pass takes them (`take_features`); any other stops
    (None: no probe follows)."""
    if _current is not None and presize == _current.presize:
        _current.decoding_over()  # which stops it when it has no graph
    else:
        stop()


def done(paths: Sequence[Path], presize: int) -> int:
    """How many of `paths` are decoded ahead at `presize` so far (the decoder goes on): the plan prices only the
    rest."""
    return len(_current.take(paths, presize)) if _current is not None else 0


def features_done(paths: Sequence[Path], presize: int) -> int:
    """How many of `paths` have their features computed ahead at `presize` so far (the plan prices the rest)."""
    if _current is None or _current.presize != presize or _current.graph is None:
        return 0
    return len(_current.finished(paths, _current.feature_status))


def stop() -> None:
    """Stop decoding ahead and drop what was not taken (the job has decoded all it needs)."""
    global _current
    if _current is not None:
        _current.stop()
        _current = None


def default_start(data: str | Path, size: int | None, crop_pct: float, default_size: int,
                  arch: str | None = None) -> Ahead | None:
    """Decode a folder's images ahead at the presize the job's first decode will ask for, when the command line
    alone tells it: `size` when given, else `default_size` (the default backbone's) when the images' median short
    side is at least `crop_pct` of it (on smaller images the planner weighs smaller sizes and from-scratch models
    first). None when the folder holds no images, or they are smaller. `arch`: the pretrained backbone whose
    recorded graph at that size (`recorded_graph`) computes their features next (None: decode only)."""
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
    return start(paths, presize_for(size, crop_pct), recorded_graph(arch, size) if arch else None)
