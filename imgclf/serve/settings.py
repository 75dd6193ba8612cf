"""The server's limits and batching, apart from the app so that `imgclf --help` needs no FastAPI."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeSettings:
    """What `imgclf serve` takes, flags of the same names."""

    max_mb: float = 20.0  # per file
    max_files: int = 16  # per request
    max_batch: int = 32  # images in one forward pass
    max_wait_ms: float = 10.0  # how long a batch waits for the images of requests still being read/decoded
    topk: int = 5  # classes per image in the answer, unless the request asks `?topk=K`

    @property
    def max_bytes(self) -> int:
        return int(self.max_mb * 2**20)
