"""Small independent CPU tasks run side by side in forked processes: the probe's cross-validation folds.

The probe's CV is dozens of tiny fits (392 x 392 matrices on hymenoptera), each run on one torch thread because
thread hand-offs cost more than the maths (probe.py). Two such fits in two threads of one process mostly wait
for each other's GIL (measured on the 2-core Xeon: two `select_probe` calls 1.91 s in turn, 1.28 s in two
threads), so the second core idled through the ~3 s the default job spends choosing its head. Forked workers
share the features copy-on-write, need no pickling of the tasks, and each run one thread: the same numbers as
in turn, on every core.

Fork is only taken where it is safe and pays: Linux, CUDA not initialised (a forked child cannot use it), no
process group (torchrun's ranks already share the cores), and at least two torch threads allowed (`--threads`,
OMP_NUM_THREADS); else the tasks run here in turn. A worker that dies or fails leaves its task to this process,
which runs it itself (a failing task then raises here, with its real traceback). Workers ignore Ctrl-C: the job
stops them itself.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import pickle
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.connection import wait
from typing import Any, NoReturn, TypeVar

import torch

T = TypeVar("T")


@contextmanager
def one_thread(on: bool = True) -> Iterator[None]:
    """torch on one intra-op thread for the block (`on`), then as many as before. Small fits and the glue
    between another engine's calls run fastest so: thread hand-offs cost more than their maths, and idle torch
    workers spin on the cores others need (probe.small, features.glue)."""
    threads = torch.get_num_threads()
    if on:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def workers_for(n_tasks: int) -> int:
    """How many forked workers `fork_map` would use for `n_tasks` tasks here (1: none, the tasks run in turn)."""
    if (n_tasks < 2 or not sys.platform.startswith("linux") or "fork" not in multiprocessing.get_all_start_methods()
            or torch.cuda.is_initialized() or (torch.distributed.is_available() and torch.distributed.is_initialized())
            or os.environ.get("IMGCLF_FORK", "1") == "0"):
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(n_tasks, cores, torch.get_num_threads()))


def fork_map(tasks: Sequence[Callable[[], T]], workers: int | None = None, on_one: bool = False) -> list[T]:
    """Each task's result, in order. Tasks must be deterministic and must not print or write files: in a worker
    their side effects stay in the worker. `workers`: None for `workers_for(len(tasks))`. Workers run one torch
    thread each; `on_one`: so do the tasks when they run here in turn (small fits, where thread hand-offs cost
    more than the maths)."""
    workers = workers_for(len(tasks)) if workers is None else min(workers, len(tasks))
    if workers < 2:
        with one_thread(on_one):
            return [task() for task in tasks]
    ctx = multiprocessing.get_context("fork")
    claim = ctx.Value("i", 0)  # the next task to take: workers share the list dynamically (folds differ in cost)
    sys.stdout.flush()
    sys.stderr.flush()  # a buffered line would otherwise be printed again by each worker as it exits
    pipes, procs = [], []
    try:
        for _ in range(workers):
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_work, args=(tasks, claim, send), name="imgclf-fold", daemon=True)
            proc.start()
            send.close()  # this end is the worker's: EOF here when it is gone
            pipes.append(recv)
            procs.append(proc)
        got: dict[int, Any] = {}
        live = list(pipes)
        while live:
            for conn in wait(live):
                try:
                    i, ok, value = pickle.loads(conn.recv_bytes())
                except EOFError:  # the worker finished (or died): its unreturned task is left to this process
                    live.remove(conn)
                    continue
                if ok:
                    got[i] = value
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join()
        for conn in pipes:
            conn.close()
    return [got[i] if i in got else tasks[i]() for i in range(len(tasks))]


def _work(tasks: Sequence[Callable[[], Any]], claim, send) -> NoReturn:
    """In a worker: take the next unclaimed task until none is left, sending back (index, ok, result); then exit
    at once. Nothing the worker inherited may be freed here: an onnxruntime session's destructor waits on its
    thread pool, whose threads a fork does not copy (seen: a worker hung for good on a session collected as part
    of a garbage cycle). So no cyclic collection, and no teardown: `os._exit`."""
    gc.disable()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # stopped by this process (`terminate`): gone, without a word
    torch.set_num_threads(1)
    while True:
        with claim.get_lock():
            i = claim.value
            claim.value += 1
        if i >= len(tasks):
            break
        try:  # plain pickle: the tensors' bytes travel in the pipe (torch's reducers would share memory through
            # a server in this worker, gone once it exits)
            send.send_bytes(pickle.dumps((i, True, tasks[i]())))
        except Exception:  # not sent: this process runs it again and raises its error there
            send.send_bytes(pickle.dumps((i, False, None)))
    send.close()
    os._exit(0)
