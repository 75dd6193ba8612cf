"""Images of requests that arrive together go through the model as one batch.

One worker task takes the queued images, at most `max_batch`: whatever is waiting, and, while other
requests are still reading and decoding theirs (`coming()`), up to `max_wait_ms` more for them. A lone
request never waits: nobody else is coming. It runs one forward pass in its own thread (the event loop
keeps taking requests meanwhile) and hands each request its predictions through a future; while a batch
runs, the next one queues up. Measured by `bench/serve_load.py`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch

from ..infer.predictor import Prediction, Predictor


class Batcher:
    """`await batcher.predict(images)` -> one `Prediction` per image of a uint8 (B, 3, presize, presize)
    tensor, computed in shared batches. `start()` inside the running loop, `stop()` at shutdown; a request
    reads and decodes its images inside `with batcher.coming():` so that a batch about to run waits for them."""

    def __init__(self, predictor: Predictor, max_batch: int = 32, max_wait_ms: float = 10.0):
        self.predictor = predictor
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.stats = {"batches": 0, "images": 0, "largest_batch": 0}
        self.arriving = 0  # requests reading or decoding their images: company worth waiting for
        self._queue: asyncio.Queue[tuple[torch.Tensor, asyncio.Future]] | None = None
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="imgclf-forward")  # one forward pass at a time

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._pool.shutdown(wait=True)

    @contextmanager
    def coming(self) -> Iterator[None]:
        """Around a request's reading and decoding (in the event loop; leave it right before `predict`)."""
        self.arriving += 1
        try:
            yield
        finally:
            self.arriving -= 1

    async def predict(self, images: torch.Tensor) -> list[Prediction]:
        if self._queue is None:
            raise RuntimeError("Batcher.start() was not called")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(len(images))]
        for image, future in zip(images, futures, strict=True):
            self._queue.put_nowait((image, future))
        return list(await asyncio.gather(*futures))

    async def _take(self) -> list[tuple[torch.Tensor, asyncio.Future]]:
        """The next batch: wait for one image, take what is queued, and wait up to `max_wait` for the images of
        requests still arriving."""
        assert self._queue is not None
        items = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(items) < self.max_batch:
            if not self._queue.empty():
                items.append(self._queue.get_nowait())
                continue
            left = deadline - time.monotonic()
            if left <= 0 or not self.arriving:
                break
            try:
                items.append(await asyncio.wait_for(self._queue.get(), left))
            except asyncio.TimeoutError:  # builtin TimeoutError only from Python 3.11
                break
        return items

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._take()
            items = [(x, f) for x, f in items if not f.done()]  # a client that left cancelled its future
            if not items:
                continue
            batch = torch.stack([x for x, _ in items])
            try:
                preds = await loop.run_in_executor(self._pool, self.predictor.predict_batch, batch)
            except Exception as e:  # noqa: BLE001 - every waiting request gets the error; the loop goes on
                for _, f in items:
                    if not f.done():
                        f.set_exception(e)
                continue
            self.stats["batches"] += 1
            self.stats["images"] += len(items)
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(items))
            for (_, f), p in zip(items, preds, strict=True):
                if not f.done():
                    f.set_result(p)
