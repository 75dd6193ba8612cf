"""More than one process: real torchrun launches on the CPU (gloo), two processes of one thread each.

A torchrun start costs ~5-10 s quiet (~30 s under load), so each launch checks many things: this file is also
the worker script (`python -m torch.distributed.run ... tests/test_distributed.py --worker OUT DATA`), which
uses the API on each rank and writes what it saw to OUT/rank<r>.json; the tests read those files.
- the simulated 2-node run (two torchrun agents, `--nnodes 2 --nproc_per_node 1`, c10d rendezvous on
  127.0.0.1): disjoint shards covering each epoch, identical weights on both ranks after training (with
  gradient accumulation), cached features gathered equal to one process's, the probe recipe's head equal to
  a 1-process run's, and an interrupted-then-resumed 2-process fit equal to an uninterrupted one (bitwise);
- `imgclf train --nproc 2` (torchrun --standalone underneath): one run directory, written once, by rank 0;
- Ctrl-C (to the process group) and SIGTERM (to the launcher) under `--nproc 2`: one set of messages, exit
  130 / 143, no torchrun traceback, the checkpoint and best epoch kept, `--resume --nproc 2` finishes;
- in this process: `accum=2` steps as a batch twice the size (fp32), and the shard arithmetic.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from imgclf.data.loaders import BatchLoader, TensorLoader, shard_order
from imgclf.train.learner import Learner

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
ROOT = Path(__file__).resolve().parents[1]
N_ITEMS = 21  # items of the index loader: odd, so the shards need padding


# ---------------------------------------------------------------------- the worker (runs under torchrun)
def _tiny_learner(data, accum: int = 1):
    from imgclf.train.vision import vision_learner

    return vision_learner(data, "simple_cnn", pretrained=False, progress=False, device="cpu", precision="fp32",
                          seed=5, accum=accum)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_as_rank0(state: dict[str, torch.Tensor]) -> bool:
    from imgclf.train import distributed as dist

    ref = dist.agree(state)
    return all(torch.equal(state[k], ref[k]) for k in state)


def worker(out: Path, data_dir: Path) -> None:
    from imgclf.data.core import ImageData
    from imgclf.train import distributed as dist
    from imgclf.train.callbacks import Callback
    from imgclf.train.checkpoint import TrainingInterrupted
    from imgclf.train.features import extract_features
    from imgclf.train.recipes import auto_fit

    assert dist.setup("cpu"), "torchrun did not start several processes"
    torch.set_num_threads(1)
    r, world = dist.rank(), dist.world_size()
    rep: dict = {"rank": r, "world": world}

    # 1. the sampler: which items each rank sees in two epochs (targets are the item indices)
    dl = BatchLoader(torch.zeros(N_ITEMS, 3, 8, 8, dtype=torch.uint8), torch.arange(N_ITEMS), 8, (0.0,) * 3,
                     (1.0,) * 3, bs=8, view="augment", shuffle=True, seed=3).shard(r, world)
    rep["seen"] = [[int(i) for _, yb in dl for i in yb] for _ in range(2)]
    rep["n_batches"] = len(dl)

    # 2. DDP training with gradient accumulation: the ranks end with the same weights
    data = ImageData.from_folder(data_dir, size=16, bs=8, progress=False, workers=1)
    learn = _tiny_learner(data, accum=2)
    assert learn.ddp is None and learn.train_dl.world == world
    learn.fit_one_cycle(1, 2e-3)
    rep["same_weights"] = _same_as_rank0(_weights(learn.model))
    rep["train_loss"] = learn.recorder.history[-1]["train_loss"]
    rep["same_loss"] = dist.agree(rep["train_loss"]) == rep["train_loss"]
    # validation scored in shares (each rank its strided half, 12 images: one padded in on 2 ranks) and gathered
    # is the whole set's: the same figures as one pass over every validation image, on every rank
    share, n = learn.valid_share()
    whole = learn.validate()  # get_preds over the whole loader, in this process alone
    rep["valid_sharded"] = n == data.n_valid and len(share.images) == data.n_valid and share.n_shard < n
    rep["valid_equal"] = all(abs(learn.last_validation[k] - whole[k]) < 1e-5 for k in whole)

    # 3. cached features: computed in shards, gathered, equal to one process's pass over all images
    learn.features.engine_name = "eager"  # the same engine as the one-process pass below
    x, y = learn.cached_features("train", "center")
    x1, y1 = extract_features(learn.model, data.loader("train", learn.meta.mean, learn.meta.std, view="center"))
    rep["features_equal"] = bool(torch.equal(y, y1) and torch.allclose(x, x1, atol=1e-5))

    # 4. an interrupted 2-process fit, resumed, ends where an uninterrupted one does (bitwise)
    ref = _tiny_learner(data)
    ref.fit_one_cycle(2, 2e-3)
    want = _weights(ref.model)

    class StopAt(Callback):
        def after_batch(self, learn) -> None:
            if learn.training and learn.iter == 3:  # mid first epoch: the Ctrl-C path, all ranks agree
                learn.checkpointer.stop_requested = True

    ck_dir = out / "ckpt"
    first = _tiny_learner(data)
    first.save_checkpoints(ck_dir, every=0)
    try:
        first.fit_one_cycle(2, 2e-3, cbs=[StopAt()])
        rep["interrupted"] = False
    except TrainingInterrupted:
        rep["interrupted"] = True
    from imgclf.train.checkpoint import read_checkpoint

    doc = read_checkpoint(ck_dir / "checkpoint.safetensors")
    rep["ckpt_ranks"] = len(doc.get("ranks") or [])
    rep["ckpt_batches"] = [s["train_dl"]["batches"] for s in doc.get("ranks") or []]
    second = _tiny_learner(data)
    second.fit_one_cycle(2, 2e-3, resume=ck_dir)
    got = _weights(second.model)
    rep["resume_equal"] = all(torch.equal(got[k], want[k]) for k in want)

    # 5. the probe recipe: features in shards, one probe, its head on every rank
    res = auto_fit(data, "xresnet_tiny", recipe="probe", sizes=[16], pretrained=False, progress=False,
                   device="cpu", precision="fp32", seed=5)
    head = res.learner.model.get_classifier()
    rep["probe_same_on_ranks"] = _same_as_rank0(_weights(head))
    if r == 0:
        (out / "probe_report.json").write_text(json.dumps(res.report["candidates"][0], default=str))
    (out / f"rank{r}.json").write_text(json.dumps(rep))
    dist.cleanup()


# ---------------------------------------------------------------------- helpers of the tests
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from conftest import make_folder

    return make_folder(tmp_path_factory.mktemp("ddp") / "data", {"a": 14, "b": 14, "c": 14}, size=(20, 20),
                       split=True, n_valid=4)


def _run(cmds: list[list[str]], timeout: float = 600) -> None:
    procs = [subprocess.Popen(c, env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c in cmds]
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, o in zip(procs, outs, strict=True):
        assert p.returncode == 0, o[-4000:]


# ---------------------------------------------------------------------- the tests
def test_two_nodes_c10d_disjoint_shards_same_weights_resume_and_probe(data_dir, tmp_path):
    """Two torchrun agents ("nodes" on this machine) meet at a c10d rendezvous and train together."""
    port = _free_port()
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "imgclf-test",
            str(Path(__file__).resolve()), "--worker", str(tmp_path), str(data_dir)]
    _run([node, node])
    reps = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in reps] == [2, 2]

    # the sampler: per epoch, disjoint shares (but for the padding) that together cover every item
    for epoch in range(2):
        a, b = reps[0]["seen"][epoch], reps[1]["seen"][epoch]
        assert len(a) == len(b) == -(-N_ITEMS // 2) and reps[0]["n_batches"] == reps[1]["n_batches"]
        assert sorted(set(a) | set(b)) == list(range(N_ITEMS))
        assert len(set(a) & set(b)) <= 1  # 21 items on 2 ranks: one item padded in twice
    assert reps[0]["seen"][0] != reps[0]["seen"][1], "a new permutation each epoch"

    for rep in reps:
        assert rep["same_weights"], "DDP with accumulation left the ranks with different weights"
        assert rep["same_loss"], "the logged training loss is the mean over ranks, the same on each"
        assert rep["valid_sharded"] and rep["valid_equal"], "validation in shares differs from one whole pass"
        assert rep["features_equal"], "features computed in shards and gathered differ from one pass"
        assert rep["interrupted"] and rep["ckpt_ranks"] == 2 and rep["ckpt_batches"] == [4, 4]
        assert rep["resume_equal"], "a resumed 2-process fit differs from an uninterrupted one"
        assert rep["probe_same_on_ranks"]

    # the probe recipe in one process on the same data gives the same head
    from imgclf.data.core import ImageData
    from imgclf.train.recipes import auto_fit

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = ImageData.from_folder(data_dir, size=16, bs=8, progress=False, workers=1)
        res = auto_fit(data, "xresnet_tiny", recipe="probe", sizes=[16], pretrained=False, progress=False,
                       device="cpu", precision="fp32", seed=5)
    finally:
        torch.set_num_threads(threads)
    # the same CV table (loss per head and weight decay) and validation figures; features in shards differ from one pass
    # in the last float bits, and on these separable colours the decays tie, so the choice among ties may differ
    one, two = res.report["candidates"][0], json.loads((tmp_path / "probe_report.json").read_text())
    assert one["accuracy"] == two["accuracy"]
    heads = [[(r.get("head", "lbfgs"), r.get("wd")) for r in c["detail"]["tried"]] for c in (one, two)]
    assert heads[0] == heads[1] and ("one_cycle", None) in heads[0]  # both heads competed on both
    for a, b in zip(one["detail"]["tried"], two["detail"]["tried"], strict=True):
        assert abs(a["cv_loss"] - b["cv_loss"]) < 2e-3 and a["cv_accuracy"] == b["cv_accuracy"], (a, b)


def test_cli_nproc_2_writes_one_run_dir_from_rank_0(data_dir, tmp_path):
    out = tmp_path / "runs" / "tiny"
    cmd = [sys.executable, "-m", "imgclf", "train", str(data_dir), "--nproc", "2", "--arch", "simple_cnn",
           "--size", "16", "--bs", "8", "--epochs", "2", "--accum", "2", "--device", "cpu", "--precision", "fp32",
           "--workers", "1", "--quiet", "--out", str(out)]
    res = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny"], "one run directory, not one per rank"
    assert res.stdout.count(f"-> {out}") == 1, "the figures line comes from rank 0 only"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["status"] == "done" and cfg["train"]["accum"] == 2
    rows = (out / "history.csv").read_text().splitlines()
    assert len(rows) == 1 + 2, rows  # header + one row per epoch: written once
    log = (out / "train.log").read_text()
    assert log.count("scratch: 2 epoch(s)") == 1
    assert (out / "model.safetensors").is_file() and json.loads((out / "metrics.json").read_text())["n_train"] == 42
    assert not (out / "checkpoint.safetensors").exists()


def _checkpoint_doc(run: Path) -> dict | None:
    from safetensors import safe_open

    try:
        with safe_open(str(run / "checkpoint.safetensors"), "pt") as f:
            return json.loads(f.metadata()["imgclf_checkpoint"])
    except (FileNotFoundError, OSError):
        return None
    except RuntimeError as e:  # safe_open reads the header and maps the file in two opens: a checkpoint published
        if "mapping size" in str(e):  # between them (atomically, by rename) has another size; read it next poll
            return None
        raise


def _stop_when(proc: subprocess.Popen, run: Path, epoch: int, send) -> tuple[int, str, dict]:
    """Once the run has checkpointed a step of `epoch` (0-based) or later, `send()` the signal; the exit status,
    stderr and the checkpoint it was sent at."""
    t = time.monotonic()
    while time.monotonic() - t < 300:
        doc = _checkpoint_doc(run)
        if doc and doc.get("fit_done") is False and doc["epoch"] >= epoch:
            break
        assert proc.poll() is None, f"the run ended before epoch {epoch + 1}: {proc.communicate()}"
        time.sleep(0.01)
    else:
        raise AssertionError("no checkpoint came")
    send()
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err, doc


def test_cli_nproc_2_ctrl_c_and_sigterm_stop_once_exit_128_plus_signal_and_resume(data_dir, tmp_path):
    """Ctrl-C in a terminal (SIGINT to the launcher's process group), then SIGTERM to the launcher alone (a job
    scheduler's stop): each time one set of messages (rank 0's), the exit status 130 / 143, no torchrun traceback,
    the checkpoint of both ranks and the best epoch kept; `--resume --nproc 2` goes on and finishes."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "imgclf", "train", str(data_dir), "--nproc", "2", "--arch", "simple_cnn", "--size",
           "16", "--bs", "8", "--epochs", "8", "--ckpt-every", "2", "--device", "cpu", "--precision", "fp32",
           "--workers", "1", "--quiet", "--out", str(out)]
    resume = [sys.executable, "-m", "imgclf", "train", "--resume", str(out), "--nproc", "2", "--quiet"]

    def start(c: list[str]) -> subprocess.Popen:  # a session of its own: a process group as a shell makes one
        return subprocess.Popen(c, env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)

    stopped_at = 0
    for c, sig, name, code, by in [(cmd, signal.SIGINT, "Ctrl-C", 130, ""),
                                   (resume, signal.SIGTERM, "SIGTERM", 143, " by SIGTERM")]:
        proc = start(c)
        group = sig == signal.SIGINT
        rc, err, doc = _stop_when(proc, out, stopped_at + 1,
                                  lambda p=proc, s=sig, g=group: os.killpg(p.pid, s) if g else p.send_signal(s))
        assert rc == code, err[-3000:]
        assert "Traceback" not in err and "SignalException" not in err and "closing signal" not in err, err[-3000:]
        assert err.count(f"{name}: finishing this step") == 1, err[-3000:]  # rank 0 speaks, once
        assert err.count("imgclf: interrupted") == 1 and err.rstrip().endswith(f"imgclf: interrupted{by}"), err
        assert err.count(f"imgclf train --resume {out}") == 1
        conf = json.loads((out / "config.json").read_text())
        assert conf["status"] == "interrupted" and conf["earlier_seconds"] > 0
        assert (out / "model.safetensors").is_file()  # an epoch had finished: the best so far is kept
        now = _checkpoint_doc(out)
        assert len(now["ranks"]) == 2 and now["epoch"] >= doc["epoch"], now["where"]
        stopped_at = now["epoch"]

    res = subprocess.run(resume, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["status"] == "done"
    rows = (out / "history.csv").read_text().splitlines()
    assert len(rows) == 1 + 8 and "in earlier sessions)" in res.stdout


# ---------------------------------------------------------------------- in this process
def test_shard_order_pads_and_strides():
    order = torch.tensor([4, 0, 3, 1, 2])
    assert shard_order(order, 0, 1).tolist() == [4, 0, 3, 1, 2]
    assert shard_order(order, 0, 2).tolist() == [4, 3, 2]
    assert shard_order(order, 1, 2).tolist() == [0, 1, 4]  # padded with the first item again
    assert [len(shard_order(order, r, 4)) for r in range(4)] == [2, 2, 2, 2]
    dl = TensorLoader(torch.arange(10.0)[:, None], torch.arange(10), bs=4).shard(1, 2)
    assert dl.bs == 2 and len(dl) == 3 and [int(i) for _, y in dl for i in y] == [1, 3, 5, 7, 9]


def test_accum_2_steps_like_a_batch_twice_the_size():
    """Two accumulated batches of 8 make the step one batch of 16 makes (no batch-norm: exact up to fp32)."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 10, generator=gen), torch.randint(0, 3, (64,), generator=gen)

    def train(bs: int, accum: int) -> torch.Tensor:
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
        learn = Learner(model, TensorLoader(x, y, bs, shuffle=True, seed=2), None, opt="sgd", lr=0.1, wd=0.0,
                        progress=False, device="cpu", precision="fp32", channels_last=False, clip=None, accum=accum)
        learn.fit(2, 0.1)
        assert learn.iter == 2 * 64 // bs
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    big, acc = train(16, 1), train(8, 2)
    # the same items per step: a shuffled epoch of 64 in batches of 8 pairs up as the batches of 16
    assert torch.allclose(big, acc, atol=1e-5), (big - acc).abs().max()
    assert not torch.allclose(big, train(8, 1), atol=1e-3), "without accumulation, twice the steps differ"


if __name__ == "__main__" and "--worker" in sys.argv:
    i = sys.argv.index("--worker")
    worker(Path(sys.argv[i + 1]), Path(sys.argv[i + 2]))
