"""`imgclf evaluate` gives the expected calibration error of predict's confidences, with the arithmetic of
`interpret` and of the run's own metrics.json (train/calibrate.py), before -> after the run's temperature."""

from __future__ import annotations

import json
import shutil

import pytest

from imgclf.cli import main
from imgclf.evaluate.interpret import Interpretation


def evaluate_json(run, data, tmp_path, capsys, name: str) -> tuple[dict, str]:
    js = tmp_path / f"{name}.json"
    assert main(["evaluate", str(run), str(data), "--json", str(js), "--quiet"]) == 0
    return json.loads(js.read_text()), capsys.readouterr().out


def test_evaluate_ece_matches_interpret_and_metrics(trained_run, tmp_path, capsys):
    data = trained_run.parent / "data"  # train/ + val/: evaluate scores val/, as the run validated on
    ev, out = evaluate_json(trained_run, data, tmp_path, capsys, "as_trained")
    metrics = json.loads((trained_run / "metrics.json").read_text())
    t = metrics["temperature"]
    assert ev["temperature"] == pytest.approx(t)
    # the same 18 validation images, the same T: the ECE the run wrote for itself
    assert ev["n"] == metrics["n_valid"] and ev["ece"] == pytest.approx(metrics["ece"], abs=2e-3)
    for k in ("balanced_accuracy", "macro_f1"):
        assert ev[f"{k}_low"] <= ev[k] <= ev[f"{k}_high"]
        assert ev[k] == pytest.approx(metrics[k], abs=1e-6)
        # the same bootstrap (its own fixed seed): the same bounds as the run wrote
        assert (ev[f"{k}_low"], ev[f"{k}_high"]) == pytest.approx((metrics[f"{k}_low"], metrics[f"{k}_high"]),
                                                                  abs=1e-6)
        assert f"{k} {ev[k]:.4f} ({ev[f'{k}_low']:.2f}-{ev[f'{k}_high']:.2f}, {ev['n']} images)" in out
    assert f"ECE {ev['ece']:.4f} (T={t:.3f}" in out or f"-> {ev['ece']:.4f} (T={t:.3f}" in out

    # a temperature far from 1: before -> after, both as interpret computes them on the same images
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    meta = json.loads((run / "model.json").read_text())
    meta["temperature"] = 2.5
    (run / "model.json").write_text(json.dumps(meta))
    ev, out = evaluate_json(run, data, tmp_path, capsys, "hot")
    cal = Interpretation.from_run(run, progress=False).calibration()
    assert ev["temperature"] == 2.5 and cal["temperature"] == 2.5
    assert ev["ece"] == pytest.approx(cal["ece"], abs=1e-4)
    assert ev["ece_before"] == pytest.approx(cal["ece_before"], abs=1e-4)
    # T = 1 whatever the run shipped: the run's own uncalibrated figure on these images
    assert ev["ece_before"] == pytest.approx(metrics["calibration"]["ece_before"], abs=2e-3)
    assert ev["ece"] != pytest.approx(ev["ece_before"], abs=1e-3)  # T = 2.5 flattens the confidences
    assert f"ECE {ev['ece_before']:.4f} -> {ev['ece']:.4f} (T=2.500, 15 bins)" in out
    assert 0 <= ev["ece"] <= 1 and 0 <= ev["ece_before"] <= 1
