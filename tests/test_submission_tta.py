"""`imgclf predict --submission` (the food homework's Id,Category CSV) and test-time augmentation (`--tta`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgclf import load_model
from imgclf.cli import main
from imgclf.config import DataConfig, RunConfig, TrainConfig
from imgclf.data.loaders import BatchLoader
from imgclf.infer.predictor import Prediction, submission_rows
from imgclf.infer.tta import TTA_VIEWS, combine, view, views
from imgclf.train.job import train

# integer class names, as the food homework's "0".."10": sorted as text, so index != name for "10"
COLOURS = {"0": (200, 50, 50), "1": (50, 50, 200), "10": (50, 180, 60)}


def write_colour(path: Path, colour, seed: int, size=(40, 30), symmetric: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    a = np.clip(np.asarray(colour, float) + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    if symmetric:  # the right half mirrors the left: the picture equals its flip
        a[:, size[0] - size[0] // 2 :] = a[:, : size[0] // 2][:, ::-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A probe run at 32 px on three noisy colours named "0", "1", "10" (train/ 8 each, val/ 4 each)."""
    root = tmp_path_factory.mktemp("food")
    seed = 0
    for split, n in (("train", 8), ("val", 4)):
        for name, colour in COLOURS.items():
            for _ in range(n):
                seed += 1
                write_colour(root / split / name / f"{name}_{seed}.jpg", colour, seed)
    out = root / "run"
    cfg = RunConfig(data=DataConfig(path=str(root), size=32, bs=16), train=TrainConfig(recipe="probe"), out=str(out))
    train(cfg, progress=False)
    return out


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_submission_csv_format_exactly(run, tmp_path, capsys):
    test = tmp_path / "test"
    files = {"0002": "1", "10": "10", "0001": "0", "3": "10", "0100": "1", "0007": "0"}  # id -> true class
    for i, (stem, name) in enumerate(files.items()):
        write_colour(test / f"{stem}.jpg", COLOURS[name], 1000 + i)
    (test / "0005.jpg").write_bytes(b"")  # undecodable: skipped, named in a warning, no row
    sub = tmp_path / "submission.csv"
    with pytest.warns(UserWarning, match="0005.jpg"):
        assert main(["predict", str(run), str(test), "--submission", str(sub), "--quiet"]) == 0
    assert "6 predictions" in capsys.readouterr().out
    rows = read_rows(sub)
    assert rows[0] == ["Id", "Category"]
    assert [r[0] for r in rows[1:]] == ["0001", "0002", "3", "0007", "10", "0100"]  # numeric order, names kept
    assert {r[0]: r[1] for r in rows[1:]} == files  # the class name as it is ("10", not its index 2)
    assert sub.read_text().splitlines()[1] == "0001,0"  # plain CSV, no quoting, no extension
    # not overwritten without --force
    assert main(["predict", str(run), str(test / "0001.jpg"), "--submission", str(sub)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["predict", str(run), str(test / "0001.jpg"), "--submission", str(sub), "--force", "--quiet"]) == 0
    assert read_rows(sub) == [["Id", "Category"], ["0001", "0"]]
    # two files with one Id: a user error before any prediction
    write_colour(test / "sub" / "0001.png", COLOURS["0"], 7)
    assert main(["predict", str(run), str(test), "--submission", str(tmp_path / "s2.csv")]) == 2
    assert "0001" in capsys.readouterr().err and not (tmp_path / "s2.csv").exists()


def test_submission_rows_sort_text_ids_as_text():
    preds = [Prediction("cat", 1.0, {}, f"/x/{n}.jpg") for n in ("b10", "a2", "b9", "10")]
    assert submission_rows(preds) == [("10", "cat"), ("a2", "cat"), ("b10", "cat"), ("b9", "cat")]
    preds = [Prediction("cat", 1.0, {}, f"/x/{n}.png") for n in ("10", "9", "009", "0010")]
    assert [i for i, _ in submission_rows(preds)] == ["009", "9", "0010", "10"]


def test_flip_view_is_the_mirrored_center_view():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 3, 37, 37), dtype=torch.uint8, generator=g)
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    center, flip = view(x, "center", 32, mean, std), view(x, "flip", 32, mean, std)
    assert torch.equal(flip, center.flip(-1)) and not torch.equal(flip, center)
    # the same views the loaders give validation and the cached mirror features
    for name, v in (("center", center), ("flip", flip)):
        xb, _ = next(iter(BatchLoader(x, torch.zeros(4, dtype=torch.long), 32, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3),
                                      view=name, channels_last=False)))
        assert torch.equal(xb, v)
    assert torch.equal(views(x, 32, mean, std), torch.cat([center, flip]))
    p = torch.rand(2, 5, 3).softmax(-1)
    assert torch.allclose(combine(p), (p[0] + p[1]) / 2) and torch.allclose(combine(p).sum(-1), torch.ones(5))
    with pytest.raises(ValueError, match="unknown TTA view"):
        view(x, "rotate", 32, mean, std)


def test_predictor_tta_probabilities(run, tmp_path):
    model = load_model(run, device="cpu")
    files = [write_colour(tmp_path / f"{n}.png", c, 50 + i) for i, (n, c) in enumerate(COLOURS.items())]
    plain, _ = model.predict_files(files, progress=False)
    tta, skipped = model.predict_files(files, progress=False, tta=True)
    assert not skipped and [p.path for p in tta] == [str(f) for f in files]
    for p, q in zip(plain, tta, strict=True):
        assert sum(q.probs.values()) == pytest.approx(1, abs=1e-5) and q.label == p.label
    # the TTA probabilities are the mean of the two views' softmax
    probs, kept, _ = model.probs_files(files, progress=False, names=TTA_VIEWS)
    assert probs.shape == (2, 3, 3) and kept == files
    assert torch.allclose(torch.tensor([list(q.probs.values()) for q in tta]), probs.mean(0), atol=1e-6)
    assert torch.allclose(probs[0], torch.tensor([list(p.probs.values()) for p in plain]), atol=1e-6)
    # logits(tta=True) are scores whose softmax is the TTA prediction
    x = torch.randint(0, 256, (2, 3, model.presize, model.presize), dtype=torch.uint8)
    assert torch.allclose(model.logits(x, tta=True).softmax(-1), model.view_probs(x, TTA_VIEWS).mean(0), atol=1e-5)


def test_tta_on_a_symmetric_image_changes_nothing(run, tmp_path, capsys):
    model = load_model(run, device="cpu")
    # a batch already at the training size whose every row is a palindrome: flip view == center view exactly
    half = torch.randint(0, 256, (3, 3, model.size, model.size // 2), dtype=torch.uint8)
    x = torch.cat([half, half.flip(-1)], -1)
    assert torch.equal(view(x, "flip", model.size, model.mean, model.std), view(x, "center", model.size, model.mean,
                                                                              model.std))
    tta, plain = model.logits(x, tta=True).softmax(-1), model.logits(x).softmax(-1)
    assert torch.equal(tta.argmax(-1), plain.argmax(-1))
    assert torch.allclose(tta, plain, atol=5e-3)  # equal inputs; bf16 kernels may differ with the batch size
    # through the CLI, a left-right symmetric photo gets the same label with and without --tta
    img = write_colour(tmp_path / "sym.png", COLOURS["10"], 3, size=(40, 30), symmetric=True)  # as trained on
    out = {}
    for flag in ([], ["--tta"]):
        assert main(["predict", str(run), str(img), "--quiet", *flag]) == 0
        out[bool(flag)] = capsys.readouterr().out.strip().splitlines()[1].split(",")
    assert out[True][1] == out[False][1]  # (not the same confidence: a 37 px presize crops 2 px left, 3 px right)


def test_evaluate_tta_reports_both_figures(run, tmp_path, capsys):
    data = run.parent  # train/ + val/: its val split is scored
    js = tmp_path / "eval.json"
    assert main(["evaluate", str(run), str(data), "--tta", "--json", str(js), "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    ev = json.loads(js.read_text())
    assert ev["n"] == 12 and ev["tta_views"] == ["center", "flip"]
    ci, tta_ci = (f"({ev[k + '_low']:.2f}-{ev[k + '_high']:.2f}, 12 images)" for k in ("accuracy", "tta_accuracy"))
    assert lines[0] == f"accuracy {ev['accuracy']:.4f} {ci}  loss {ev['loss']:.4f}  n 12"
    assert lines[1].startswith("balanced_accuracy ") and f"ECE {ev['ece']:.4f}" in lines[1]
    tta = [line for line in lines if line.startswith("tta accuracy")]
    assert len(tta) == 1 and tta[0].endswith("(center + flip)") and f"tta ECE {ev['tta_ece']:.4f}" in tta[0]
    assert tta[0].startswith(f"tta accuracy {ev['tta_accuracy']:.4f} {tta_ci}  tta loss {ev['tta_loss']:.4f}  ")
    # the plain figures are those of evaluate without --tta; the TTA ones those of predict --tta by hand
    assert main(["evaluate", str(run), str(data), "--json", str(tmp_path / "plain.json"), "--quiet"]) == 0
    plain = json.loads((tmp_path / "plain.json").read_text())
    assert "tta_accuracy" not in plain and "tta accuracy" not in capsys.readouterr().out
    assert (plain["accuracy"], plain["loss"]) == pytest.approx((ev["accuracy"], ev["loss"]), abs=1e-6)
    model = load_model(run, device="cpu")
    files = sorted((data / "val").rglob("*.jpg"))
    preds, _ = model.predict_files(files, progress=False, tta=True)
    idx = {c: i for i, c in enumerate(model.classes)}
    targets = torch.tensor([idx[f.parent.name] for f in files])
    probs = torch.tensor([[p.probs[c] for c in model.classes] for p in preds])
    assert ev["tta_accuracy"] == pytest.approx(float((probs.argmax(-1) == targets).float().mean()))
    assert ev["tta_loss"] == pytest.approx(float(-probs[torch.arange(12), targets].log().mean()), rel=1e-4)
