"""A small validation split: `train` sets the cross-validated accuracy beside the validation figure and says
which to trust (train/trust.py); metrics.json's validation figures stay as they are."""

from __future__ import annotations

import json

import pytest

from imgclf.cli import main
from imgclf.train.metrics import wilson_interval
from imgclf.train.trust import cv_figure, validation_advice


def metrics_for(k: int, n: int) -> dict:
    lo, hi = wilson_interval(k, n)
    return {"accuracy": k / n, "accuracy_low": lo, "accuracy_high": hi, "n_valid": n}


def report_for(acc: float, n: int, chosen: str = "probe@128") -> dict:
    return {"chosen": chosen, "candidates": [
        {"name": "probe@128", "selection": {"method": "5-fold CV", "accuracy": acc, "n": n}}]}


def test_cv_figure_bounds_and_when_it_is_missing():
    cv = cv_figure(report_for(0.9, 200))
    assert cv["n"] == 200 and (cv["low"], cv["high"]) == pytest.approx(wilson_interval(180, 200))
    assert cv_figure(report_for(0.9, 200, chosen="fine_tune@128")) is None  # the CV figure was the probe's
    assert cv_figure({}) is None and cv_figure({"chosen": "x", "candidates": [{"name": "x", "selection": {}}]}) is None


def test_which_to_trust():
    # 10 of 12 right (0.55-0.95): a CV figure of 0.90 on 200 images agrees and is far narrower
    a = validation_advice(metrics_for(10, 12), report_for(0.90, 200))
    assert a["trust"] == "cv" and "trust the cross-validated figure" in a["lines"][1]
    assert "accuracy 0.8333 (0.55-0.95, 12 images)" in a["lines"][0]
    assert "accuracy 0.9000 (0.85-0.93, 200 images)" in a["lines"][0]
    # outside the validation interval: a gap the validation noise does not explain
    assert validation_advice(metrics_for(12, 12), report_for(0.50, 200))["trust"] == "neither"
    # fewer training images than validation ones: the validation interval is the narrower
    assert validation_advice(metrics_for(80, 90), report_for(0.88, 20))["trust"] == "valid"
    # no CV figure (a fixed recipe): the interval's width is said, nothing to compare
    none = validation_advice(metrics_for(10, 12), None)
    assert none["trust"] is None and "0.40 wide" in none["lines"][0]
    # large enough to stand alone, or not a classification: nothing to add
    assert validation_advice(metrics_for(140, 153), report_for(0.9, 245)) is None
    assert validation_advice({"mae": 1.0, "n_valid": 10}, None) is None


def test_cli_prints_both_figures_on_a_small_split(image_folder, tmp_path, capsys):
    data = image_folder({"cats": 10, "dogs": 10}, split=True, n_valid=3, size=(40, 30))
    out = tmp_path / "run"
    assert main(["train", str(data), "--recipe", "probe", "--size", "32", "--bs", "8", "--quiet",
                 "--out", str(out)]) in (0, None)
    printed = capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    report = json.loads((out / "recipe.json").read_text())
    advice = validation_advice(m, report)
    assert advice is not None and advice["cv"]["n"] == 20 and advice["trust"] in ("cv", "valid", "neither")
    for line in advice["lines"]:
        assert line in printed
    assert f"accuracy {m['accuracy']:.4f} ({m['accuracy_low']:.2f}-{m['accuracy_high']:.2f}, 6 images)" in printed
    assert m["n_valid"] == 6  # the validation figure is still the validation split's, scored once
