"""More than one process: rank and world, process-group setup from torchrun's environment, and the few
collectives the job needs (agree on a value, gather row shards, broadcast a module).

Nothing here launches processes or talks to a cluster: `torchrun` (or `imgclf train --nproc N`, which runs it)
starts one process per device and sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `setup()`
reads them with `init_process_group("env://")`. gloo on the CPU, nccl on CUDA. Every helper is the identity in a
single process, so the same code runs with and without torchrun.

The data side: each rank takes the strided shard `order[rank::world]` of an epoch's seeded permutation (the same
permutation on every rank), padded by wrapping so all ranks have the same number of batches (PyTorch's
`DistributedSampler` does the same); `shard_order` (data/loaders.py, re-exported here) is that function.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..data.loaders import shard_order

__all__ = [
    "agree", "any_rank", "average_buffers", "backend_for", "barrier", "broadcast_module", "cleanup",
    "gather_objects", "gather_shards", "global_mean", "is_distributed", "is_main", "launched", "local_rank",
    "mean_across", "rank", "setup", "shard_order", "silenced", "world_size",
]


def is_distributed() -> bool:
    """A process group of more than one process is up (torchrun started us and `setup()` ran)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if is_distributed() else 0


def is_main() -> bool:
    """Rank 0: the one process that writes the run directory, logs and progress bars."""
    return rank() == 0


def launched() -> bool:
    """torchrun (or any launcher that sets its variables) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def backend_for(device: str | torch.device | None = "auto") -> str:
    """nccl when the processes train on CUDA, gloo otherwise (the CPU; gloo is the one CPU backend built in)."""
    name = str(device or "auto")
    if name.startswith("cpu") or name == "mps" or not torch.cuda.is_available():
        return "gloo"
    return "nccl" if dist.is_nccl_available() else "gloo"


def setup(device: str | torch.device | None = "auto") -> bool:
    """Join the process group torchrun described in the environment; True when there is more than one process.

    A no-op in a single process, and when the group is already up. On CUDA each process takes the GPU of its
    LOCAL_RANK, so `torch.device("cuda")` means that GPU from then on."""
    if is_distributed():
        return True
    if not launched() or not dist.is_available():
        return False
    backend = backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return is_distributed()


@contextmanager
def silenced() -> Iterator[None]:
    """stdout to nowhere: what the ranks other than 0 print (rank 0's lines are the run's log)."""
    with open(os.devnull, "w") as null, redirect_stdout(null):
        yield


def cleanup() -> None:
    """Leave the process group (the end of a job run under torchrun)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _device() -> torch.device:
    """Where collectives' tensors live: the current GPU under nccl, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank (any picklable value). Decisions taken from clocks (a time budget, a
    checkpoint every few minutes) must be agreed, or the ranks would take different branches and wait forever
    on each other's collectives."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_device() if dist.get_backend() == "nccl" else None)
    return box[0]


def any_rank(*flags: bool) -> tuple[bool, ...]:
    """Each flag true on some rank, on every rank: one all-reduce (max) for all of them."""
    if not is_distributed():
        return tuple(bool(f) for f in flags)
    t = torch.tensor([float(f) for f in flags], device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank ([obj] in a single process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_shards(t: torch.Tensor, n: int) -> torch.Tensor:
    """The whole of a strided-sharded tensor on every rank: rank r holds rows r, r + world, ... (see `shard_order`,
    same row count on all ranks); returns rows 0..n-1 in order. Features computed in shards come back whole."""
    if not is_distributed():
        return t[:n]
    world = world_size()
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t.contiguous())
    return torch.stack(parts, dim=1).reshape(-1, *t.shape[1:])[:n]


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s parameters and buffers into `module` on every rank (after a step that ran on each rank
    alone, such as a probe fit, so that the ranks go on from identical weights)."""
    if not is_distributed():
        return
    for t in [*module.parameters(), *module.buffers()]:
        if dist.get_backend() == "nccl" and t.device.type != "cuda":
            buf = t.data.to(_device())
            dist.broadcast(buf, src=src)
            t.data.copy_(buf)
        else:
            dist.broadcast(t.data, src=src)


def global_mean(loss: torch.Tensor) -> torch.Tensor:
    """`loss` with the value of its mean over ranks and its own gradient (DDP averages gradients itself): one
    all-reduce of a number per step, so that every rank logs, checks for NaN and sweeps lr_find on the same
    figure and takes the same branch (a NaN on one rank alone would stop it and leave the others waiting)."""
    if not is_distributed():
        return loss
    t = loss.detach().clone()
    dist.all_reduce(t)
    return loss + (t / world_size() - loss.detach())


@torch.no_grad()
def average_buffers(module: nn.Module) -> None:
    """Batch-norm running statistics averaged over ranks (integer buffers: rank 0's). DDP gives every rank the
    same parameters but each rank's running statistics come from its own batches; validation, the features and
    the saved model need one set, the same everywhere, and the mean over ranks estimates the data's best."""
    if not is_distributed():
        return
    for t in module.buffers():
        if t.is_floating_point():
            dist.all_reduce(t.data)
            t.data.div_(world_size())
        else:
            dist.broadcast(t.data, src=0)


def mean_across(value: float) -> float:
    """The mean of a number over ranks (a training loss each rank measured on its own shard)."""
    if not is_distributed():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return float(t.item()) / world_size()
