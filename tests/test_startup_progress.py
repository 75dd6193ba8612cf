"""Start-up stays light (no torch for `--help`), and progress reads well on a terminal, in a pipe and in train.log."""

from __future__ import annotations

import fcntl
import importlib
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest

import imgclf
from imgclf import progress
from imgclf.cli import COMMANDS, parser

HEAVY = ("torch", "torchvision", "timm", "matplotlib", "numpy", "PIL")


def _fresh(code: str) -> str:
    """stdout of `code` in a fresh interpreter (nothing imported yet)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          timeout=120).stdout


def test_parser_and_import_load_no_torch():
    code = ("import sys, imgclf, imgclf.cli; imgclf.cli.parser(); "
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    assert _fresh(code).split() == []


def test_public_api_is_complete_and_lazy():
    assert set(imgclf.__all__) <= set(dir(imgclf))
    for name in imgclf.__all__:
        assert getattr(imgclf, name) is not None, name
    # `imgclf.evaluate` is the function even though the subpackage imgclf/evaluate/ is imported
    importlib.import_module("imgclf.evaluate.interpret")
    from imgclf import Interpretation, evaluate
    from imgclf.infer import evaluate as infer_evaluate

    assert evaluate is infer_evaluate and callable(imgclf.evaluate) and Interpretation.__name__ == "Interpretation"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        imgclf.nope  # noqa: B018


def test_help_lists_every_command_and_each_help_works(capsys):
    with pytest.raises(SystemExit) as e:
        parser().parse_args(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    for name in COMMANDS:
        with pytest.raises(SystemExit) as e:
            parser().parse_args([name, "--help"])
        assert e.value.code == 0 and f"usage: imgclf {name}" in capsys.readouterr().out


def test_output_to_a_file_is_written_line_by_line():
    """Piped or redirected, stdout is line-buffered like a terminal's: a log shows each line as it is printed."""
    code = ("import sys; from imgclf.cli import main; main(['datasets']); "
            "print(sys.stdout.line_buffering, file=sys.stderr)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert p.stdout and p.stderr.strip() == "True"


def test_lines_off_a_terminal(capsys, monkeypatch):
    monkeypatch.delenv("IMGCLF_PROGRESS", raising=False)
    monkeypatch.setattr(progress, "LINE_EVERY", 0.0)  # a line at every step instead of every ~30 s
    assert list(progress.bar(range(4), desc="features train/center", unit="batch")) == [0, 1, 2, 3]
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines[0] == "features train/center: 4 batches"
    assert lines[1].startswith("features train/center: 1/4 batches, ~") and lines[1].endswith(" s left")
    assert lines[-1].startswith("features train/center: 4 batches in ") and lines[-1].endswith("/s)")
    assert "\r" not in err
    # a phase that stops early says so; enabled=False is silent
    for _ in progress.bar(range(10), desc="predict", unit="img"):
        break
    assert capsys.readouterr().err.splitlines()[-1].startswith("predict: stopped at 0 img of 10 img in ")
    with progress.bar(total=3, desc="quiet", enabled=False) as b:
        b.update(3)
    assert capsys.readouterr().err == ""


def test_terminal_shows_a_bar_and_the_log_gets_lines(tmp_path):
    """A real pseudo-terminal on stderr: tqdm draws its bar there, the log file gets the plain lines."""
    log = tmp_path / "train.log"
    code = ("import time; from imgclf import progress\n"
            f"with open({str(log)!r}, 'a') as f, progress.log_lines(f):\n"
            "    for _ in progress.bar(range(3), desc='decode train', unit='img'): time.sleep(0.01)\n")
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns (a new pty has 0)
    env = {k: v for k, v in os.environ.items() if k != "IMGCLF_PROGRESS"}
    p = subprocess.Popen([sys.executable, "-c", code], stderr=follower, stdout=subprocess.DEVNULL, env=env)
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    assert p.wait(timeout=60) == 0
    os.close(leader)
    assert b"\r" in seen and b"decode train" in seen  # tqdm's bar, redrawn in place
    text = log.read_text()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0] == "decode train: 3 img" and lines[-1].startswith("decode train: 3 img in ")


def test_train_off_a_terminal_says_each_phase_with_seconds(tmp_path, image_folder):
    """`imgclf train` with stderr to a file: no bar junk, and per-phase lines with seconds in stderr and
    train.log."""
    root = image_folder({"red": 8, "blue": 8}, split=True, n_valid=4, size=(24, 20))
    (root / "train" / "red" / "empty.jpg").write_bytes(b"")  # a warning that names it, before the run dir exists
    out = tmp_path / "run"
    err_file = tmp_path / "stderr.txt"
    env = {k: v for k, v in os.environ.items() if k != "IMGCLF_PROGRESS"}
    with open(err_file, "w") as err:
        p = subprocess.run([sys.executable, "-m", "imgclf", "train", str(root), "--arch", "simple_cnn",
                            "--no-pretrained", "--recipe", "scratch", "--epochs", "1", "--size", "16", "--bs", "8",
                            "--out", str(out)], stdout=subprocess.PIPE, stderr=err, text=True, env=env, timeout=300)
    stderr = err_file.read_text()
    assert p.returncode == 0, stderr
    log = (out / "train.log").read_text()
    for text in (stderr, log, p.stdout):
        assert "\r" not in text and "\x1b[" not in text
    # decoding (before the run directory exists): its count as it starts, its seconds and rate as it ends, and
    # the warning naming the empty file, on stderr and, once the run directory exists, in train.log
    for text in (stderr, log):
        assert "decode train: 17 img" in text.splitlines(), text
        assert any(x.startswith("decode train: 17 img in ") and x.endswith("/s)") for x in text.splitlines()), text
        assert "imgclf: warning: skipped 1 file" in text and "empty.jpg: empty file (0 bytes)" in text, text
    for text in (stderr, log):  # each epoch as it starts, in stderr and in train.log
        assert "epoch 1/1 scratch: 2 training batches + 1 validation batch" in text.splitlines(), text
    # and its table row, with its seconds, in train.log and on stdout
    for text in (log, p.stdout):
        header = next(x for x in text.splitlines() if "seconds" in x).split()
        row = next(x for x in text.splitlines() if x.split()[:1] == ["scratch"]).split()
        assert float(row[header.index("seconds")]) > 0


def test_epoch_bar_counts_validation_at_its_measured_cost(capsys):
    """Each epoch's line names its training and validation batches; after the first epoch a validation batch
    weighs what it measured against a training batch (not the 1/3 guess), and each epoch ends with its row."""
    import torch
    from torch import nn

    from imgclf.data.loaders import TensorLoader
    from imgclf.train import Learner
    from imgclf.train.callbacks.progress import VALID_WEIGHT, ProgressCallback

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (96,), generator=g)
    x = torch.randn(96, 8, generator=g) + y[:, None].float() * 2.0
    learn = Learner(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)), TensorLoader(x[:64], y[:64], 16),
                    TensorLoader(x[64:], y[64:], 16), device="cpu", precision="fp32", channels_last=False)
    cb = next(c for c in learn.cbs if isinstance(c, ProgressCallback))
    assert cb.valid_weight == VALID_WEIGHT
    learn.fit(2, 1e-2)
    assert cb.valid_weight != VALID_WEIGHT and 0.02 <= cb.valid_weight <= 4.0
    captured = capsys.readouterr()
    assert "epoch 1/2 train: 4 training batches + 2 validation batches" in captured.err.splitlines()
    assert "epoch 2/2 train: 4 training batches + 2 validation batches" in captured.err.splitlines()
    rows = captured.out.splitlines()
    assert "seconds" in rows[0] and len(rows) == 3  # the header, then one row per epoch
