"""Temperature scaling and calibration error (train/calibrate.py), and where the temperature is applied."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from imgclf import load_model
from imgclf.cli import main
from imgclf.evaluate.interpret import Interpretation, format_summary
from imgclf.infer.export import export_onnx, file_meta, load_deployable
from imgclf.train.calibrate import (
    choose_temperature,
    cross_fit_temperature,
    expected_calibration_error,
    fit_temperature,
    reliability,
)


def synthetic(n: int = 4000, k: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels drawn from softmax(logits): perfectly calibrated by construction."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g) * 3
    targets = torch.multinomial(logits.softmax(-1), 1, generator=g).flatten()
    return logits, targets


def test_temperature_recovers_a_known_t():
    logits, y = synthetic()
    for t in (0.5, 2.5):  # under- and over-confident versions of calibrated logits
        assert fit_temperature(logits * t, y) == pytest.approx(t, rel=0.08)
    assert fit_temperature(logits, y) == pytest.approx(1.0, rel=0.08)
    assert fit_temperature(logits[:1], y[:1]) == 1.0  # nothing to fit


def test_ece_calibrated_near_zero_overconfident_not():
    logits, y = synthetic()
    assert expected_calibration_error(logits.softmax(-1), y) < 0.03
    over = expected_calibration_error((logits * 3).softmax(-1), y)
    assert over > 0.1
    rel = reliability((logits * 3).softmax(-1), y)
    assert sum(rel["count"]) == len(y) and len(rel["edges"]) == 16 and rel["ece"] == pytest.approx(over)
    # over-confident: in every well-filled bin, accuracy below the mean confidence
    assert all(a < c for a, c, n in zip(rel["accuracy"], rel["confidence"], rel["count"], strict=True) if n > 100)


def test_ece_by_hand():
    # two bins used: 0.9 confident x4 (3 right) and 0.6 confident x2 (1 right): (4|0.75-0.9| + 2|0.5-0.6|)/6
    probs = torch.tensor([[0.9, 0.1]] * 4 + [[0.6, 0.4]] * 2)
    y = torch.tensor([0, 0, 0, 1, 0, 1])
    assert expected_calibration_error(probs, y) == pytest.approx((4 * 0.15 + 2 * 0.1) / 6)


def test_cross_fit_and_modes():
    logits, y = synthetic(1000)
    t, s = cross_fit_temperature(logits * 2, y)
    assert t == pytest.approx(2.0, rel=0.15) and s["ece_after"] < s["ece_before"] / 2
    assert len(s["fold_temperatures"]) == 2
    auto = choose_temperature(logits * 2, y, "auto")
    assert auto["applied"] and auto["temperature"] == pytest.approx(t) and auto["ece"] == auto["ece_after"]
    off = choose_temperature(logits * 2, y, "off")
    assert not off["applied"] and off["temperature"] == 1.0 and off["ece"] == off["ece_before"]
    # with selection logits (the auto recipe's out-of-fold ones) T comes from them, figures from validation
    sel_logits, sel_y = synthetic(2000, seed=1)
    s2 = choose_temperature(logits * 2, y, "on", sel_logits * 2, sel_y)
    assert s2["fitted"] == pytest.approx(fit_temperature(sel_logits * 2, sel_y)) and "out-of-fold" in s2["method"]


def test_interpretation_reports_calibration(tmp_path):
    logits, y = synthetic(300, 3)
    # the shipped scores (logits / T) are the true logits: the model's own (x 2) are over-confident
    interp = Interpretation(["a", "b", "c"], [f"{i}.jpg" for i in range(300)], logits, y, temperature=2.0)
    cal = interp.calibration()
    assert cal["ece"] < cal["ece_before"]
    d = interp.to_dict()
    assert d["calibration"]["temperature"] == 2.0
    assert d["balanced_accuracy_low"] <= d["balanced_accuracy"] <= d["balanced_accuracy_high"]
    assert "calibration: ECE" in format_summary(d)
    interp.plot_reliability().savefig(tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_predictor_and_onnx_apply_the_temperature(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    meta = json.loads((run / "model.json").read_text())
    assert "temperature" in meta  # written by every classification run
    images = sorted((trained_run.parent / "data" / "val").rglob("*.jpg"))[:6]
    plain = load_model(run, precision="fp32")
    plain.temperature = 1.0
    raw = torch.stack([torch.tensor(list(p.probs.values())) for p in plain.predict_files(images, progress=False)[0]])
    meta["temperature"] = 3.0
    (run / "model.json").write_text(json.dumps(meta))
    eager = load_model(run, precision="fp32")
    assert eager.temperature == 3.0
    got = torch.stack([torch.tensor(list(p.probs.values())) for p in eager.predict_files(images, progress=False)[0]])
    want = (raw.clamp_min(1e-30).log() / 3.0).softmax(-1)  # log-probs differ from logits by a constant per row
    assert torch.allclose(got, want, atol=1e-4)
    module, meta = load_deployable(run)  # the graph `export_model` writes, without its parity and speed runs
    export_onnx(module, run / "model.onnx", file_meta(meta, "onnx"))
    onnx = load_model(run, backend="onnx")
    assert onnx.meta["temperature"] == 3.0
    got_onnx = torch.stack([torch.tensor(list(p.probs.values()))
                            for p in onnx.predict_files(images, progress=False)[0]])
    assert torch.allclose(got_onnx, got, atol=1e-4)


def test_cli_calibrate_on(image_folder, tmp_path):
    """`--calibrate on` on the probe recipe: T fitted on its out-of-fold training logits, in model.json and
    metrics.json alike (`off` and the fixed recipes' cross-fitting: tests/test_balance.py's CLI runs)."""
    data = image_folder({"cats": 8, "dogs": 8}, split=True, n_valid=6, size=(40, 30))
    out = tmp_path / "run"
    assert main(["train", str(data), "--recipe", "probe", "--size", "32", "--bs", "8", "--quiet",
                 "--calibrate", "on", "--out", str(out)]) in (0, None)
    metrics = json.loads((out / "metrics.json").read_text())
    meta = json.loads((out / "model.json").read_text())
    cal = metrics["calibration"]
    assert cal["mode"] == "on" and cal["applied"] and meta["temperature"] == metrics["temperature"] == cal["fitted"]
    assert 0 <= metrics["ece"] <= 1 and metrics["ece"] == cal["ece_after"]
    resolved = json.loads((out / "config.json").read_text())["resolved"]
    assert resolved["calibration"]["temperature"] == meta["temperature"]
