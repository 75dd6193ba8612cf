"""The auto recipe: its decisions on synthetic cases, the feature cache, recipe.json, the probe itself."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from imgclf import ImageData
from imgclf.config import DataConfig, RunConfig, TrainConfig
from imgclf.train.candidate import Candidate
from imgclf.train.job import train
from imgclf.train.plan import recorded_rate
from imgclf.train.probe import PROBE_MIRRORS, WEIGHT_DECAYS, best_fit, fit_linear_probe
from imgclf.train.recipes import (
    auto_fit,
    cached_valid_preds,
    candidate_sizes,
    keep_fine_tune,
    should_try_fine_tune,
)


def cand(kind, loss, acc, size=256):
    return Candidate(f"{kind}@{size}", kind, size, loss, acc, 1.0)


def test_a_probe_that_wins_is_kept_and_a_fine_tune_that_wins_is_kept():
    probe = cand("probe", 0.30, 0.90)
    keep, why = keep_fine_tune(probe, cand("fine_tune", 0.35, 0.91))
    assert not keep and "did not beat" in why
    keep, _ = keep_fine_tune(probe, cand("fine_tune", 0.25, 0.89))  # lower loss but fewer right: probe stays
    assert not keep
    keep, why = keep_fine_tune(probe, cand("fine_tune", 0.20, 0.93))
    assert keep and "improved" in why
    assert keep_fine_tune(probe, None) == (False, "no fine-tune ran")


def test_fine_tune_is_tried_only_when_it_can_show_a_gain_and_fits_the_budget():
    strong = cand("probe", 0.1, 0.97)  # 3 errors in 100: no room to measure a gain
    assert not should_try_fine_tune(strong, 100, epoch_seconds=5, remaining=100)[0]
    weak = cand("probe", 0.5, 0.80)
    ok, why = should_try_fine_tune(weak, 100, epoch_seconds=5, remaining=100)
    assert ok and "~20 validation errors of 100" in why
    ok, why = should_try_fine_tune(weak, 100, epoch_seconds=500, remaining=100)
    assert not ok and "does not fit" in why
    # the blurred photos on the slow Xeon: trial + epoch fit what is left, but a trial that said no would have
    # ended the job at 236 s of its 600 (a third: 200)
    ok, why = should_try_fine_tune(weak, 100, epoch_seconds=430, remaining=432, trial_seconds=67, spent=165,
                                   budget=600)
    assert not ok and "(~67s after 165s spent) would take the job past a third of its 600s budget" in why
    assert should_try_fine_tune(weak, 100, epoch_seconds=430, remaining=432, trial_seconds=67, spent=120,
                                budget=600)[0]


def test_candidate_sizes_never_shrink_photos_and_check_small_images():
    assert candidate_sizes(1944, 256) == [256]  # big photos: the backbone's own size only
    assert candidate_sizes(28, 256) == [64, 128, 256]  # tiny images: try near 2x and 4x too
    assert candidate_sizes(48, 256) == [96, 192, 256]
    assert all(s >= 32 for s in candidate_sizes(5, 256))


def test_probe_recovers_a_linear_rule_and_picks_decay_on_validation():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 3, generator=g)
    x, xv = torch.randn(300, 16, generator=g) * 5 + 3, torch.randn(200, 16, generator=g) * 5 + 3
    y, yv = (x @ w).argmax(1), (xv @ w).argmax(1)
    fits = fit_linear_probe(x, y, xv, yv, 3, wds=(1e-4, 1e-2, 10.0))
    best = best_fit(fits)
    assert best.accuracy > 0.9 and best.wd != 10.0
    assert min(f.accuracy for f in fits) < best.accuracy  # the grid matters: a huge decay underfits
    # the folded head works on raw features
    assert ((xv @ best.weight.T + best.bias).argmax(1) == yv).float().mean() == pytest.approx(best.accuracy)


def test_auto_fit_reuses_cached_features_and_reports(image_folder):
    root = image_folder({"a": 8, "b": 8, "c": 8}, split=True, size=(40, 30))
    data = ImageData.from_folder(root, size=64, bs=8, progress=False)
    res = auto_fit(data, sizes=[64, 32], budget=600, progress=False, seed=0)
    names = [c["name"] for c in res.report["candidates"]]
    assert names[:2] == ["probe@32", "probe@64"]  # cheapest first
    probe = next(c for c in res.report["candidates"] if c["name"] == res.report["chosen"].replace("fine_tune", "probe"))
    assert len(probe["detail"]["tried"]) >= 4
    # each size extracted its feature sets once (train and valid center views; mirrors only with PROBE_MIRRORS),
    # whatever number of decays were tried
    assert res.learner.features.computed == (3 if PROBE_MIRRORS else 2)
    assert res.report["why"] and res.report["chosen"] in names
    assert res.learner.validate()["accuracy"] >= 0.8  # colours are easy


def test_recipe_json_is_written_and_reproducible(image_folder, tmp_path):
    root = image_folder({"a": 10, "b": 10}, split=True, size=(36, 36))

    def run(k):
        cfg = RunConfig(data=DataConfig(path=str(root), size=32, bs=8),
                        train=TrainConfig(recipe="auto", budget=300), out=str(tmp_path / f"r{k}"))
        res = train(cfg, progress=False)
        # a loss curve when batches were trained; a kept probe (L-BFGS on features) has none to draw
        assert (res.run_dir / "loss.png").is_file() == bool(res.learner.recorder.losses)
        return json.loads((res.run_dir / "recipe.json").read_text()), res.metrics

    (r1, m1), (r2, m2) = run(1), run(2)
    assert set(r1) >= {"recipe", "budget_seconds", "median_short_side", "sizes", "candidates", "chosen", "why",
                       "plan", "selection"}
    assert r1["selection"] == "cv" and r1["plan"]["text"].startswith("plan (budget 300 s): decode 30 images ~")
    for c in r1["candidates"]:
        assert set(c) >= {"name", "kind", "size", "valid_loss", "accuracy", "seconds", "selection"}
        # the figure it was chosen on (cross-validation of the training split) beside the validation one
        assert "CV on the training features" in c["selection"]["method"] and c["selection"]["n"] == 20
        assert 0 <= c["selection"]["accuracy"] <= 1 and c["selection"]["loss_se"] >= 0
    assert r1["chosen"] == r2["chosen"] and m1["accuracy"] == m2["accuracy"]
    assert [c["valid_loss"] for c in r1["candidates"]] == [c["valid_loss"] for c in r2["candidates"]]
    assert m1["kept"] == r1["chosen"]


def test_native_size_comes_from_files_or_arrays(image_folder):
    root = image_folder({"a": 3, "b": 3}, split=True, size=(48, 36))
    assert ImageData.from_folder(root, size=32, progress=False).native_short_side() == 36
    g = torch.Generator().manual_seed(0)
    arrays = ImageData.from_tensors(torch.randint(0, 255, (6, 28, 28), dtype=torch.uint8, generator=g), [0, 1] * 3,
                                    torch.randint(0, 255, (4, 28, 28), dtype=torch.uint8, generator=g), [0, 1] * 2,
                                    ["x", "y"], size=32, progress=False)
    assert arrays.native_short_side() == 28
    assert candidate_sizes(arrays.native_short_side(), 256) == [64, 128, 256]


def test_choices_do_not_change_when_the_validation_labels_are_permuted(image_folder, tmp_path):
    """The proof that selection does not touch validation: wrong validation labels, same choices."""
    root = image_folder({"a": 10, "b": 10, "c": 10}, split=True, size=(36, 36))
    files = sorted(p for p in root.rglob("*.jpg"))
    shift = {"a": "b", "b": "c", "c": "a"}  # every validation label wrong

    def data(permute: bool) -> ImageData:
        path = tmp_path / f"labels-{permute}.csv"
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file", "label", "is_valid"])
            for p in files:
                valid = p.parts[-3] != "train"
                label = p.parent.name
                w.writerow([str(p), shift[label] if permute and valid else label, int(valid)])
        return ImageData.from_csv(path, size=32, bs=8, progress=False)

    true, permuted = (auto_fit(data(k), sizes=[32, 48], budget=600, progress=False, seed=0) for k in (False, True))
    assert true.report["chosen"] == permuted.report["chosen"]
    for a, b in zip(true.report["candidates"], permuted.report["candidates"], strict=True):
        assert a["detail"]["wd"] == b["detail"]["wd"] and a["selection"] == b["selection"]
        assert a["accuracy"] >= 0.8 and b["accuracy"] <= 0.2  # validation was scored, for the record only
    assert true.selection_logits.shape == (30, 3) and torch.equal(true.selection_targets, permuted.selection_targets)
    # the old behaviour, choices on validation, is still there for comparisons
    old = auto_fit(data(False), sizes=[32], budget=600, progress=False, seed=0, selection="valid", recipe="probe")
    assert old.report["selection"] == "valid" and old.report["candidates"][0]["selection"] == {}


def test_fine_tune_is_tried_on_an_inner_holdout_and_judged_there(image_folder, tmp_path):
    """Hard data (three labels at random): the probe leaves enough errors in the inner holdout, so a trial runs; its
    verdict, the probe's refit on the fit part and the epochs are recorded, and a fine-tune is kept only if
    it beat the probe there."""
    root = image_folder({"a": 50, "b": 50}, split=True, size=(36, 36), n_valid=10)
    g = torch.Generator().manual_seed(0)
    path = tmp_path / "random.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label", "is_valid"])
        for p in sorted(root.rglob("*.jpg")):
            w.writerow([str(p), "abc"[int(torch.randint(0, 3, (1,), generator=g))], int(p.parts[-3] != "train")])
    data = ImageData.from_csv(path, size=32, bs=8, progress=False)
    res = auto_fit(data, sizes=[32], budget=5000, max_epochs=1, progress=False, seed=0)
    ft = next(c for c in res.report["candidates"] if c["kind"] == "fine_tune")
    d = ft["detail"]
    assert d["holdout"] == 20 and d["fit_images"] == 80 and d["trial"]["images"] == 16
    assert ft["selection"]["method"] == "inner holdout of 20 training images"
    assert ft["selection"]["probe_loss"] == d["probe_holdout"]["loss"]
    # the trial's reference is the probe refitted as it was chosen (L-BFGS, or the one-cycle head)
    assert d["probe_holdout"]["head"] == res.report["candidates"][0]["detail"]["head"]
    trial_won = d["trial"]["loss"] < d["probe_holdout"]["loss"]
    assert (d["epochs_run"] > 0) == trial_won
    if trial_won:  # the epochs were counted again from the trial's own pace
        assert d["epoch_seconds_measured"] > 0 and d["epochs_run"] <= d["epochs_planned"] <= 1
    # the trial's pace is kept for the next plans on this machine (the suite's own cache: conftest)
    size, pace, engine = recorded_rate("efficientnet_lite0", 32, torch.device("cpu"), kind="train")
    assert size == 32 and engine == "eager" and 0 < pace < 1e5
    assert recorded_rate("efficientnet_lite0", 32, torch.device("cpu")) != (size, pace, engine)
    assert any(w.startswith("trial: fine-tune loss") for w in res.report["why"]) != trial_won
    if res.report["chosen"].startswith("probe"):  # the probe's weights are the model's (the whole model runs in
        probe = res.report["candidates"][0]  # bf16 autocast on CPUs that have it; the probe's figure is an fp32 head)
        assert ft["valid_loss"] is None
        assert res.learner.validate()["valid_loss"] == pytest.approx(probe["valid_loss"], abs=0.05)


def test_the_final_figures_come_from_the_probes_cached_features(image_folder, tmp_path):
    """A kept probe's validation logits are its head on the cached features (no second pass over the images):
    the model's own output, and the job's figures are the very ones the probe was scored on."""
    root = image_folder({"a": 8, "b": 8}, split=True, size=(40, 30))
    data = ImageData.from_folder(root, size=32, bs=8, progress=False)
    res = auto_fit(data, recipe="probe", sizes=[32], budget=600, progress=False, seed=0)
    logits, targets = res.valid_preds
    learn = res.learner
    assert torch.equal(targets, data.valid_y) and learn.features.passes == 2  # train (both views) and valid
    learn.dtype = None  # the model itself in fp32 (the learner's bf16 autocast is ~0.1 off on logits)
    eager, _ = learn.get_preds()
    assert torch.equal(logits.argmax(1), eager.argmax(1)) and torch.allclose(logits, eager, atol=1e-3)
    learn.unfreeze()
    learn.fit_one_cycle(1, 1e-4)  # the body changed: its cached features no longer describe the model
    assert cached_valid_preds(learn) is None

    cfg = RunConfig(data=DataConfig(path=str(root), size=32, bs=8), train=TrainConfig(recipe="probe", budget=300),
                    out=str(tmp_path / "run"))
    run = train(cfg, progress=False)
    m, recipe = run.metrics, json.loads((run.run_dir / "recipe.json").read_text())
    probe = next(c for c in recipe["candidates"] if c["name"] == recipe["chosen"])
    assert m["valid_loss"] == pytest.approx(probe["valid_loss"], abs=1e-5)
    assert m["accuracy"] == pytest.approx(probe["accuracy"])
    # the breakdown bench/hymenoptera.py prints
    assert set(m["phases"]) >= {"setup", "plan", "decode", "features", "probe", "fit", "finish"}
    assert all(v >= 0 for v in m["phases"].values()) and m["phases"]["fit"] <= m["total_seconds"]
    # every probed size counts, kept or not, and the parts stay inside the fit
    probed = [c for c in recipe["candidates"] if "feature_seconds" in c.get("detail", {})]
    assert m["phases"]["features"] == pytest.approx(sum(c["detail"]["feature_seconds"] for c in probed))
    assert m["phases"]["features"] + m["phases"]["probe"] <= m["phases"]["fit"] + 1e-6


def test_the_probe_head_is_the_lower_cv_loss_of_lbfgs_and_one_cycle(image_folder):
    """Two heads compete on the same folds of the training features: the L-BFGS logistic regression (a CV'd
    decay) and the head phase's one-cycle fit. The one kept has the lowest CV loss of every row tried, its
    weights are the model's classifier, and its figures are what the candidate reports."""
    from imgclf.train.recipes import HEAD_EPOCHS, head_text

    root = image_folder({"a": 14, "b": 14, "c": 14}, split=True, size=(40, 30), n_valid=4)
    data = ImageData.from_folder(root, size=32, bs=8, progress=False)
    res = auto_fit(data, recipe="probe", sizes=[32], budget=600, progress=False, seed=0)
    cand = res.report["candidates"][0]
    tried = cand["detail"]["tried"]
    heads = {t.get("head", "lbfgs") for t in tried}
    assert heads == {"lbfgs", "one_cycle"} and len(tried) == len(WEIGHT_DECAYS) + 1
    best = min(tried, key=lambda t: t["cv_loss"])
    assert cand["selection"]["loss"] == pytest.approx(best["cv_loss"])
    assert cand["detail"]["head"] == best.get("head", "lbfgs")
    one = next(t for t in tried if t.get("head") == "one_cycle")
    assert one["epochs"] == HEAD_EPOCHS and 0 <= one["cv_accuracy"] <= 1
    assert head_text(cand["detail"]) in res.report["why"][0]
    # the kept head is the model's: its validation figure is the candidate's (fp32 features, either head)
    xv, yv = res.learner.cached_features("valid", "center")
    head = res.learner.model.get_classifier()
    with torch.no_grad():
        loss = float(torch.nn.functional.cross_entropy(head(xv.float()), yv))
    assert loss == pytest.approx(cand["valid_loss"], abs=1e-4)
