"""Durable runs on real processes: `kill -9` at a random step mid-epoch, then `--resume`, ends with the very
weights and metrics of an uninterrupted run (bitwise: CPU, one thread, fp32); Ctrl-C writes a checkpoint,
says how to go on, exits 130, and its resume is exact too; SIGTERM does the same and exits 143."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from imgclf.rundir import CHECKPOINT_FILE

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
FLAGS = ["--arch", "xresnet_tiny", "--size", "32", "--bs", "8", "--workers", "1", "--precision", "fp32",
         "--epochs", "2", "--ckpt-every", "2", "--quiet", "--device", "cpu"]
STEPS = 15  # per epoch: 3 classes x 40 train images / batches of 8


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from conftest import make_folder

    return make_folder(tmp_path_factory.mktemp("resume") / "data", {"a": 40, "b": 40, "c": 40}, size=(36, 36),
                       split=True, n_valid=8)


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "imgclf", "train", *args]


def _where(run: Path) -> dict | None:
    """The state document of the run's checkpoint, or None before the first one."""
    try:
        with safe_open(str(run / CHECKPOINT_FILE), "pt") as f:
            return json.loads(f.metadata()["imgclf_checkpoint"])
    except (FileNotFoundError, OSError):
        return None


def _wait_for_step(proc: subprocess.Popen, run: Path, epoch: int, step: int, timeout: float = 240) -> dict:
    """Poll until the run has checkpointed `step` of `epoch` (0-based) or later; the process must still run."""
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        doc = _where(run)
        if doc and doc.get("train_dl") and (doc["epoch"], doc["train_dl"]["batches"]) >= (epoch, step):
            return doc
        assert proc.poll() is None, f"the run ended before step {step} of epoch {epoch + 1}: {proc.communicate()}"
        time.sleep(0.01)
    raise AssertionError("no checkpoint came")


def _figures(run: Path) -> tuple[dict, dict, list[list[str]]]:
    metrics = json.loads((run / "metrics.json").read_text())
    keep = {k: metrics[k] for k in ("accuracy", "valid_loss", "n_train", "n_valid", "kept")}
    rows = [r.split(",") for r in (run / "history.csv").read_text().splitlines()]
    return load_file(str(run / "model.safetensors")), keep, [r[:-1] for r in rows]  # "seconds" is last


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory) -> tuple[dict, dict, list]:
    """The uninterrupted run, in this process (one thread, as the subprocesses): a process start costs ~8 s."""
    from imgclf.cli import main

    out = tmp_path_factory.mktemp("ref") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", str(data_dir), *FLAGS, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return _figures(out)


def _same(got, want) -> None:
    weights, metrics, history = got
    assert weights.keys() == want[0].keys()
    assert all(torch.equal(weights[k], want[0][k]) for k in weights), "weights differ"
    assert metrics == want[1]
    assert history == want[2]


def test_kill_9_mid_epoch_then_resume_is_bitwise(data_dir, tmp_path, reference):
    out = tmp_path / "run"
    epoch, step = random.Random(7).choice([(0, 6), (0, 10), (1, 4), (1, 8)])  # a checkpointed step mid-epoch
    proc = subprocess.Popen(_cmd(str(data_dir), *FLAGS, "--out", str(out)), env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    _wait_for_step(proc, out, epoch, step)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    doc = _where(out)
    assert 0 < doc["train_dl"]["batches"] < STEPS, "killed mid-epoch"
    assert json.loads((out / "config.json").read_text())["status"] == "running"
    image = str(next((Path(data_dir) / "val").rglob("*.jpg")))
    for cmd in (["predict", str(out), image], ["report", str(out)]):  # no model yet: told how to go on
        res = subprocess.run([sys.executable, "-m", "imgclf", *cmd], env=ENV, capture_output=True, text=True)
        assert res.returncode == 2 and "an unfinished run" in res.stderr and f"--resume {out}" in res.stderr

    res = subprocess.run(_cmd("--resume", str(out)), env=ENV, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert f"resuming from the checkpoint at {doc['where']}" in res.stdout
    _same(_figures(out), reference)
    conf = json.loads((out / "config.json").read_text())
    assert conf["status"] == "done"
    # the killed session's time up to its checkpoint counts (it has no clean stop to record it), once
    assert conf["earlier_seconds"] == doc["session"]["seconds"] > 0 and conf["counted_session"]
    m = json.loads((out / "metrics.json").read_text())
    assert m["earlier_sessions_seconds"] == doc["session"]["seconds"]


@pytest.mark.parametrize("sig, code, epoch", [(signal.SIGINT, 130, 0), (signal.SIGTERM, 143, 1)],
                         ids=["ctrl-c", "sigterm"])
def test_ctrl_c_checkpoints_says_how_to_go_on_and_resumes_exactly(data_dir, tmp_path, reference, sig, code, epoch):
    """Ctrl-C, and SIGTERM (docker stop, SLURM, systemd) the same way: the step finishes, a checkpoint, the best
    epoch so far kept (once one has finished), the signal named, exit 128 + its number, an exact resume."""
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(str(data_dir), *FLAGS, "--out", str(out)), env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_step(proc, out, epoch, 6)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    name = "Ctrl-C" if sig == signal.SIGINT else "SIGTERM"
    assert f"{name}: finishing this step" in stderr
    assert stderr.rstrip().endswith("imgclf: interrupted" + ("" if sig == signal.SIGINT else " by SIGTERM"))
    doc = _where(out)
    assert doc["reason"] in ("interrupt", "epoch")  # the step in progress finished, then a checkpoint
    assert f"imgclf train --resume {out}" in stderr and doc["where"] in stderr
    stopped = json.loads((out / "config.json").read_text())
    assert stopped["status"] == "interrupted" and stopped["earlier_seconds"] > 0  # the session's time is kept
    assert f"--resume {out}" in (out / "train.log").read_text()
    assert (out / "model.safetensors").is_file() == (epoch >= 1)  # the best epoch so far, once there is one

    res = subprocess.run(_cmd("--resume", str(out)), env=ENV, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    _same(_figures(out), reference)
    m = json.loads((out / "metrics.json").read_text())  # the figures count the stopped session too
    assert m["earlier_sessions_seconds"] == stopped["earlier_seconds"]
    assert f"(+{m['earlier_sessions_seconds']:.0f}s in earlier sessions)" in res.stdout
