"""Interpretation: its figures against hand computation, plots that read, `imgclf interpret` on a real tiny run."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image
from torch import nn

from imgclf import Interpretation
from imgclf.cli import main
from imgclf.config import DataConfig, RunConfig, TrainConfig
from imgclf.data.show import short
from imgclf.evaluate import model_summary, project_features
from imgclf.evaluate.interpret import FILES, format_summary
from imgclf.train.job import train


def from_pairs(classes, pairs, features=None):
    """An Interpretation whose predictions are exactly the given (actual, predicted) index pairs."""
    targets = torch.tensor([a for a, _ in pairs])
    logits = 4.0 * F.one_hot(torch.tensor([p for _, p in pairs]), len(classes)).float()
    return Interpretation(classes, [f"img{i}.jpg" for i in range(len(pairs))], logits, targets, features)


# a: 3 right, 2 as b, 1 as c; b: 2 right, 3 as a; c: 4 right, 1 as a; d: no images, never predicted
HAND = [(0, 0)] * 3 + [(0, 1)] * 2 + [(0, 2)] + [(1, 1)] * 2 + [(1, 0)] * 3 + [(2, 2)] * 4 + [(2, 0)]


def test_confusion_matrix_and_most_confused_on_a_hand_made_set():
    interp = from_pairs(["a", "b", "c", "d"], HAND)
    cm = interp.confusion_matrix()
    assert cm.tolist() == [[3, 2, 1, 0], [3, 2, 0, 0], [1, 0, 4, 0], [0, 0, 0, 0]]
    assert cm.sum() == interp.n == 16 and np.trace(cm) / cm.sum() == interp.accuracy == 9 / 16
    assert interp.most_confused() == [("b", "a", 3), ("a", "b", 2), ("a", "c", 1), ("c", "a", 1)]  # ties: class order
    assert interp.most_confused(min_val=2) == [("b", "a", 3), ("a", "b", 2)]
    assert interp.most_confused(min_val=4) == []


def test_per_class_precision_recall_f1_by_hand():
    rows = {r["class"]: r for r in from_pairs(["a", "b", "c", "d"], HAND).per_class()}
    # a: 3 right of 6 actual, of 7 predicted; b: 2 of 5 actual, of 4 predicted; c: 4 of 5 and of 5
    hand = {"a": (3 / 7, 3 / 6, 6 / 13, 6), "b": (2 / 4, 2 / 5, 4 / 9, 5), "c": (4 / 5, 4 / 5, 4 / 5, 5)}
    for name, (p, r, f1, support) in hand.items():
        got = rows[name]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx((p, r, f1, support))
    # d has no images: its recall and F1 are unknown, not 0 (a 0 reads as a class the model always misses)
    d = rows["d"]
    assert (d["precision"], d["recall"], d["f1"], d["support"], d["recall_low"]) == (0.0, None, None, 0, None)


def test_a_class_without_images_reads_n_a_in_the_table():
    interp = from_pairs(["a", "b", "c", "d"], HAND)
    text = format_summary(interp.to_dict(), 10)
    row = next(line for line in text.splitlines() if line.startswith("d "))
    assert "n/a" in row and "0.0000 (0.00-0.00)" not in row and row.split()[-1] == "0"
    assert "1 class(es) have no validation images (d)" in text


def test_short_names_keep_their_distinguishing_end():
    assert short("ants") == "ants"
    cut = short("a_rather_long_class_name_07")
    assert len(cut) == 20 and cut.startswith("a_rather_") and cut.endswith("name_07") and "…" in cut


def test_top_losses_sorted_and_misclassified_match_the_errors():
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(30, 3, generator=g) * 2, torch.randint(0, 3, (30,), generator=g)
    interp = Interpretation(["x", "y", "z"], [f"p{i}" for i in range(30)], logits, targets)
    top = interp.top_losses(k=None)
    losses = [t["loss"] for t in top]
    assert len(top) == 30 and losses == sorted(losses, reverse=True)
    assert losses[0] == pytest.approx(F.cross_entropy(logits, targets, reduction="none").max().item())
    first = int(top[0]["path"][1:])
    assert top[0]["probability"] == pytest.approx(logits[first].softmax(-1).max().item())
    assert [t["path"] for t in interp.top_losses(5)] == [t["path"] for t in top[:5]]
    wrong = interp.misclassified()
    cm = interp.confusion_matrix()
    assert len(wrong) == cm.sum() - np.trace(cm) > 0
    assert all(w["actual"] != w["predicted"] for w in wrong)
    conf = [w["confidence"] for w in wrong]
    assert conf == sorted(conf, reverse=True)


def test_model_summary_counts_by_hand():
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=4), nn.BatchNorm2d(8)),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )
    net[0].requires_grad_(False)
    net.train()
    s = model_summary(net, 16)
    assert net.training  # mode restored
    assert s.params == 112 + 80 + 16 + 45 and s.frozen == 112 and s.trainable == s.params - 112
    # conv 4x16x16 outputs x 3x3x3 inputs; grouped conv 8x8x8 x 1x3x3; linear 5 x 8
    assert s.macs == 4 * 16 * 16 * 27 + 8 * 8 * 8 * 9 + 5 * 8
    rows = {r.name: r for r in s.rows}
    assert rows["2"].output_shape == (8, 8, 8) and rows["2.0"].depth == 1 and rows["5"].output_shape == (5,)
    assert rows["2"].params == 96 and rows["2"].macs == 8 * 8 * 8 * 9
    assert s.to_dict() == {"params": 253, "trainable": 141, "frozen": 112, "macs": s.macs, "input_size": [3, 16, 16]}
    assert "253 (141 trainable, 112 frozen)" in str(s)


def _no_overlap(texts, renderer) -> bool:
    boxes = [t.get_window_extent(renderer) for t in texts if t.get_text()]
    return all(a.x1 <= b.x0 or a.x0 >= b.x1 or a.y1 <= b.y0 or a.y0 >= b.y1
               for i, a in enumerate(boxes) for b in boxes[i + 1:])


def synthetic(n_classes, per_class=2, features=True):
    g = torch.Generator().manual_seed(n_classes)
    classes = [f"a_rather_long_class_name_{i:02d}" for i in range(n_classes)]
    targets = torch.arange(n_classes * per_class) % n_classes
    logits = torch.randn(len(targets), n_classes, generator=g) + 2 * F.one_hot(targets, n_classes)
    feats = torch.randn(len(targets), 8, generator=g) if features else None
    return Interpretation(classes, [f"missing/{i}.jpg" for i in range(len(targets))], logits, targets, feats)


@pytest.mark.parametrize("n_classes", [3, 40])
def test_confusion_matrix_plot_reads_well(n_classes):
    interp = synthetic(n_classes)
    for normalize in (False, True):
        fig = interp.plot_confusion_matrix(normalize=normalize)
        renderer = FigureCanvasAgg(fig).get_renderer()
        fig.draw(renderer)
        ax = fig.axes[0]
        assert ax.get_xlabel() == "predicted" and ax.get_ylabel() == "actual"
        assert "Confusion matrix" in ax.get_title() and f"of {interp.n} images" in ax.get_title()
        assert ("row-normalised" in ax.get_title()) == normalize
        xt, yt = ax.get_xticklabels(), ax.get_yticklabels()
        assert [t.get_text() for t in yt] == [short(c) for c in interp.classes]
        assert len(xt) == n_classes and _no_overlap(xt, renderer) and _no_overlap(yt, renderer)
        width, _ = fig.canvas.get_width_height()
        boxes = [t.get_window_extent(renderer) for t in xt + yt]
        assert all(b.x0 >= 0 and b.y0 >= 0 and b.x1 <= width for b in boxes)  # inside the figure


def test_45_classes_degrade_to_the_most_confused_40():
    interp = synthetic(45)
    fig = interp.plot_confusion_matrix()
    FigureCanvasAgg(fig).draw()
    ax = fig.axes[0]
    assert len(ax.get_xticklabels()) == 40 and "the 40 most confused of 45 classes" in ax.get_title()
    cm = interp.confusion_matrix()
    errors = cm.sum(0) + cm.sum(1) - 2 * np.diag(cm)
    shown = {t.get_text() for t in ax.get_yticklabels()}
    left_out = [i for i, c in enumerate(interp.classes) if short(c) not in shown]
    assert len(left_out) == 5 and max(errors[left_out]) <= min(np.delete(errors, left_out))
    for fig in (interp.plot_features(), interp.plot_top_losses(9)):  # 90 points, missing image files
        FigureCanvasAgg(fig).draw()
    assert len(fig.axes) == 9 and all(a.get_title() for a in fig.axes)


def test_tsne_is_skipped_for_tiny_sets_and_says_so():
    proj = project_features(torch.randn(6, 16))
    assert proj.tsne is None and proj.pca.shape == (6, 2) and "t-SNE skipped" in proj.note
    fig = synthetic(3, per_class=2).plot_features()
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("t-SNE skipped: 6 points" in t for t in texts)
    assert [ax.get_title() for ax in fig.axes] == ["PCA", "t-SNE"]
    assert fig.axes[0].get_xlabel().startswith("PC 1")
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:3] == [short(c, 24) for c in synthetic(3).classes]
    proj = project_features(torch.randn(12, 16))
    assert proj.tsne.shape == (12, 2) and np.isfinite(proj.tsne).all()
    assert project_features(torch.randn(1, 4)).pca.tolist() == [[0.0, 0.0]]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_interpret_a_tiny_run_end_to_end(image_folder, tmp_path, capsys):
    root = image_folder({"cats": 6, "dogs": 6, "frogs": 6}, split=True, n_valid=4, size=(40, 40))
    planted = root / "val" / "cats" / "cats_planted.jpg"  # a dog photo filed under cats: a sure error
    shutil.copy(sorted((root / "val" / "dogs").glob("*.jpg"))[0], planted)
    cfg = RunConfig(data=DataConfig(path=str(root), size=32, bs=8),
                    train=TrainConfig(epochs=0, freeze_epochs=8, lr=1e-2), out=str(tmp_path / "run"))
    res = train(cfg, progress=False)
    run, n_valid = res.run_dir, res.metrics["n_valid"]
    assert n_valid == 13

    # the learner's view and the exported run's view agree
    mine, theirs = Interpretation.from_learner(res.learner), Interpretation.from_run(run, progress=False)
    assert theirs.paths == mine.paths and theirs.targets.tolist() == mine.targets.tolist()
    torch.testing.assert_close(theirs.probs, mine.probs, atol=2e-3, rtol=0)
    assert (theirs.confusion_matrix() == mine.confusion_matrix()).all()
    # the learner's cached features come from the feature engine (onnxruntime fp32), the run's from eager bf16:
    # equal up to bf16 rounding, so every image's two feature vectors point the same way
    cos = torch.nn.functional.cosine_similarity(theirs.features, mine.features, dim=1)
    assert theirs.features.shape == mine.features.shape and cos.min() > 0.995, cos.min()
    assert mine.accuracy == pytest.approx(res.metrics["accuracy"])

    assert main(["interpret", str(run), "--quiet", "--k", "4"]) == 0
    out = capsys.readouterr().out
    assert f"accuracy {mine.accuracy:.4f}" in out and "frogs" in out and str(run / "interpret") in out
    assert "cats -> dogs: " in out  # the planted dog (with it, at 6 images a class, maybe a real cat)
    folder = run / "interpret"
    for name in FILES:
        assert (folder / name).is_file() and (folder / name).stat().st_size > 0, name
    for name in FILES:
        if name.endswith(".png"):
            with Image.open(folder / name) as im:
                assert im.format == "PNG" and min(im.size) > 300, name

    d = json.loads((folder / "interpret.json").read_text())
    cm = np.array(d["confusion_matrix"])
    assert d["classes"] == ["cats", "dogs", "frogs"] and d["n_valid"] == cm.sum() == n_valid
    assert np.trace(cm) / cm.sum() == pytest.approx(d["accuracy"]) and d["accuracy"] >= 0.75
    assert [r["class"] for r in d["per_class"]] == d["classes"]
    assert [r["support"] for r in d["per_class"]] == cm.sum(1).tolist()
    losses = [t["loss"] for t in d["top_losses"]]
    assert len(losses) == 4 and losses == sorted(losses, reverse=True)
    assert set(d["top_losses"][0]) == {"path", "actual", "predicted", "loss", "probability"}
    assert d["model"]["params"] > 3e6 and d["model"]["macs"] > 0 and d["model"]["input_size"] == [3, 32, 32]

    wrong = read_csv(folder / "misclassified.csv")
    assert len(wrong) == cm.sum() - np.trace(cm)
    assert {"path": str(planted), "actual": "cats", "predicted": "dogs"}.items() <= next(
        w for w in wrong if w["path"] == str(planted)).items()
    pairs = [[r["actual"], r["predicted"], int(r["count"])] for r in read_csv(folder / "most_confused.csv")]
    assert pairs == d["most_confused"] and any(p[:2] == ["cats", "dogs"] and p[2] >= 1 for p in pairs)
    per_class = read_csv(folder / "per_class.csv")
    assert [float(r["f1"]) for r in per_class] == pytest.approx([r["f1"] for r in d["per_class"]], abs=1e-6)
    assert "multiply-adds" in (folder / "model_summary.txt").read_text()

    # again, on the same images given as --data: the same figures, and it says it replaced the first
    assert main(["interpret", str(run), "--data", str(root), "--quiet"]) == 0
    assert "replacing the earlier interpret" in capsys.readouterr().out
    assert json.loads((folder / "interpret.json").read_text())["confusion_matrix"] == d["confusion_matrix"]

    # user mistakes: one line, exit 2
    other = image_folder({"cats": 4, "birds": 4})
    for args, expect in (([str(tmp_path / "nope")], "no such run"), ([str(root)], "not a run directory"),
                         ([str(run), "--data", str(other)], "birds")):
        assert main(["interpret", *args, "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("imgclf: error:") and expect in err[0], err
