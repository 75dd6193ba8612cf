"""Checkpoints in-process: the file format, loader positions, exact resume through the Python API, NaN stops,
and the one-line errors on broken or foreign run directories. (Kill -9 and Ctrl-C on a real process: test_resume.)"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from imgclf import ImageData, vision_learner
from imgclf.cli import main
from imgclf.data.loaders import TensorLoader
from imgclf.rundir import CHECKPOINT_FILE
from imgclf.train.callbacks import Callback, NonFiniteLoss, SaveBestModel
from imgclf.train.callbacks.nonfinite import TerminateOnNaN
from imgclf.train.checkpoint import match_param_layout, pack, read_checkpoint, unpack, write_checkpoint

FLAGS = ["--arch", "xresnet_tiny", "--size", "32", "--bs", "8", "--workers", "1", "--precision", "fp32", "--quiet"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from conftest import make_folder

    return make_folder(tmp_path_factory.mktemp("ckpt") / "data", {"a": 16, "b": 16, "c": 16}, size=(36, 36),
                       split=True, n_valid=6)


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory) -> Path:
    """A finished 1-epoch scratch run (read-only: copy before changing it)."""
    out = tmp_path_factory.mktemp("runs") / "done"
    assert main(["train", str(data_dir), *FLAGS, "--epochs", "1", "--out", str(out)]) == 0
    return out


def test_pack_roundtrip_keeps_every_kind(tmp_path):
    state = {"w": torch.randn(3, 2), "step": torch.tensor(7.0), "ints": {0: {"m": torch.ones(2)}, 5: [1, 2.5]},
             "tuple": (3, (1, 2), None), "np": np.arange(4, dtype=np.uint32), "nan": float("nan"), "s": "x"}
    write_checkpoint(tmp_path / "c.safetensors", state)
    back = read_checkpoint(tmp_path / "c.safetensors")
    assert torch.equal(back["w"], state["w"]) and back["step"].item() == 7.0
    assert torch.equal(back["ints"][0]["m"], torch.ones(2)) and back["ints"][5] == [1, 2.5]
    assert back["tuple"] == (3, (1, 2), None) and back["s"] == "x" and np.isnan(back["nan"])
    assert back["np"].dtype == np.uint32 and back["np"].tolist() == [0, 1, 2, 3]
    tied = torch.zeros(4)
    tensors: dict = {}
    unpack(pack({"a": tied, "b": tied}, "", tensors), tensors)  # one buffer under two names: stored twice
    assert len(tensors) == 2


def test_loader_resumes_mid_epoch_exactly():
    x, y = torch.arange(40.0).view(20, 2), torch.arange(20)
    a = TensorLoader(x, y, 4, shuffle=True, seed=1)
    ref = [yb.tolist() for _ in range(2) for _, yb in a]
    b = TensorLoader(x, y, 4, shuffle=True, seed=1)
    it = iter(b)
    got = [next(it)[1].tolist() for _ in range(3)]
    state = json.loads(json.dumps(pack(b.state_dict(), "", tensors := {})))  # through JSON, as on disk
    c = TensorLoader(x, y, 4, shuffle=True, seed=99)  # another seed: the state decides
    c.load_state_dict(unpack(state, tensors))
    got += [yb.tolist() for _ in range(2) for _, yb in c][:7]
    assert got == ref


class _Crash(Callback):
    """Stands in for a kill: stop the process's training after step `at` (its checkpoint written)."""

    def __init__(self, at: int):
        self.at = at

    def before_batch(self, learn) -> None:
        if learn.training and learn.iter == self.at:
            raise RuntimeError("crash")


def _learner(data_dir):
    """On the CPU whatever the machine: resume is promised bitwise there (README); on CUDA cuDNN's backward
    kernels are not deterministic (seen on an H200: these tests then fail on the last bits)."""
    data = ImageData.from_folder(data_dir, size=32, bs=8, progress=False, workers=1)
    return vision_learner(data, "xresnet_tiny", pretrained=False, precision="fp32", progress=False, seed=3,
                          device="cpu")


def test_python_api_resume_is_bitwise(data_dir, tmp_path):
    """`fit_one_cycle(..., resume=RUN)` after a crash mid-epoch ends with the uninterrupted run's weights."""
    torch.set_num_threads(1)
    a = _learner(data_dir)
    a.save_checkpoints(tmp_path / "a", every=3)
    a.fit_one_cycle(2, 3e-3, cbs=[SaveBestModel(model=a.model, across_fits=True)])

    b = _learner(data_dir)
    b.save_checkpoints(tmp_path / "b", every=3)
    with pytest.raises(RuntimeError, match="crash"):
        b.fit_one_cycle(2, 3e-3, cbs=[SaveBestModel(model=b.model, across_fits=True), _Crash(at=10)])
    saved = read_checkpoint(tmp_path / "b" / CHECKPOINT_FILE)
    assert saved["iter"] == 9 and saved["epoch"] == 1 and saved["train_dl"]["batches"] == 3  # 6 steps an epoch

    c = _learner(data_dir)
    c.fit_one_cycle(2, 3e-3, cbs=[SaveBestModel(model=c.model, across_fits=True)], resume=tmp_path / "b")
    sa, sc = a.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sc[k]) for k in sa)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a.recorder.history]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in c.recorder.history]
    assert a.recorder.losses == c.recorder.losses


@pytest.mark.parametrize("window", [None, 3])
def test_nan_loss_stops_with_place_and_advice(data_dir, tmp_path, window):
    """A NaN loss at step 5 stops the run, named as step 5, with the last checkpoint (step 4) and the advice.
    window=3: as on a GPU, losses checked together every 3 steps (and the recorder reading them every 3): found at
    the check after step 6 or at the checkpoint due after it, whichever comes first; never written to disk."""
    learn = _learner(data_dir)
    if window:
        next(cb for cb in learn.cbs if isinstance(cb, TerminateOnNaN)).every = window
        learn.recorder.read_every = window
    learn.save_checkpoints(tmp_path, every=2)

    def loss(pred, y):
        out = torch.nn.functional.cross_entropy(pred, y)
        return out * float("nan") if learn.iter == 4 else out

    learn.loss_func = loss
    with pytest.raises(NonFiniteLoss) as e:
        learn.fit(1, 1e-3)
    msg = str(e.value)
    assert "nan at epoch 1 step 5" in msg and "epoch 1 step 4" in msg and "--lr" in msg
    assert learn.iter <= (6 if window else 4)  # found by step 6 (step 5 itself without a window)
    assert learn.checkpointer.last.endswith("step 4")
    assert all(math.isfinite(v) for v in learn.recorder.losses[:4])


def test_optimizer_state_takes_its_parameters_layout_again():
    """A checkpoint stores tensors contiguous; a channels_last model's Adam moments come back in that layout unless
    `match_param_layout` gives them their parameter's strides (CUDA's fused AdamW refuses to mix the two)."""
    conv = torch.nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(conv.parameters(), lr=1e-2)
    conv(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    tensors: dict[str, torch.Tensor] = {}
    packed = pack(opt.state_dict(), "opt", tensors)
    fresh = torch.optim.AdamW(conv.parameters(), lr=1e-2)
    fresh.load_state_dict(unpack(packed, tensors))
    w = conv.weight
    assert fresh.state[w]["exp_avg"].stride() != w.stride()  # the layout lost on the way through the file
    before = fresh.state[w]["exp_avg"].clone()
    match_param_layout(fresh)
    assert fresh.state[w]["exp_avg"].stride() == w.stride() and torch.equal(fresh.state[w]["exp_avg"], before)
    assert fresh.state[w]["exp_avg_sq"].stride() == w.stride()


def test_losses_read_in_windows_give_the_same_history(data_dir):
    """The recorder's window of unread losses (as on a GPU) changes when they are read, not what is recorded."""
    rows = []
    for every in (1, 4):
        torch.manual_seed(0)
        learn = _learner(data_dir)
        learn.recorder.read_every = every
        learn.fit(1, 1e-3)
        rows.append((learn.recorder.history[-1]["train_loss"], learn.recorder.losses))
    assert rows[0][0] == pytest.approx(rows[1][0], rel=1e-6) and len(rows[1][1]) == len(rows[0][1]) > 4
    assert rows[0][1] == pytest.approx(rows[1][1], rel=1e-6)


def test_nan_run_keeps_status_and_exit_2(data_dir, tmp_path, capsys):
    out = tmp_path / "nan"
    assert main(["train", str(data_dir), *FLAGS, "--epochs", "1", "--lr", "1e5", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("imgclf: error: the training loss became") and "--lr" in err[0]
    status = json.loads((out / "config.json").read_text())["status"]
    assert status.startswith("failed: the training loss became")


def test_unknown_arch_leaves_no_run_dir(data_dir, tmp_path, capsys):
    out = tmp_path / "runs" / "x"
    assert main(["train", str(data_dir), *FLAGS, "--arch", "no_such_net", "--out", str(out)]) == 2
    assert "imgclf: error:" in capsys.readouterr().err
    assert not out.exists() and not any(out.parent.glob("x*"))


def test_done_run_files_and_permissions(run_dir):
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["status"] == "done" and cfg["train"]["ckpt_every"] is None
    assert not (run_dir / CHECKPOINT_FILE).exists()  # removed once done
    mode = os.stat(run_dir / "config.json").st_mode & 0o777
    assert os.stat(run_dir / "model.safetensors").st_mode & 0o777 == mode
    log = (run_dir / "train.log").read_text()
    assert "scratch: 1 epoch(s)" in log and "checkpoints:" in log


@pytest.mark.parametrize("damage", ["truncate_weights", "garbage_weights", "truncate_meta", "newer_version"])
def test_broken_run_dir_is_one_line_exit_2(run_dir, data_dir, tmp_path, capsys, damage):
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    weights, meta = run / "model.safetensors", run / "model.json"
    if damage == "truncate_weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "garbage_weights":
        weights.write_bytes(b"\x00\x01not a safetensors file" * 10)
    elif damage == "truncate_meta":
        meta.write_text(meta.read_text()[:40])
    else:
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "imgclf_version": "99.0.0"}))
    image = next((data_dir / "val" / "a").iterdir())
    assert main(["predict", str(run), str(image)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("imgclf: error:"), err
    assert ("99.0.0" in err[0]) if damage == "newer_version" else ("corrupt or truncated" in err[0])


def test_resume_refusals(run_dir, data_dir, tmp_path, capsys):
    assert main(["train", "--resume", str(run_dir)]) == 2
    assert "is done, nothing to resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(run_dir), "--lr", "0.1"]) == 2
    assert "drop --lr" in capsys.readouterr().err
    newer = Path(shutil.copytree(run_dir, tmp_path / "newer"))
    cfg = json.loads((newer / "config.json").read_text())
    (newer / "config.json").write_text(json.dumps({**cfg, "status": "running", "imgclf_version": "99.1.0"}))
    assert main(["train", "--resume", str(newer)]) == 2
    assert "newer than this one" in capsys.readouterr().err
    # data that changed since the run began would split differently: refused before any training
    data = Path(shutil.copytree(data_dir, tmp_path / "data"))
    changed = Path(shutil.copytree(run_dir, tmp_path / "changed"))
    assert "split" in cfg and cfg["split"]["train"]["n"] > 0
    (changed / "config.json").write_text(json.dumps({**cfg, "status": "interrupted",
                                                     "data": {**cfg["data"], "path": str(data)}}))
    next((data / "train" / "a").iterdir()).unlink()
    n = cfg["split"]["train"]["n"]
    assert main(["train", "--resume", str(changed), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "its data changed since the run began" in err and f"train {n} -> {n - 1}" in err


def test_checkpoint_of_another_arch_is_one_line(data_dir, tmp_path, capsys):
    """A run directory whose checkpoint holds another architecture's weights: exit 2, one line."""
    learn = _learner(data_dir)
    learn.save_checkpoints(tmp_path / "ck", every=2)
    with pytest.raises(RuntimeError, match="crash"):
        learn.fit(1, 1e-3, cbs=[_Crash(at=3)])
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tmp_path / "ck" / CHECKPOINT_FILE, run / CHECKPOINT_FILE)
    cfg = {"data": {"path": str(data_dir), "size": 32, "bs": 8, "workers": 1},
           "model": {"arch": "simple_cnn", "pretrained": False}, "train": {"recipe": "scratch", "epochs": 1,
                                                                           "precision": "fp32"},
           "status": "interrupted", "checkpoint": {"every": 2}}
    (run / "config.json").write_text(json.dumps(cfg))
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "do not fit the model" in err[0] and "another --arch" in err[0]
    assert json.loads((run / "config.json").read_text())["status"].startswith("failed:")


HEAD_EPOCHS = 12  # the Ctrl-C comes at the 3rd (~0.35 s each here): nine epochs of margin for the signal to land


@pytest.mark.parametrize("fit_no", [1, 2])
def test_fine_tune_recipe_resumes_in_either_fit(data_dir, tmp_path, fit_no):
    """The fine_tune recipe is two fits (the head on cached features, then the whole model): Ctrl-C in the
    second, resume: the first is skipped (no features computed), the second goes on, the result is the same.
    Ctrl-C in the first (the head's epochs): it goes on from its checkpoint (that resume once skipped the head
    fit and ended at chance)."""
    import signal
    import threading
    import time

    from safetensors import safe_open
    from safetensors.torch import load_file

    from imgclf.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from imgclf.train.job import train

    def cfg(out):
        return RunConfig(data=DataConfig(path=str(data_dir), size=32, bs=8, workers=1),
                         model=ModelConfig(arch="xresnet_tiny", pretrained=False),
                         train=TrainConfig(recipe="fine_tune", epochs=1,
                                           freeze_epochs=1 if fit_no == 2 else HEAD_EPOCHS,
                                           precision="fp32",
                                           ckpt_every=2, device="cpu"),  # bitwise: on the CPU (see _learner)
                         out=str(out))

    def ctrl_c_in_the_fit(run: Path) -> None:
        while True:
            try:
                with safe_open(str(run / CHECKPOINT_FILE), "pt") as f:
                    doc = json.loads(f.metadata()["imgclf_checkpoint"])
                far = doc["train_dl"]["batches"] >= 2 if fit_no == 2 else doc["epoch"] >= 3
                if doc["fit_no"] == fit_no and far:
                    os.kill(os.getpid(), signal.SIGINT)
                    return
            except (FileNotFoundError, OSError):
                pass
            time.sleep(0.005)

    a = train(cfg(tmp_path / "a"), progress=False)
    threading.Thread(target=ctrl_c_in_the_fit, args=(tmp_path / "b",), daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        train(cfg(tmp_path / "b"), progress=False)
    conf = json.loads((tmp_path / "b" / "config.json").read_text())
    assert conf["status"] == "interrupted" and conf["last_checkpoint"].startswith(
        "unfrozen epoch 1 step" if fit_no == 2 else "frozen epoch")
    assert (tmp_path / "b" / "model.safetensors").exists()  # the head epoch, the best so far, kept
    b = train(resume=tmp_path / "b", progress=False)
    wa, wb = load_file(str(a.run_dir / "model.safetensors")), load_file(str(b.run_dir / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (a.metrics["valid_loss"], a.metrics["kept"]) == (b.metrics["valid_loss"], b.metrics["kept"])
    frozen = 1 if fit_no == 2 else HEAD_EPOCHS
    assert [r["phase"] for r in b.learner.recorder.history] == ["frozen"] * frozen + ["unfrozen"]


def test_sigterm_stops_as_ctrl_c_does(tmp_path, capsys):
    """Real signals to this process: SIGTERM in a fit asks for a stop at the step's end (named in the message), a
    second signal or one outside a fit raises at once, each carrying its number; the old handlers come back."""
    import signal

    from imgclf.errors import Interrupted
    from imgclf.train.checkpoint import Checkpointer

    def deliver(sig: int) -> None:
        signal.raise_signal(sig)
        for _ in range(100):  # Python runs the handler at its next chance: well within this loop
            pass

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    ck = Checkpointer(tmp_path)
    with ck.catch_interrupts():
        with pytest.raises(Interrupted) as e:  # outside a fit (decode, features, export): out at once
            deliver(signal.SIGTERM)
        assert e.value.signum == signal.SIGTERM and isinstance(e.value, KeyboardInterrupt)
        ck.in_fit = True
        deliver(signal.SIGTERM)  # in a fit: finish the step, then the checkpoint
        assert ck.stop_requested and ck.stop_signal == signal.SIGTERM
        assert "SIGTERM: finishing this step and writing a checkpoint" in capsys.readouterr().err
        with pytest.raises(Interrupted) as e:  # a second signal: out at once
            deliver(signal.SIGINT)
        assert e.value.signum == signal.SIGINT
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_run_started_with_a_relative_data_path_resumes(image_folder, tmp_path, monkeypatch, capsys):
    """The split's digest was of the paths as given: `imgclf train gray` recorded 'gray/a/0.jpg', its resume read
    config.json's absolute path, and every such resume was refused as 'its data changed'."""
    image_folder({"a": 6, "b": 6}, name="gray")
    monkeypatch.chdir(tmp_path)
    args = ["--size", "32", "--recipe", "probe", "--quiet"]
    assert main(["train", "gray", "--out", "run", *args]) == 0
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["data"]["path"] == str(tmp_path / "gray") and cfg["split"]["paths"]  # saved absolute, digest relative
    (tmp_path / "run" / "config.json").write_text(json.dumps({**cfg, "status": "interrupted"}))
    capsys.readouterr()
    assert main(["train", "--resume", "run", "--quiet"]) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["status"] == "done"


def test_a_kept_probe_writes_a_checkpoint_only_when_one_is_due(image_folder, tmp_path):
    """After the auto recipe's probe, with no fine-tune to follow, only a short finish is left: the checkpoint
    between the fits (0.3 s of the default job's 13) is written only when the run's rule makes one due (here
    --ckpt-every; else five minutes since the last), and the log says which."""
    from imgclf.train.checkpoint import STEP_SECONDS, Checkpointer

    data = image_folder({"a": 6, "b": 6}, name="pair")
    logs = {}
    for name, extra in (("quick", []), ("every", ["--ckpt-every", "3"])):
        out = tmp_path / name
        assert main(["train", str(data), "--size", "32", "--recipe", "probe", "--quiet", "--out", str(out),
                     *extra]) == 0
        logs[name] = (out / "train.log").read_text()
        assert not (out / CHECKPOINT_FILE).exists()  # a done run keeps none either way
    assert "checkpoints: none was due before the run was done" in logs["quick"], logs["quick"]
    assert "checkpoints: 1 written in" in logs["every"], logs["every"]
    ck = Checkpointer(tmp_path / "x")
    assert not ck.worth_saving()
    ck._t_last -= STEP_SECONDS + 1  # five minutes since the last checkpoint (or the start)
    assert ck.worth_saving() and Checkpointer(tmp_path / "y", every=0).worth_saving() is False
