"""The auto recipe's planner (train/plan.py): decisions on made-up data facts and rates, the plan's text."""

from __future__ import annotations

import re
import time

import pytest
import torch

from imgclf.train.finetune import epochs_that_fit
from imgclf.train.plan import (
    HOLDOUT,
    MAX_DEFAULT_BUDGET,
    MIN_SCRATCH_EPOCHS,
    ONNX_SPEEDUP,
    TRAIN_COST,
    TRIAL_FRACTION,
    DataFacts,
    Rates,
    choose_plan,
    default_budget,
    fine_tune_prices,
    record_rate,
    recorded_rate,
    scratch_regime,
    steady_rate,
    trial_in_share,
)
from imgclf.train.scratch import scratch_recipe

# rates like the reference 2-core CPU's: EfficientNet-Lite0 forward ~60 images/s at 256 px, xresnet_tiny training
# ~2,700 images/s at 28 px, photos decoded at ~100/s, arrays presized at ~20,000/s
PHOTO_RATES = Rates(forward=60.0, size=256, decode=100.0)
FASHION = DataFacts(n_train=60_000, n_valid=10_000, short_side=28, arrays=True, max_presize=2000)


def phase_seconds(text: str) -> list[float]:
    return [float(s) for s in re.findall(r"~(\d+) s", text)]


def test_many_tiny_images_train_from_scratch_at_their_own_size():
    scratch = scratch_recipe(FASHION.n_train, FASHION.short_side)
    rates = Rates(forward=60.0, size=256, decode=20_000.0, scratch=2700.0)
    plan = choose_plan(FASHION, rates, default_budget(FASHION.n_train), [64, 128, 256], scratch=scratch)
    assert plan.kind == "scratch" and plan.scratch["size"] == 28 and plan.scratch["arch"] == scratch["arch"]
    assert plan.sure_seconds <= plan.budget == MAX_DEFAULT_BUDGET
    assert "from scratch" in plan.why[0] and "28 px" in plan.why[0]
    assert any(c["name"].startswith("scratch@") for c in plan.priced)


def test_scratch_epochs_are_cut_to_fit_the_budget_and_the_probe_is_the_fallback():
    scratch = scratch_recipe(FASHION.n_train, FASHION.short_side)
    slow = Rates(forward=60.0, size=256, decode=20_000.0, scratch=1200.0)  # ~43 s an epoch (progressive)
    plan = choose_plan(FASHION, slow, 600, [64], scratch=scratch)
    assert plan.kind == "scratch" and MIN_SCRATCH_EPOCHS <= plan.scratch["epochs"] < scratch["epochs"]
    assert plan.sure_seconds <= 600 and "cut from" in plan.why[0]
    # even the fewest epochs do not fit, and neither does the probe: the cheapest that pays, said out loud
    plan = choose_plan(FASHION, Rates(60.0, 256, 20_000.0, scratch=200.0), 300, [64], scratch=scratch)
    assert plan.kind == "scratch" and plan.scratch["epochs"] == MIN_SCRATCH_EPOCHS and "nothing fits" in plan.why[0]


def test_progressive_resizing_is_priced_by_its_pixels():
    """The scratch recipe trains its first half at 20-24 px of 28: its epochs cost ~0.81 of full-size ones (the
    rate is measured at full size); the plan prices that, so its estimate holds (quiet Fashion-MNIST: 388 s
    estimated at full size for 300 s of fit)."""
    from imgclf.train.callbacks.resize import progressive_cost, progressive_size

    scratch = scratch_recipe(FASHION.n_train, FASHION.short_side)
    assert scratch["progressive"] > 0
    share = progressive_cost(scratch["progressive"], 28)
    sizes = [progressive_size(i / 100, 28, scratch["progressive"]) for i in range(100)]
    assert share == pytest.approx(sum((s / 28) ** 2 for s in sizes) / 100, abs=0.01) and 0.75 < share < 0.9
    assert progressive_cost(0.0, 28) == 1.0
    rates = Rates(forward=60.0, size=256, decode=20_000.0, scratch=2700.0)
    seconds = {}
    for start in (scratch["progressive"], 0.0):
        plan = choose_plan(FASHION, rates, 10_000, [64], scratch={**scratch, "progressive": start})
        seconds[start] = next(c for c in plan.priced if c["name"].startswith("scratch@"))["seconds"]
    train_s = scratch["epochs"] * FASHION.n_train / 2700.0
    assert seconds[0.0] - seconds[scratch["progressive"]] == pytest.approx(train_s * (1 - share), rel=1e-6)


def test_few_photos_are_probed_first_and_never_trained_from_scratch():
    facts = DataFacts(n_train=245, n_valid=153, short_side=375)
    assert not scratch_regime(facts)
    plan = choose_plan(facts, PHOTO_RATES, default_budget(245), [256], scratch=scratch_recipe(245, 375))
    assert plan.kind in ("probe", "fine_tune") and plan.sizes == [256] and plan.scratch is None
    assert plan.phases[0].name == "decode 398 images"
    # few small images: the pretrained features still win (hymenoptera at 48 px)
    assert not scratch_regime(DataFacts(n_train=245, n_valid=153, short_side=48))


def test_blurred_photo_set_plans_a_trial_before_any_fine_tune_epoch():
    facts = DataFacts(n_train=3440, n_valid=860, short_side=96)
    plan = choose_plan(facts, Rates(forward=52.0, size=256, decode=107.0), 924, [256])
    assert plan.kind == "fine_tune" and 1 <= plan.fine_tune_epochs <= 3
    text = plan.text()
    assert text.startswith("plan (budget 924 s): decode 4300 images ~40 s; features at 256 px ~")
    assert "fine-tune trial 1/8 epoch ~" in text and "only if the trial beats the probe" in text
    assert "export ~3 s" in text and "total ~" in text and "up to ~" in text
    # every phase has its seconds, and the sure part (without the conditional epochs) is a third of the budget
    assert len(phase_seconds(text)) == len(plan.phases) + 2
    assert plan.sure_seconds <= 924 / 3 + 60 and plan.most_seconds <= 924


def test_no_trial_is_planned_that_would_end_past_a_third_of_the_budget():
    """The blurred photos on a slower CPU: a trial and an epoch still fit the budget, but if the trial said no the
    job would end past a third of it (issue 14's bar), so none is planned; with the budget to spare it is."""
    facts = DataFacts(n_train=3440, n_valid=860, short_side=96)
    rates = Rates(forward=100.0, size=256, decode=107.0, train=(256, 8.1))  # a trial's pace measured earlier
    tight = choose_plan(facts, rates, 600, [256])
    assert tight.kind == "probe" and tight.fine_tune_epochs == 0
    assert "would take the job past a third of the 600 s budget" in tight.why[-1], tight.why
    assert tight.trial_seconds + tight.sure_seconds - 3 > 600 / 3  # the probe, then the trial: past 200 s
    roomy = choose_plan(facts, rates, 900, [256])
    assert roomy.kind == "fine_tune" and roomy.fine_tune_epochs == 1
    assert trial_in_share(130.0, 67.0, 600) and not trial_in_share(140.0, 67.0, 600)


def test_a_budget_too_small_gets_the_cheap_plan():
    facts = DataFacts(n_train=2000, n_valid=1000, short_side=28)
    plan = choose_plan(facts, PHOTO_RATES, 52, [64, 128, 256])  # the probe at 64 px fits; a fine-tune does not
    assert plan.kind == "probe" and plan.sizes == [64] and plan.fine_tune_epochs == 0
    assert any("left out" in w for w in plan.why) and any("no fine-tune" in w for w in plan.why)
    assert not any("passes the" in w for w in plan.why)  # the probe at 64 px itself fits
    tiny = choose_plan(facts, PHOTO_RATES, 20, [64, 128, 256])  # nothing fits: the cheapest, said out loud
    assert tiny.sizes == [64] and any("passes the 20 s budget: it runs anyway" in w for w in tiny.why)
    roomy = choose_plan(facts, PHOTO_RATES, 5000, [64, 128, 256])
    assert roomy.sizes == [64, 128, 256] and roomy.kind == "fine_tune"


def test_probe_only_recipe_plans_no_fine_tune_and_arrays_skip_sizes_that_do_not_fit_memory():
    facts = DataFacts(n_train=2000, n_valid=1000, short_side=28, arrays=True, max_presize=160)
    plan = choose_plan(facts, PHOTO_RATES, 5000, [64, 128, 256], recipe="probe")
    assert plan.kind == "probe" and plan.sizes == [64, 128] and "fine-tune" not in plan.text()
    assert "memory" in plan.why[0]


@pytest.mark.parametrize("n,budget", [(16, 64.0), (245, 121.25), (2000, 560.0), (60_000, MAX_DEFAULT_BUDGET)])
def test_default_budget_keeps_the_photo_sets_and_caps_large_ones(n, budget):
    assert default_budget(n) == budget


def test_feature_rates_are_recorded_for_the_next_plan(tmp_path, monkeypatch):
    """A feature pass leaves its rate for the next job's plan (no throwaway model timed then): the median of the
    last three at the nearest size; passes too small to say anything are not kept."""
    monkeypatch.setenv("IMGCLF_CACHE", str(tmp_path))
    cpu = torch.device("cpu")
    assert recorded_rate("efficientnet_lite0", 256, cpu) is None
    record_rate("efficientnet_lite0", 256, cpu, "onnxruntime fp32", rows=50, seconds=1.0)  # mostly set-up
    assert recorded_rate("efficientnet_lite0", 256, cpu) is None
    for rate in (100, 130, 120, 125):
        record_rate("efficientnet_lite0", 256, cpu, "onnxruntime fp32", rows=643, seconds=643 / rate)
    size, rate, engine = recorded_rate("efficientnet_lite0", 192, cpu)
    assert (size, engine) == (256, "onnxruntime fp32") and rate == pytest.approx(125)  # median of 130, 120, 125
    assert recorded_rate("resnet18", 256, cpu) is None  # another arch has its own
    # a fine-tune's steps run eager: an onnxruntime feature rate prices them ONNX_SPEEDUP times slower
    facts = DataFacts(n_train=245, n_valid=153, short_side=300)
    onnx, eager = Rates(rate, size, 500.0, engine=engine), Rates(rate / ONNX_SPEEDUP, size, 500.0)
    assert fine_tune_prices(facts, onnx, 256) == pytest.approx(fine_tune_prices(facts, eager, 256))
    assert onnx.forward_at(256) == pytest.approx(ONNX_SPEEDUP * eager.forward_at(256))
    # a fine-tune trial's pace is kept apart ("train") and, once there, prices the fine-tune instead
    record_rate("efficientnet_lite0", 128, cpu, "eager", rows=40, seconds=4.0, kind="train")  # 10 images/s
    assert recorded_rate("efficientnet_lite0", 192, cpu)[0] == 256  # the feature records are untouched
    t_size, t_rate, _ = recorded_rate("efficientnet_lite0", 256, cpu, kind="train")
    assert (t_size, t_rate) == (128, pytest.approx(10.0))
    trained = Rates(rate, size, 500.0, engine=engine, train=(t_size, t_rate))
    trial, epoch = fine_tune_prices(facts, trained, 128)
    n_hold = round(245 * HOLDOUT)
    assert epoch == pytest.approx(((245 - n_hold) + n_hold / TRAIN_COST) / 10.0)  # 196 steps' images at 10/s
    assert trial == pytest.approx(((245 - n_hold) * TRIAL_FRACTION + n_hold / TRAIN_COST) / 10.0)
    assert fine_tune_prices(facts, trained, 256)[1] == pytest.approx(4 * epoch)  # 4x the pixels


def test_the_trial_pace_decides_how_many_epochs_fit():
    """After the trial the planned epochs are counted again from its measured pace: whole epochs only."""
    epoch_s, fits = epochs_that_fit(pace=10.0, n_fit=196, n_hold=49, left=100.0)
    assert epoch_s == pytest.approx((196 + 49 / TRAIN_COST) / 10.0) and fits == 4  # 20.6 s an epoch
    assert epochs_that_fit(10.0, 196, 49, 20.0)[1] == 0  # not one whole epoch: the probe is kept
    assert epochs_that_fit(10.0, 196, 49, -5.0)[1] == 0  # past the deadline already


def test_a_moment_of_load_does_not_price_the_plan():
    """The plan times its models call by call and takes the median: one call slowed 50x by another process (here
    a sleep) leaves the rate where the other calls put it; timed as one block it would read ~10x slow."""
    calls = []

    def step() -> None:
        calls.append(1)
        time.sleep(0.5 if len(calls) == 3 else 0.01)  # the warm-up, then a spike on the second timed call

    rate = steady_rate(step, 8, torch.device("cpu"), 5)
    assert len(calls) == 6  # one warm-up, five timed
    assert 8 / 0.03 < rate <= 8 / 0.01  # the median call's 10 ms (+ scheduling); a block of five: 8 / 0.108 each


def test_images_decoded_ahead_are_not_priced_again_but_other_sizes_are():
    facts = DataFacts(n_train=300, n_valid=100, short_side=48)
    ahead = Rates(forward=60.0, size=256, decode=100.0, decoded=400)  # all 400 decoded at the first size, 128 px
    plan = choose_plan(facts, ahead, 600, [128, 256], recipe="probe")
    decodes = [p for p in plan.phases if p.name.startswith("decode")]
    assert decodes[0].name == "decode 400 images" and decodes[0].seconds == 0
    assert decodes[1].name == "decode again at 256 px" and decodes[1].seconds == 400 / 100.0
    half = choose_plan(facts, Rates(forward=60.0, size=256, decode=100.0, decoded=150), 600, [256], recipe="probe")
    assert half.phases[0].seconds == 250 / 100.0
