"""A new user's findings on evaluate and interpret: `Interpretation.write` no longer writes over files of the
user's (the check the CLI makes, shared), `evaluate` labels DATA as the run was (its --label-re / --label-col),
and labels a run does not know are named with the run's classes."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import class_colour, write_image

from imgclf.cli import main
from imgclf.errors import UserError
from imgclf.evaluate import interpret as interpret_module
from imgclf.evaluate.interpret import FILES, Interpretation, interpret_run
from imgclf.infer.evaluate import evaluate, run_labelling

LABEL_RE = r"^(\d+)_"


def train_cli(data: Path, out: Path, *flags: str) -> Path:
    """A real run trained by the command line, as a user trains one (xresnet_tiny, 32 px, one epoch: seconds)."""
    cmd = [sys.executable, "-m", "imgclf", "train", str(data), *flags, "--arch", "xresnet_tiny", "--size", "32",
           "--epochs", "1", "--quiet", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out


def flat_images(folder: Path, per_class: int, first: int = 0) -> Path:
    """The food homework's layout: `<class>_<n>.jpg` side by side, classes 0, 1, 2 (no class folders), each class
    in its fixture colour."""
    for c in range(3):
        for i in range(first, first + per_class):
            write_image(folder / f"{c}_{i}.jpg", colour=class_colour(c), seed=1000 * c + i)
    return folder


# ---------------------------------------------------------------------------------------------- 1. write(force)
@pytest.fixture(scope="module")
def interp(trained_run) -> Interpretation:
    return Interpretation.from_run(trained_run, progress=False)


def test_write_refuses_files_of_the_users_and_names_them(interp, tmp_path):
    mine = tmp_path / "userdir"
    mine.mkdir()
    (mine / "per_class.csv").write_text("my,own,table\n")
    (mine / "model_summary.txt").write_text("my notes\n")
    (mine / "notes.txt").write_text("unrelated\n")
    with pytest.raises(UserError) as e:
        interp.write(mine)
    assert str(e.value) == f"{mine}: already holds per_class.csv, model_summary.txt (pass force=True to overwrite)"
    # refused before anything was written: the user's files as they were, none of interpret's beside them
    assert (mine / "per_class.csv").read_text() == "my,own,table\n"
    assert (mine / "model_summary.txt").read_text() == "my notes\n"
    assert sorted(p.name for p in mine.iterdir()) == ["model_summary.txt", "notes.txt", "per_class.csv"]

    assert interp.write(mine, force=True) == mine
    with open(mine / "per_class.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["class", "precision", "recall", "f1", "support"]
    assert [r[0] for r in rows[1:]] == ["cats", "dogs", "frogs"]
    assert (mine / "notes.txt").read_text() == "unrelated\n"  # not one of interpret's files: left alone
    assert all((mine / name).is_file() for name in FILES)


def test_write_into_a_new_or_unrelated_folder_and_a_file_in_the_way(interp, tmp_path):
    new = tmp_path / "a" / "b"
    assert interp.write(new) == new and json.loads((new / "interpret.json").read_text())["n_valid"] == interp.n
    with pytest.raises(UserError, match=r"already holds confusion_matrix\.png, .*interpret\.json \(pass force=True"):
        interp.write(new)  # an earlier interpret's files are the user's too, outside the run's own folder
    file = tmp_path / "file.txt"
    file.write_text("keep")
    with pytest.raises(UserError) as e:
        interp.write(file)
    assert str(e.value) == f"{file}: is a file; out takes a folder" and file.read_text() == "keep"


def test_the_runs_own_interpret_folder_is_replaced_as_the_cli_replaces_it(trained_run, tmp_path, capsys):
    run = shutil.copytree(trained_run, tmp_path / "run")
    own = run / "interpret"
    interp = Interpretation.from_run(run, progress=False)
    assert interp.write(own, k=4) == own
    (own / "per_class.csv").write_text("stale\n")
    assert interp.write(own, k=4) == own  # interpret's own folder: replaced without force, as documented
    assert (own / "per_class.csv").read_text().startswith("class,precision")
    assert interpret_run(run, progress=False, k=4) == own  # and as `report` calls it (no out, no force)
    assert main(["interpret", str(run), "--quiet", "--k", "4"]) == 0
    assert "replacing the earlier interpret" in capsys.readouterr().out
    # an Interpretation built elsewhere (no run) is not the run's: the same folder is the user's to it
    plain = Interpretation(interp.classes, interp.paths, interp.logits, interp.targets)
    with pytest.raises(UserError, match="already holds"):
        plain.write(own)


def test_the_cli_and_write_share_one_check(trained_run, tmp_path, capsys, monkeypatch):
    calls = []
    real = interpret_module.check_write_folder

    def spy(folder, force=False, **names):
        calls.append((Path(folder), force, names))
        return real(folder, force, **names)

    def no_work(*a, **k):
        raise AssertionError("predicted before checking --out")

    monkeypatch.setattr(interpret_module, "check_write_folder", spy)
    monkeypatch.setattr(interpret_module.Interpretation, "from_run", no_work)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "per_class.csv").write_text("mine\n")
    (mine / "model_summary.txt").write_text("mine too\n")
    assert main(["interpret", str(trained_run), "--out", str(mine), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"imgclf: error: {mine}: already holds per_class.csv, model_summary.txt (pass --force to "
                   "overwrite)"]
    assert calls and calls[0] == (mine, False, {"out_name": "--out", "force_name": "--force"})
    assert (mine / "per_class.csv").read_text() == "mine\n"


# ------------------------------------------------------------------------------------- 2. the run's --label-re
@pytest.fixture(scope="module")
def regex_run(tmp_path_factory) -> tuple[Path, Path]:
    """A run trained on `<class>_<n>.jpg` files with --label-re '^(\\d+)_', and a flat folder of other such files."""
    root = tmp_path_factory.mktemp("regex_run")
    train_dir = flat_images(root / "food" / "training", 10)
    valid_dir = flat_images(root / "food" / "validation", 4, first=100)
    return train_cli(train_dir, root / "runs" / "food", "--label-re", LABEL_RE), valid_dir


def test_evaluate_labels_data_with_the_runs_label_re(regex_run, tmp_path, capsys):
    run, valid = regex_run
    assert json.loads((run / "config.json").read_text())["data"]["label_re"] == LABEL_RE
    scores = tmp_path / "scores.json"
    assert main(["evaluate", str(run), str(valid), "--quiet", "--json", str(scores)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (f"labels from file names by the run's --label-re '{LABEL_RE}' ({run / 'config.json'}); "
                      "--label-re '' reads class folders instead")
    assert out[1].startswith("accuracy ") and out[1].endswith("  n 12")
    res = json.loads(scores.read_text())
    assert res["n"] == 12 and res["labels_from_run"] == {"label_re": LABEL_RE}
    assert set(res["per_class_accuracy"]) == {"0", "1", "2"}
    assert 0.0 <= res["accuracy"] <= 1.0

    # the Python API reads it the same way, and gives the same figures
    api = evaluate(run, valid, progress=False)
    assert api["n"] == 12 and api["accuracy"] == res["accuracy"] and api["labels_from_run"] == {"label_re": LABEL_RE}
    # given explicitly: used as given, nothing said, nothing recorded as the run's
    assert main(["evaluate", str(run), str(valid), "--quiet", "--label-re", LABEL_RE]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("accuracy ") and not any("the run's --label-re" in line for line in out)
    assert "labels_from_run" not in evaluate(run, valid, label_re=LABEL_RE, progress=False)
    # '' opts out: class folders, which these flat files are not in
    assert main(["evaluate", str(run), str(valid), "--quiet", "--label-re", ""]) == 2
    assert "image not inside a class folder" in capsys.readouterr().err


def test_interpret_with_data_labels_as_the_run_was(regex_run):
    run, valid = regex_run
    interp = Interpretation.from_run(run, data=valid, progress=False)
    assert interp.classes == ["0", "1", "2"] and interp.n > 0
    assert {Path(p).parent for p in interp.paths} == {valid}


def test_run_labelling_takes_the_runs_only_when_none_is_given(regex_run, trained_run, tmp_path):
    run, valid = regex_run
    assert run_labelling(run, valid)[:2] == (LABEL_RE, None)
    assert run_labelling(run, valid, label_re="x(.)")[:2] == ("x(.)", None)
    assert run_labelling(run, valid, label_col="breed") == (None, "breed", None)
    assert run_labelling(run, tmp_path / "labels.csv") == (None, None, None)  # a regex does not label a CSV
    assert run_labelling(trained_run, valid) == (None, None, None)  # a run of class folders
    assert run_labelling(None, valid) == (None, None, None)  # a Predictor without its run directory


def test_evaluate_reads_a_csv_by_the_runs_label_col(tmp_path, capsys):
    def labelled(csv_file: Path, first: int, n: int) -> Path:
        rows = []
        for c, breed in enumerate(("beagle", "corgi")):
            for i in range(first, first + n):
                name = f"img_{c}_{i}.jpg"
                write_image(csv_file.parent / name, colour=class_colour(c), seed=1000 * c + i)
                rows.append([name, "junk" if i % 2 else "noise", breed])  # `label` would be read by default
        with open(csv_file, "w", newline="") as f:
            csv.writer(f).writerows([["file", "label", "breed"], *rows])
        return csv_file

    labels = labelled(tmp_path / "photos" / "labels.csv", 0, 10)
    run = train_cli(labels.parent, tmp_path / "runs" / "dogs", "--csv", str(labels), "--label-col", "breed")
    test = labelled(tmp_path / "test" / "test.csv", 100, 3)
    assert main(["evaluate", str(run), str(test), "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"labels from column 'breed': the run's --label-col ({run / 'config.json'})"
    assert out[1].endswith("  n 6")
    # the column given is used as given: `label` holds no breed the run knows
    assert main(["evaluate", str(run), str(test), "--quiet", "--label-col", "label"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"imgclf: error: {test}: label(s) 'junk', 'noise' not among the run's classes ('beagle', 'corgi')"]


# ---------------------------------------------------------------------------------------------- 3. unknown labels
def test_unknown_labels_are_named_with_the_runs_classes(trained_run, image_folder, capsys):
    data = image_folder({"cats": 2, "Sphynx": 2})
    assert main(["evaluate", str(trained_run), str(data), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"imgclf: error: {data}: label(s) 'Sphynx' not among the run's classes ('cats', 'dogs', 'frogs')"]
    with pytest.raises(UserError) as e:
        Interpretation.from_run(trained_run, data=image_folder({"cats": 6, "Sphynx": 6}, name="more"), progress=False)
    assert "label(s) 'Sphynx' not among the run's classes ('cats', 'dogs', 'frogs')" in str(e.value)


def test_unknown_label_of_a_regex_run(regex_run, tmp_path, capsys):
    run, valid = regex_run
    data = shutil.copytree(valid, tmp_path / "validation")
    write_image(data / "7_1.jpg")
    assert main(["evaluate", str(run), str(data), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"imgclf: error: {data}: label(s) '7' not among the run's classes ('0', '1', '2')"]
