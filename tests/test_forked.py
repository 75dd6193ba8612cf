"""The probe's CV folds side by side in forked workers (`train/forked.py`): the same numbers as in turn, and a
worker that fails or dies costs nothing but time."""

from __future__ import annotations

import os

import pytest
import torch

from imgclf.train.forked import fork_map, workers_for
from imgclf.train.probe import select_probe

PARENT = os.getpid()


def _where() -> int:
    return os.getpid()


def _square(i: int) -> int:
    return i * i


def _dies_in_a_worker() -> str:
    if os.getpid() != PARENT:
        os._exit(3)  # a worker killed mid-task (the OOM killer, a segfault)
    return "ran here"


def _fails_in_a_worker() -> str:
    if os.getpid() != PARENT:
        raise RuntimeError("only in a worker")
    return "ran here"


def _always_fails() -> None:
    raise ValueError("a task's own error")


def test_this_machine_forks_for_the_probe():
    # the suite runs on Linux with at least two cores: the parallel path is the one under test, never skipped
    assert workers_for(10) >= 2
    assert workers_for(1) == 1


def test_results_come_back_in_order_from_other_processes():
    from functools import partial

    tasks = [partial(_square, i) for i in range(9)] + [_where] * 4
    out = fork_map(tasks)
    assert out[:9] == [i * i for i in range(9)]
    assert PARENT not in out[9:]  # run by workers, not here
    assert fork_map(tasks, workers=1)[9:] == [PARENT] * 4


def test_a_worker_that_dies_or_fails_leaves_its_task_to_this_process():
    assert fork_map([_dies_in_a_worker, _fails_in_a_worker, _where]) [:2] == ["ran here", "ran here"]
    with pytest.raises(ValueError, match="a task's own error"):  # raised here, with its real traceback
        fork_map([_where, _always_fails])


def test_one_thread_in_turn_and_the_thread_count_restored():
    threads = torch.get_num_threads()
    assert fork_map([torch.get_num_threads] * 2, workers=1, on_one=True) == [1, 1]
    assert torch.get_num_threads() == threads
    assert fork_map([torch.get_num_threads] * 2) == [1, 1]  # workers: one thread each


def test_select_probe_is_the_same_forked_or_in_turn(monkeypatch):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(120) % 3
    x = torch.randn(3, 40, generator=g)[y] * 0.5 + torch.randn(120, 40, generator=g)
    forked = select_probe(x, y, 3, seed=1)
    monkeypatch.setenv("IMGCLF_FORK", "0")
    assert workers_for(10) == 1
    in_turn = select_probe(x, y, 3, seed=1)
    assert forked.wd == in_turn.wd and forked.table == in_turn.table
    assert torch.equal(forked.oof_logits, in_turn.oof_logits) and torch.equal(forked.fit.weight, in_turn.fit.weight)


def test_the_probe_chooses_and_leaves_the_rng_alike_forked_or_in_turn(image_folder, monkeypatch):
    """Both heads' folds (and the one-cycle head's refit, run before it is known to win) go to the workers; the
    job then goes on exactly as if they had run here: same head, same figures, same torch RNG state."""
    from imgclf import ImageData, vision_learner
    from imgclf.train.recipes import probe_cv

    root = image_folder({"a": 12, "b": 12}, split=True, size=(40, 30), n_valid=4)
    data = ImageData.from_folder(root, size=32, bs=8, progress=False)
    learn = vision_learner(data, progress=False)
    init = {k: v.clone() for k, v in learn.model.get_classifier().state_dict().items()}
    runs = []
    for fork in ("1", "0"):
        monkeypatch.setenv("IMGCLF_FORK", fork)
        learn.model.get_classifier().load_state_dict(init)
        torch.manual_seed(5)
        cand, _, sel = probe_cv(learn)
        runs.append((cand.detail["head"], sel.table, cand.valid_loss, sel.fit.weight, torch.rand(3)))
    (head1, table1, loss1, w1, r1), (head0, table0, loss0, w0, r0) = runs
    assert head1 == head0 and table1 == table0 and loss1 == loss0
    assert torch.equal(w1, w0) and torch.equal(r1, r0)
    # the one-cycle head winning (its refit then ran in a worker) or losing: the RNG as in turn either way
    from imgclf.train.probe import grouped_stratified_folds
    from imgclf.train.recipes import one_cycle_head, one_cycle_tasks, probe_features

    x, y, _, _ = probe_features(learn)
    folds = grouped_stratified_folds(y, torch.arange(len(y) // 2).repeat(2), 5, 0)
    for beat in (float("inf"), float("-inf")):
        got = []
        for fork in (True, False):
            torch.manual_seed(5)
            done = fork_map(one_cycle_tasks(learn, x, y, folds, init, refit=fork), workers=None if fork else 1)
            rows, won = one_cycle_head(learn, x, y, folds, init, beat, done, 0.0)
            got.append((rows, None if won is None else won.fit.weight, torch.rand(3)))
        assert got[0][0] == got[1][0] and torch.equal(got[0][2], got[1][2])
        assert (got[0][1] is None) == (got[1][1] is None) == (beat < 0)
        if beat > 0:
            assert torch.equal(got[0][1], got[1][1])


def test_ctrl_c_stops_the_workers_at_once_and_without_a_word(tmp_path):
    """Ctrl-C reaches the job (the workers ignore it); the job stops them, under the command's own SIGTERM handler
    too, and no worker prints a traceback on its way out."""
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "stop.py"
    script.write_text(textwrap.dedent("""
        import os, signal, threading, time
        from imgclf.cli import _terminate
        from imgclf.train.forked import fork_map

        signal.signal(signal.SIGTERM, _terminate)  # as `imgclf` runs: SIGTERM raises in Python
        def slow():
            time.sleep(60)
        threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        t = time.time()
        try:
            fork_map([slow, slow, slow], workers=2)
        except KeyboardInterrupt:
            print(f"stopped {time.time() - t:.1f}")
    """))
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert p.stdout.startswith("stopped") and float(p.stdout.split()[1]) < 10, p.stdout + p.stderr
    assert "Traceback" not in p.stderr and "imgclf-fold" not in p.stderr, p.stderr
