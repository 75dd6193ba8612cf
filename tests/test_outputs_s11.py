"""What the output commands write and say: predict's CSV headers and submission gaps, interpret's --out, export of
an unfinished run, lr_find's legend, the report's weights row and `Prediction.tags`."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest

from imgclf import load_model
from imgclf.cli import main
from imgclf.cli.predict import prob_columns
from imgclf.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from imgclf.evaluate import interpret as interpret_module
from imgclf.evaluate.report import report_context
from imgclf.infer.export import export_model, unfinished_note
from imgclf.serve.app import prediction_json
from imgclf.train.job import train
from imgclf.train.lr_finder import LRFind


def copy_run(run: Path, dest: Path, **meta_changes) -> Path:
    """A writable copy of the shared run (its config still points at the shared data), model.json edited."""
    out = shutil.copytree(run, dest)
    meta = json.loads((out / "model.json").read_text())
    (out / "model.json").write_text(json.dumps({**meta, **meta_changes}))
    return out


def val_images(run: Path) -> list[Path]:
    return sorted((run.parent / "data" / "val").rglob("*.jpg"))


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


# ---------------------------------------------------------------------------------------- 1. predict --probs headers
def test_probs_columns_named_like_fixed_columns_get_a_prefix(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path / "run", classes=["path", "label", "frogs"])
    images = val_images(trained_run)
    out = tmp_path / "out.csv"
    assert main(["predict", str(run), *map(str, images), "--csv", str(out), "--probs", "--topk", "2", "--quiet"]) == 0
    rows = read_csv(out)
    header = rows[0]
    assert len(header) == len(set(header)), header
    assert header == ["path", "label", "confidence", "prob_path", "prob_label", "prob_frogs",
                      "label_1", "prob_1", "label_2", "prob_2"]
    assert len(rows) == len(images) + 1
    with open(out, newline="") as f:
        first = next(csv.DictReader(f))
    assert first["path"] == str(images[0]) and first["label"] in ("path", "label", "frogs")
    probs = [float(first[f"prob_{c}"]) for c in ("path", "label", "frogs")]
    assert math.isclose(sum(probs), 1.0, abs_tol=1e-4) and float(first["confidence"]) == pytest.approx(max(probs))
    err = capsys.readouterr().err
    assert "note: class name(s) label, path also name fixed columns" in err and "prob_<class>" in err


def test_probs_columns_keep_class_names_when_nothing_clashes(trained_run, tmp_path, capsys):
    out = tmp_path / "out.csv"
    images = val_images(trained_run)[:3]
    assert main(["predict", str(trained_run), *map(str, images), "--csv", str(out), "--probs", "--topk", "1",
                 "--quiet"]) == 0
    assert read_csv(out)[0] == ["path", "label", "confidence", "cats", "dogs", "frogs", "label_1", "prob_1"]
    assert "note:" not in capsys.readouterr().err


def test_prob_columns_never_land_on_a_topk_column():
    fixed = ["path", "label", "confidence", "label_1", "prob_1"]
    assert prob_columns(["a", "1"], fixed) == ["a", "1"]  # "1" is no fixed name: headers as today
    assert prob_columns(["conf_1", "label_1"], fixed) == ["prob_conf_1", "prob_label_1"]
    # "path" forces the prefix, and prob_1 would then repeat --topk's column: one more prefix for all
    cols = prob_columns(["path", "1"], fixed)
    assert cols == ["prob_prob_path", "prob_prob_1"] and not set(cols) & set(fixed)


# ---------------------------------------------------------------------------------------------- 3. submission gaps
def test_submission_names_the_ids_it_lacks(trained_run, tmp_path):
    test = tmp_path / "test"
    test.mkdir()
    for i, src in enumerate(val_images(trained_run)[:3], start=1):
        shutil.copy(src, test / f"{i:04d}.jpg")
    (test / "0004.png").write_bytes(b"")  # 0 bytes: skipped by the decoder
    sub = tmp_path / "submission.csv"
    with pytest.warns(UserWarning) as seen:
        assert main(["predict", str(trained_run), str(test), "--submission", str(sub), "--quiet"]) == 0
    rows = read_csv(sub)
    assert rows[0] == ["Id", "Category"] and [r[0] for r in rows[1:]] == ["0001", "0002", "0003"]
    messages = [str(w.message) for w in seen]
    lacks = [m for m in messages if "lacks" in m]
    assert lacks == [f"{sub} lacks 1 Id whose file could not be decoded: 0004 (empty file (0 bytes)); a grader may "
                     "reject it: fix or replace those files and predict again, or add their rows by hand"], messages


# ---------------------------------------------------------------------------------------------- 2. interpret --out
def test_interpret_out_that_is_a_file_fails_before_any_work(trained_run, tmp_path, capsys, monkeypatch):
    def no_work(*a, **k):
        raise AssertionError("predicted before checking --out")

    monkeypatch.setattr(interpret_module.Interpretation, "from_run", no_work)
    existing = tmp_path / "existing.html"
    existing.write_text("mine")
    assert main(["interpret", str(trained_run), "--out", str(existing), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"imgclf: error: {existing}: is a file; --out takes a folder"]
    assert existing.read_text() == "mine"

    under_file = existing / "sub"
    assert main(["interpret", str(trained_run), "--out", str(under_file), "--quiet"]) == 2
    assert "is a file, so the folder cannot be made" in capsys.readouterr().err

    # a folder of the user's holding an earlier interpret's file: refused without --force, before any work
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "confusion_matrix.png").write_bytes(b"keep me")
    assert main(["interpret", str(trained_run), "--out", str(mine), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"imgclf: error: {mine}: already holds confusion_matrix.png (pass --force to overwrite)"]
    assert (mine / "confusion_matrix.png").read_bytes() == b"keep me"


def test_interpret_force_overwrites_and_the_run_folder_is_replaced_as_documented(trained_run, tmp_path, capsys):
    run = shutil.copytree(trained_run, tmp_path / "run")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("unrelated")  # non-empty, but nothing interpret writes: allowed
    assert main(["interpret", str(run), "--out", str(mine), "--quiet", "--k", "4"]) == 0
    assert (mine / "notes.txt").read_text() == "unrelated" and (mine / "interpret.json").is_file()
    assert main(["interpret", str(run), "--out", str(mine), "--quiet", "--k", "4"]) == 2  # now it holds an interpret
    assert "already holds" in capsys.readouterr().err
    (mine / "confusion_matrix.png").write_bytes(b"old")
    assert main(["interpret", str(run), "--out", str(mine), "--quiet", "--k", "4", "--force"]) == 0
    assert (mine / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the default RUN/interpret/ is the run's own: replaced on each interpret without --force, named or not
    for extra in ([], [], ["--out", str(run / "interpret")]):
        assert main(["interpret", str(run), "--quiet", "--k", "4", *extra]) == 0
    assert "replacing the earlier interpret" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------- 4. unfinished export
def test_export_of_an_interrupted_run_warns_even_when_quiet(trained_run, tmp_path):
    run = shutil.copytree(trained_run, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "status": "interrupted"}))
    with pytest.warns(UserWarning, match=r"is unfinished \(status interrupted\)") as seen:
        assert main(["export", str(run), "--quiet"]) == 0
    message = next(str(w.message) for w in seen if "unfinished" in str(w.message))
    assert f"`imgclf train --resume {run}`, then export again" in message and "best epoch so far" in message
    assert (run / "model.onnx").stat().st_size > 0  # still exported


def test_unfinished_note_by_status(trained_run, tmp_path, recwarn):
    run = shutil.copytree(trained_run, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    for status, expect in (("done", None), ("running", "status running (still training, or killed)"),
                           ("failed: out of memory", "status failed: out of memory")):
        (run / "config.json").write_text(json.dumps({**config, "status": status}))
        note = unfinished_note(run)
        assert note is None if expect is None else expect in note, (status, note)
    (run / "config.json").write_text(json.dumps({**config, "status": "done"}))
    export_model(run, format="torchscript", progress=False)
    assert not [w for w in recwarn if "unfinished" in str(w.message)]


# ------------------------------------------------------------------------------------------------ 5. lr_find legend
def test_lr_find_plot_names_the_minimum_point_as_the_console_does():
    lrs = [1e-6 * 1.2**i for i in range(60)]
    raw = [2.0 - 1.5 * math.exp(-((math.log(lr) - math.log(1e-3)) ** 2) / 4) for lr in lrs]  # dip near 1e-3
    finder = LRFind(lrs, raw)
    labels = [t.get_text() for t in finder.plot().axes[0].get_legend().get_texts()]
    assert labels[0] == f"minimum/10: {finder.minimum:.2e}" and not any(t.startswith("minimum:") for t in labels)
    assert labels[1:] == [f"steep: {finder.steep:.2e}", f"valley: {finder.valley:.2e}"]
    lrs_w, losses_w = finder._window()
    assert finder.minimum == pytest.approx(lrs_w[losses_w.index(min(losses_w))] / 10)


# ------------------------------------------------------------------------------------- 6. report: the weights used
def test_report_says_a_scratch_arch_started_from_random_weights(trained_run, image_folder, tmp_path):
    data = image_folder({"a": 4, "b": 4}, split=True, size=(24, 24))
    cfg = RunConfig(data=DataConfig(path=str(data), size=24, bs=8), model=ModelConfig(arch="simple_cnn"),
                    train=TrainConfig(epochs=1, lr=1e-2), out=str(tmp_path / "cnn"))
    run = train(cfg, progress=False).run_dir
    assert json.loads((run / "config.json").read_text())["model"]["pretrained"] is True  # the flag, left on

    def pretrained_row(r: Path) -> str:
        model = next(g for g in report_context(r)["config"] if g["name"] == "model")
        return next(row["value"] for row in model["rows"] if row["key"] == "pretrained")

    assert pretrained_row(run) == "no (random initial weights)"
    assert pretrained_row(trained_run) == "yes (ImageNet weights embedded in imgclf)"


# ------------------------------------------------------------------------------------------- 7. Prediction.tags
def test_single_label_predictions_carry_no_tags(trained_run):
    model = load_model(trained_run, device="cpu")
    image = val_images(trained_run)[0]
    p = model.predict(image)
    assert p.tags is None and p.label == "cats" and p.confidence == max(p.probs.values())
    preds, skipped = model.predict_files([image], progress=False)
    assert skipped == [] and preds[0].tags is None and preds[0].label == p.label
    answer = prediction_json(p, 2, model.task)  # the server's JSON: no tags field for one class
    assert "tags" not in answer and answer["label"] == "cats" and answer["topk"][0]["label"] == "cats"
