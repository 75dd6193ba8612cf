"""The one way imgclf shows progress: a bar per phase on a terminal, a few plain lines everywhere else.

`bar(iterable, total=..., desc=..., unit=...)` is used like tqdm (iterate it, or `update(n)` it in a `with`):
- on a terminal (stderr is a tty, or a notebook): a tqdm bar whose rate is smoothed over ~20 refreshes of a
  second each (`smoothing=0.05`, `mininterval=1`), so the estimate settles within seconds. tqdm's own default
  (0.3 over refreshes every 0.1 s) follows every stall of the decoding threads: Fashion-MNIST's first phase
  showed an estimate jumping between 1 and 21 minutes;
- elsewhere (a log file, CI, a pipe): no bar and no carriage returns but one line when the phase starts
  (`features train/center: 938 batches`), one every ~30 s while it runs (`... 412/938, ~34 s left`) and one
  when it ends (`features train/center: 938 batches in 61.2 s (15.3/s)`), on stderr;
- and in a run's train.log, whatever the terminal shows: the same lines (`log_lines(f)`, which
  `rundir.log_to` uses), so a log says what ran and how long each phase took.
`enabled=False` is silent everywhere. `IMGCLF_PROGRESS=bars|lines|off` overrides the terminal test.

tqdm is imported when the first bar is made, not with this module: `imgclf --help` stays light.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

LINE_EVERY = 30.0  # seconds between the lines of a running phase when there is no bar
SMOOTHING = 0.05  # tqdm's rate smoothing (0: the average since the start; 1: the last refresh alone)
MININTERVAL = 1.0  # seconds between bar refreshes (and so between the rate samples that smoothing averages)

_PLURALS = {"batch": "batches", "image": "images", "file": "files", "step": "steps", "epoch": "epochs",
            "shard": "shards", "row": "rows"}
_sinks: list[TextIO] = []  # streams that get the line form of every enabled bar, terminal or not (train.log)


def mode() -> str:
    """"bars" (a terminal or a notebook), "lines" (anything else), or what IMGCLF_PROGRESS says."""
    forced = os.environ.get("IMGCLF_PROGRESS", "").strip().lower()
    if forced in ("bars", "lines", "off"):
        return forced
    try:
        if sys.stderr is not None and sys.stderr.isatty():
            return "bars"
    except (AttributeError, ValueError):  # a closed or odd stream
        pass
    return "bars" if _in_notebook() else "lines"


def _in_notebook() -> bool:
    if "ipykernel" not in sys.modules:  # cheap test first: no kernel, no notebook
        return False
    from tqdm.auto import tqdm

    return any(c.__name__ == "tqdm_notebook" for c in tqdm.__mro__)


@contextmanager
def log_lines(stream: TextIO) -> Iterator[None]:
    """While inside, every enabled bar also writes its lines (start, every ~30 s, end) to `stream`."""
    _sinks.append(stream)
    try:
        yield
    finally:
        _sinks.remove(stream)


def write(line: str) -> None:
    """Print a line to stdout without breaking a bar being drawn on the terminal (tqdm.write)."""
    from tqdm.auto import tqdm

    tqdm.write(line)


class Bar:
    """A phase's progress: a tqdm bar, lines, or both (see the module's docstring). Iterate it, or call
    `update(n)`; `close()` (or leaving `with`) ends the phase and writes its last line."""

    def __init__(self, iterable: Iterable | None = None, total: float | None = None, desc: str = "",
                 unit: str = "it", enabled: bool = True, start: str | None = None, end_line: bool = True,
                 **tqdm_kwargs: Any):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self._total, self.desc, self.unit = iterable, total, desc, unit.strip()
        self.n = tqdm_kwargs.get("initial", 0)
        self._unit_scale = bool(tqdm_kwargs.get("unit_scale"))
        self._divisor = tqdm_kwargs.get("unit_divisor", 1000)
        self._end_line, self._closed = end_line, False
        how = mode() if enabled else "off"
        self._streams: list[TextIO] = []
        if how != "off":
            self._streams = list(_sinks) + ([sys.stderr] if how == "lines" else [])
        self._tqdm = None
        if how == "bars":
            from tqdm.auto import tqdm

            kw = dict(smoothing=SMOOTHING, mininterval=MININTERVAL, dynamic_ncols=True, leave=False)
            self._tqdm = tqdm(total=total, desc=desc, unit=unit, **{**kw, **tqdm_kwargs})
        self._t0 = self._last = time.perf_counter()
        self._start = self.n
        if start is None:
            start = self._amount(total) if total is not None else "started"
            start += f" (from {self._amount(self.n)})" if self.n else ""
        self._say(start)

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("this bar has no iterable: call update(n)")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def __bool__(self) -> bool:  # a bar is a bar, even of unknown or zero length (as tqdm's are)
        return True

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        if self._tqdm is not None:
            self._tqdm.update(n)
        if self._streams:
            now = time.perf_counter()
            if now - self._last >= LINE_EVERY and not (self.total is not None and self.n >= self.total):
                self._last = now
                self._say(self._so_far(now - self._t0))

    @property
    def total(self) -> float | None:
        return self._total

    @total.setter
    def total(self, value: float | None) -> None:  # once known (an archive's member count, read after opening)
        self._total = value
        if self._tqdm is not None:
            self._tqdm.total = value
            self._tqdm.refresh()

    @property
    def drawn(self) -> bool:
        """Whether a bar is drawn (a terminal): what only a bar shows (a postfix) need not be computed otherwise."""
        return self._tqdm is not None

    def set_postfix(self, **kwargs: Any) -> None:
        """Shown beside the bar (e.g. the loss); lines do not repeat it."""
        if self._tqdm is not None:
            self._tqdm.set_postfix(**kwargs, refresh=False)

    def set_description(self, desc: str) -> None:
        self.desc = desc
        if self._tqdm is not None:
            self._tqdm.set_description(desc, refresh=False)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._tqdm is not None:
            self._tqdm.close()
        if self._end_line:
            secs = time.perf_counter() - self._t0
            done = self.n - self._start
            stopped = self.total is not None and self.n < self.total
            what = f"{self._amount(self.n)} of {self._amount(self.total)}" if stopped else self._amount(self.n)
            self._say(f"{'stopped at ' if stopped else ''}{what} in {_seconds(secs)}{self._rate(done, secs)}")

    # the line form
    def _say(self, text: str) -> None:
        line = f"{self.desc}: {text}" if self.desc else text
        for s in self._streams:
            try:
                s.write(line + "\n")
                s.flush()
            except (ValueError, OSError):  # a closed log or a reader that left: progress is never the error
                pass

    def _so_far(self, secs: float) -> str:
        done = self.n - self._start
        if self.total:
            left = (self.total - self.n) * secs / done if done > 0 else None
            eta = f", ~{_seconds(left)} left" if left is not None else ""
            if not (float(self.n).is_integer() and float(self.total).is_integer()):  # weighted steps: a share
                return f"{100 * self.n / self.total:.0f}%{eta}"
            return f"{self._count(self.n)}/{self._amount(self.total)}{eta}"
        return f"{self._amount(self.n)}, {_seconds(secs)} so far"

    def _count(self, n: float) -> str:
        if self._unit_scale:
            from tqdm import tqdm

            return tqdm.format_sizeof(n, divisor=self._divisor)
        return f"{n:,.0f}" if float(n).is_integer() else f"{n:,.1f}"

    def _amount(self, n: float | None) -> str:
        if n is None:
            return "?"
        unit = self.unit if self._unit_scale or n == 1 or self.unit == "it" else _PLURALS.get(self.unit, self.unit)
        if self._unit_scale:
            return f"{self._count(n)}{unit}"
        return f"{self._count(n)} {unit}" if unit != "it" else self._count(n)

    def _rate(self, done: float, secs: float) -> str:
        if done <= 0 or secs <= 0:
            return ""
        r = done / secs
        if self._unit_scale:
            return f" ({self._count(r)}{self.unit}/s)"
        if r >= 100:
            return f" ({r:,.0f}/s)"
        return f" ({r:.1f}/s)" if r >= 1 else f" ({secs / done:,.1f} s each)"


def bar(iterable: Iterable | None = None, total: float | None = None, desc: str = "", unit: str = "it",
        enabled: bool = True, **tqdm_kwargs: Any) -> Bar:
    """A progress bar over `iterable` (or `total` steps of `update(n)`). `enabled=False`: silent.
    Extra keyword arguments: `start` (the first line's text instead of the total), `end_line=False` (no last
    line: the caller prints its own), and tqdm's (unit_scale, unit_divisor, initial, leave, bar_format...)."""
    return Bar(iterable, total=total, desc=desc, unit=unit, enabled=enabled, **tqdm_kwargs)


def _seconds(s: float) -> str:
    if s < 100:
        return f"{s:.1f} s"
    if s < 600:
        return f"{s:.0f} s"
    return f"{s / 60:.0f} min"
