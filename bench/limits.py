"""Benchmark: what this CPU can do for the default job, and how close the default job comes to it.

Measures, each beside its target:
  1. start-up: `imgclf --help` wall time (Python + imports), best of 3;
  2. decode: the shared hymenoptera photos presized for 256 px (`decode_all`, threads), images/s;
  3. the default backbone's pooled features at 256 px on in-memory batches of those photos through each engine at
     hand: eager fp32, eager bf16 autocast (the old path), eager bf16 weights, TorchScript trace+freeze (bf16),
     onnxruntime fp32 (`features.onnx_engine`, what the job now uses) and int8 (static QDQ, calibrated on the
     batch), torch.compile with --compile (slow to build). Each: images/s, CPU ms per image (a figure that
     load on a shared machine disturbs less than wall time), the seconds to build it, and its parity with eager
     fp32 (lowest cosine of an image's features, and whether it meets the job's bar: `features.MIN_COSINE`);
  4. the default job (`imgclf train DATA`, its own process) split into start, decode, features, probe and finish
     (final validation, export, files), its feature pass's images/s against the fastest engine's
     (target >= 0.9x), its accuracy (target >= 0.95) and its wall time against fastai `fine_tune(2)`'s
     (bench/peers/fastai_hymenoptera.py, target <= 0.1x; --skip-fastai, or --fastai-seconds S to reuse a figure).
     The job runs --rounds times (default 3), each round right after a fresh timing of onnxruntime fp32 on the
     table's batch: on a shared 2-core machine the engine's own rate drifts by 10-20% within minutes, so each
     round's ratio sets the pass beside the engine timed just before it, and the median round is the figure. The
     pass's own overhead (engine set-up and cropping: the share of the pass outside onnxruntime's calls, both timed
     inside one pass) is printed beside it: no drift between two moments can move that one.

Usage: python bench/limits.py [DATA] [--bs 32] [--threads N] [--compile] [--skip-job] [--skip-fastai]
                              [--fastai-seconds S] [--rounds 3]
       python bench/limits.py --int8-probe [SET ...]   # the probe on fp32 vs int8 features (the engine decision)
       python bench/limits.py --ort-batches [SIZE ...]  # onnxruntime fp32 images/s by images per call (ORT_CALL_PIXELS)
       python bench/limits.py --overlap [--repeat 3] [--device cuda]  # decode then features vs the two overlapped
       python bench/limits.py --ahead [--repeat 3]    # the job with nothing / decoding / + features done ahead
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared/datasets/hymenoptera"
SIZE = 256


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return time.perf_counter() - t, p


def startup() -> float:
    return min(timed([sys.executable, "-m", "imgclf", "--help"])[0] for _ in range(3))


def decode(data: Path) -> tuple[float, float, torch.Tensor]:
    """(images/s, CPU ms per image, the presized photos) for every photo under `data`, at the job's presize."""
    from imgclf.data.core import presize_for
    from imgclf.data.decode import decode_all

    paths = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    c, t = time.process_time(), time.perf_counter()
    images, _, _ = decode_all(paths, presize_for(SIZE), progress=False)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    return len(paths) / wall, 1000 * cpu / len(paths), images


def distinct_rate(images: torch.Tensor, bs: int) -> float:
    """onnxruntime fp32's images/s over every photo once, as distinct pre-normalised in-memory batches of `bs` (the
    engine table times one batch three times, which the caches favour; a pass reads each image once)."""
    from imgclf.data.augment import center_batch
    from imgclf.models import create_model
    from imgclf.models.registry import IMAGENET_MEAN, IMAGENET_STD
    from imgclf.train.features import onnx_engine

    model, _ = create_model("efficientnet_lite0", 2, pretrained=True)
    engine = onnx_engine(model.eval(), SIZE)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    batches = [center_batch(images[i:i + bs], SIZE, mean, std).contiguous() for i in range(0, len(images), bs)]
    engine(batches[0][:2])  # warm
    t = time.perf_counter()
    for b in batches:
        engine(b)
    return len(images) / (time.perf_counter() - t)


def engines(batch: torch.Tensor, compile_too: bool) -> list[dict]:
    """Each engine's figures on `batch` (normalised, 256 px); the reference is eager fp32."""
    from imgclf.models import create_model
    from imgclf.train.features import Pooled, check_parity, eager_engine, onnx_engine

    model, _ = create_model("efficientnet_lite0", 2, pretrained=True)
    model.eval().requires_grad_(False)
    model = model.to(memory_format=torch.channels_last)
    cl = batch.contiguous(memory_format=torch.channels_last)
    rows = []

    def add(name: str, build, x: torch.Tensor = cl) -> None:
        try:
            t = time.perf_counter()
            fn = build()
            fn(x[:2])  # warm: first-call allocations and kernel choices belong to setup
            setup = time.perf_counter() - t
            fn(x)
            c, t = time.process_time(), time.perf_counter()
            for _ in range(2):
                fn(x)
            wall, cpu = (time.perf_counter() - t) / 2, (time.process_time() - c) / 2
            eng = type("E", (), {"__call__": lambda self, v: fn(v.to(x.dtype)).float()})()
            par = check_parity(eng, model, batch[:8])
            rows.append({"engine": name, "img_s": len(x) / wall, "cpu_ms": 1000 * cpu / len(x), "setup_s": setup,
                         "cosine": par["cosine"], "parity": par["ok"]})
        except Exception as e:  # an engine this machine lacks is a row that says so
            rows.append({"engine": name, "error": f"{type(e).__name__}: {str(e)[:100]}"})
        print(json.dumps(rows[-1]), flush=True)

    add("eager fp32 CL", lambda: eager_engine(model))
    add("eager bf16 autocast CL", lambda: eager_engine(model, torch.bfloat16))
    bf16 = Pooled(copy.deepcopy(model).to(torch.bfloat16)).eval()
    add("eager bf16 weights CL", lambda: torch.no_grad()(bf16), cl.to(torch.bfloat16))

    def jit():
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.freeze(torch.jit.trace(bf16, cl[:2].to(torch.bfloat16)))

    add("TorchScript freeze bf16", jit, cl.to(torch.bfloat16))
    add("onnxruntime fp32", lambda: onnx_engine(model, SIZE), batch)
    add("onnxruntime int8", lambda: _int8(model, batch), batch)
    if compile_too:
        add("torch.compile fp32", lambda: torch.no_grad()(torch.compile(Pooled(model))))
    return rows


def _int8(model, batch: torch.Tensor):
    """onnxruntime static int8 (QDQ, per-channel weights, the first conv in float) calibrated on `batch`."""
    import io

    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from imgclf.train.features import Pooled, static_padding

    x = batch.contiguous().numpy()

    class Calib(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": x[i : i + 16]} for i in range(0, len(x), 16)])

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        buf = io.BytesIO()
        torch.onnx.export(Pooled(static_padding(model, SIZE)), (torch.zeros(2, 3, SIZE, SIZE),), buf, dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["f"], dynamic_axes={"x": {0: "b"}})
        Path(tmp, "f.onnx").write_bytes(buf.getvalue())
        quant_pre_process(f"{tmp}/f.onnx", f"{tmp}/pre.onnx")
        import onnx

        first = next(n.name for n in onnx.load(f"{tmp}/pre.onnx").graph.node if n.op_type == "Conv")
        quantize_static(f"{tmp}/pre.onnx", f"{tmp}/q.onnx", Calib(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv", "Gemm", "MatMul", "Clip", "Relu"], nodes_to_exclude=[first])
        so = ort.SessionOptions()
        so.intra_op_num_threads = torch.get_num_threads()
        so.log_severity_level = 3
        session = ort.InferenceSession(f"{tmp}/q.onnx", so, providers=["CPUExecutionProvider"])
    return lambda v: torch.from_numpy(session.run(None, {"x": v.contiguous().numpy()})[0])


def int8_probe(names: list[str]) -> None:
    """The probe's validation accuracy on fp32 (onnxruntime) against int8 features (static, calibrated on 64 of the
    set's own training images), at 256 px, on bench/recipes.py's photo sets: the evidence for the default engine."""
    import torch.nn.functional as F

    sys.path.insert(0, str(HERE))
    import recipes as R

    from imgclf.data.core import ImageData
    from imgclf.train.features import int8_engine
    from imgclf.train.recipes import probe_cv
    from imgclf.train.vision import vision_learner

    builders = {"hymenoptera": lambda d: R.SHARED / "hymenoptera", "hymenoptera-8": R.build_few,
                "hymenoptera-48px": R.build_lowres, "fashion-2000": R.build_fashion}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            data = ImageData.from_folder(builders[name](Path(tmp) / name), size=SIZE, progress=False)
            row: dict = {"set": name, "n_train": data.n_train, "n_valid": data.n_valid}
            feats = {}
            for kind in ("fp32", "int8"):
                learn = vision_learner(data, progress=False)
                if kind == "int8":
                    dl = data.loader("train", learn.meta.mean, learn.meta.std, view="center", channels_last=False)
                    idx = torch.linspace(0, data.n_train - 1, min(64, data.n_train)).round().long()
                    t = time.perf_counter()
                    engine = int8_engine(learn.model, SIZE, dl.transform(dl.images[idx]))
                    row["int8_build_s"] = time.perf_counter() - t
                    learn.features.get_engine(learn.model, lambda e=engine: e)
                cand, rate, _ = probe_cv(learn)
                row[kind] = {"accuracy": cand.accuracy, "valid_loss": cand.valid_loss,
                             "cv_accuracy": cand.selection["accuracy"], "wd": cand.detail["wd"], "img_s": rate}
                feats[kind] = learn.cached_features("valid", "center")[0]
            row["cosine_min"] = float(F.cosine_similarity(feats["int8"], feats["fp32"], dim=1).min())
            print(json.dumps(row), flush=True)


LINE = re.compile(r"^(?P<phase>[^:]+): .* in (?P<s>[\d.]+) ?s\b")  # progress.py's end line of a phase


def ort_batches(sizes: list[int]) -> None:
    """onnxruntime fp32 images/s of the default body by images per call, at each size: where the calls of
    `features.ORT_CALL_PIXELS` come from (activations that stay in the caches run faster than big batches)."""
    import numpy as np

    from imgclf.models import create_model
    from imgclf.train.features import ORT_CALL_PIXELS, _export_graph, _session, ort_chunk

    model, _ = create_model("efficientnet_lite0", 2, pretrained=True)
    model.eval().requires_grad_(False)
    for size in sizes:
        session = _session(_export_graph(model, size))
        rates = {}
        for n in (1, 2, 4, 8, 16, 32, 64, 128):
            x = np.random.default_rng(0).standard_normal((n, 3, size, size), dtype=np.float32)
            session.run(None, {"x": x})
            t, done = time.perf_counter(), 0
            while time.perf_counter() - t < 1.5:
                session.run(None, {"x": x})
                done += n
            rates[n] = done / (time.perf_counter() - t)
        best = max(rates, key=rates.get)
        print(f"{size:>4} px: " + ", ".join(f"{r:.0f} ({n})" for n, r in rates.items())
              + f" img/s (images per call); best {best}, ORT_CALL_PIXELS gives {ort_chunk(size)}"
              f" ({ORT_CALL_PIXELS} pixels)", flush=True)


def overlap(data: Path, repeat: int, device: str) -> None:
    """What overlapping the decode with the feature pass can save on this machine: every photo decoded and presized
    (`decode_all`'s threads) and then its center view through the job's feature engine on `device`
    (`features.pick_engine`: onnxruntime fp32 on a CPU, eager bf16 on a GPU), against the same work pipelined (the
    decode threads work ahead while the engine runs on each chunk as soon as its images are presized, in order).
    Alternated `repeat` times; the median of each."""
    import statistics
    from concurrent.futures import ThreadPoolExecutor

    from imgclf.data.augment import center_batch
    from imgclf.data.core import presize_for
    from imgclf.data.decode import decode_all, default_workers, load_presized
    from imgclf.models import create_model
    from imgclf.models.registry import IMAGENET_MEAN, IMAGENET_STD
    from imgclf.train.callbacks.precision import best_dtype
    from imgclf.train.features import PASS_PIXELS, glue, pick_engine

    dev = torch.device(device)
    paths = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    model, _ = create_model("efficientnet_lite0", 2, pretrained=True)
    model = model.to(dev).eval()
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    presize = presize_for(SIZE)
    chunk = max(1, PASS_PIXELS // SIZE**2) if dev.type == "cpu" else 256

    def view(x: torch.Tensor) -> torch.Tensor:
        return center_batch(x.to(dev, non_blocking=True), SIZE, mean.to(dev), std.to(dev))

    first, _, _ = decode_all(paths[:8], presize, progress=False)
    engine = pick_engine(model, view(first), best_dtype(dev) if dev.type != "cpu" else None)

    def done() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def sequential() -> float:
        t = time.perf_counter()
        images, _, _ = decode_all(paths, presize, progress=False)
        with glue(engine):
            for i in range(0, len(images), chunk):
                engine(view(images[i:i + chunk]))
        done()
        return time.perf_counter() - t

    def pipelined() -> float:
        t = time.perf_counter()
        with ThreadPoolExecutor(default_workers()) as pool:
            futures = [pool.submit(load_presized, p, presize) for p in paths]
            with glue(engine):
                for i in range(0, len(paths), chunk):
                    engine(view(torch.stack([f.result() for f in futures[i:i + chunk]])))
        done()
        return time.perf_counter() - t

    sequential(), pipelined()  # warm: file cache, engine
    seq, pipe = [], []
    for _ in range(repeat):
        seq.append(sequential())
        pipe.append(pipelined())
    s, p = statistics.median(seq), statistics.median(pipe)
    print(f"{len(paths)} photos at {SIZE} px on {dev} [{engine.name}], {default_workers()} decode threads, median of "
          f"{repeat}: decode then features {s:.2f} s, overlapped {p:.2f} s ({s - p:+.2f} s, {p / s:.2f}x)", flush=True)


def ahead_ab(data: Path, repeat: int) -> None:
    """The default job with nothing done ahead (`IMGCLF_DECODE_AHEAD=0`: decoded after the plan), with its images
    decoded ahead (a second process while the job imports torch: data/ahead.py; `IMGCLF_FEATURES_AHEAD=0`), and
    with their features computed there too (the default, from the second job on a machine: the first records the
    graph), alternated `repeat` times; the median wall, start-up, decode and feature seconds of each."""
    import statistics

    variants = {"nothing ahead": {"IMGCLF_DECODE_AHEAD": "0"}, "decode ahead": {"IMGCLF_FEATURES_AHEAD": "0"},
                "decode + features": {}}
    job(data)  # records the graph the decoder runs (the first job on a machine has none)
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for _ in range(repeat):
        for name, env in variants.items():
            runs[name].append(job(data, env))
    print(f"default job on {data}, median of {repeat} alternated runs:")
    for name, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("wall", "start", "decode", "features",
                                                                   "features_ahead")}
        print(f"  {name:<18} wall {med['wall']:5.2f} s  start {med['start']:4.2f}  decode {med['decode']:4.2f}  "
              f"features {med['features']:4.2f} ({med['features_ahead']:.0f} rows ahead)  accuracy "
              + ", ".join(f"{r['accuracy']:.4f}" for r in rs), flush=True)
    walls = {name: statistics.median(r["wall"] for r in rs) for name, rs in runs.items()}
    base = walls["nothing ahead"]
    for name in list(variants)[1:]:
        print(f"  {name} / nothing ahead: {walls[name] / base:.3f}x wall ({walls[name] - base:+.2f} s)", flush=True)


def job_rounds(data: Path, batch: torch.Tensor, n: int) -> list[dict]:
    """`n` runs of the default job, each right after onnxruntime fp32 is timed on `batch` (the table's figure,
    again): sorted by the ratio of the job's pass to that rate. Each round also has the pass's overhead, the
    share of its seconds outside onnxruntime's calls (set-up, cropping, the loader): timed within the one pass."""
    from imgclf.data.ahead import recorded_graph
    from imgclf.models import create_model
    from imgclf.train.features import onnx_engine

    if recorded_graph("efficientnet_lite0", SIZE) is None:  # a machine's first job records the graph that the
        job(data)  # next jobs' decoders run while they start: the rounds time the jobs after it, as users meet them
    model, _ = create_model("efficientnet_lite0", 2, pretrained=True)
    engine = onnx_engine(model.eval(), SIZE)
    engine(batch[:2])
    rounds = []
    for i in range(n):
        t = time.perf_counter()
        for _ in range(2):
            engine(batch)
        rate = 2 * len(batch) / (time.perf_counter() - t)
        res = job(data)
        inside = res["engine_seconds"] or res["features"]  # the pass's seconds in onnxruntime's calls
        rounds.append({"order": i, "engine_img_s": rate, "job": res, "ratio": res["features_img_s"] / rate,
                       "overhead": 1 - inside / res["features"]})
        print(json.dumps({"round": i + 1, "engine_img_s": rate, "features_img_s": res["features_img_s"],
                          "ratio": rounds[-1]["ratio"], "overhead": rounds[-1]["overhead"]}), flush=True)
    return sorted(rounds, key=lambda r: r["ratio"])


def job(data: Path, env_extra: dict | None = None) -> dict:
    """The default job in its own process, split into phases from its progress lines and run files."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        env = {**os.environ, "IMGCLF_PROGRESS": "lines", **(env_extra or {})}
        wall, p = timed([sys.executable, "-m", "imgclf", "train", str(data), "--out", str(out)], env)
        m = json.loads((out / "metrics.json").read_text())
        recipe = json.loads((out / "recipe.json").read_text())
    phases: dict[str, float] = {}
    for line in p.stderr.splitlines() + p.stdout.splitlines():
        hit = LINE.match(line.strip())
        if hit:
            phases[hit["phase"]] = phases.get(hit["phase"], 0.0) + float(hit["s"])
    job_phases = m.get("phases", {})  # the job's own clock (metrics.json): plan, decode, fit, finish
    decode_s = job_phases.get("decode", sum(s for k, s in phases.items() if k.startswith(("decode", "presize"))))
    cand = next(c for c in recipe["candidates"] if c.get("name") == recipe["chosen"].replace("fine_tune", "probe"))
    feat_s = float(cand["detail"]["feature_seconds"])
    eng = cand["detail"].get("feature_engine", {})
    ahead_rows = int(cand["detail"].get("features_ahead", 0))  # computed by the decoder while the job started
    n_feats = 2 * m["n_train"] + m["n_valid"] - ahead_rows  # the rows the pass itself ran
    finish = job_phases.get("finish", m["total_seconds"] - m["fit_seconds"] - decode_s)
    return {"wall": wall, "start": wall - m["total_seconds"], "plan": job_phases.get("plan", 0.0), "decode": decode_s,
            "features": feat_s, "features_img_s": n_feats / feat_s, "features_ahead": ahead_rows,
            "engine_seconds": eng.get("seconds"),
            "engine_setup": eng.get("setup_seconds"),
            "engine_img_s": eng.get("images_per_second"), "probe": float(cand["seconds"]) - feat_s,
            "fit_other": m["fit_seconds"] - float(cand["seconds"]),
            "finish": finish, "accuracy": m["accuracy"], "kept": m.get("kept"), "phases": phases,
            "engine": eng.get("name") or ", ".join(sorted({e for k in phases for e in re.findall(r"\[(.+)\]", k)}))
            or "?"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--bs", type=int, default=32, help="images per engine batch")
    ap.add_argument("--threads", type=int, default=0, help="torch/onnxruntime threads (0: torch's default)")
    ap.add_argument("--compile", action="store_true", help="also torch.compile (minutes to build on 2 cores)")
    ap.add_argument("--skip-job", action="store_true")
    ap.add_argument("--skip-fastai", action="store_true")
    ap.add_argument("--fastai-seconds", type=float, help="fastai fine_tune(2)'s wall time measured before")
    ap.add_argument("--int8-probe", nargs="*", metavar="SET",
                    help="only the probe's accuracy on fp32 vs int8 features on these sets (none: all four of "
                         "bench/recipes.py's photo sets: ~10 min quiet)")
    ap.add_argument("--ort-batches", nargs="*", type=int, metavar="SIZE",
                    help="only onnxruntime fp32's images/s by images per call at these sizes (none: 32 128 256)")
    ap.add_argument("--overlap", action="store_true", help="only decode-then-features vs the two overlapped")
    ap.add_argument("--ahead", action="store_true", help="only the default job with and without decoding ahead")
    ap.add_argument("--repeat", type=int, default=3, help="--overlap, --ahead: alternations timed")
    ap.add_argument("--rounds", type=int, default=3, help="the default job's runs, each beside a fresh engine timing")
    ap.add_argument("--device", default="cpu", help="--overlap: where the feature engine runs (cpu, cuda)")
    a = ap.parse_args()
    if a.ahead:
        ahead_ab(a.data, a.repeat)
        return
    if a.overlap:
        overlap(a.data, a.repeat, a.device)
        return
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.ort_batches is not None:
        ort_batches(a.ort_batches or [32, 128, 256])
        return
    if a.int8_probe is not None:
        int8_probe(a.int8_probe or ["hymenoptera", "hymenoptera-8", "hymenoptera-48px", "fashion-2000"])
        return
    load = os.getloadavg()[0]
    print(f"load average {load:.1f} on {os.cpu_count()} CPUs; {torch.get_num_threads()} torch threads", flush=True)

    start = startup()
    print(json.dumps({"startup_s": start}), flush=True)
    dec_rate, dec_cpu, images = decode(a.data)
    print(json.dumps({"decode_img_s": dec_rate, "decode_cpu_ms": dec_cpu, "images": len(images)}), flush=True)
    from imgclf.data.augment import center_batch
    from imgclf.models.registry import IMAGENET_MEAN, IMAGENET_STD
    from imgclf.train.features import MAX_REL_DIFF, MIN_COSINE

    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    batch = center_batch(images[: a.bs], SIZE, mean, std).contiguous()
    rows = engines(batch, a.compile)
    # the job's own bar (features.MIN_COSINE, MAX_REL_DIFF): an engine off it would never run the job's pass
    ok = [r for r in rows if "img_s" in r and r["parity"]]
    best = max(ok, key=lambda r: r["img_s"])

    distinct = distinct_rate(images, a.bs)
    print(json.dumps({"onnxruntime_fp32_distinct_img_s": distinct}), flush=True)
    rounds = [] if a.skip_job else job_rounds(a.data, batch, max(1, a.rounds))
    res = rounds[len(rounds) // 2]["job"] if rounds else None  # the median round by ratio
    fastai = a.fastai_seconds
    if res is not None and fastai is None and not a.skip_fastai:
        wall, p = timed([sys.executable, str(HERE / "peers" / "fastai_hymenoptera.py"), str(a.data)])
        fastai = wall
        print(json.dumps({"fastai": json.loads(p.stdout.strip().splitlines()[-1]), "wall": wall}), flush=True)

    print(f"\nload average {load:.1f} at the start ({os.cpu_count()} CPUs): figures under load read low")
    print(f"start-up (imgclf --help)   {start:6.2f} s")
    print(f"decode at {SIZE} px presize   {dec_rate:6.1f} img/s  {dec_cpu:6.1f} CPU ms/img  ({len(images)} photos)")
    print(f"\n{'engine (256 px, batch ' + str(len(batch)) + ')':<28}{'img/s':>8}{'CPU ms/img':>12}{'setup s':>9}"
          f"{'cosine':>10}  parity")
    for r in rows:
        if "error" in r:
            print(f"{r['engine']:<28}  {r['error']}")
        else:
            print(f"{r['engine']:<28}{r['img_s']:>8.1f}{r['cpu_ms']:>12.1f}{r['setup_s']:>9.1f}{r['cosine']:>10.5f}  "
                  + ("yes" if r["parity"] else "no"))
    print(f"fastest with parity (the job's bar: cosine >= {MIN_COSINE}, max rel diff <= {MAX_REL_DIFF}): "
          f"{best['engine']} ({best['img_s']:.1f} img/s)")
    if res is None:
        return
    print(f"\ndefault job (`imgclf train {a.data}`): {res['wall']:.1f} s wall, accuracy {res['accuracy']:.4f} "
          f"(target >= 0.95), kept {res['kept']}, features on {res['engine']}")
    for k in ("start", "plan", "decode", "features", "probe", "fit_other", "finish"):
        print(f"  {k:<10}{res[k]:6.1f} s")
    print(f"  (features: {res['features_ahead']} rows computed by the decoder while the job started, the rest by "
          "the pass)")
    ratio = res["features_img_s"] / best["img_s"]
    print(f"feature pass {res['features_img_s']:.1f} img/s = {ratio:.2f}x the fastest engine's in the table above "
          "(includes building the engine and cropping; timed minutes apart: see the rounds below)")
    print("rounds (the job's pass / onnxruntime fp32 timed just before it on the table's batch; target >= 0.9x):")
    for i, r in enumerate(sorted(rounds, key=lambda r: r["order"])):
        print(f"  round {i + 1}: engine {r['engine_img_s']:6.1f} img/s, pass {r['job']['features_img_s']:6.1f} img/s "
              f"= {r['ratio']:.2f}x; pass overhead {100 * r['overhead']:.1f}% "
              f"(set-up {r['job']['engine_setup']:.2f} s), "
              f"engine inside the pass {r['job']['engine_img_s']:.1f} img/s; wall {r['job']['wall']:.1f} s, "
              f"accuracy {r['job']['accuracy']:.4f}")
    med = rounds[len(rounds) // 2]
    print(f"  median round {med['ratio']:.2f}x (range {rounds[0]['ratio']:.2f}-{rounds[-1]['ratio']:.2f}x); "
          f"pass overhead median {100 * sorted(r['overhead'] for r in rounds)[len(rounds) // 2]:.1f}%")
    print(f"  = {res['features_img_s'] / distinct:.2f}x onnxruntime fp32 over all {len(images)} photos once, as "
          f"distinct in-memory batches ({distinct:.1f} img/s; the table's figure repeats one batch)")
    same = next((r for r in rows if r.get("engine") == res["engine"] and "img_s" in r), None)
    if same and same is not best:  # int8 is measured but not the job's (features.py: it cost the probe accuracy)
        print(f"  = {res['features_img_s'] / same['img_s']:.2f}x the job's own engine ({same['engine']}, "
              f"{same['img_s']:.1f} img/s on in-memory batches)")
    if res["engine_img_s"]:
        print(f"  inside the pass, {res['engine']} ran at {res['engine_img_s']:.1f} img/s"
              + (f" = {res['engine_img_s'] / same['img_s']:.2f}x its rate on in-memory batches" if same else "")
              + f"; set-up {res['engine_setup']:.1f} s")
    if fastai:
        walls = [r["job"]["wall"] for r in sorted(rounds, key=lambda r: r["order"])]
        mid = sorted(walls)[len(walls) // 2]
        print(f"wall time, median of {len(walls)} rounds: {mid:.1f} s = {mid / fastai:.3f}x fastai fine_tune(2)'s "
              f"{fastai:.1f} s (target <= 0.1x); each round " + ", ".join(f"{w:.1f} s = {w / fastai:.3f}x"
                                                                          for w in walls))


if __name__ == "__main__":
    main()
