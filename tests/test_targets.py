"""Multi-label and regression targets: encoding, metrics, a real training run each, predict and evaluate."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
from conftest import write_image

from imgclf import ImageData
from imgclf.cli import main
from imgclf.config import DataConfig, RunConfig, TrainConfig
from imgclf.data.sources import Items, merge_by_content
from imgclf.data.targets import encode_targets
from imgclf.errors import UserError
from imgclf.evaluate.interpret import interpret_run
from imgclf.evaluate.report import write_report
from imgclf.infer import evaluate, load_model
from imgclf.train.job import train
from imgclf.train.metrics import accuracy_multi, best_threshold, fbeta_multi, mae, rmse


def tag_images(root, n, seed=0):
    """`n` images whose tags say which of red and blue is strong: both, either, or neither (no tag)."""
    rows = []
    for i in range(n):
        red, blue = i % 2 == 0, (i // 2) % 2 == 0
        colour = (220 if red else 30, 90, 220 if blue else 30)
        p = write_image(root / f"img{i:03d}.png", size=(40, 40), colour=colour, noise=15, seed=seed + i)
        rows.append((p.name, " ".join(t for t, on in (("red", red), ("blue", blue)) if on)))
    return rows


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


# ------------------------------------------------------------------ encoding and metrics
def test_encode_multi_label_and_regression(tmp_path):
    paths = [tmp_path / f"{i}.png" for i in range(4)]
    items = Items(paths, ["a b", "b", "", "c a"], [False, False, True, True])
    t = encode_targets(items, "multi_label", "src")
    assert t.names == ["a", "b", "c"]
    assert t.values.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 0], [1, 0, 1]]
    with pytest.warns(UserWarning, match="tag.*'a,b' hold a comma or semicolon: tags are separated by spaces"):
        t = encode_targets(Items(paths, ["a,b", "b", "", "a"], [False, False, True, True]), "multi_label", "src")
    assert t.names == ["a", "a,b", "b"]  # one tag, as written: the warning says so

    items = Items(paths, ["10", "30", "20", "40"], [False, False, True, True])
    t = encode_targets(items, "regression", "src", target_name="age")
    assert t.names == ["age"] and t.mean == 20.0
    assert torch.allclose(t.values[:, 0] * t.std + t.mean, torch.tensor([10.0, 30, 20, 40]))
    assert abs(float(t.values[:2].mean())) < 1e-6  # standardised on the training split


def test_encode_errors_name_the_problem(tmp_path):
    paths = [tmp_path / f"{i}.png" for i in range(3)]
    with pytest.raises(UserError, match=r"1\.png: target 'old' is not a number"):
        encode_targets(Items(paths, ["3", "old", "5"], [False, False, True]), "regression", "src")
    with pytest.raises(UserError, match="multi_label"):
        encode_targets(Items(paths, ["a b"] * 3, [False, False, True]), "classify", "src")
    with pytest.raises(UserError, match=r"1\.png: empty label"):
        encode_targets(Items(paths, ["a", "", "b"], [False, False, True]), "classify", "src")
    with pytest.raises(UserError, match="--task"):
        encode_targets(Items(paths, ["a"] * 3, [False, False, True]), "tags", "src")


def test_multi_label_metrics_by_hand():
    targets = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    logits = torch.tensor([[5.0, -5, -5], [-5, 5, 5]])  # image 0: 1 of 2 found; image 1: 1 right, 1 extra
    assert accuracy_multi(logits, targets) == pytest.approx(4 / 6)
    # F1 per image: 2*1/(2*1+1+0) = 2/3 and 2*1/(2*1+0+1) = 2/3
    assert fbeta_multi(logits, targets, 1.0) == pytest.approx(2 / 3)
    # F2 weighs recall: image 0 (missed one) 5/(5+4) = 5/9, image 1 (one extra) 5/(5+1) = 5/6
    assert fbeta_multi(logits, targets, 2.0) == pytest.approx((5 / 9 + 5 / 6) / 2)
    assert fbeta_multi(torch.full((1, 3), -5.0), torch.zeros(1, 3)) == 1.0  # no tag, none predicted


def test_best_threshold_finds_the_gap():
    # positives score 0.3, negatives 0.1 (as probabilities): 0.5 predicts nothing, a threshold in between is perfect
    probs = torch.tensor([[0.3, 0.1], [0.1, 0.3], [0.3, 0.3]])
    targets = (probs > 0.2).float()
    thresh, score = best_threshold(probs.logit(), targets)
    assert 0.1 <= thresh < 0.3 and score == 1.0
    assert fbeta_multi(probs.logit(), targets, 1.0, 0.5) == 0.0


def test_regression_metrics():
    p, t = torch.tensor([[1.0], [2.0], [5.0]]), torch.tensor([[1.0], [4.0], [4.0]])
    assert mae(p, t) == pytest.approx(1.0)
    assert rmse(p, t) == pytest.approx((5 / 3) ** 0.5)


def test_multi_label_from_folders_merges_identical_images(tmp_path):
    root = tmp_path / "data"
    for i in range(6):
        write_image(root / "red" / f"r{i}.png", colour=(200, 20, 20), seed=i)
    for i in range(3):  # three of the red images are also round: the same file in a second folder
        (root / "round").mkdir(exist_ok=True)
        shutil.copy(root / "red" / f"r{i}.png", root / "round" / f"r{i}.png")
    write_image(root / "round" / "other.png", colour=(20, 20, 200), seed=9)  # same name elsewhere? no: new image
    write_image(root / "round" / "r5.png", colour=(20, 200, 20), seed=99)  # same NAME as red/r5, other pixels
    data = ImageData.from_folder(root, valid_pct=0.3, size=32, task="multi_label", progress=False)
    assert data.classes == ["red", "round"]
    labels = {p.name if "red" in str(p) else p.parent.name + "/" + p.name: y.tolist()
              for p, y in zip([*data.train_paths, *data.valid_paths], [*data.train_y, *data.valid_y], strict=True)}
    assert sum(v == [1.0, 1.0] for v in labels.values()) == 3  # merged by content
    assert len(labels) == 6 + 2  # r0..r5, other.png, round/r5.png (same name, different image: not merged)
    items = Items([root / "red" / "r0.png", root / "round" / "r0.png"], ["red", "round"], [False, False])
    assert merge_by_content(items).tags == [["red", "round"]]


# ------------------------------------------------------------------ real runs
@pytest.fixture(scope="module")
def multi_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multi")
    rows = tag_images(tmp / "images", 48)
    flagged = [(f, tags, int(i % 5 == 4)) for i, (f, tags) in enumerate(rows)]
    csv_path = write_csv(tmp / "images" / "labels.csv", ["file", "labels", "is_valid"], flagged)
    cfg = RunConfig(data=DataConfig(path=str(csv_path), size=64, bs=16, task="multi_label"),
                    train=TrainConfig(recipe="auto", freeze_epochs=8, epochs=0), out=str(tmp / "run"))
    return train(cfg, progress=False), csv_path


def test_multi_label_run_learns_and_saves_its_threshold(multi_run, capsys):
    res, csv_path = multi_run
    m = json.loads((res.run_dir / "metrics.json").read_text())
    assert m["f1_multi"] >= 0.9 and m["accuracy_multi"] >= 0.9, m
    meta = json.loads((res.run_dir / "model.json").read_text())
    assert meta["task"] == "multi_label" and meta["classes"] == ["blue", "red"]
    assert 0 < meta["threshold"] < 1 and meta["threshold"] == m["threshold"]
    conf = json.loads((res.run_dir / "config.json").read_text())
    assert conf["resolved"]["recipe"] == "fine_tune" and "multi_label" in conf["resolved"]["why"][0]
    assert conf["resolved"]["loss"] == "BCEWithLogitsLoss"

    model = load_model(res.run_dir)
    both = write_image(csv_path.parent / "new_both.png", size=(40, 40), colour=(220, 90, 220), seed=500)
    none = write_image(csv_path.parent / "new_none.png", size=(40, 40), colour=(30, 90, 30), seed=501)
    p = model.predict(both)
    assert p.tags == ["blue", "red"] and p.label == "blue red" and 0.5 <= p.confidence <= 1
    assert model.predict(none).tags == []

    assert main(["predict", str(res.run_dir), str(both), str(none)]) == 0
    out = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert out[0] == ["path", "tags", "confidence"]
    assert [r[1] for r in out[1:]] == ["blue red", ""]

    ev = evaluate(res.run_dir, csv_path, progress=False)
    assert ev["n"] == 48 and ev["f1_multi"] >= 0.9 and set(ev["per_class_f1"]) == {"blue", "red"}
    html = write_report(res.run_dir, progress=False).read_text()
    assert "F1 (tags)" in html and "accuracy (tags)" in html and "f1 multi" in html  # headline, history
    tags = {r["class"]: r for r in m["per_tag"]}  # the report's per-tag table: the run's own figures
    assert set(tags) == {"blue", "red"} and all(r["f1"] >= 0.8 and r["support"] > 0 for r in tags.values())
    assert "<h2>Per tag</h2>" in html and "<td>blue</td>" in html and "No per-class figures" not in html


def test_regression_run_beats_the_mean(tmp_path, capsys):
    root = tmp_path / "images"
    rows = []
    for i in range(40):  # the target ("age") is the grey level: a number the pixels show
        age = 10 + 2 * i
        p = write_image(root / f"g{i:02d}.png", size=(40, 40), colour=(age * 2,) * 3, noise=8, seed=i)
        rows.append((p.name, f"{age}", int(i % 4 == 1)))
    csv_path = write_csv(root / "ages.csv", ["file", "age", "is_valid"], rows)
    cfg = RunConfig(data=DataConfig(path=str(csv_path), size=64, bs=16, task="regression", label_col="age"),
                    train=TrainConfig(recipe="fine_tune", freeze_epochs=12, epochs=0, lr=1e-2, label_smoothing=0.2),
                    out=str(tmp_path / "run"))
    with pytest.warns(UserWarning, match="label-smoothing 0.2: it smooths class labels; regression targets"):
        res = train(cfg, progress=False)
    m = json.loads((res.run_dir / "metrics.json").read_text())
    assert json.loads((res.run_dir / "config.json").read_text())["train"]["label_smoothing"] == 0  # as it trained
    valid_ages = torch.tensor([10.0 + 2 * i for i in range(40) if i % 4 == 1])
    train_mean = torch.tensor([10.0 + 2 * i for i in range(40) if i % 4 != 1]).mean()
    baseline = float((valid_ages - train_mean).abs().mean())  # predicting the mean age: ~20 years off
    assert m["mae"] < 0.5 * baseline, (m, baseline)
    assert m["rmse"] >= m["mae"]
    meta = json.loads((res.run_dir / "model.json").read_text())
    assert meta["task"] == "regression" and meta["classes"] == ["age"]
    # without label_col the target column is found, and named as its header names it (it was "label")
    assert ImageData.from_csv(csv_path, size=32, task="regression", progress=False).classes == ["age"]

    model = load_model(res.run_dir)
    img = write_image(tmp_path / "new.png", size=(40, 40), colour=(100,) * 3, seed=77)  # age 50
    pred = model.predict(img)
    assert pred.value is not None and abs(pred.value - 50) < baseline
    capsys.readouterr()  # what training printed
    assert main(["predict", str(res.run_dir), str(img)]) == 0
    out = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert out[0] == ["path", "age"] and abs(float(out[1][1]) - pred.value) < 1e-3
    assert main(["predict", str(res.run_dir), str(img), "--probs"]) == 2  # was ignored: one number, no classes
    assert "--probs: a regression run predicts one number" in capsys.readouterr().err
    ev = evaluate(res.run_dir, csv_path, label_col="age", progress=False)
    assert ev["n"] == 40 and ev["mae"] < baseline
    with pytest.raises(UserError, match="a regression run is scored on numbers from a CSV column: give the CSV"):
        evaluate(res.run_dir, root, progress=False)  # a folder has no numbers
    # int8 says what it costs in the target's units: the eager figure is the run's own MAE
    from imgclf import export_model

    e = export_model(res.run_dir, int8=True, progress=False)
    assert e["parity"]["mae_eager"] == pytest.approx(m["mae"], rel=1e-3, abs=1e-3)
    assert e["mae"]["fp32"] == pytest.approx(m["mae"], rel=1e-2) and e["mae"]["int8"] < baseline
    with pytest.raises(UserError, match="interpret covers single-label"):
        interpret_run(res.run_dir, progress=False)
    html = write_report(res.run_dir, progress=False).read_text()  # no confusion matrix: the run's own figures
    assert "MAE (age)" in html and "RMSE" in html and "regression" in html
    assert "No confused pairs" not in html and "train imbalance" not in html and "<th>class</th>" not in html


def test_evaluate_reads_a_multi_label_folder_as_train_does(tmp_path):
    """Tags as folders (an image copied into each of its tags' folders): evaluate merges the copies by content as
    training does, so each image is scored once with all its tags, not once per copy with one tag."""
    import shutil

    from imgclf.config import DataConfig, RunConfig, TrainConfig
    from imgclf.infer.evaluate import evaluate
    from imgclf.train.job import train

    rows = tag_images(tmp_path / "src", 24)
    tagged = [(f, tags) for f, tags in rows if tags]  # folders hold tagged images only
    for f, tags in tagged:
        for t in tags.split():
            (tmp_path / "tags" / t).mkdir(parents=True, exist_ok=True)
            shutil.copy(tmp_path / "src" / f, tmp_path / "tags" / t / f)
    copies = sum(len(tags.split()) for _, tags in tagged)
    assert copies > len(tagged)  # some images sit in two folders
    cfg = RunConfig(data=DataConfig(path=str(tmp_path / "tags"), size=32, bs=8, task="multi_label"),
                    train=TrainConfig(recipe="probe"), out=str(tmp_path / "run"))
    run = train(cfg, progress=False).run_dir
    res = evaluate(run, tmp_path / "tags", progress=False)
    assert res["n"] == len(tagged) == 18  # one per image with all its tags, not one per copy (24) with one tag
    # the report counts images, not tag rows, and says what it cannot show for tags
    m = json.loads((run / "metrics.json").read_text())
    assert main(["report", str(run)]) == 0
    html = (run / "report.html").read_text()
    assert f"{m['n_train']} training and\n    {m['n_valid']} validation images" in html
    assert "No confused pairs" not in html and "Confused pairs are for single-label classes" in html
    assert "<th>tag</th>" in html and "train imbalance" not in html
    # inspect counts images too, and names tags as tags
    assert main(["inspect", str(tmp_path / "tags"), "--task", "multi_label", "--size", "32", "--quiet",
                 "--out", str(tmp_path / "insp")]) == 0
    d = json.loads((tmp_path / "insp" / "inspect.json").read_text())
    assert sum(d["totals"].values()) == 18 and d["task"] == "multi_label" and d["n_classes"] == 2


def test_a_metric_of_another_task_is_refused_when_the_learner_is_built(image_folder):
    """f1_multi on single-label classes used to pass here and fail after the first epoch with a shape error."""
    from imgclf.errors import UserError
    from imgclf.train.vision import vision_learner

    data = ImageData.from_folder(image_folder({"a": 4, "b": 4}, split=True, n_valid=2), size=16, bs=4,
                                 progress=False)
    with pytest.raises(UserError, match="metric f1_multi scores multi-label data; this data's task is classify: "
                                        "choose accuracy, error_rate, top5_accuracy"):
        vision_learner(data, "simple_cnn", pretrained=False, metrics=["accuracy", "f1_multi"], progress=False)
    learn = vision_learner(data, "simple_cnn", pretrained=False, metrics=["error_rate"], progress=False)
    assert [n for n, _ in learn.metrics] == ["error_rate"]


def test_multi_label_figures_are_cross_fitted_not_scored_where_the_threshold_was_chosen():
    """The threshold was chosen on validation and its F1 reported on validation: high by construction."""
    from imgclf.train.metrics import best_threshold, cross_fitted_decisions, fbeta_multi

    g = torch.Generator().manual_seed(3)
    targets = (torch.rand(60, 4, generator=g) > 0.6).float()
    logits = targets * 1.5 - 0.9 + torch.randn(60, 4, generator=g)  # informative, noisy
    fair = cross_fitted_decisions(logits, targets)
    order = torch.randperm(60, generator=torch.Generator().manual_seed(0))
    a, b = order[:30], order[30:]
    for this, other in ((a, b), (b, a)):
        t, _ = best_threshold(logits[other], targets[other])
        assert torch.equal(fair[this] > 0, logits[this].sigmoid() > t)
    chosen, _ = best_threshold(logits, targets)
    assert fbeta_multi(fair, targets) <= fbeta_multi(logits, targets, 1.0, chosen)  # the chosen one is the max
    assert cross_fitted_decisions(logits[:3], targets[:3]) is None
