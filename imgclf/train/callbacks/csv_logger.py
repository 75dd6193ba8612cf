"""CSVLogger: append each epoch's history row to a CSV as it happens, so a killed run keeps its log."""

from __future__ import annotations

import csv
from pathlib import Path

from .core import Callback


class CSVLogger(Callback):
    order = 70

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.fields: list[str] | None = None
        self.rows = 0  # rows this logger wrote: a resumed run cuts the file back to the checkpoint's count

    def after_epoch(self, learn) -> None:
        self.write_row(learn.recorder.history[-1])

    def write_row(self, row: dict) -> None:
        """Append one history row (also used for rows that no epoch produced, like a probe's)."""
        new = not self.path.exists() or self.path.stat().st_size == 0
        if new:
            self.fields = list(row)
        elif self.fields is None:
            with open(self.path, newline="") as f:
                self.fields = next(csv.reader(f), list(row))
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self.rows += 1

    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state: dict) -> None:
        """Drop rows written after the checkpoint (the resumed run writes them again)."""
        self.rows = state.get("rows", 0)
        if not self.path.exists():
            return
        lines = self.path.read_text().splitlines(keepends=True)
        self.path.write_text("".join(lines[: 1 + self.rows]) if self.rows else "")
