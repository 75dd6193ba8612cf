"""SIGTERM (docker stop, SLURM, systemd) outside the training loop, on real processes: the command stops as on
Ctrl-C, says so, exits 143, and leaves an honest run directory (none yet, or "interrupted" and resumable) and no
process behind. (SIGTERM in a fit: test_resume; in-process handler: test_checkpoint; under --nproc:
test_distributed.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import HYMENOPTERA, make_folder

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "imgclf", "train", *args]


class _Stderr:
    """A process's stderr read as it comes (progress lines, the plan), to send a signal at a named moment."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.parts = proc, []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for chunk in iter(lambda: os.read(self.proc.stderr.fileno(), 4096), b""):
            self.parts.append(chunk.decode(errors="replace"))

    def text(self) -> str:
        return "".join(self.parts)

    def wait_for(self, needle: str, timeout: float = 120) -> None:
        t = time.monotonic()
        while needle not in self.text():
            assert self.proc.poll() is None, f"ended before {needle!r}: {self.text()[-3000:]}"
            assert time.monotonic() - t < timeout, f"no {needle!r}: {self.text()[-3000:]}"
            time.sleep(0.005)

    def finish(self, timeout: float = 120) -> str:
        self.proc.wait(timeout=timeout)
        self.thread.join(timeout=10)
        return self.text()


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


@needs_proc
@pytest.mark.skipif(not HYMENOPTERA.is_dir(), reason="needs the hymenoptera data set")
def test_sigterm_while_starting_stops_at_once_and_leaves_nothing_behind(tmp_path):
    """SIGTERM while torch loads and the forked decoder decodes the photos ahead: out at once, exit 143, no run
    directory (the data never loaded) and no decoder left running (the default SIGTERM orphaned it)."""
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(str(HYMENOPTERA), "--arch", "xresnet_tiny", "--size", "224", "--quiet",
                                 "--device", "cpu", "--out", str(out)),
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = _Stderr(proc)
    t = time.monotonic()
    while not (kids := _children(proc.pid)):  # the decoder, forked before torch is imported
        assert proc.poll() is None and time.monotonic() - t < 60, err.text()
        time.sleep(0.002)
    time.sleep(0.3)  # the command goes on to import torch (seconds): SIGTERM lands there, or in the decode after
    proc.send_signal(signal.SIGTERM)
    text = err.finish()
    assert proc.returncode == 143, text
    assert text.rstrip().endswith("imgclf: interrupted by SIGTERM") and "Traceback" not in text, text
    # honest either way: no run directory, or (had the data loaded already) one that says it was interrupted
    assert not out.exists() or json.loads((out / "config.json").read_text())["status"] == "interrupted"
    # the default SIGTERM left it decoding on its own (here ~0.8 s more, orphaned)
    assert not any(_alive(k) for k in kids), "the decoder forked ahead outlived the command"


def test_sigterm_outside_a_fit_marks_the_run_interrupted_and_it_resumes(tmp_path):
    """SIGTERM during the fine_tune recipe's feature pass (no fit running: nothing to finish, out at once): the
    run says "interrupted" with this session's seconds and how to go on, and `--resume` finishes it."""
    data = make_folder(tmp_path / "data", {"a": 300, "b": 300}, size=(64, 64), split=True, n_valid=10)
    out = tmp_path / "run"
    flags = ["--arch", "xresnet_tiny", "--size", "64", "--recipe", "fine_tune", "--freeze-epochs", "1", "--epochs",
             "1", "--bs", "32", "--workers", "1", "--device", "cpu", "--precision", "fp32"]
    proc = subprocess.Popen(_cmd(str(data), *flags, "--out", str(out)), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    err = _Stderr(proc)
    err.wait_for("features train")
    proc.send_signal(signal.SIGTERM)
    text = err.finish()
    assert proc.returncode == 143, text
    assert text.rstrip().endswith("imgclf: interrupted by SIGTERM") and "Traceback" not in text, text
    conf = json.loads((out / "config.json").read_text())
    assert conf["status"] == "interrupted" and conf["earlier_seconds"] > 0, conf
    assert f"interrupted; `imgclf train --resume {out}` goes on from" in text

    res = subprocess.run(_cmd("--resume", str(out), "--quiet"), env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["status"] == "done"
    assert (out / "model.safetensors").is_file() and not (out / "checkpoint.safetensors").exists()
