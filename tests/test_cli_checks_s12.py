"""What new users typed and got a traceback, a silent -2 or a failed run for: a bad --out, an --out that exists,
flag values out of range, a --resume of a folder that is not a run, a file name that is not UTF-8. Each is now one
line `imgclf: error: ...` and exit 2 before any work (no run directory left), or a one-line notice, or a run that
trains. Real `python -m imgclf` subprocesses on tiny image folders (conftest.py)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from imgclf.errors import UserError
from imgclf.rundir import check_run_dir, new_run_dir

SMALL = ["--arch", "xresnet_tiny", "--size", "32", "--epochs", "1", "--quiet", "--device", "cpu"]


def run_cli(*args, cwd):
    """The real `python -m imgclf` in a subprocess, in `cwd` (where a default runs/ would appear)."""
    p = subprocess.run([sys.executable, "-m", "imgclf", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                       timeout=300)
    return p.returncode, p.stdout, p.stderr


def one_error(code: int, err: str) -> str:
    """The one `imgclf: error:` line of a refused command (exit 2, no traceback, nothing else said)."""
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("imgclf: error: "), (code, err)
    return lines[0]


@pytest.fixture
def work(tmp_path, image_folder):
    """A folder to run in: data/ (train/ + val/, two classes) and a file somefile.py; `entries()` lists what is
    there, so a test can assert that a refused command left nothing."""
    image_folder({"cats": 6, "dogs": 6}, name="data", split=True)
    (tmp_path / "somefile.py").write_text("print('mine')\n")
    return SimpleNamespace(root=tmp_path, entries=lambda: sorted(p.name for p in tmp_path.iterdir()))


OUTS = [("somefile.py/run", "somefile.py is a file, so the folder cannot be made")]
if Path("/proc/self").is_dir():  # Linux: /proc takes no new folder, even for root
    OUTS.append(("/proc/x", "/proc/x: cannot make a folder in /proc"))


@pytest.mark.parametrize("command", ["train", "inspect"])
@pytest.mark.parametrize(("out", "said"), OUTS)
def test_an_out_that_cannot_be_made_is_one_line_before_any_work(work, command, out, said, capsys, monkeypatch):
    """In-process `main()` (the CLI's own entry, without a subprocess's ~3 s of imports per case)."""
    from imgclf.cli import main

    before = work.entries()
    monkeypatch.chdir(work.root)
    code = main([command, "data", "--out", out, *(SMALL if command == "train" else ["--quiet"])])
    stdout, err = capsys.readouterr()
    assert said in one_error(code, err)
    assert stdout == ""  # no plan, no decoding said before it
    assert work.entries() == before  # no runs/, no run directory


FLAGS = [
    (["--size", "0"], "argument --size: must be at least 1, got 0"),
    (["--size", "-5"], "argument --size: must be at least 1, got -5"),
    (["--workers", "-1"], "argument --workers: must be 0 (one per core) or more"),
    (["--valid-pct", "0"], "argument --valid-pct: must be between 0 and 1"),
    (["--valid-pct", "1.5"], "argument --valid-pct: must be between 0 and 1"),
]
TRAIN_FLAGS = [
    (["--lr", "-1"], "argument --lr: must be above 0"),
    (["--lr", "nan"], "argument --lr: expected a number or 'auto'"),
    (["--label-smoothing", "1.5"], "argument --label-smoothing: must be at least 0 and below 1"),
    (["--device", "tpu"], "argument --device: choose auto, cpu, cuda, cuda:N (e.g. cuda:1), mps; got 'tpu'"),
    (["--budget", "0"], "argument --budget: must be above 0"),
    (["--budget", "-3"], "argument --budget: must be above 0"),
]


@pytest.mark.parametrize(("command", "flags", "said"),
                         [("train", f, s) for f, s in FLAGS + TRAIN_FLAGS] + [("inspect", f, s) for f, s in FLAGS],
                         ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_flag_values_out_of_range_are_refused_as_they_are_parsed(work, command, flags, said):
    """Each was a torch traceback (--size 0, --lr -1 after the data, leaving a failed run, --label-smoothing 1.5,
    --device tpu) or silently accepted (--budget 0, --workers -1, --valid-pct 0)."""
    before = work.entries()
    code, _, err = run_cli(command, "data", *flags, cwd=work.root)
    line = one_error(code, err)
    assert said in line and f"see `imgclf {command} --help`" in line, line
    assert work.entries() == before


def test_the_devices_pick_device_takes_are_accepted_at_parsing():
    from imgclf.cli import parser

    for dev in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert parser().parse_args(["train", "d", "--device", dev]).device == dev


def test_an_out_that_exists_gets_a_notice_in_the_console_and_train_log(work, tmp_path):
    """A folder of the user's was silently left for `-2`: now one line says so; --valid-pct beside a val/ folder
    is said to be unused (it was silently ignored). Both are in train.log, as the console showed them."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    code, out, err = run_cli("train", "data", "--out", "mine", "--valid-pct", "0.3", *SMALL, cwd=work.root)
    assert code == 0, err
    notice = "--out mine exists: this run goes to mine-2"
    unused = "imgclf: warning: --valid-pct 0.3 is not used: data has its own validation split"
    assert out.splitlines()[0] == notice and err.count("--valid-pct") == 1 and unused in err, (out, err)
    log = (tmp_path / "mine-2" / "train.log").read_text()
    assert notice in log and unused in log
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]  # never written over
    assert (tmp_path / "mine-2" / "model.safetensors").is_file()


def test_an_out_that_is_a_file_is_named_a_file(tmp_path):
    (tmp_path / "afile.txt").write_text("x")
    assert check_run_dir(tmp_path / "afile.txt", "--out") == \
        f"--out {tmp_path / 'afile.txt'} is a file: this run goes to {tmp_path / 'afile.txt-2'}"
    assert check_run_dir(tmp_path / "free", "--out") is None
    assert check_run_dir(tmp_path / "afile.txt") is None  # a default path: the run's last line names it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile.txt"]  # the checks made nothing


def test_runs_racing_for_one_name_get_a_folder_each(tmp_path):
    """Jobs that found `run` free at once: the loser's mkdir was a FileExistsError traceback (a check, then a make).
    Each name is now claimed by one mkdir that fails when it exists, and the loser takes the next number."""
    got, barrier = [], threading.Barrier(6)

    def claim():
        barrier.wait()
        got.append(new_run_dir(tmp_path / "runs" / "run"))

    threads = [threading.Thread(target=claim) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(p.name for p in got) == ["run", *(f"run-{k}" for k in range(2, 7))]
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="cannot make the run directory"):  # was a NotADirectoryError traceback
        new_run_dir(tmp_path / "file" / "run")


def test_resume_of_a_folder_that_is_not_a_run_says_so(work):
    """A config.json of the user's ({"mine": 1}) was taken as a finished run: "its model: userdir/model.safetensors",
    a file that is not there."""
    (work.root / "userdir").mkdir()
    (work.root / "userdir" / "config.json").write_text(json.dumps({"mine": 1}))
    code, _, err = run_cli("train", "--resume", "userdir", cwd=work.root)
    line = one_error(code, err)
    assert "userdir: not an imgclf run (no data, model and train settings in its config.json)" in line, line
    assert "model.safetensors" not in line


def test_the_api_refuses_the_same_values_before_a_run_directory_is_made(work):
    from imgclf.config import DataConfig, RunConfig, TrainConfig
    from imgclf.train.job import train

    for over, said in [({"lr": -1.0}, "--lr -1.0: give a number above 0"),
                       ({"label_smoothing": 1.5}, "--label-smoothing 1.5"), ({"budget": 0.0}, "--budget 0.0")]:
        cfg = RunConfig(data=DataConfig(path=str(work.root / "data"), size=32), train=TrainConfig(**over),
                        out=str(work.root / "run"))
        with pytest.raises(UserError, match=said.replace(".", r"\.")):
            train(cfg, progress=False)
    assert not (work.root / "run").exists()


def test_a_file_name_that_is_not_utf8_trains(work, write_image):
    """b"caf\\xe9.jpg" (latin-1, as old Windows zips name files) was a UnicodeEncodeError in the split's digest."""
    name = os.fsdecode(b"caf\xe9.jpg")
    write_image(work.root / "data" / "train" / "cats" / name, colour=(200, 50, 50), seed=99)
    code, _, err = run_cli("train", "data", "--out", "run", *SMALL, cwd=work.root)
    assert code == 0, err
    metrics = json.loads((work.root / "run" / "metrics.json").read_text())
    assert metrics["n_train"] == 13  # 12 + the latin-1 one
    config = json.loads((work.root / "run" / "config.json").read_text())
    assert config["status"] == "done" and config["split"]["train"]["n"] == 13


def test_the_split_digest_of_utf8_names_is_unchanged(tmp_path):
    """Recorded digests of earlier runs must still match on resume: UTF-8 names hash to the bytes they did."""
    from imgclf.train.job import split_fingerprint

    train = [tmp_path / "a" / "x.jpg", tmp_path / "a" / "é.jpg"]
    valid = [tmp_path / "b" / "y.jpg"]
    fp = split_fingerprint(SimpleNamespace(train_paths=train, valid_paths=valid))
    assert fp["train"]["sha1"] == hashlib.sha1("a/x.jpg\na/é.jpg".encode()).hexdigest()
    assert fp["valid"]["sha1"] == hashlib.sha1(b"b/y.jpg").hexdigest()


@pytest.mark.parametrize("args", [["predict", "RUN", "x.jpg"], ["evaluate", "RUN", "DATA"], ["interpret", "RUN"],
                                  ["report", "RUN"], ["serve", "RUN"], ["prune", "RUN"],
                                  ["distill", "RUN", "DATA"]])
def test_every_command_that_runs_a_model_refuses_a_device_it_cannot_use_at_parsing(args):
    """--device tpu was refused only by train: the other commands loaded the model, then torch raised."""
    p = subprocess.run([sys.executable, "-m", "imgclf", *args, "--device", "tpu"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        f"imgclf: error: argument --device: choose auto, cpu, cuda, cuda:N (e.g. cuda:1), mps; got 'tpu' "
        f"(see `imgclf {args[0]} --help`)"]
