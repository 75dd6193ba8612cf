"""The one place that reads and writes run directories: weights, their meta, configs, figures.

`model.safetensors` holds weights only (loading never unpickles); `model.json` holds what the weights
need to see images as they were trained to (arch, classes, sizes, normalisation).
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import progress
from .errors import UserError

if TYPE_CHECKING:  # torch loads where weights are read or written: the CLI checks its paths with this module
    import torch  # before torch is imported (`check_can_make`, `check_run_dir`)
    from torch import nn

MODEL_FILE, META_FILE = "model.safetensors", "model.json"


CONFIG_FILE, CHECKPOINT_FILE = "config.json", "checkpoint.safetensors"


def _numbered(base: Path, k: int) -> Path:
    return base if k == 1 else base.with_name(f"{base.name}-{k}")


def free_run_dir(path: str | Path) -> Path:
    """Where `new_run_dir(path)` would put a run now: `path` if nothing is there, else the first free `path-2`,
    `path-3`... (a file or a dangling link of that name counts as taken: it is never replaced)."""
    base, k = Path(path), 1
    while _numbered(base, k).exists() or _numbered(base, k).is_symlink():
        k += 1
    return _numbered(base, k)


def new_run_dir(path: str | Path) -> Path:
    """`path` if it is free, else `path-2`, `path-3`...: a run never overwrites an earlier one.

    Call it once the job can start (data loaded, settings checked): a user error before that leaves nothing
    behind, so the numbering does not drift. Each name is claimed by one `mkdir` that fails when it exists, so two
    jobs started at once on the same name get two folders, never one shared (the other takes the next number)."""
    base = Path(path)
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
        k = 1
        while True:
            candidate = _numbered(base, k)
            try:
                candidate.mkdir()
                return candidate
            except FileExistsError:
                k += 1
    except OSError as e:  # `check_run_dir` says this before any work; here the disk changed since
        raise UserError(f"{path}: cannot make the run directory ({e.strerror or e})") from None


def check_can_make(path: str | Path) -> None:
    """Before any work: that a file or folder at `path` (its missing parent folders included) can be made, or a
    UserError saying why not: a file where a parent folder should be (`somefile.py/run`), or a folder that takes
    no new entries (read-only, `/proc`). One empty folder is made and removed in the nearest existing folder to
    find out: permission bits do not say it for root, nor for /proc or a read-only mount."""
    above = next(a for a in Path(path).absolute().parents if a.exists())
    if not above.is_dir():
        raise UserError(f"{path}: {above} is a file, so the folder cannot be made")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".imgclf-check-", dir=above))
    except OSError as e:
        raise UserError(f"{path}: cannot make a folder in {above} ({e.strerror or e})") from None


def check_run_dir(path: str | Path, flag: str | None = None) -> str | None:
    """Before any work (the plan, the decoding): that `new_run_dir(path)` can make its folder (`check_can_make`).
    Returns the notice to print when `path`, given by the user as `flag` (--out), is taken, naming where the run
    goes instead (never over it); None otherwise (a default path's -2 shows in the run's last line)."""
    path = Path(path)
    check_can_make(path)
    target = free_run_dir(path)
    if flag is None or target == path:
        return None
    what = "is a file" if path.is_file() else "exists"
    return f"{flag} {path} {what}: this run goes to {target}"


def _file_mode() -> int:
    """What `open()` gives a new file under the process umask (0644 usually); safetensors writes 0600."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def publish(tmp: Path, dest: Path) -> None:
    """Make a finished temporary file `dest` atomically: fsync, the usual permissions, rename, fsync the
    folder. A kill at any moment leaves the old file or the new one, never half of one."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, _file_mode())
    os.replace(tmp, dest)
    try:
        fd = os.open(dest.parent, os.O_RDONLY)
    except OSError:  # a platform without directory fds (Windows): the rename is what matters
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def written_whole(path: str | Path) -> Iterator[Path]:
    """A temporary file beside `path` to write, made `path` (`publish`) only when the block ends without an error:
    a crash or Ctrl-C mid-write leaves the earlier file or none, never half of one, and no temporary file. The
    temporary name is the process's own, so jobs writing one shared file at once (the caches under
    ~/.cache/imgclf) never mix their bytes."""
    dest = Path(path)
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        publish(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def check_version(found: str | None, what: str | Path) -> None:
    """A run directory or checkpoint written by a newer imgclf may hold what this one cannot read."""
    from . import __version__

    def parts(v: str) -> tuple[int, ...]:
        return tuple(int(p) for p in v.split(".")[:3] if p.isdigit())

    if found and parts(str(found)) > parts(__version__):
        raise UserError(f"{what}: written by imgclf {found}, newer than this one ({__version__}); upgrade imgclf")


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    loaded = sys.modules.get("torch")  # no tensor exists before torch is imported: none to import it for
    if loaded is not None and isinstance(obj, loaded.Tensor):
        return obj.tolist()
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically (`written_whole`), so a killed run never leaves half a file."""
    with written_whole(path) as tmp:
        tmp.write_text(json.dumps(_clean(obj), indent=2) + "\n")


def read_json(path: str | Path) -> Any:
    """A JSON file of ours; a truncated or corrupt one is a `UserError` that names it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: corrupt or truncated JSON ({e})") from None


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file; a truncated or corrupt one is a `UserError` that names it (not a Rust traceback)."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises SafetensorError, OSError or a bare Exception by case
        raise UserError(f"{path}: corrupt or truncated weights file ({str(e).splitlines()[0][:120]})") from None


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """`model.load_state_dict(state)`, with weights of another architecture a `UserError` naming `source`."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise UserError(f"{source}: these weights do not fit the model ({first}); "
                        "were they written for another --arch?") from None


def read_config(run: str | Path) -> dict[str, Any]:
    """RUN/config.json, or {} when the run has none (a model saved from Python, a run not begun)."""
    path = Path(run) / CONFIG_FILE
    return read_json(path) if path.is_file() else {}


def update_config(run: str | Path, **fields: Any) -> None:
    """Change top-level fields of RUN/config.json (the run's status, as it goes)."""
    write_json(Path(run) / CONFIG_FILE, {**read_config(run), **fields})


def save_model(run: str | Path, model: nn.Module, meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    from . import __version__

    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with written_whole(run / MODEL_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    write_json(run / META_FILE, {**meta, "imgclf_version": __version__})


def require_model(run: Path) -> None:
    """A one-line error when `run` holds no model: an unfinished run (killed, or stopped before its first epoch
    ended) is told how to go on; anything else is not a run directory."""
    if (run / MODEL_FILE).is_file() and (run / META_FILE).is_file():
        return
    if (run / CONFIG_FILE).is_file() and (run / CHECKPOINT_FILE).is_file():
        raise UserError(f"{run}: an unfinished run (stopped or killed before it wrote a model); `imgclf train "
                        f"--resume {run}` goes on from its last checkpoint")
    raise UserError(f"{run}: not a run directory (needs {MODEL_FILE} and {META_FILE}); train one first")


def check_run(run: str | Path, backend: str = "eager") -> None:
    """The one-line errors of a RUN that holds no model, torch-free: `read_run` says them, and the CLI says them
    before torch loads (`cli.main` runs each command's `check` first): in a fraction of a second instead of after
    ~5 s of imports. A file is an exported model (its loader checks it); another `backend` reads the run's exported
    file, whose check names the command that writes it."""
    run = Path(run)
    if not run.exists():
        raise UserError(f"{run}: no such run directory")
    if run.is_dir() and backend == "eager":
        require_model(run)


def check_resumable(run: str | Path) -> None:
    """The one-line error of a --resume folder that is no run of `imgclf train` (no config.json), torch-free: the
    job's `resume_config` says it, and the CLI says it before torch loads."""
    if not (Path(run) / CONFIG_FILE).is_file():
        raise UserError(f"{run}: no {CONFIG_FILE}: not a run directory of `imgclf train`")


def weights_digest(run: str | Path) -> str | None:
    """sha1 of RUN/model.safetensors (None when absent): what an exported file records it was made from, so a run
    trained on since (`train --resume`) cannot be served from a stale export."""
    import hashlib

    path = Path(run) / MODEL_FILE
    return hashlib.sha1(path.read_bytes()).hexdigest() if path.is_file() else None


def read_run(run: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(weights, meta) of a run directory, with a clear error when it is not one."""
    run = Path(run)
    check_run(run)
    if not run.is_dir():
        require_model(run)
    meta = read_json(run / META_FILE)
    if not isinstance(meta, dict) or "arch" not in meta or "classes" not in meta:
        raise UserError(f"{run / META_FILE}: not a model description (needs arch and classes)")
    check_version(meta.get("imgclf_version"), run / META_FILE)
    return load_tensors(run / MODEL_FILE), meta


class _Tee:
    """A text stream writing to a console stream and a log file (flushed each line: a killed run keeps it)."""

    def __init__(self, console, log):
        self.console, self.log = console, log

    def write(self, s: str) -> int:
        self.console.write(s)
        self.log.write(s)
        self.log.flush()
        return len(s)

    def flush(self) -> None:
        self.console.flush()

    def isatty(self) -> bool:
        return self.console.isatty()

    def fileno(self) -> int:
        return self.console.fileno()


@contextmanager
def early_lines() -> Iterator[io.StringIO]:
    """Keep what a job prints before its run directory exists (the plan, the decoding's lines, the data's warnings)
    to be written into train.log once it does (`log_to(..., early=...)`); the console shows it as usual."""
    buf = io.StringIO()
    show = warnings.showwarning

    def show_and_keep(message, category, filename, lineno, file=None, line=None):
        show(message, category, filename, lineno, file, line)
        buf.write(warnings.formatwarning(message, category, filename, lineno, line))

    with warnings.catch_warnings():  # restores the hook on the way out
        warnings.showwarning = show_and_keep  # the documented hook for where warnings go
        with redirect_stdout(_Tee(sys.stdout, buf)), progress.log_lines(buf):
            yield buf


@contextmanager
def log_to(path: Path, console=None) -> Iterator[None]:
    """Print to the console and to RUN/train.log: the recipe chosen, epochs, checkpoints, resume hints; and each
    progress bar's lines (start, every ~30 s, end with seconds) whether or not the console shows the bar."""
    with open(path, "a") as f, redirect_stdout(_Tee(console or sys.stdout, f)), progress.log_lines(f):
        yield
