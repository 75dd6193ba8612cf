"""The command line as a user meets it: help, exit codes, one-line errors, the three commands."""

from __future__ import annotations

import csv
import gc
import importlib.util
import json
import shutil
import subprocess
import sys

import pytest

from imgclf.cli import COMMANDS, main


def run_cli(*args, cwd=None):
    """The real `python -m imgclf` in a subprocess: exit code, stdout, stderr."""
    p = subprocess.run([sys.executable, "-m", "imgclf", *map(str, args)], capture_output=True, text=True,
                       cwd=cwd, timeout=300)
    return p.returncode, p.stdout, p.stderr


def test_the_command_freezes_its_imports_and_a_callers_process_keeps_its_objects():
    """`imgclf CMD` loads its stack with the collector paused, then freezes it (0.5 s at start and ~1 s at exit on
    `imgclf train`); `main([...])` from someone's Python process leaves their collector as it was."""
    code = ("import gc, sys; from imgclf.cli import COMMANDS, main; sys.argv = ['imgclf', 'models']; rc = main(); "
            "print(rc, gc.isenabled(), gc.get_freeze_count(), 'torch' in sys.modules, "
            "all(isinstance(c.STACK, tuple) and c.STACK for c in COMMANDS.values()))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    rc, enabled, frozen, torch_loaded, stacks = p.stdout.split()[-5:]
    assert (rc, enabled, torch_loaded, stacks) == ("0", "True", "True", "True"), p.stdout + p.stderr
    assert int(frozen) > 50_000  # torch alone leaves ~100k objects
    before = gc.get_freeze_count()
    assert main(["models"]) == 0
    assert gc.get_freeze_count() == before and gc.isenabled()
    for name, command in COMMANDS.items():  # what each command loads first exists
        assert all(importlib.util.find_spec(m) for m in command.STACK), name


def test_help_reads_well():
    code, out, _ = run_cli("--help")
    assert code == 0 and "train" in out and "predict" in out and "evaluate" in out
    code, out, _ = run_cli("train", "--help")
    for flag in ("--recipe", "--budget", "--out", "--arch", "--weights", "--size", "--bs", "--epochs",
                 "--freeze-epochs", "--lr", "--opt", "--wd", "--valid-pct", "--seed", "--label-re", "--csv",
                 "--workers", "--device"):
        assert flag in out, flag


@pytest.mark.parametrize("case", ["missing", "no_images", "one_class", "empty_class"])
def test_user_errors_are_one_line_exit_2(case, tmp_path, image_folder):
    if case == "missing":
        target, expect = tmp_path / "nope", "no such"
    elif case == "no_images":
        target = tmp_path / "empty"
        (target / "a").mkdir(parents=True)
        (target / "a" / "notes.txt").write_text("hi")
        expect = "no images"
    elif case == "one_class":
        target, expect = image_folder({"only": 4}), "one class"
    else:
        target = image_folder({"a": 4, "b": 4})
        (target / "c").mkdir()
        expect = "no images"
    code, out, err = run_cli("train", target, "--out", tmp_path / "run")
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgclf: error:") and expect in lines[0], err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_train_predict_evaluate_round_trip(tmp_path, image_folder, capsys):
    root = image_folder({"red": 8, "blue": 8}, split=True, n_valid=4, size=(48, 36))
    # a bad file is skipped with a warning that names it, and training goes on
    (root / "train" / "red" / "broken.jpg").write_bytes(b"")
    out = tmp_path / "runs" / "colours"
    args = ["train", str(root), "--out", str(out), "--size", "32", "--bs", "8", "--epochs", "1",
            "--freeze-epochs", "10", "--lr", "1e-2", "--quiet"]
    with pytest.warns(UserWarning, match="broken.jpg"):
        assert main(args) == 0
    printed = capsys.readouterr().out.splitlines()
    final = next(line for line in printed if line.startswith("accuracy "))
    log = (out / "train.log").read_text().splitlines()
    assert final in log and log[-1] == printed[-1], (log[-3:], printed[-3:])  # the log ends as the console does
    m = json.loads((out / "metrics.json").read_text())
    assert m["skipped_files"][0]["path"].endswith("broken.jpg") and m["n_train"] == 16
    # a second run never overwrites the first
    with pytest.warns(UserWarning, match="broken.jpg"):
        assert main(args) == 0
    assert (tmp_path / "runs" / "colours-2" / "model.safetensors").is_file()

    preds = tmp_path / "preds.csv"
    assert main(["predict", str(out), str(root / "val"), "--csv", str(preds), "--probs", "--quiet"]) == 0
    rows = list(csv.DictReader(open(preds)))
    assert len(rows) == 8 and set(rows[0]) == {"path", "label", "confidence", "blue", "red"}
    right = sum(r["label"] == ("red" if "/red/" in r["path"] else "blue") for r in rows)
    assert right >= 6
    for r in rows:
        assert float(r["blue"]) + float(r["red"]) == pytest.approx(1, abs=1e-4)
    # the CSV is not overwritten without --force
    assert main(["predict", str(out), str(root / "val"), "--csv", str(preds)]) == 2
    assert "already exists" in capsys.readouterr().err
    # a glob of files
    assert main(["predict", str(out), str(root / "val" / "red" / "*.jpg"), "--quiet"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[0] == "path,label,confidence" and len(printed) == 5

    js = tmp_path / "eval.json"
    assert main(["evaluate", str(out), str(root), "--json", str(js), "--quiet"]) == 0
    ev = json.loads(js.read_text())
    assert ev["n"] == 8 and ev["accuracy"] == pytest.approx(right / 8)


def test_predict_and_evaluate_errors(tmp_path, tiny_split_folder):
    code, _, err = run_cli("predict", tmp_path, tiny_split_folder)
    assert code == 2 and "not a run directory" in err
    code, _, err = run_cli("evaluate", tmp_path / "nope", tiny_split_folder)
    assert code == 2 and "no such run directory" in err
    code, _, err = run_cli("train", tiny_split_folder, "--arch", "resnet_nope", "--out", tmp_path / "r")
    assert code == 2 and "unknown architecture" in err
    code, _, err = run_cli("train", tiny_split_folder, "--label-re", "([", "--out", tmp_path / "r2")
    assert code == 2 and "invalid regex" in err


def test_a_run_that_is_none_is_said_before_torch_loads(tmp_path, tiny_split_folder):
    """Each command given a RUN that is missing or holds no model (a --resume folder with no config.json): the same
    one line as from the API, said by the command's `check` before the ~5 s of imports (torch never loaded)."""
    image, nope, empty = next(tiny_split_folder.rglob("*.jpg")), str(tmp_path / "nope"), str(tmp_path)
    cases = [(["predict", empty, str(image)], "not a run directory"),
             (["evaluate", nope, str(tiny_split_folder)], "no such run directory"),
             (["predict", nope, str(image), "--backend", "onnx"], "no such run directory"),
             (["train", "--resume", empty], "no config.json: not a run directory of `imgclf train`"),
             (["distill", nope, str(tiny_split_folder)], "no such run directory")]
    cases += [([command, empty], "not a run directory") for command in ("export", "interpret", "report", "prune")]
    cases += [(["serve", nope, "--backend", "int8"], "no such run directory")]
    for argv, said in cases:
        code = (f"import sys; sys.argv = ['imgclf', *{argv!r}]; from imgclf.cli import main; rc = main(); "
                "print(rc, 'torch' in sys.modules)")
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert p.stdout.split() == ["2", "False"] and said in p.stderr and p.stderr.count("\n") == 1, p.stderr


def test_output_files_are_checked_before_predicting(trained_run, tmp_path):
    """Each of these was a traceback after the predictions were made, or a file silently lost."""
    image = next((trained_run.parent / "data" / "val").rglob("*.jpg"))
    cases = [
        (["--csv", tmp_path], "is a folder; give a file name"),
        (["--csv", tmp_path / "same.csv", "--submission", tmp_path / "same.csv"],
         "--csv and --submission both name"),
        (["--plot", tmp_path / "p.csv"], "give a file ending in .png"),
        (["--bs", "0"], "--bs: must be at least 1"),
    ]
    for flags, said in cases:
        code, _, err = run_cli("predict", trained_run, image, *flags)
        assert code == 2 and said in err and "Traceback" not in err, (flags, err)
    assert not (tmp_path / "same.csv").exists()
    code, _, err = run_cli("predict", trained_run, image, "--csv", tmp_path / "new" / "dir" / "p.csv", "--quiet")
    assert code == 0 and (tmp_path / "new" / "dir" / "p.csv").is_file(), err  # its folder is made, as export does
    code, _, err = run_cli("serve", trained_run, "--port", "99999")
    assert code == 2 and "a port is 0-65535" in err


def test_missing_extra_is_one_line_naming_it(trained_run, tmp_path, monkeypatch, capsys):
    """Without the export extra, `imgclf export` says which extra to install, in one line, exit 2."""
    monkeypatch.setitem(sys.modules, "onnx", None)  # what an environment without the extra gives
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    code = main(["export", str(run), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pip install 'imgclf[export]'" in err[0], err


def test_the_command_exits_without_teardown_yet_loses_no_output(tmp_path):
    """`imgclf` ends by `leave` (os._exit after the exit handlers and a flush): its status, its last lines on a
    pipe and an exit handler's work all arrive."""
    marker = tmp_path / "handler-ran"
    code = ("import atexit, sys; from pathlib import Path; from imgclf.cli import command; "
            f"atexit.register(lambda: Path({str(marker)!r}).write_text('yes')); "
            "sys.argv = ['imgclf', 'datasets']; command()")  # a light command: the exit is what is tested
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "sha256:" in p.stdout and p.stdout.endswith("\n"), p.stderr
    assert marker.read_text() == "yes"
    code = "import sys; from imgclf.cli import command; sys.argv = ['imgclf', 'datasets', 'path', 'nosuch']; command()"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and p.stderr.strip().startswith("imgclf: error:") and "not a known" in p.stderr


def test_the_command_under_a_profiler_exits_normally_so_the_profile_is_written(tmp_path):
    prof = tmp_path / "models.prof"
    p = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "imgclf", "datasets"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and prof.stat().st_size > 1000, p.stderr
