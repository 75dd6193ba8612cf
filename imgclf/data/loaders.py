"""Batches from in-memory uint8 images: index, move to the device, augment or center-crop, normalise.

No worker processes: the decoded images already sit in one tensor, so a batch is a single indexing
op, and augmentation runs as batch maths on the training device.

Under torchrun each process's loader is `shard(rank, world)`: it takes the strided share `order[rank::world]` of
every epoch's permutation (the same permutation on all ranks, from the same seed), so the ranks see disjoint
images that together make the 1-process run's batches (see train/distributed.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from .augment import Augment, augment_batch, center_batch


def shard_order(order: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank `rank`'s strided share of `order`: `order[rank::world]` after padding `order` by wrapping round to a
    multiple of `world`, so every rank gets `ceil(n / world)` items (a few seen twice an epoch when `world` does
    not divide n; PyTorch's DistributedSampler pads the same way). With a global batch of `b * world`, step j of
    all ranks together is step j of the 1-process run."""
    if world <= 1:
        return order
    n = len(order)
    pad = -n % world
    if pad and n:
        order = torch.cat([order, order.repeat(-(-pad // n))[:pad]])
    return order[rank::world]


def _n_batches(n: int, bs: int, drop_last: bool) -> int:
    return n // bs if drop_last else -(-n // bs)


def _shard_state(loader: Any, rank: int, world: int, bs: int | None) -> None:
    """Set a loader's share of each epoch (BatchLoader.shard, TensorLoader.shard)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside a world of {world}")
    loader.rank, loader.world = rank, world
    loader.bs = max(1, bs if bs is not None else loader.bs // world)
    n = loader.n_shard
    loader.drop_last = loader.shuffle and n > 1 and n % loader.bs == 1


class ViewBatches:
    """What every loader of images shares (`BatchLoader` here, `shards.ShardLoader`): the view's transform of a
    uint8 batch, the move to the device, and the resumable position. Subclasses set `view`, `size`, `augment`,
    `aug_generator`, `mean`, `std`, `channels_last`, `device`, `generator` and `position`."""

    def _on_device(self, t: torch.Tensor) -> bool:
        """`t` already sits on the loader's device ("cuda" means the current CUDA device, cuda:0 here)."""
        return t.device.type == self.device.type and self.device.index in (None, t.device.index)

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self._on_device(t):
            return t
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def transform(self, xb: torch.Tensor) -> torch.Tensor:
        """The view of a uint8 batch (moved to the loader's device first when it is not there), normalised."""
        xb = self._to_device(xb)
        if self.view == "augment":
            x = augment_batch(xb, self.size, self.augment, self.aug_generator, self.mean, self.std)
        else:
            x = center_batch(xb, self.size, self.mean, self.std)
            if self.view == "flip":
                x = x.flip(-1)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def state_dict(self) -> dict[str, Any]:
        """Where the loader stands: its generator, and within an epoch the batches given (see `_Position`);
        a rank's loader adds its augmentation generator."""
        state = self.position.state_dict()
        if self.aug_generator is not self.generator:
            state["aug_state"] = self.aug_generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position.load_state_dict(state)
        if state.get("aug_state") is not None and self.aug_generator is not self.generator:
            self.aug_generator.set_state(state["aug_state"])


class BatchLoader(ViewBatches):
    """Yields `(x, y)`: float images normalised for the model, and int64 targets, on `device`.

    `view` is "augment" (random transform per image), "center" (the validation view) or "flip"
    (the validation view mirrored, used for cached features and test-time augmentation).
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        bs: int = 64,
        view: str = "center",
        augment: Augment | None = None,
        shuffle: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
        channels_last: bool = True,
    ):
        if view not in ("augment", "center", "flip"):
            raise ValueError(f"view must be augment, center or flip, not {view!r}")
        self.images, self.targets = images, targets
        self.size, self.bs, self.view, self.shuffle = size, bs, view, shuffle
        self.augment = augment or Augment()
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device)
        self.channels_last = channels_last
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        # augmentation draws from the permutation's generator in one process; under torchrun from a generator of
        # the rank's own (`shard`), so that the permutation stays the same on every rank
        self.aug_generator = self.generator
        self.rank, self.world = 0, 1
        # a last batch of one breaks batch-norm in training: drop it there
        self.drop_last = shuffle and len(images) > 1 and len(images) % bs == 1
        self.position = _Position(self.generator)
        # an epoch's order drawn from the generator instead of a permutation (data/samplers.py: --balance sampler)
        self.sampler: Callable[[torch.Generator], torch.Tensor] | None = None

    def __len__(self) -> int:
        return _n_batches(self.n_shard, self.bs, self.drop_last)

    @property
    def n_shard(self) -> int:
        """Items this loader gives an epoch: all of them, or this rank's share (padded: see `shard_order`)."""
        return -(-len(self.images) // self.world)

    def shard(self, rank: int, world: int, bs: int | None = None) -> BatchLoader:
        """Give only rank `rank`'s share of each epoch, `bs` a batch (default: this loader's batch / world, so
        the ranks' batches together are the 1-process batch). Augmentation then draws from a generator of the
        rank's own, seeded from (seed, rank); the permutation's stays common. Returns the loader."""
        _shard_state(self, rank, world, bs)
        if world > 1:
            self.aug_generator = torch.Generator().manual_seed(self.seed * 7919 + 104729 * (rank + 1))
        return self

    def _source(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Where batches are indexed from: the uint8 images moved to the GPU once when they take under a
        quarter of its free memory (Fashion-MNIST's 60k at 28 px: 141 MB), so a batch is one gather there
        and no copy; else host memory, each batch pinned and copied."""
        if self.device.type == "cuda" and isinstance(self.images, torch.Tensor) and not self._on_device(self.images):
            free, _ = torch.cuda.mem_get_info(self.device)
            if self.images.numel() * self.images.element_size() < free // 4:
                self.images, self.targets = self.images.to(self.device), self.targets.to(self.device)
        return self.images, self.targets

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        images, targets = self._source()
        n = len(images)
        start = self.position.begin()
        order = (self.sampler(self.generator) if self.sampler is not None
                 else torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n))
        order = shard_order(order, self.rank, self.world)
        start = self.position.seek(start)
        order = order.to(images.device) if isinstance(images, torch.Tensor) else order
        in_order = self.sampler is None and not self.shuffle and self.world == 1 and isinstance(images, torch.Tensor)
        for b in range(start, len(self)):
            idx = order[b * self.bs : (b + 1) * self.bs]
            # in order, a batch is a slice: a view, not the gathered copy of the presized images
            xb = self._to_device(images[b * self.bs : (b + 1) * self.bs] if in_order else images[idx])
            batch = self.transform(xb), self._to_device(targets[idx])
            self.position.batches = b + 1
            yield batch
        self.position.end()

class TensorLoader:
    """Batches of ready tensors (cached features and their targets), shuffled with a seeded generator."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, bs: int = 256, shuffle: bool = False, seed: int = 0):
        self.x, self.y, self.bs, self.shuffle = x, y, bs, shuffle
        self.rank, self.world = 0, 1
        self.generator = torch.Generator().manual_seed(seed)
        self.drop_last = shuffle and len(x) > 1 and len(x) % bs == 1
        self.sampler: Callable[[torch.Generator], torch.Tensor] | None = None  # as BatchLoader's
        self.position = _Position(self.generator)

    def __len__(self) -> int:
        return _n_batches(self.n_shard, self.bs, self.drop_last)

    @property
    def n_shard(self) -> int:
        return -(-len(self.x) // self.world)

    def shard(self, rank: int, world: int, bs: int | None = None) -> TensorLoader:
        """Rank `rank`'s share of each epoch, as `BatchLoader.shard`."""
        _shard_state(self, rank, world, bs)
        return self

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.x)
        start = self.position.begin()
        order = (self.sampler(self.generator) if self.sampler is not None
                 else torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n))
        order = shard_order(order, self.rank, self.world)
        start = self.position.seek(start)
        for b in range(start, len(self)):
            idx = order[b * self.bs : (b + 1) * self.bs].to(self.x.device)
            self.position.batches = b + 1
            yield self.x[idx], self.y[idx]
        self.position.end()

    def state_dict(self) -> dict[str, Any]:
        return self.position.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position.load_state_dict(state)


class _Position:
    """A loader's place for an exact resume: its generator's state now, and, within an epoch, the state it had
    when the epoch began (which replays the epoch's permutation) and how many batches it has given.

    A loader draws the permutation at the start of an epoch, then each batch's augmentation from the same
    generator; so a resumed epoch redraws the permutation from the epoch's start state, jumps the generator
    to the saved state, and goes on from the saved batch: the rest of the epoch is what it would have been.
    """

    def __init__(self, generator: torch.Generator):
        self.generator = generator
        self.epoch_state: torch.Tensor | None = None
        self.batches = 0
        self._pending: dict[str, Any] | None = None

    def begin(self) -> int:
        """Called as an epoch starts: the batch to start from (0 unless a loaded state says otherwise)."""
        pending, self._pending = self._pending, None
        if pending is None or pending["epoch_state"] is None:
            if pending is not None:
                self.generator.set_state(pending["state"])
            self.epoch_state, self.batches = self.generator.get_state(), 0
            return 0
        self.generator.set_state(pending["epoch_state"])
        self.epoch_state, self.batches = pending["epoch_state"], pending["batches"]
        self._resume_state = pending["state"]
        return pending["batches"]

    def seek(self, start: int) -> int:
        """After the permutation is drawn: jump to the saved generator state when resuming mid-epoch."""
        if start:
            self.generator.set_state(self._resume_state)
        return start

    def end(self) -> None:
        self.epoch_state, self.batches = None, 0

    def state_dict(self) -> dict[str, Any]:
        mid = self.epoch_state is not None and self.batches > 0
        return {"state": self.generator.get_state(), "epoch_state": self.epoch_state if mid else None,
                "batches": self.batches if mid else 0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending = state
