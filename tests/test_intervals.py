"""95% intervals on the accuracy figures: Wilson for proportions, bootstrap over images for F1."""

from __future__ import annotations

import json
import re

import pytest
import torch

from imgclf.cli import main
from imgclf.evaluate.interpret import format_summary
from imgclf.train.metrics import (
    add_intervals,
    bootstrap_f1_per_class,
    bootstrap_interval,
    format_figure,
    multi_label_intervals,
    wilson_interval,
)


@pytest.mark.parametrize("k, n, expect", [
    (0, 10, (0.0, 0.2775)),     # the textbook zero-successes case
    (10, 10, (0.7225, 1.0)),    # k = n: the mirror image
    (45, 60, (0.6277, 0.8422)),  # 0.75 of 60 (Wilson 1927 formula, checked by hand)
    (5, 10, (0.2366, 0.7634)),
])
def test_wilson_known_values(k, n, expect):
    assert wilson_interval(k, n) == pytest.approx(expect, abs=1e-4)


def test_wilson_brackets_the_estimate_and_narrows_with_n():
    for n in (1, 7, 60, 1000):
        for k in range(0, n + 1, max(1, n // 7)):
            lo, hi = wilson_interval(k, n)
            assert 0 <= lo <= k / n <= hi <= 1
    assert wilson_interval(0, 0) == (0.0, 1.0)  # no images: nothing is known
    widths = [hi - lo for lo, hi in (wilson_interval(3 * n // 4, n) for n in (20, 80, 320))]
    assert widths[0] > widths[1] > widths[2]


def test_add_intervals_and_format():
    m = add_intervals({"accuracy": 45 / 60, "valid_loss": 0.5}, 60)
    assert (m["accuracy_low"], m["accuracy_high"]) == pytest.approx((0.6277, 0.8422), abs=1e-4)
    assert "valid_loss_low" not in m
    assert format_figure("accuracy", m["accuracy"], m["accuracy_low"], m["accuracy_high"], 60) == \
        "accuracy 0.7500 (0.63-0.84, 60 images)"
    assert format_figure("mae", 1.5) == "mae 1.5000"


def test_bootstrap_is_seeded_and_brackets_the_mean():
    v = (torch.arange(200) % 4 != 0).float()  # mean 0.75
    lo, hi = bootstrap_interval(v)
    assert lo < 0.75 < hi and bootstrap_interval(v) == (lo, hi)
    # for a proportion it agrees with Wilson to about a point
    assert (lo, hi) == pytest.approx(wilson_interval(150, 200), abs=0.02)
    assert bootstrap_interval(torch.ones(30)) == (1.0, 1.0)


def test_multi_label_intervals_bracket_the_figures():
    g = torch.Generator().manual_seed(0)
    targets = (torch.rand(80, 5, generator=g) > 0.6).float()
    logits = (targets * 2 - 1) * 3 + torch.randn(80, 5, generator=g) * 3  # mostly right
    from imgclf.train.metrics import accuracy_multi, f1_multi

    b = multi_label_intervals(logits, targets)
    assert b["accuracy_multi_low"] <= accuracy_multi(logits, targets) <= b["accuracy_multi_high"]
    assert b["f1_multi_low"] <= f1_multi(logits, targets) <= b["f1_multi_high"]


def test_bootstrap_f1_per_class_brackets_f1():
    targets = torch.arange(90) % 3
    preds = targets.clone()
    preds[::4] = (preds[::4] + 1) % 3  # a quarter wrong
    lows, highs = bootstrap_f1_per_class(preds, targets, 3)
    for c in range(3):
        tp = int(((preds == c) & (targets == c)).sum())
        f1 = 2 * tp / (int((preds == c).sum()) + int((targets == c).sum()))
        assert lows[c] < f1 < highs[c] and highs[c] - lows[c] < 0.4
    assert bootstrap_f1_per_class(preds, targets, 3) == (lows, highs)  # fixed seed


def test_train_writes_bounds_and_prints_them(trained_run, capsys):
    m = json.loads((trained_run / "metrics.json").read_text())
    assert m["n_valid"] == 18
    assert 0 <= m["accuracy_low"] <= m["accuracy"] <= m["accuracy_high"] <= 1
    right = round(m["accuracy"] * 18)
    assert (m["accuracy_low"], m["accuracy_high"]) == pytest.approx(wilson_interval(right, 18))
    from imgclf.cli.common import figures

    line = figures(m, [("accuracy", None)])
    assert re.fullmatch(r"accuracy \d\.\d{4} \(\d\.\d\d-\d\.\d\d, 18 images\)", line), line


def test_evaluate_prints_and_writes_bounds(trained_run, tmp_path, capsys):
    js = tmp_path / "eval.json"
    assert main(["evaluate", str(trained_run), str(trained_run.parent / "data"), "--json", str(js), "--quiet"]) == 0
    out = capsys.readouterr().out
    ev = json.loads(js.read_text())
    assert ev["accuracy_low"] <= ev["accuracy"] <= ev["accuracy_high"]
    n = ev["n"]
    assert f"accuracy {ev['accuracy']:.4f} ({ev['accuracy_low']:.2f}-{ev['accuracy_high']:.2f}, {n} images)" in out
    bounds = ev["per_class_accuracy_interval"]
    assert set(bounds) == set(ev["per_class_accuracy"]) == {"cats", "dogs", "frogs"}
    for c, b in bounds.items():
        assert b["low"] <= ev["per_class_accuracy"][c] <= b["high"] and b["n"] == 6  # the val/ split: 6 per class
        assert f"  {c}: {ev['per_class_accuracy'][c]:.4f} ({b['low']:.2f}-{b['high']:.2f}, 6 images)" in out


def test_interpret_table_has_recall_and_f1_bounds(trained_run, tmp_path):
    from imgclf.evaluate.interpret import Interpretation

    d = Interpretation.from_run(trained_run, progress=False).to_dict()
    assert d["accuracy_low"] <= d["accuracy"] <= d["accuracy_high"]
    for r in d["per_class"]:
        assert r["recall_low"] <= r["recall"] <= r["recall_high"]
        assert r["f1_low"] <= r["f1"] + 1e-9 and r["f1"] <= r["f1_high"] + 1e-9
    text = format_summary(d)
    assert f"({d['accuracy_low']:.2f}-{d['accuracy_high']:.2f}, " in text and "recall (95%)" in text


def test_multi_label_run_writes_bootstrap_bounds(tmp_path):
    from test_targets import tag_images, write_csv

    from imgclf.config import DataConfig, RunConfig, TrainConfig
    from imgclf.train.job import train

    rows = tag_images(tmp_path / "images", 24)
    csv_path = write_csv(tmp_path / "images" / "labels.csv", ["file", "labels", "is_valid"],
                         [(f, tags, int(i % 3 == 2)) for i, (f, tags) in enumerate(rows)])
    cfg = RunConfig(data=DataConfig(path=str(csv_path), size=32, bs=8, task="multi_label"),
                    train=TrainConfig(recipe="probe"), out=str(tmp_path / "run"))
    m = json.loads((train(cfg, progress=False).run_dir / "metrics.json").read_text())
    for name in ("accuracy_multi", "f1_multi"):
        assert 0 <= m[f"{name}_low"] <= m[name] + 1e-6 and m[name] <= m[f"{name}_high"] + 1e-6 <= 1 + 1e-6, m
