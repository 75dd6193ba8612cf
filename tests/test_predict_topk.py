"""Prediction a person can read: `Prediction.topk`, `predict --topk K` columns and `predict --plot FILE.png`."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from PIL import Image

from imgclf.cli import main
from imgclf.errors import UserError
from imgclf.infer import Prediction, load_model, plot_topk


def test_topk_ranks_the_classes_best_first(trained_run):
    model = load_model(trained_run, device="cpu")
    image = trained_run.parent / "data" / "val" / "dogs" / "dogs_12.jpg"
    p = model.predict(image)
    top = p.topk(2)
    assert top[0] == (p.label, p.confidence) == ("dogs", max(p.probs.values()))
    assert len(top) == 2 and top[0][1] >= top[1][1]
    everything = p.topk(10)  # more than there are classes: all of them
    assert [c for c, _ in everything] == sorted(p.probs, key=p.probs.get, reverse=True)
    assert math.isclose(sum(q for _, q in everything), 1.0, rel_tol=1e-5)
    with pytest.raises(UserError, match="at least 1"):
        p.topk(0)

    tags = Prediction("a c", 0.7, {"a": 0.9, "b": 0.2, "c": 0.7}, tags=["a", "c"])  # multi-label: own yes/no each
    assert tags.topk(2) == [("a", 0.9), ("c", 0.7)]
    age = Prediction("31.5", float("nan"), {"age": 31.5}, value=31.5)
    with pytest.raises(UserError, match="regression"):
        age.topk(1)


def test_predict_topk_adds_label_and_prob_columns(trained_run, tmp_path, capsys):
    val = trained_run.parent / "data" / "val"
    out = tmp_path / "preds.csv"
    assert main(["predict", str(trained_run), str(val), "--topk", "2", "--csv", str(out), "--quiet"]) == 0
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == ["path", "label", "confidence", "label_1", "prob_1", "label_2", "prob_2"]
    assert len(rows) == 18
    for r in rows:
        assert r["label_1"] == r["label"] == Path(r["path"]).parent.name  # the tiny run gets every one right
        assert r["prob_1"] == r["confidence"] and float(r["prob_1"]) >= float(r["prob_2"]) > 0
        assert r["label_2"] != r["label_1"]

    capsys.readouterr()
    wide = tmp_path / "wide.csv"  # more than the 3 classes: all of them ranked, and said
    assert main(["predict", str(trained_run), str(val), "--topk", "4", "--csv", str(wide), "--quiet"]) == 0
    assert "--topk 4: the model has 3 classes; ranking all 3" in capsys.readouterr().err
    with open(wide, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames[-2:] == ["label_3", "prob_3"] and len(rows) == 18
    assert all(sorted(r[f"label_{i}"] for i in (1, 2, 3)) == ["cats", "dogs", "frogs"] for r in rows)
    assert main(["predict", str(trained_run), str(val), "--topk", "0", "--quiet"]) == 2
    assert "--topk 0: must be at least 1" in capsys.readouterr().err


def test_predict_plot_draws_up_to_16_images_and_never_overwrites(trained_run, tmp_path, capsys):
    val = trained_run.parent / "data" / "val"  # 18 images
    png = tmp_path / "topk.png"
    assert main(["predict", str(trained_run), str(val), "--plot", str(png), "--topk", "3", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert f"top-3 of 16 image(s) -> {png} (the first 16 of 18 predicted)" in captured.err
    assert len(captured.out.splitlines()) == 19  # the CSV to stdout as before: header + 18 rows
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 600 and im.size[1] > im.size[0]  # 8 rows of 2 pairs
        assert len(im.convert("RGB").getcolors(2**24) or []) > 100  # images and bars, not a blank page

    assert main(["predict", str(trained_run), str(val), "--plot", str(png), "--quiet"]) == 2
    assert "already exists (pass --force to overwrite)" in capsys.readouterr().err
    assert main(["predict", str(trained_run), str(val), "--plot", str(png), "--force", "--quiet"]) == 0


def test_plot_topk_pairs_each_image_with_its_bars(trained_run):
    model = load_model(trained_run, device="cpu")
    paths = sorted((trained_run.parent / "data" / "val").rglob("*.jpg"))[:3]
    preds, _ = model.predict_files(paths, progress=False)
    fig = plot_topk(preds, k=2)
    shown = [ax for ax in fig.axes if ax.axison]
    assert len(fig.axes) == 8 and len(shown) == 6  # 2 rows of 2 pairs, the last pair empty
    images, bars = shown[0::2], shown[1::2]
    assert all(len(ax.images) == 1 and ax.images[0].get_array().shape == (224, 224, 3) for ax in images)
    for ax, p in zip(bars, preds, strict=True):
        assert [round(b.get_width(), 6) for b in ax.patches] == [round(q, 6) for _, q in p.topk(2)][::-1]
        assert ax.get_title().startswith(p.label)
