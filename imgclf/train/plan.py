"""The auto recipe's plan: look at the data, price each candidate from measured throughput, pick within the budget.

Before any image is decoded, the job knows how many images there are and their native size (file headers, the
IDX header). A few timed batches give the backbone's forward rate at one size and the from-scratch net's
training rate at the images' own size; every phase is then priced from those rates, so the plan is printed
with its seconds before the time is spent, and a phase that cannot fit the budget is never started.

Why the two kinds of candidate: a pretrained backbone wins on photos and on few images (a probe on its cached
features: hymenoptera 0.961 in 14 s), but many small images are better served by a small net trained from
scratch at their own size: Fashion-MNIST (60k at 28 px) reaches 94.0% with `airnet_tiny` in ~5 minutes on two
CPU cores, while the backbone must see each image blown up to 64-256 px (presized to 293 px, 70,000 images do
not even fit in half the memory) and its probe scored 0.882 on a 2,000-image slice (bench/recipes.py).

Everything here but the `measure_*` functions is pure: `choose_plan(facts, rates, budget)` is the decision, unit
tested on made-up figures (tests/test_plan.py).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..rundir import write_json
from .callbacks.resize import progressive_cost
from .probe import probe_rows

TRAIN_COST = 3.5  # a training step costs about this many forward passes (forward + backward + step)
TRIAL_FRACTION = 1 / 8  # the fine-tune's trial: this fraction of an epoch, then judged on the inner holdout
HOLDOUT = 0.2  # the inner holdout of the training split that judges the fine-tune (validation stays untouched)
# many small images: at least this many training images whose short side is at most this -> from scratch.
# Measured: Fashion-MNIST 60k at 28 px, scratch 0.940 vs the probe's 0.882 on 2,000 of them; with few images
# the pretrained features win (hymenoptera at 48 px, 245 images: probe 0.909)
SCRATCH_MIN_TRAIN = 10_000
SCRATCH_MAX_SIDE = 64
MIN_SCRATCH_EPOCHS = 6  # fewer one-cycle epochs than this lose more than a point on Fashion-MNIST
MAX_DEFAULT_BUDGET = 600.0  # ten minutes unless --budget says more
EXPORT_SECONDS = 3.0
# a fine-tune trial starts only where the job, if the trial says no, still ends within this share of its budget
# (issue 14's blurred photos: the trial after a slow probe took the job to 239 s of its 600 on the slow Xeon)
TRIAL_SHARE = 1 / 3
# select_probe (5 folds x 7 decays + the refit, L-BFGS): hymenoptera's 490 feature rows 1.0-1.1 s on the quiet
# 2-core Xeon (2.9 s under load before its CV fits stopped at probe.CV_TOLERANCE); 0.5-1.5 ms a row on 490-3,920
# rows of them with noise added; priced at about twice that, as a shared machine runs it
PROBE_SECONDS_PER_ROW = 0.0025
# the feature pass runs on onnxruntime fp32, training steps run eager. Before any trial has run here (then its pace
# prices the fine-tune: Rates.train), a fine-tune is priced from the feature rate / ONNX_SPEEDUP. Measured on the
# quiet 2-core Xeon (2026-12-01): hymenoptera's trial trained 11.3 images/s at 256 px (~40 forward passes/s at
# TRAIN_COST) against onnxruntime's 215-235 feature rows/s; the old 1.9 (onnxruntime at 136 vs eager bf16 at 72)
# priced that trial at ~1 s, and it took 12.6 s
ONNX_SPEEDUP = 6.0
MIN_RECORDED_ROWS = 200  # feature passes smaller than this (tests, tiny sets) are mostly set-up: not recorded
RECORDS_KEPT = 3  # per key: the planner prices from the median of the last few passes


def default_budget(n_train: int) -> float:
    """Seconds for the whole job when none is given: a minute plus a quarter second per training image, at most
    ten minutes. Photo sets keep what they had (hymenoptera's 245 images: 121 s, the bench sets all under 600 s);
    a large set gets the ten minutes that Fashion-MNIST's from-scratch run needs, not 60k x 0.25 s = 4 hours."""
    return min(60.0 + 0.25 * n_train, MAX_DEFAULT_BUDGET)


@dataclass
class DataFacts:
    """What the planner knows before decoding: counts, the images' own short side, where they come from."""

    n_train: int
    n_valid: int
    short_side: float  # median native short side in pixels (0: unknown)
    arrays: bool = False  # images that come as arrays (IDX): they must fit in memory at the presize
    max_presize: int | None = None  # arrays: the largest presize that fits in half the memory


@dataclass
class Rates:
    """Measured throughput (images/s) on this machine, now."""

    forward: float  # the backbone's forward pass at `size`, eval mode (feature extraction)
    size: int
    decode: float  # files decoded and presized (arrays: presized), all workers
    scratch: float | None = None  # the from-scratch net's training steps at its size (None: not measured)
    engine: str = "eager"  # what ran the forward pass measured: onnxruntime's rate overstates eager training's
    # (size, images/s) of the backbone's fine-tune steps as earlier trials on this machine ran them
    # (`record_rate(kind="train")`); None: priced from the forward rate (`eager_rate`)
    train: tuple[int, float] | None = None
    decoded: int = 0  # images already decoded at the first size while the job started (data/ahead.py): not priced
    featured: int = 0  # images whose features (view and mirror) the decoder computed by then: not priced either

    def forward_at(self, size: int) -> float:
        """Forward rate at another size: the cost of a conv net grows with the pixels."""
        return self.forward * (self.size / size) ** 2

    def train_forward_at(self, size: int) -> float:
        """Forward passes/s at `size` as a fine-tune's steps (TRAIN_COST forward passes each) run them: from the
        training rate earlier trials measured when there is one, else the eager forward rate. A fine-tune's steps
        do not scale with the pixels as the feature engine does (per-layer costs dominate small images): priced
        from the forward rate, trials at 64-128 px took 2-3x their estimate."""
        return train_forward(self.forward_at(size), size, self.engine, self.train)


def train_forward(rate: float, size: int, engine: str, train: tuple[int, float] | None) -> float:
    """Forward passes/s at `size` of a fine-tune's steps: from `train` ((size, training images/s) that earlier
    trials measured), else from the feature pass's `rate` at `size` on `engine` (`eager_rate`)."""
    if train is None:
        return eager_rate(rate, engine)
    at, images_s = train
    return images_s * TRAIN_COST * (at / size) ** 2


def eager_rate(rate: float, engine: str) -> float:
    """A feature rate (images/s) as the eager forward pass of training would run it: the same unless the features
    ran on onnxruntime (ONNX_SPEEDUP)."""
    return rate / ONNX_SPEEDUP if engine.startswith("onnx") else rate


@dataclass
class Phase:
    name: str  # in a user's words: "features at 256 px"
    seconds: float
    condition: str = ""  # "only if the trial beats the probe": not counted in the sure total

    def text(self) -> str:
        return f"{self.name} ~{self.seconds:.0f} s" + (f" {self.condition}" if self.condition else "")


@dataclass
class Plan:
    """What the auto recipe will run: `kind` ("probe", "fine_tune" when a trial is planned, or "scratch"),
    the phases with their estimated seconds, the probe sizes, the fine-tune epochs planned after the trial,
    the scratch settings, the reasons and every candidate priced."""

    kind: str
    budget: float
    phases: list[Phase]
    sizes: list[int] = field(default_factory=list)
    fine_tune_epochs: int = 0
    trial_seconds: float = 0.0
    epoch_seconds: float = 0.0  # one fine-tune epoch at the largest probe size
    scratch: dict[str, Any] | None = None
    why: list[str] = field(default_factory=list)
    priced: list[dict[str, Any]] = field(default_factory=list)

    @property
    def sure_seconds(self) -> float:
        return sum(p.seconds for p in self.phases if not p.condition)

    @property
    def most_seconds(self) -> float:
        return sum(p.seconds for p in self.phases)

    def text(self) -> str:
        """One line a user reads before anything runs: every phase with its seconds, the total vs the budget."""
        parts, i = [], 0
        while i < len(self.phases):
            p = self.phases[i]
            if p.name.startswith("fine-tune trial") and i + 1 < len(self.phases) and self.phases[i + 1].condition:
                nxt = self.phases[i + 1]
                parts.append(f"{p.text()} -> {nxt.text()}")
                i += 2
                continue
            parts.append(p.text())
            i += 1
        total = f"total ~{self.sure_seconds:.0f} s"
        if self.most_seconds > self.sure_seconds:
            total += f", up to ~{self.most_seconds:.0f} s"
        return f"plan (budget {self.budget:.0f} s): " + "; ".join(parts) + f"; {total}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "text": self.text(), "sure_seconds": self.sure_seconds,
                "most_seconds": self.most_seconds}


def scratch_regime(facts: DataFacts) -> bool:
    """Many small images: the from-scratch candidate is worth pricing."""
    return 0 < facts.short_side <= SCRATCH_MAX_SIDE and facts.n_train >= SCRATCH_MIN_TRAIN


def probe_phases(facts: DataFacts, rates: Rates, size: int, first: bool) -> list[Phase]:
    """Decode at `size` (each size decodes again), the features of train (+ mirrors: probe.PROBE_MIRRORS) + valid,
    the CV'd probe."""
    n_all = facts.n_train + facts.n_valid
    rows = probe_rows(facts.n_train)
    # images whose features were computed ahead (first size only) take their share of the rows with them
    ahead = min(rates.featured, n_all) / n_all if first and n_all else 0.0
    feats = (rows + facts.n_valid) * (1 - ahead) / rates.forward_at(size)
    decode = (n_all - rates.decoded if first else n_all) / rates.decode
    name = f"decode {n_all} images" if first else f"decode again at {size} px"
    return [Phase(name, decode), Phase(f"features at {size} px", feats),
            Phase("probe" if first else f"probe at {size} px", 0.5 + PROBE_SECONDS_PER_ROW * rows)]


def trial_in_share(spent: float, trial: float, budget: float) -> bool:
    """Whether a fine-tune trial of `trial` seconds, begun `spent` seconds into the job, ends within TRIAL_SHARE of
    the `budget`. Where it says the fine-tune will not pay, the job then ends about there; where it would end
    later, the probe came dear (a slow machine, many images) and at most an epoch or so could follow it anyway."""
    return spent + trial <= budget * TRIAL_SHARE


def fine_tune_prices(facts: DataFacts, rates: Rates, size: int) -> tuple[float, float]:
    """(trial seconds, epoch seconds) of the fine-tune at `size` (`fine_tune_seconds`)."""
    return fine_tune_seconds(facts.n_train, rates.train_forward_at(size))


def fine_tune_seconds(n_train: int, fwd: float) -> tuple[float, float]:
    """(trial seconds, epoch seconds) of the fine-tune of `n_train` images at `fwd` forward passes/s as its steps
    run them: it trains on the fit part of the training split and scores the inner holdout after the trial and
    each epoch. The plan prices it so, and the job again after the probe, from its own timings."""
    n_hold = round(n_train * HOLDOUT)
    n_fit = n_train - n_hold
    return (n_fit * TRIAL_FRACTION * TRAIN_COST + n_hold) / fwd, (n_fit * TRAIN_COST + n_hold) / fwd


def scratch_seconds(facts: DataFacts, rates: Rates, epochs: int, pixel_share: float = 1.0) -> tuple[float, float]:
    """(decode seconds, seconds per epoch) of the from-scratch run: training steps plus a validation pass.
    `pixel_share`: the training batches' mean share of full-size pixels under progressive resizing
    (`callbacks.resize.progressive_cost`; the rate was measured at full size)."""
    assert rates.scratch
    n_all = facts.n_train + facts.n_valid
    epoch = facts.n_train * pixel_share / rates.scratch + facts.n_valid / (rates.scratch * TRAIN_COST)
    return (n_all - rates.decoded) / rates.decode, epoch


def choose_plan(facts: DataFacts, rates: Rates, budget: float, sizes: Sequence[int], recipe: str = "auto",
                scratch: dict[str, Any] | None = None, max_epochs: int = 3) -> Plan:
    """The plan for `facts` within `budget` seconds.

    `sizes`: the probe's candidate sizes; `scratch`: the from-scratch recipe (`scratch.scratch_recipe`) when that
    candidate is allowed (None: not). Rules, in order: many small images -> from scratch when it fits the
    budget (its epochs cut to fit, down to MIN_SCRATCH_EPOCHS); else the probe, smallest size first, larger sizes
    only while they fit (the first always runs: the cheap plan); arrays drop sizes whose presize does not fit
    in memory; `recipe="auto"` adds a fine-tune trial and up to `max_epochs` epochs when the trial and one epoch
    fit what the probe leaves.
    """
    why: list[str] = []
    priced: list[dict[str, Any]] = []
    sizes = sorted(set(sizes))
    if facts.arrays and facts.max_presize:
        fit = [s for s in sizes if round(s / 0.875) <= facts.max_presize]
        if len(fit) < len(sizes):
            why.append(f"sizes {[s for s in sizes if s not in fit]} left out: {facts.n_train + facts.n_valid} "
                       "images presized to them would take more than half the memory")
        sizes = fit or sizes[:1]

    probe_plan = _probe_plan(facts, rates, budget, sizes, recipe, max_epochs, [], priced)
    if scratch is None or not rates.scratch or not scratch_regime(facts):
        probe_plan.why = why + probe_plan.why
        return probe_plan
    share = progressive_cost(float(scratch.get("progressive") or 0.0), int(scratch["size"]))
    decode, epoch = scratch_seconds(facts, rates, scratch["epochs"], share)
    fixed = decode + EXPORT_SECONDS
    full = fixed + scratch["epochs"] * epoch
    epochs = scratch["epochs"]
    fits_epochs = math.floor((budget - fixed) / epoch) if budget > fixed else 0
    priced.append({"name": f"scratch@{scratch['size']}", "arch": scratch["arch"], "epochs": scratch["epochs"],
                   "seconds": full, "fits": full <= budget})
    lead = (f"{facts.n_train} training images of ~{facts.short_side:.0f} px: {scratch['arch']} from scratch at "
            f"{scratch['size']} px")
    if fits_epochs < epochs:
        if fits_epochs >= MIN_SCRATCH_EPOCHS:
            why.append(f"{lead}, cut from {epochs} to {fits_epochs} epochs to fit the {budget:.0f} s budget "
                       f"(~{epoch:.0f} s an epoch measured)")
            epochs = fits_epochs
        elif probe_plan.sure_seconds <= budget:
            why.append(f"{lead} would need ~{fixed + MIN_SCRATCH_EPOCHS * epoch:.0f} s for even "
                       f"{MIN_SCRATCH_EPOCHS} epochs, more than the {budget:.0f} s budget: the probe instead")
            priced[-1]["fits"] = False
            probe_plan.why = why + probe_plan.why
            return probe_plan
        else:
            epochs = MIN_SCRATCH_EPOCHS
            why.append(f"{lead}: nothing fits the {budget:.0f} s budget; the cheapest that pays runs, "
                       f"{epochs} epochs (~{fixed + epochs * epoch:.0f} s; --budget to allow more)")
    else:
        why.append(f"{lead} (~{full:.0f} s) rather than a pretrained backbone blown up to "
                   f"{probe_plan.sizes[-1]} px (probe ~{probe_plan.sure_seconds:.0f} s): with this many small images "
                   "a net trained at their own size wins (Fashion-MNIST: 0.940 from scratch; the probe 0.882 on "
                   "2,000 of its images)")
    settings = {**scratch, "epochs": epochs}
    phases = [Phase(f"decode {facts.n_train + facts.n_valid} images", decode),
              Phase(f"train {settings['arch']} from scratch at {settings['size']} px, {epochs} epochs",
                    epochs * epoch),
              Phase("export", EXPORT_SECONDS)]
    return Plan("scratch", budget, phases, scratch=settings, why=why, priced=priced)


def _probe_plan(facts: DataFacts, rates: Rates, budget: float, sizes: list[int], recipe: str, max_epochs: int,
                why: list[str], priced: list[dict[str, Any]]) -> Plan:
    phases: list[Phase] = []
    kept: list[int] = []
    spent = 0.0
    for size in sizes:
        ph = probe_phases(facts, rates, size, first=not kept)
        cost = sum(p.seconds for p in ph)
        priced.append({"name": f"probe@{size}", "seconds": cost, "fits": spent + cost + EXPORT_SECONDS <= budget})
        if kept and spent + cost + EXPORT_SECONDS > budget:
            why.append(f"probe@{size} left out: ~{cost:.0f} s more would pass the {budget:.0f} s budget")
            continue
        kept.append(size)
        phases += ph
        spent += cost
    plan = Plan("probe", budget, phases, sizes=kept, why=why, priced=priced)
    if spent + EXPORT_SECONDS > budget:
        why.append(f"even the cheapest plan, the probe at {kept[0]} px (~{spent + EXPORT_SECONDS:.0f} s), passes the "
                   f"{budget:.0f} s budget: it runs anyway (--budget to plan for more)")
    if recipe == "auto":
        size = kept[-1]  # the chosen size is not known yet: priced at the largest, the dearest
        trial, epoch = fine_tune_prices(facts, rates, size)
        plan.trial_seconds, plan.epoch_seconds = trial, epoch
        left = budget - spent - EXPORT_SECONDS - trial
        epochs = min(max_epochs, math.floor(left / epoch)) if left > 0 else 0
        priced.append({"name": f"fine_tune@{size}", "trial_seconds": trial, "epoch_seconds": epoch,
                       "epochs": max(epochs, 0), "fits": epochs >= 1})
        if epochs >= 1 and not trial_in_share(spent, trial, budget):
            why.append(f"no fine-tune planned: its trial (~{trial:.0f} s after ~{spent:.0f} s of probe) would take "
                       f"the job past a third of the {budget:.0f} s budget before it could tell whether a fine-tune "
                       "pays; after the probe the run prices it again from its own timings")
        elif epochs >= 1:
            plan.kind, plan.fine_tune_epochs = "fine_tune", epochs
            frac = round(1 / TRIAL_FRACTION)
            plan.phases += [Phase(f"fine-tune trial 1/{frac} epoch", trial),
                            Phase(f"up to {epochs} epoch{'s' if epochs > 1 else ''}", epochs * epoch,
                                  "only if the trial beats the probe")]
        else:
            why.append(f"no fine-tune planned: its trial and one epoch (~{trial + epoch:.0f} s at {size} px) do not "
                       f"fit the {max(budget - spent - EXPORT_SECONDS, 0):.0f} s the probe leaves by this estimate; "
                       "after the probe the run prices them again from its own timings")
    plan.phases.append(Phase("export", EXPORT_SECONDS))
    return plan


# --- measuring (not pure: they run the models a few steps, or read what earlier runs measured) ---


def rates_file() -> Path:
    """Where feature passes record their rate for the next plan: beside the exported graphs (`engine_cache`)."""
    from .features import engine_cache

    return engine_cache().parent / "feature_rates.json"


def _rate_key(arch: str, device: torch.device, kind: str = "features") -> str:
    return (f"{arch}|{device.type}|{torch.get_num_threads()} threads|torch {torch.__version__}"
            + ("" if kind == "features" else f"|{kind}"))


def record_rate(arch: str, size: int, device: torch.device, engine: str, rows: int, seconds: float,
                kind: str = "features") -> None:
    """Keep a feature pass's rate (`rows` feature rows in `seconds`, its engine's set-up included) for the plans of
    later jobs on this machine; `kind="train"`: a fine-tune trial's training images/s. Small feature passes,
    mostly set-up, are not kept (a trial's steps are each a full batch: kept); a read-only home keeps nothing."""
    if (kind == "features" and rows < MIN_RECORDED_ROWS) or seconds <= 0:
        return
    path = rates_file()
    try:
        table = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        table = {}
    rows_kept = table.setdefault(_rate_key(arch, device, kind), {}).setdefault(str(size), [])
    rows_kept.append({"rate": rows / seconds, "engine": engine})
    del rows_kept[:-RECORDS_KEPT]
    try:  # written whole then renamed: a concurrent job never reads half a file
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, table)
    except OSError:
        pass


def recorded_rate(arch: str, size: int, device: torch.device, kind: str = "features"
                  ) -> tuple[int, float, str] | None:
    """(size, images/s, engine) of the feature passes (`kind="train"`: fine-tune trials) earlier jobs ran with
    `arch` on this machine (same device kind, thread count and torch), at `size` or the nearest size recorded
    (rates scale by pixels): the median of the last few. None when none was recorded: the plan measures then
    (`measure_forward`)."""
    path = rates_file()
    try:
        table = json.loads(path.read_text()).get(_rate_key(arch, device, kind), {}) if path.is_file() else {}
    except (OSError, ValueError, AttributeError):
        return None
    if not table:
        return None
    near = min(table, key=lambda k: abs(int(k) - size))
    rows = table[near]
    return int(near), statistics.median(r["rate"] for r in rows), rows[-1]["engine"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def steady_rate(step: Callable[[], object], images: int, device: torch.device, steps: int) -> float:
    """Images/s of `step` (which handles `images` images) from the median of `steps` timed calls after one
    warm-up call: a moment of load elsewhere on the machine slows one or two calls, not the median. Timed as one
    block, three training steps of the from-scratch net once read 10x slow while another job started: the plan
    cut a 32-epoch run to 11 for a budget it then used under a third of."""
    step()
    _sync(device)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t)
    return images / max(statistics.median(times), 1e-6)


def measure_forward(model: torch.nn.Module, size: int, device: torch.device, dtype: torch.dtype | None = None,
                    bs: int = 8, batches: int = 3) -> float:
    """Images/s of `model`'s feature pass at `size` (`steady_rate`); random pixels cost what images do."""
    model = model.to(device, memory_format=torch.channels_last).eval()
    x = torch.randn(bs, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    ctx = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()

    def step() -> None:
        with torch.no_grad(), ctx:
            model.forward_features(x)

    return steady_rate(step, bs, device, batches)


def measure_training(model: torch.nn.Module, size: int, n_classes: int, device: torch.device,
                     dtype: torch.dtype | None = None, bs: int = 256, steps: int = 5) -> float:
    """Images/s of `model`'s training steps (forward, backward, AdamW step) at `size` (`steady_rate`)."""
    model = model.to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(bs, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, n_classes, (bs,), device=device)
    ctx = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()

    def step() -> None:
        with ctx:
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    flush = device.type == "cpu" and torch.set_flush_denormal(True)
    try:
        return steady_rate(step, bs, device, steps)
    finally:
        if flush:
            torch.set_flush_denormal(False)


def measure_decode(paths: Sequence[Path], presize: int, workers: int) -> float:
    """Images/s of decoding + presizing files (a spread sample of up to 8, one thread, scaled by the workers)."""
    from ..data.decode import BadImage, load_presized

    step = max(1, len(paths) // 8)
    sample = list(paths)[::step][:8]
    t, n = time.perf_counter(), 0
    for p in sample:
        try:
            load_presized(p, presize)
            n += 1
        except BadImage:
            pass
    return max(n, 1) / max(time.perf_counter() - t, 1e-6) * max(1.0, 0.8 * workers)
