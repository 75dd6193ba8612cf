"""Session 12's newcomer sweeps: each finding, as a user met it, and what they get now."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from imgclf.data.sources import items_from_folder


def run_cli(*args, cwd=None):
    p = subprocess.run([sys.executable, "-m", "imgclf", *map(str, args)], capture_output=True, text=True,
                       cwd=cwd, timeout=300)
    return p.returncode, p.stdout, p.stderr


def test_a_run_written_inside_the_data_folder_is_not_read_as_a_class(image_folder):
    """`cd DATA && imgclf train .` puts its default runs/NAME inside DATA; the next job on `.` read runs/ as a
    third class of loss.png and confusion_matrix.png (or stopped: "runs: class folder has no images")."""
    root = image_folder({"ants": 6, "bees": 6}, size=(40, 30))
    args = ["train", ".", "--arch", "xresnet_tiny", "--size", "32", "--epochs", "1", "--quiet"]
    rc, _, err = run_cli(*args, cwd=root)
    assert rc == 0, err
    runs = [d for d in (root / "runs").iterdir() if (d / "model.safetensors").is_file()]
    assert len(runs) == 1 and (runs[0] / "train.log").is_file()
    items = items_from_folder(root)
    assert sorted(set(items.labels)) == ["ants", "bees"] and len(items.paths) == 12
    assert items.unused.counts == {"run_directory": 1} and items.unused.examples["run_directory"] == [root / "runs"]
    rc, out, err = run_cli("inspect", ".", "--size", "32", cwd=root)  # as the next job reads it: it says so
    assert rc == 0, err
    assert "2 classes" in out and "run_directory 1: runs" in out and "1 run_directory (e.g. runs)" in err


def test_a_small_class_scored_perfectly_keeps_a_lower_f1_bound_above_zero():
    """interpret showed `f1 1.0000 (0.00-1.00)` for a class of 2 images both right and never predicted wrongly: the
    resamples that held neither image counted as F1 0."""
    from imgclf.train.metrics import bootstrap_f1_per_class

    targets = [0] * 9 + [1] * 9 + [2] * 2
    preds = [0] * 8 + [1] + [1] * 8 + [0] + [2] * 2  # classes 0 and 1 err once each; class 2 is perfect
    lows, highs = bootstrap_f1_per_class(preds, targets, 3)
    assert lows[2] == highs[2] == 1.0  # every resample with class 2 in it scores it perfectly
    assert 0.5 < lows[0] < 8 / 9 < highs[0] <= 1.0
    lows, highs = bootstrap_f1_per_class([0, 0], [0, 0], 3)  # classes with no images and no predictions: 0-1
    assert (lows[1:], highs[1:]) == ([0.0, 0.0], [1.0, 1.0]) and lows[0] == 1.0


def test_predict_takes_paths_pil_images_and_arrays_alike_and_names_what_it_cannot_read(trained_run, tmp_path,
                                                                                      write_image):
    """A PNG half transparent scored differently from its path and as `Image.open(path)` (convert("RGB") kept the
    hidden pixels); a list, an array or a missing file gave "cannot decode (stat: ...)" with no file named; and
    predict_files("folder/x.jpg") read the string a character at a time."""
    import numpy as np
    from PIL import Image

    from imgclf.data.decode import BadImage
    from imgclf.errors import UserError
    from imgclf.infer.predictor import load_model

    model = load_model(trained_run, device="cpu")
    rgba = np.zeros((48, 64, 4), np.uint8)
    rgba[..., 0], rgba[:24, :, 3] = 230, 255  # red on top; the bottom half transparent (red under the alpha)
    path = tmp_path / "half.png"
    Image.fromarray(rgba, "RGBA").save(path)
    by_path = model.predict(path)
    for other in (Image.open(path), rgba, np.asarray(Image.open(path).convert("RGBA"))):
        got = model.predict(other)
        assert got.label == by_path.label and got.confidence == pytest.approx(by_path.confidence, abs=1e-6)
    grey = model.predict(np.full((40, 40), 128, np.uint8))
    assert grey.label in model.classes
    with pytest.raises(BadImage, match=r"nope\.jpg: file not found"):
        model.predict(tmp_path / "nope.jpg")
    with pytest.raises(UserError, match=r"not a list; for several files use predict_files"):
        model.predict([path])
    with pytest.raises(UserError, match=r"uint8 \(H, W\), \(H, W, 3\) or \(H, W, 4\); got float32"):
        model.predict(np.zeros((8, 8, 3), np.float32))
    folder = tmp_path / "new"
    write_image(folder / "a.jpg")
    write_image(folder / "sub" / "b.png")
    for arg in (str(folder), folder):
        preds, skipped = model.predict_files(arg, progress=False)
        assert [Path(p.path).name for p in preds] == ["a.jpg", "b.png"] and skipped == []
    preds, skipped = model.predict_files(str(path), progress=False)
    assert len(preds) == 1 and preds[0].confidence == pytest.approx(by_path.confidence, abs=1e-6)


def test_a_spent_budget_is_not_said_as_negative_seconds_left():
    """`does not fit the -3s left` when the probe alone overran the budget."""
    from imgclf.train.candidate import Candidate
    from imgclf.train.recipes import should_try_fine_tune

    probe = Candidate("probe@256", "probe", 256, valid_loss=0.7, accuracy=0.5, seconds=5.0)
    ok, why = should_try_fine_tune(probe, 100, epoch_seconds=40.0, remaining=-3.2)
    assert not ok and why == "one fine-tune epoch (~40s) does not fit the budget (spent 3s over it)"
    ok, why = should_try_fine_tune(probe, 100, epoch_seconds=40.0, remaining=12.0)
    assert not ok and why.endswith("does not fit the 12s left")


def test_metrics_json_has_the_shipped_models_loss_beside_the_uncalibrated_one(tmp_path):
    """metrics.json's valid_loss (0.7905, at T = 1) disagreed with `evaluate` on the same images (0.6295, the
    shipped temperature applied): the calibrated loss is recorded beside it, and evaluate matches it."""
    from imgclf.infer.evaluate import evaluate

    rc, _, err = run_cli("train", Path(__file__).parents[2] / "shared/datasets/hymenoptera", "--size", "64",
                         "--recipe", "probe", "--out", tmp_path / "run", "--quiet")
    assert rc == 0, err
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["temperature"] != 1.0 and m["valid_loss_calibrated"] < m["valid_loss"]
    got = evaluate(tmp_path / "run", Path(__file__).parents[2] / "shared/datasets/hymenoptera", progress=False)
    assert got["loss"] == pytest.approx(m["valid_loss_calibrated"], abs=2e-3)


def test_the_advice_on_a_gap_between_cv_and_validation_says_who_drew_the_split():
    """A split imgclf drew itself (40 classes of 3 images) was asked "(a given valid/ folder?)"."""
    from imgclf.train.trust import validation_advice

    base = {"accuracy": 1.0, "accuracy_low": 0.76, "accuracy_high": 1.0, "n_valid": 12}
    report = {"candidates": [{"name": "probe@64", "selection": {"method": "5-fold CV", "accuracy": 0.5, "n": 200,
                                                              "loss": 1.0}}], "chosen": "probe@64"}
    lines = {origin: validation_advice({**base, "near_duplicates_moved": {"split_origin": origin}}, report)["lines"]
             for origin in ("given", "drawn")}
    assert "(a given valid/ folder?)" in lines["given"][-1]
    assert "drawn at random from the same images" in lines["drawn"][-1] and "given" not in lines["drawn"][-1]
