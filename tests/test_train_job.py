"""End to end: a real short training, its run directory, export -> load_model -> predict, reproducibility."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from imgclf import ImageData, vision_learner
from imgclf.config import DataConfig, RunConfig, TrainConfig
from imgclf.infer import evaluate, load_model
from imgclf.train.job import train


def subset_csv(root, tmp_path, n_train=12, n_valid=12):
    """A CSV over a slice of hymenoptera (first n per class and split), with is_valid: no copying."""
    path = tmp_path / "subset.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label", "is_valid"])
        for split, n in (("train", n_train), ("val", n_valid)):
            for cls in ("ants", "bees"):
                for p in sorted((root / split / cls).glob("*.jpg"))[:n]:
                    w.writerow([str(p), cls, int(split == "val")])
    return path


def test_real_short_training_beats_chance(hymenoptera, tmp_path):
    cfg = RunConfig(
        data=DataConfig(path=str(subset_csv(hymenoptera, tmp_path)), size=128, bs=16),
        train=TrainConfig(recipe="fine_tune", epochs=1, freeze_epochs=3),
        out=str(tmp_path / "run"),
    )
    res = train(cfg, progress=False)
    run = res.run_dir
    assert run == tmp_path / "run"
    m = json.loads((run / "metrics.json").read_text())
    assert m["accuracy"] >= 0.8, m  # 24 valid images, chance is 0.5
    assert m["n_train"] == 24 and m["n_valid"] == 24 and m["skipped_files"] == []
    assert m["fit_seconds"] > 0 and "valid_loss" in m
    for name in ("model.safetensors", "model.json", "config.json", "history.csv", "loss.png"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert [r["phase"] for r in rows] == ["frozen"] * 3 + ["unfrozen"]
    assert set(rows[0]) >= {"epoch", "phase", "train_loss", "valid_loss", "accuracy", "seconds"}
    kept = min(rows, key=lambda r: float(r["valid_loss"]))  # validated in fp32 as the final figures (not bf16)
    assert float(kept["accuracy"]) == pytest.approx(m["accuracy"], abs=1e-6)
    assert m["kept"] == f"epoch {1 if kept['phase'] == 'unfrozen' else int(kept['epoch']) + 1}/" \
                        f"{1 if kept['phase'] == 'unfrozen' else 3} ({kept['phase']})"
    meta = json.loads((run / "model.json").read_text())
    assert meta["classes"] == ["ants", "bees"] and meta["size"] == 128 and meta["arch"] == "efficientnet_lite0"
    conf = json.loads((run / "config.json").read_text())
    assert conf["train"]["epochs"] == 1 and conf["resolved"]["lr"] == 2e-3

    # the exported model predicts what the learner predicted, on the same validation images
    logits, targets = res.learner.get_preds()
    model = load_model(run)
    preds, skipped = model.predict_files(res.learner.data.valid_paths, progress=False)
    probs = torch.tensor([[p.probs[c] for c in model.classes] for p in preds])
    assert not skipped
    # both in fp32 on a CPU (learner.inference_dtype): the same figures, not bf16 autocast's ~1e-2 apart
    torch.testing.assert_close(probs, (logits / model.temperature).softmax(-1), atol=1e-4, rtol=0)
    labels = torch.tensor([model.classes.index(p.label) for p in preds])
    assert (labels == targets).float().mean().item() == pytest.approx(m["accuracy"])  # predict gives train's figure
    one = model.predict(res.learner.data.valid_paths[0])
    assert one.label in ("ants", "bees") and one.confidence == pytest.approx(probs[0].max().item(), abs=1e-5)

    # evaluate agrees with the run's own validation accuracy
    ev = evaluate(model, hymenoptera / "val", progress=False)
    assert ev["n"] == 153 and 0.7 < ev["accuracy"] <= 1.0


def test_a_probe_run_predicts_the_figures_it_reported(hymenoptera, tmp_path):
    """The probe's figures come from fp32 features; `predict` (eager, precision auto) computes in fp32 on a CPU
    too, whatever the CPU's bf16: it once ran bf16 autocast there and disagreed with train's figures (a
    borderline image changed label, a 15/16 run evaluated 16/16)."""
    from imgclf.train.recipes import cached_valid_preds

    cfg = RunConfig(data=DataConfig(path=str(subset_csv(hymenoptera, tmp_path)), size=128),
                    train=TrainConfig(recipe="probe"), out=str(tmp_path / "run"))
    res = train(cfg, progress=False)
    logits, targets = cached_valid_preds(res.learner)  # what metrics.json was scored on
    model = load_model(res.run_dir)
    assert model.dtype is None  # fp32 on the CPU
    preds, _ = model.predict_files(res.learner.data.valid_paths, progress=False)
    probs = torch.tensor([[p.probs[c] for c in model.classes] for p in preds])
    torch.testing.assert_close(probs, (logits / model.temperature).softmax(-1), atol=1e-4, rtol=0)
    assert (probs.argmax(1) == targets).float().mean().item() == pytest.approx(res.metrics["accuracy"])
    assert load_model(res.run_dir, precision="bf16").dtype == torch.bfloat16  # asked for: given


def test_auto_lr_writes_lr_find_plot(tiny_split_folder, tmp_path):
    cfg = RunConfig(data=DataConfig(path=str(tiny_split_folder), size=32, bs=4),
                    train=TrainConfig(recipe="fine_tune", epochs=0, freeze_epochs=2, lr="auto"),
                    out=str(tmp_path / "r"))
    res = train(cfg, progress=False)
    assert (res.run_dir / "lr_find.png").is_file()
    conf = json.loads((res.run_dir / "config.json").read_text())
    assert 1e-7 < conf["resolved"]["lr"] < 10 and set(conf["resolved"]["lr_find"]) == {"minimum", "steep", "valley"}


def test_same_seed_same_metrics(image_folder, tmp_path):
    root = image_folder({"a": 8, "b": 8, "c": 8}, size=(48, 40))

    def run(k):
        cfg = RunConfig(data=DataConfig(path=str(root), size=32, bs=8, seed=7),
                        train=TrainConfig(recipe="fine_tune", epochs=1, freeze_epochs=2), out=str(tmp_path / f"r{k}"))
        return train(cfg, progress=False).metrics

    a, b = run(1), run(2)
    assert a["valid_loss"] == b["valid_loss"] and a["accuracy"] == b["accuracy"]


def test_cached_features_are_reused_until_the_body_changes(tiny_split_folder):
    data = ImageData.from_folder(tiny_split_folder, size=32, bs=4, progress=False)
    learn = vision_learner(data, progress=False)
    learn.lr_find(num_it=20)
    learn.fit_head(2, 1e-2)
    assert learn.features.computed == 3  # train/center, train/flip, valid/center: once each
    learn.unfreeze()
    learn.fit_one_cycle(1, 1e-4)
    learn.fit_head(1, 1e-3)
    assert learn.features.computed == 6  # body changed: recomputed once


def test_lr_find_sweeps_the_whole_model_when_the_body_is_random(tiny_split_folder):
    """A head sweep on a random body's features says nothing about the rate that trains it."""
    data = ImageData.from_folder(tiny_split_folder, size=32, bs=4, progress=False)
    scratch = vision_learner(data, "simple_cnn", pretrained=False, progress=False)
    scratch.lr_find(num_it=10)
    assert scratch.features.computed == 0  # no cached features: the whole model was swept
    pretrained = vision_learner(data, progress=False)
    pretrained.lr_find(num_it=10)
    assert pretrained.features.computed > 0  # the head on cached features


def test_the_history_names_the_phase_freeze_and_unfreeze_set(tiny_split_folder):
    data = ImageData.from_folder(tiny_split_folder, size=32, bs=4, progress=False)
    learn = vision_learner(data, "simple_cnn", pretrained=False, progress=False)
    learn.freeze()
    learn.fit_one_cycle(1, 1e-3)
    learn.unfreeze()
    learn.fit_one_cycle(1, 1e-3)
    assert [r["phase"] for r in learn.recorder.history] == ["frozen", "unfrozen"]


def test_a_csv_labelled_run_rebuilds_its_data_from_a_moved_folder(tmp_path, write_image):
    """interpret/export/report --data DIR on a CSV-labelled run whose data moved: the folder's CSV of the run's
    CSV's name labels it (given the folder alone it read one class, 'imgs'); with no CSV anywhere, the error asks
    for the CSV, not for a folder again."""
    import shutil

    from imgclf.errors import UserError
    from imgclf.train.job import run_data

    data = tmp_path / "data"
    rows = [(f"imgs/{c}{i}.png", c) for c in ("red", "blue") for i in range(6)]
    for k, (name, c) in enumerate(rows):
        write_image(data / name, size=(24, 24), colour=(200, 40, 40) if c == "red" else (40, 40, 200), seed=k)
    with open(data / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("file", "label"), *rows])
    run = tmp_path / "run"
    run.mkdir()
    cfg = RunConfig(data=DataConfig(path=str(data), csv=str(data / "labels.csv"), valid_pct=0.5))
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    moved = shutil.move(data, tmp_path / "moved")
    got = run_data(run, 32, 0.875, data=moved)
    assert got.classes == ["blue", "red"] and got.n_train + got.n_valid == 12
    (tmp_path / "moved" / "labels.csv").unlink()
    with pytest.raises(UserError, match="labelled by labels.csv, which is neither in .* give the CSV with --data"):
        run_data(run, 32, 0.875, data=moved)
