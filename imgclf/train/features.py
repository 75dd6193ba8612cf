"""Pooled backbone features, computed once per image view and reused while the body is unchanged.

Training the head of a frozen body on cached features costs one forward pass over the data instead
of one per epoch: on hymenoptera (245 train images, 2 CPU cores) the head phase drops from ~40 s per
epoch to a one-off pass over the image and its mirror plus milliseconds per epoch.

The frozen body needs no autograd and no eager dispatch, so the pass runs on the fastest engine at hand
(`pick_engine`). Measured on the default body (EfficientNet-Lite0) at 256 px, one thread, batch 32, CPU ms per
image on the 2-core Xeon under load ~10 (`bench/limits.py`): eager fp32 83, eager autocast bf16 58, eager bf16
weights 47, TorchScript trace+freeze bf16 33 (9 s to build), onnxruntime fp32 15 (the graph exported by
torch.onnx's TorchScript-based exporter after `static_padding`: 1.3 CPU s to export; the dynamo exporter's graph
runs the same but took 94 s to export), onnxruntime int8 17.5 (no faster, and calibration costs). So onnxruntime
fp32 when it is installed (`imgclf[export]`), checked against eager fp32 on the first images before it is used
(once per exported graph: a passed verdict is kept beside it), else eager with the learner's autocast dtype.

Why not int8 (`int8_engine`), though bench/limits.py has it at 268 img/s against fp32's 136 on in-memory batches:
static quantization calibrated on 64 of the user's own training images, the probe's validation accuracy at 256 px
(same CV-chosen probe, fp32 -> int8; 2026-11-30, 2-core Xeon under load): hymenoptera 0.9608 -> 0.9542 (one image
of 153), hymenoptera-8 0.9608 -> 0.9608, fashion-2000 0.8770 -> 0.8780, hymenoptera at 48 px 0.8758 -> 0.8431
(five images; the features' lowest cosine with fp32 0.952, far under MIN_COSINE). And calibrating + quantizing
took 10-24 s under load, more than the whole fp32 pass over hymenoptera's 643 views. So fp32 stays the default;
int8 is there to measure with (`python bench/limits.py --int8-probe`)."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import time
import warnings
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.ahead import engine_cache
from ..rundir import write_json
from .forked import one_thread

ENGINES = ("auto", "onnx", "eager")
# parity of an engine's features with eager fp32 on the first batch's images: cosine of each image's feature
# vectors, and max |diff| relative to the largest |feature|. onnxruntime fp32 on Lite0: cosine 1 - 1e-9, max
# diff 1e-5 of features up to ~10; eager bf16 autocast (today's fallback) is 1e-2 away, so this bar is strict.
MIN_COSINE, MAX_REL_DIFF = 0.999, 0.02
PARITY_IMAGES = 8
CACHE_FILES = 8  # exported graphs kept in engine_cache(), most recently used first (13 MB each for Lite0): the auto
# recipe alone probes up to 3 sizes on small images: with 4 kept, a second such data set could evict the 256 px one
# onnxruntime on a CPU runs a convolutional body fastest in calls of ~2 x 256^2 pixels, whose activations stay in
# the caches: Lite0 on the 2-core Xeon, images/s by images per call (bench/limits.py --ort-batches):
# 256 px: 239 (1), 248 (2), 226 (8), 187 (32), 177 (64); 128 px: 697 (1), 992 (8), 1019 (16), 790 (64);
# 32 px: 2156 (1), 6255 (8), 9788 (64), 9732 (128). The default job's pass over hymenoptera: 160 -> 231 img/s
ORT_CALL_PIXELS = 2 * 256 * 256
# The pass crops and normalises PASS_PIXELS at a time, on one torch thread, between onnxruntime's calls: torch's
# worker threads spin after each op and took the cores from onnxruntime's (bs 2 on two torch threads: 139 img/s).
# hymenoptera's pass at 256 px by images cropped at a time, 2-core Xeon quiet, median of 3 (in-memory: 232):
# 64 on two threads (before) 201; on one: 4 204, 8 211, 16 212, 32 206, 64 199. Without onnxruntime's spinning
# every variant lost ~10%.
PASS_PIXELS = 16 * 256 * 256
ENGINE_FORMAT = 1  # bump when the exported graph changes (static_padding, opset): old cached files are not read


class Pooled(nn.Module):
    """The body's pooled output (`forward_head(pre_logits=True)`): what a feature engine computes."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


@dataclass
class FeatureEngine:
    """A callable from a normalised float batch (B, 3, S, S) to float32 features (B, D), and how it was made."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    setup_seconds: float = 0.0
    parity: dict = field(default_factory=dict)  # cosine / max_rel_diff vs eager fp32, when checked
    note: str = ""  # why this engine (a fallback says what failed)
    channels_last: bool = True  # the input layout it wants (onnxruntime: plain NCHW, no copy)
    graph: Path | None = None  # the cached exported graph it runs, if any: its parity verdict is kept beside it
    seconds: float = 0.0  # time spent in calls (the pass's rate without set-up or cropping)
    images: int = 0  # images through it
    batch: int | None = None  # images the pass crops at a time for it (None: the loader's batch)
    own_threads: bool = False  # runs on a thread pool of its own: the pass crops on one torch thread (see `glue`)
    # (images, their features) from the checks that chose it: the pass that starts with those images reuses them
    primed: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        t = time.perf_counter()
        out = self.fn(x)
        self.seconds += time.perf_counter() - t
        self.images += len(x)
        return out

    def report(self) -> dict:
        """What ran a feature pass, for recipe.json: the engine, its set-up seconds (export or cached graph,
        session, parity check), its parity with eager fp32, and its own images/s inside the pass (without set-up,
        cropping or the loader): bench/limits.py sets that beside the engine's rate on in-memory batches."""
        return {"name": self.name, "setup_seconds": self.setup_seconds, "parity": self.parity, "note": self.note,
                "images": self.images, "seconds": self.seconds,
                "images_per_second": self.images / self.seconds if self.seconds else None}


def glue(engine: FeatureEngine | None) -> AbstractContextManager[None]:
    """Torch on one thread while `engine` runs on its own pool (onnxruntime): the crops between its calls are
    small, and torch's idle workers would spin on the cores it needs (`PASS_PIXELS`)."""
    return one_thread(engine is not None and engine.own_threads)


def eager_engine(model: nn.Module, dtype: torch.dtype | None = None) -> FeatureEngine:
    """The module itself without autograd, in `dtype` autocast (None: fp32)."""
    pooled = Pooled(model)

    @torch.no_grad()
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=dtype) if dtype else nullcontext():
            return pooled(x).float()

    return FeatureEngine("eager" + (f" {str(dtype).removeprefix('torch.')} autocast" if dtype else " fp32"), run)


def static_padding(model: nn.Module, size: int) -> nn.Module:
    """A copy of `model` in eval mode whose TF-style "same" convolutions (timm's `Conv2dSame`, the default body's)
    pad by constants worked out for `size` px inputs, instead of from the input's shape at each call.

    Exported as is, each such convolution becomes a Shape/Ceil/Pad chain that onnxruntime cannot fold (38 CPU
    ms per image at 256 px vs 15 with constant pads); a plain `nn.ZeroPad2d` + `nn.Conv2d` exports as Pad + Conv,
    which onnxruntime fuses into one convolution."""
    from timm.layers.conv2d_same import Conv2dSame
    from timm.layers.padding import get_same_padding

    model = copy.deepcopy(model).eval().requires_grad_(False)
    shapes: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: shapes.__setitem__(n, tuple(a[0].shape[-2:])))
             for n, m in model.named_modules() if isinstance(m, Conv2dSame)]
    with torch.inference_mode():
        Pooled(model)(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    for name, (h, w) in shapes.items():
        parent, _, leaf = name.rpartition(".")
        conv = model.get_submodule(name)
        ph = get_same_padding(h, conv.kernel_size[0], conv.stride[0], conv.dilation[0])
        pw = get_same_padding(w, conv.kernel_size[1], conv.stride[1], conv.dilation[1])
        plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation,
                          conv.groups, bias=conv.bias is not None)
        plain.weight, plain.bias = conv.weight, conv.bias  # shared, not copied
        pad = nn.ZeroPad2d((pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        (model.get_submodule(parent) if parent else model).register_module(leaf, nn.Sequential(pad, plain))
    return model


def body_key(model: nn.Module, size: int) -> str:
    """A name for the body's exported graph: a hash of its weights, buffers, class, input size and torch version
    but not the classifier's (~20 ms for Lite0's 18 MB). Another body, even one step of training away, gets
    another name."""
    h = hashlib.sha256(f"{type(model).__name__}|{size}|{torch.__version__}|{ENGINE_FORMAT}".encode())
    head = {p.data_ptr() for p in model.get_classifier().parameters()}  # not in the graph: the probe changes it
    for name, t in model.state_dict().items():
        if t.data_ptr() in head:
            continue
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:24]


def onnx_engine(model: nn.Module, size: int, threads: int | None = None, cache: bool = True) -> FeatureEngine:
    """The body exported to ONNX (batch dimension free, `size` px fixed) and run by onnxruntime fp32.

    The export (~1.7 CPU s for Lite0) is kept in `engine_cache()` under `body_key`, so the next run on the same
    pretrained body loads it instead (`cache=False`: always export, keep nothing).

    Raises ImportError without onnxruntime (the `imgclf[export]` extra) and whatever the export raises on an
    architecture it cannot trace: `pick_engine` falls back to eager then."""
    import onnxruntime  # noqa: F401  (the ImportError before any export work)

    t = time.perf_counter()
    path = engine_cache() / f"{body_key(model, size)}.onnx" if cache else None
    if path is not None and path.is_file():
        graph = path.read_bytes()
        path.touch()  # recently used: kept by the pruning below
    else:
        graph = _export_graph(model, size)
        if path is not None:
            try:  # written whole then renamed: a concurrent run never reads half a file
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_bytes(graph)
                tmp.replace(path)
                # bodies that were trained are exported too and never seen again: keep the newest few (13 MB each)
                for old in sorted(path.parent.glob("*.onnx"), key=lambda f: f.stat().st_mtime)[:-CACHE_FILES]:
                    for f in (old, *old.parent.glob(f"{old.stem}.ort*.parity.json")):
                        f.unlink(missing_ok=True)
            except OSError:  # a read-only home: the engine works without its cache
                pass
    return FeatureEngine("onnxruntime fp32", _runner(_session(graph, threads)), time.perf_counter() - t,
                         channels_last=False, graph=path if path is not None and path.is_file() else None,
                         batch=max(1, PASS_PIXELS // (size * size)), own_threads=True)


def _verdict_file(engine: FeatureEngine) -> Path | None:
    import onnxruntime as ort

    if engine.graph is None:
        return None
    return engine.graph.with_name(f"{engine.graph.stem}.ort{ort.__version__}.parity.json")


def recalled_parity(engine: FeatureEngine) -> dict | None:
    """The parity verdict an earlier job recorded for this very graph (same body weights, size, torch and
    onnxruntime: the same features to the last bit), or None. Only passed verdicts are kept."""
    path = _verdict_file(engine)
    try:
        got = json.loads(path.read_text()) if path is not None and path.is_file() else None
    except (OSError, ValueError):
        return None
    return {**got, "recalled": True} if isinstance(got, dict) and got.get("ok") else None


def remember_parity(engine: FeatureEngine) -> None:
    """Keep a passed parity verdict beside the cached graph: the next job on this body skips the eager reference
    pass (on two cores ~1-2 s for 8 images at 256 px, most of the engine's set-up)."""
    path = _verdict_file(engine)
    if path is None or not engine.parity.get("ok") or engine.parity.get("recalled"):
        return
    try:
        write_json(path, engine.parity)
    except OSError:
        pass


def _export_graph(model: nn.Module, size: int) -> bytes:
    """The pooled body as an ONNX graph (batch dimension free, `size` px fixed, constant pads)."""
    pooled = Pooled(static_padding(model, size)).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes are not the user's business
        torch.onnx.export(pooled, (torch.zeros(2, 3, size, size),), buf, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["f"], dynamic_axes={"x": {0: "batch"}, "f": {0: "batch"}})
    return buf.getvalue()


def int8_engine(model: nn.Module, size: int, calib: torch.Tensor, threads: int | None = None) -> FeatureEngine:
    """The body quantized to int8 (onnxruntime static QDQ: per-channel int8 weights, uint8 activations, the first
    convolution left in float, ReLU6 clips quantized with their convolutions: `infer.export.quantize_int8`'s
    settings), activation ranges calibrated on `calib` (normalised training images).

    Measured on hymenoptera at 256 px (bench/limits.py): 268 img/s against fp32's 136, features at cosine 0.994
    of eager fp32's. Not the default: it cost the probe up to 3.3 points of accuracy (the module's docstring), and
    calibration and quantization take 14-24 s on two cores, more than the whole fp32 pass on a few hundred images."""
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    t = time.perf_counter()
    x = calib.detach().float().contiguous().cpu().numpy()

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"x": x[i : i + 16]} for i in range(0, len(x), 16)])

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src, pre, out = (Path(tmp) / n for n in ("f.onnx", "pre.onnx", "q.onnx"))
        src.write_bytes(_export_graph(model, size))
        quant_pre_process(str(src), str(pre))
        first = next(n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv")
        quantize_static(str(pre), str(out), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv", "Gemm", "MatMul", "Clip", "Relu"], nodes_to_exclude=[first])
        graph = out.read_bytes()
    return FeatureEngine("onnxruntime int8", _runner(_session(graph, threads)), time.perf_counter() - t,
                         channels_last=False)


def ort_chunk(size: int) -> int:
    """Images per onnxruntime call at `size` px: as many as make ORT_CALL_PIXELS pixels, at least one."""
    return max(1, ORT_CALL_PIXELS // (size * size))


def ort_run(session, name: str, x: np.ndarray, step: int) -> np.ndarray:
    """`session`'s first output for the batch `x` (fed as input `name`), computed in calls of `step` images."""
    outs = [session.run(None, {name: x[i:i + step]})[0] for i in range(0, len(x), step)]
    return outs[0] if len(outs) == 1 else np.concatenate(outs)


def _runner(session) -> Callable[[torch.Tensor], torch.Tensor]:
    """A batch through an onnxruntime session in calls of `ort_chunk` images (float32 NCHW in, features out on the
    batch's device)."""
    def run(x: torch.Tensor) -> torch.Tensor:
        xs = x.detach().float().contiguous().cpu().numpy()
        return torch.from_numpy(ort_run(session, "x", xs, ort_chunk(xs.shape[-1]))).to(x.device)

    return run


def _session(graph: bytes, threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or torch.get_num_threads()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])


def check_parity(engine: FeatureEngine, model: nn.Module, x: torch.Tensor) -> dict:
    """The engine's features of `x` beside eager fp32's: the lowest per-image cosine and max |diff| / max |f|."""
    ref = eager_engine(model)(x)
    got = engine(x.contiguous())
    engine.primed = (x, got)  # used only if the engine passes: the pass's first images
    cos = float(nn.functional.cosine_similarity(got, ref, dim=1).min())
    rel = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
    return {"cosine": cos, "max_rel_diff": rel, "images": len(x),
            "ok": bool(cos >= MIN_COSINE and rel <= MAX_REL_DIFF)}


def pick_engine(model: nn.Module, sample: torch.Tensor, dtype: torch.dtype | None = None, engine: str = "auto",
                candidate: FeatureEngine | None = None) -> FeatureEngine:
    """The engine that computes `model`'s pooled features: onnxruntime when importable, on a CPU, and its features
    of `sample` (a few normalised images) match eager fp32's; else eager in `dtype` autocast, with a note why.

    `engine`: "auto", "onnx" (the same checks, a warning when it cannot be used) or "eager". `candidate`: an engine
    built elsewhere (e.g. kept from another body) to check instead of building one: one that fails parity is
    never used. A cached graph that passed before (`recalled_parity`) is only checked for finite features."""
    if engine not in ENGINES:
        raise ValueError(f"feature engine {engine!r}: choose {', '.join(ENGINES)}")
    model.eval()  # features are the eval-mode body's (batch-norm running statistics): the reference's too
    device = sample.device
    if engine == "eager" or (candidate is None and device.type != "cpu"):
        return eager_engine(model, dtype)  # on a GPU eager autocast is the fast path
    why = ""
    t = time.perf_counter()

    def ready(e: FeatureEngine) -> FeatureEngine:  # set-up includes the checks; the call counters start at 0
        e.setup_seconds, e.seconds, e.images = time.perf_counter() - t, 0.0, 0
        return e

    try:
        cand = candidate or onnx_engine(model, int(sample.shape[-1]))
        recalled = recalled_parity(cand) if candidate is None else None
        if recalled is not None and _sane(cand, sample[:PARITY_IMAGES]):
            cand.parity = recalled  # this graph passed on this machine before: no eager reference pass
            return ready(cand)
        cand.parity = check_parity(cand, model, sample[:PARITY_IMAGES])
        if cand.parity["ok"]:
            remember_parity(cand)
            return ready(cand)
        why = (f"{cand.name} features off eager fp32 (cosine {cand.parity['cosine']:.4f}, max rel diff "
               f"{cand.parity['max_rel_diff']:.3g})")
    except ImportError:
        why = "onnxruntime is not installed (pip install 'imgclf[export]')"
    except Exception as e:  # an arch the exporter cannot trace, a runtime error: eager always works
        why = f"ONNX export failed ({type(e).__name__}: {str(e)[:120]})"
    if engine == "onnx" or candidate is not None:
        warnings.warn(f"feature engine: {why}; using eager", stacklevel=2)
    out = eager_engine(model, dtype)
    out.note = why
    return ready(out)


def _sane(engine: FeatureEngine, x: torch.Tensor) -> bool:
    """Whether the engine gives finite features of the right count for `x` (a recalled verdict's check)."""
    f = engine(x.contiguous())
    engine.primed = (x, f)
    return f.ndim == 2 and len(f) == len(x) and bool(torch.isfinite(f).all())


def _first_batch(engine: FeatureEngine, xb: torch.Tensor) -> torch.Tensor:
    """The features of a pass's first batch, reusing those the engine's checks computed for its first images
    (`FeatureEngine.primed`, used once and only when the images are the same): nothing is run twice."""
    primed, engine.primed = engine.primed, None
    if primed is None:
        return engine(xb)
    x, f = primed
    k = len(x)
    if len(xb) < k or x.shape[1:] != xb.shape[1:] or not torch.equal(xb[:k], x.to(xb.device)):
        return engine(xb)
    f = f.to(xb.device)
    return torch.cat([f, engine(xb[k:])]) if len(xb) > k else f


def extract_features(model: nn.Module, loader: Iterable, dtype: torch.dtype | None = None,
                     device: torch.device | None = None, engine: FeatureEngine | None = None,
                     flip: bool = False) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, ...]:
    """(features, targets): the body's pooled output (`forward_head(pre_logits=True)`) in eval mode.

    `engine`: what computes them (default: eager in `dtype` autocast). `flip=True` also returns the features of
    each batch mirrored, from the same batch (one crop and normalisation for both views): (features, targets,
    mirrored features)."""
    model.eval()
    engine = engine or eager_engine(model, dtype)
    feats, flipped, targets = [], [], []
    for i, (xb, yb) in enumerate(loader):
        feats.append(_first_batch(engine, xb) if i == 0 else engine(xb))
        if flip:  # a second call, not one on both views concatenated: the copy cost more than it saved
            flipped.append(engine(xb.flip(-1)))
        targets.append(yb)
    if flip:
        return torch.cat(feats), torch.cat(targets), torch.cat(flipped)
    return torch.cat(feats), torch.cat(targets)


def body_version(model: nn.Module) -> int:
    """Changes whenever any body weight or buffer is updated in place (optimizer steps, BN stats)."""
    head = {id(p) for p in model.get_classifier().parameters()}
    return sum(t._version for t in (*model.parameters(), *model.buffers()) if id(t) not in head)


class FeatureCache:
    """Features per (split, view), and the engine that computed them, thrown away when the body's weights change."""

    def __init__(self) -> None:
        self._store: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self._version: int | None = None
        self.computed = 0  # how many feature sets were computed: tests check reuse with it
        self.passes = 0  # how many passes over images computed them (the train split's two views: one)
        self.engine: FeatureEngine | None = None
        self.engine_name = "auto"  # what `pick_engine` may choose: "auto", "onnx" or "eager"
        self.ahead_rows = 0  # feature rows the CLI's decoder computed while the job started (data/ahead.py)

    @property
    def ran(self) -> str:
        """The name of the engine that computed the cached features ("eager" before any were)."""
        return self.engine.name if self.engine is not None else "eager"

    def engine_report(self) -> dict:
        """`FeatureEngine.report` of the engine that computed the cached features ({} before any were)."""
        return self.engine.report() if self.engine is not None else {}

    def _check(self, model: nn.Module) -> None:
        v = body_version(model)
        if v != self._version:
            self._store.clear()
            self.engine = None
            self._version = v

    def get(self, key: tuple[str, str], model: nn.Module, make) -> tuple[torch.Tensor, torch.Tensor]:
        """`make()` gives the features of `key`, or a dict {key: features} of several views from one pass."""
        self._check(model)
        if key not in self._store:
            made = make()
            made = made if isinstance(made, dict) else {key: made}
            self._store.update(made)
            self.computed += len(made)
            self.passes += 1
            self._version = body_version(model)
        return self._store[key]

    def peek(self, key: tuple[str, str], model: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The features of `key` if they are held for this body as it is now, else None (nothing is computed):
        the job's final figures reuse the probe's validation features instead of a second pass over the images."""
        if body_version(model) != self._version:
            return None
        return self._store.get(key)

    def get_engine(self, model: nn.Module, make: Callable[[], FeatureEngine]) -> FeatureEngine:
        """The feature engine for this body, built once while the body is unchanged."""
        self._check(model)
        if self.engine is None:
            self.engine = make()
        return self.engine
