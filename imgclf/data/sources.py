"""Where items and labels come from: image files in folders, a regex on file names, or a CSV.

Every source returns the same thing, an `Items` record (paths, labels, is_valid), so splitting,
decoding and loading have one path whatever the labels came from.

Listing a folder accounts for every entry it does not use (`Unused`, by kind): hidden files and folders,
other extensions, folders named like images, dangling symlinks, symlink loops, unreadable entries and
entries beside the train/ and valid/ folders. Symlinks to images and folders that exist are followed.
"""

from __future__ import annotations

import csv
import difflib
import errno
import hashlib
import os
import random
import re
import stat
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..errors import UserError

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
VALID_NAMES = ("valid", "val", "validation")
TRAIN_NAMES = ("train", "training")


# why an entry under DATA is not used, in the order they are reported
UNUSED_KINDS = ("empty_class_folder", "not_image_ext", "hidden", "directory_named_like_image", "dangling_symlink",
                "symlink_loop", "unreadable", "not_a_file", "outside_split", "run_directory")
# files only imgclf's run directories hold together: a run written inside DATA (`imgclf train .` puts its default
# runs/NAME there) is left out of the data, not read as a class of loss.png and confusion_matrix.png
RUN_MARKERS = (("config.json", "train.log"), ("model.safetensors", "model.json"))


@dataclass
class Unused:
    """Entries under a data folder that are not used as images: a count per kind and a few example paths.

    Kinds: `not_image_ext` (notes.txt, x.jpg.bak), `hidden` (.DS_Store, .ipynb_checkpoints/: not looked
    into), `directory_named_like_image` (a folder `x.jpg/`; what it holds is still listed), `dangling_symlink`,
    `symlink_loop` (a link to itself or to a folder above it), `unreadable` (no permission), `not_a_file`
    (a FIFO, socket or device), `outside_split` (beside train/ and valid/, e.g. a test/ folder) and
    `empty_class_folder` (a class folder without images: only where the caller keeps going, `imgclf inspect`;
    training refuses one) and `run_directory` (an imgclf run, or a folder of runs such as the default runs/,
    written inside the data folder: not looked into)."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[Path]] = field(default_factory=dict)
    max_examples: ClassVar[int] = 5

    def add(self, kind: str, path: Path) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        shown = self.examples.setdefault(kind, [])
        if len(shown) < self.max_examples:
            shown.append(path)

    def update(self, other: Unused) -> None:
        for kind, n in other.counts.items():
            self.counts[kind] = self.counts.get(kind, 0) + n
            shown = self.examples.setdefault(kind, [])
            shown += other.examples.get(kind, [])[: self.max_examples - len(shown)]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __bool__(self) -> bool:
        return self.total > 0

    def to_dict(self) -> dict[str, Any]:
        """For metrics.json and inspect.json: {"total", "counts": {kind: n}, "examples": {kind: [path]}}."""
        kinds = sorted(self.counts, key=_kind_order)
        return {"total": self.total, "counts": {k: self.counts[k] for k in kinds},
                "examples": {k: [str(p) for p in self.examples.get(k, [])] for k in kinds}}

    def describe(self, root: str | Path | None = None) -> str:
        """One line: `3 not_image_ext (e.g. a/notes.txt), 1 dangling_symlink (e.g. b/gone.jpg)`."""
        def rel(p: Path) -> str:
            try:
                return str(p.relative_to(root)) if root is not None else str(p)
            except ValueError:
                return str(p)

        return ", ".join(f"{self.counts[k]} {k} (e.g. {rel(self.examples[k][0])})"
                         for k in sorted(self.counts, key=_kind_order))

    def warn(self, where: str | Path) -> None:
        """One warning line naming the kinds, with an example of each; a no-op when nothing is unused."""
        if self:
            warnings.warn(f"{where}: {self.total} entr{'y' if self.total == 1 else 'ies'} not used as images: "
                          f"{self.describe(where)}", stacklevel=3)


def _kind_order(kind: str) -> int:
    return UNUSED_KINDS.index(kind) if kind in UNUSED_KINDS else len(UNUSED_KINDS)


@dataclass
class Items:
    """Labelled image files and which of them are held out for validation."""

    paths: list[Path]
    labels: list[str]
    is_valid: list[bool]
    tags: list[list[str]] | None = None  # multi-label from folders: each item's folder names (may hold spaces)
    unused: Unused = field(default_factory=Unused)  # entries under the folder(s) listed that are not images
    # who made the train/valid split, which says what the near-duplicate check after decoding may do
    # (`dedup.py`): "drawn" (our seeded split: groups straddling it are moved to train), "given" (valid/ folder,
    # is_valid column, IDX files) and "legacy" (the plain split older runs rebuild): warn only; "checked": an
    # earlier decode of these items already did it (`ImageData.resized`)
    split_origin: str = "given"
    label_column: str = "label"  # a CSV's label column as its header names it (a regression target: "age")

    def item_tags(self) -> list[list[str]]:
        """Each item's tags: the folders it was found in, else its label split on spaces (a CSV's tags)."""
        return self.tags if self.tags is not None else [split_tags(label) for label in self.labels]

    def split(self, valid: bool) -> tuple[list[Path], list[str]]:
        keep = [i for i, v in enumerate(self.is_valid) if v == valid]
        return [self.paths[i] for i in keep], [self.labels[i] for i in keep]


def displayable(name: str) -> str:
    """`name` as text anything can show or write: a file or folder name that is not UTF-8 (`abeill\\xe9`, Latin-1,
    as old Windows zips write) reaches Python with a lone surrogate (`abeill\\udce9`) that matplotlib refuses
    (`set_text(): incompatible function arguments`) and a UTF-8 file cannot hold (predict's CSV stopped half
    written); its bytes are shown escaped instead, as `abeill\\xe9`. backslashreplace, not surrogateescape: a CSV
    stays valid UTF-8 for pandas and Excel, at the cost of that one path not being usable as written. Other names
    are unchanged."""
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no undecodable byte made
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTS and not path.name.startswith(".")


def find_images(path: str | Path) -> list[Path]:
    """Image files under `path`, recursively, sorted; hidden files and folders are ignored."""
    return scan_images(path)[0]


def scan_images(path: str | Path) -> tuple[list[Path], Unused]:
    """Image files under `path` (recursively, sorted) and the entries left out, by kind (see `Unused`).

    Symlinks are followed, to files and to folders; a link back to a folder above it is a `symlink_loop`
    and is not walked again. Hidden entries (a leading dot) are counted, not looked into."""
    root = Path(path)
    if not root.exists():
        raise UserError(f"{root}: no such file or directory")
    if root.is_file():
        if not is_image_file(root):
            raise UserError(f"{root}: not an image file (extensions: {', '.join(sorted(IMAGE_EXTS))})")
        return [root], Unused()
    found: list[Path] = []
    unused = Unused()
    st = root.stat()
    stack = [(root, frozenset({(st.st_dev, st.st_ino)}))]  # a folder and the folders above it (loop guard)
    while stack:
        folder, above = stack.pop()
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            unused.add("unreadable", folder)
            continue
        for name in names:
            p = folder / name
            kind, st = _entry_kind(p)
            if kind == "dir":
                key = (st.st_dev, st.st_ino)
                if key in above:
                    unused.add("symlink_loop", p)
                    continue
                if p.suffix.lower() in IMAGE_EXTS:
                    unused.add("directory_named_like_image", p)
                stack.append((p, above | {key}))
            elif kind == "image":
                found.append(p)
            else:
                unused.add(kind, p)
    return sorted(found), unused


def entry_kind(path: str | Path) -> str:
    """What one path is: "dir", "image", or the `Unused` kind that leaves it out (e.g. "dangling_symlink")."""
    return _entry_kind(Path(path))[0]


def is_run_dir(folder: Path) -> bool:
    """Whether `folder` is an imgclf run directory (a training run's, or an export's: `RUN_MARKERS`)."""
    return any(all((folder / name).is_file() for name in marker) for marker in RUN_MARKERS)


def _holds_runs(folder: Path) -> bool:
    """An imgclf run, or a folder whose only non-hidden entries are runs (runs/ with runs/a, runs/b)."""
    if is_run_dir(folder):
        return True
    try:
        entries = [e for e in folder.iterdir() if not e.name.startswith(".")]
    except OSError:
        return False
    return bool(entries) and all(e.is_dir() and is_run_dir(e) for e in entries)


def _entry_kind(p: Path) -> tuple[str, os.stat_result | None]:
    """What one directory entry is: "dir", "image", or the `Unused` kind that leaves it out; and its stat."""
    if p.name.startswith("."):
        return "hidden", None
    try:
        st = p.stat()  # follows symlinks
    except OSError as e:
        if p.is_symlink():
            return ("symlink_loop" if e.errno == errno.ELOOP else "dangling_symlink"), None
        return "unreadable", None
    if stat.S_ISDIR(st.st_mode):
        return ("run_directory" if _holds_runs(p) else "dir"), st
    if not stat.S_ISREG(st.st_mode):
        return "not_a_file", st
    if p.suffix.lower() not in IMAGE_EXTS:
        return "not_image_ext", st
    if not os.access(p, os.R_OK):
        return "unreadable", st
    return "image", st


def _account_level(folder: Path, used: Sequence[Path], unused: Unused) -> None:
    """Entries of one folder level that are not `used` (the split folders, or the one wrapping folder)."""
    for p in sorted(folder.iterdir()):
        if p in used:
            continue
        kind, _ = _entry_kind(p)
        unused.add("outside_split" if kind in ("dir", "image") else kind, p)


def _require_images(paths: Sequence[Path], where: Path) -> None:
    if not paths:
        raise UserError(f"{where}: no images found (looked for {', '.join(sorted(IMAGE_EXTS))})")


def content_keys(paths: Sequence[Path]) -> list[str]:
    """Each file's content hash (blake2b, as the audit's): byte-identical copies share a key.

    Measured (2 shared, busy CPU cores): hymenoptera's 398 files in 0.3 s; 10,000 64-160 px JPEGs in 0.4 s."""
    return [_content_key(Path(p)) for p in paths]


def _content_key(path: Path) -> str:
    try:
        return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
    except OSError:  # unreadable or missing: its own group (decoding names it later)
        return f"unreadable:{path}"


def random_split(
    n: int, valid_pct: float, seed: int, labels: Sequence[str] | None = None, groups: Sequence[str] | None = None,
) -> list[bool]:
    """A seeded split: the same seed, items (and labels, groups) always hold out the same items.

    `groups`: items with the same key (a content hash: copies of one file) land together on one side, so
    a copy in training cannot leak into validation. `labels`: stratify by class (single-label only): a class
    of n >= 2 items puts round(valid_pct * n), at least 1 and at most n - 1, into validation; a class of one
    item (or whose items are all copies of one file) stays in training. Without labels, round(valid_pct * n)
    items (at least 1) are held out at random; with no duplicates this is exactly the split of before.
    A stratified split that holds out nothing (every class a single image, or copies of one) stays so: any image
    held out would leave its class with none to train on (the plain split did, and training then stopped on a class
    "without training images" that had one); `targets.encode_targets` says why the validation split is empty.

    Near duplicates (re-saved, resized, mirrored copies: the audit's fingerprints) are not grouped here, because
    finding them from the files costs a second decode pass before the split (the audit's `scan_files` +
    `near_pairs`: 2.2 s on hymenoptera's 398 files, hashing them 0.3 s; 2 shared, busy cores). `ImageData`
    regroups them after decoding, from the presized tensors (`dedup.py`): the validation members of a group that
    straddles this split move to training (`Items.split_origin` "drawn")."""
    if not 0 < valid_pct < 1:
        raise UserError(f"--valid-pct must be between 0 and 1, got {valid_pct}")
    keys = list(groups) if groups is not None else list(range(n))
    units: dict = {}  # group key -> its item indices, in the order of first appearance
    for i, k in enumerate(keys):
        units.setdefault(k, []).append(i)
    rng = random.Random(seed)
    held: set[int] = set()
    if labels is not None:
        by_class: dict[str, list[list[int]]] = {}
        for unit in units.values():  # a unit of copies counts for the class of its first item
            by_class.setdefault(labels[unit[0]], []).append(unit)
        for label in sorted(by_class):
            members = by_class[label]
            size = sum(len(u) for u in members)
            if size < 2 or len(members) < 2:
                continue
            target = min(max(1, round(valid_pct * size)), size - 1)
            held |= _fill(members, target, rng, at_least_one=True)
        return [i in held for i in range(n)]
    held = _fill(list(units.values()), max(1, round(n * valid_pct)), rng, at_least_one=False)
    return [i in held for i in range(n)]


SPLITS = ("stratified", "random")


def split_items(paths: Sequence[Path], labels: Sequence[str], valid_pct: float, seed: int,
                stratify: bool = True, split: str = "stratified") -> list[bool]:
    """The random split of files: copies of one file kept together; stratified by label when `stratify`
    (single-label classes; multi-label tags and regression targets are not classes to stratify).
    `split="random"`: the plain seeded split of imgclf before 2026-11-30 (no classes, no copies), so a run
    written then rebuilds the validation images it was scored on (`config.RunConfig.from_dict`)."""
    if not 0 < valid_pct < 1:  # before reading any file
        raise UserError(f"--valid-pct must be between 0 and 1, got {valid_pct}")
    if split not in SPLITS:
        raise UserError(f"--split {split}: choose {' or '.join(SPLITS)}")
    if split == "random":
        return random_split(len(paths), valid_pct, seed)
    return random_split(len(paths), valid_pct, seed, labels if stratify else None, content_keys(paths))


def split_origin(split: str) -> str:
    """`Items.split_origin` of a split drawn by `split_items(split=...)`: the plain "random" one of older runs
    must stay as it was drawn (a rebuilt run scores the same images), so it is "legacy", not "drawn"."""
    return "legacy" if split == "random" else "drawn"


def _fill(units: list[list[int]], target: int, rng: random.Random, at_least_one: bool) -> set[int]:
    """Whole units, in a seeded random order, while they fit in `target` items (the smallest if none fit)."""
    order = list(range(len(units)))
    rng.shuffle(order)
    held: set[int] = set()
    for u in order:
        if len(held) + len(units[u]) <= target:
            held.update(units[u])
    if not held and at_least_one:
        held.update(min(units, key=len))
    return held


def _find_split_dirs(root: Path, valid: str | None) -> tuple[Path, Path | None] | None:
    """The (train, valid) folders when the data set ships its own split; (train, None) for a train/ folder alone
    (the split is drawn from it); None for class folders."""
    names = (valid,) if valid else VALID_NAMES
    valid_dir = next((root / n for n in names if (root / n).is_dir()), None)
    if valid_dir is None:
        if valid:
            raise UserError(f"{root / valid}: validation folder not found")
        train_dir = next((root / n for n in TRAIN_NAMES if (root / n).is_dir()), None)
        if train_dir is None:
            return None
        others = [p.name for p in root.iterdir()
                  if p.is_dir() and p != train_dir and not p.name.startswith(".") and not _holds_runs(p)]
        if others:
            raise UserError(f"{root}: found {train_dir.name}/ beside {', '.join(sorted(others))}/ but no valid/ "
                            "or val/; name the validation folder with --valid NAME")
        return train_dir, None
    train_dir = next((root / n for n in TRAIN_NAMES if (root / n).is_dir()), None)
    if train_dir is None:
        raise UserError(f"{root}: found {valid_dir.name}/ but no train/ folder beside it")
    return train_dir, valid_dir


def label_from_re(pattern: str):
    """A labeller taking the regex's first capture group on the file name (without a group, the whole match).

    A pattern without a group that matches a whole file name (`^.+_\\d+\\.jpg$`) is refused: it made every
    file its own class, and the error that followed listed file names as classes without training images."""
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise UserError(f"--label-re '{pattern}': invalid regex ({e})") from None

    def label(path: Path) -> str:
        m = rx.search(path.name)
        if m is None:
            raise UserError(f"{path}: file name does not match --label-re '{pattern}'")
        if not rx.groups and m.group(0) == path.name:
            raise _no_group(pattern, f"it matches all of {path.name!r}")
        if not m.group(1 if rx.groups else 0):
            raise UserError(f"{path}: --label-re '{pattern}' matches but its label group is empty")
        return m.group(1) if rx.groups else m.group(0)

    return label


def is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _no_group(pattern: str, why: str) -> UserError:
    return UserError(f"--label-re '{pattern}' has no capture group and {why}, so every file would be its own "
                     r"class: put the label part of the name in parentheses, e.g. '^(.+)_\d+\.jpg$'")


def _check_folder_classes(split_root: Path, labels: Sequence[str], empty: Unused | None = None) -> None:
    """An empty class folder is almost always a mistake (a failed copy): say which (`empty`: note it there and go
    on, as an audit does)."""
    present = set(labels)
    for d in sorted(p for p in split_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if d.name not in present and not _holds_runs(d):
            if empty is None:
                raise UserError(f"{d}: class folder has no images")
            empty.add("empty_class_folder", d)


def items_from_folder(
    path: str | Path,
    valid: str | None = None,
    valid_pct: float = 0.2,
    seed: int = 42,
    label_re: str | None = None,
    multi_label: bool = False,
    stratify: bool = True,
    split: str = "stratified",
    keep_empty: bool = False,
) -> Items:
    """Labels from parent folder names (or `label_re` on file names); split from train/ + valid/ or at random.

    `multi_label`: an image copied into several class folders is one item tagged with each (merged before
    the random split, so its copies cannot land on both sides). The random split (`split_items`) is stratified
    by class unless `stratify` is False or `multi_label` is set. `keep_empty`: an empty class folder is noted in
    `Items.unused` instead of refused (`imgclf inspect` reports it and goes on)."""
    root = require_folder(path)
    unused = Unused()
    empty = unused if keep_empty else None
    root = _unwrap(root, unused)
    dirs = _find_split_dirs(root, valid)
    if dirs is not None and dirs[1] is None:  # train/ alone: its class folders, with a split drawn from them
        _account_level(root, dirs[:1], unused)
        warn_once(f"{root}: {dirs[0].name}/ without a valid/ or val/ folder: validation is a seeded "
                  f"{valid_pct:.0%} of {dirs[0].name}/ (--valid-pct, --seed)", stacklevel=2)
        root, dirs = dirs[0], None
    if dirs is not None:
        _account_level(root, dirs, unused)
        parts = []
        for d, is_valid in ((dirs[0], False), (dirs[1], True)):
            paths, left_out = scan_images(d)
            unused.update(left_out)
            _require_images(paths, d)
            parts.append((paths, folder_labels(paths, d, label_re, empty), [is_valid] * len(paths)))
        items = Items(*(a + b for a, b in zip(*parts, strict=True)))
        items = merge_by_content(items) if multi_label else items
        items.unused = unused
        return items
    paths, left_out = scan_images(root)
    unused.update(left_out)
    _require_images(paths, root)
    items = Items(paths, folder_labels(paths, root, label_re, empty), [False] * len(paths))
    if multi_label:
        items = merge_by_content(items)
    items.is_valid = split_items(items.paths, items.labels, valid_pct, seed, stratify and not multi_label, split)
    items.split_origin = split_origin(split)
    items.unused = unused
    return items


_WARNED: set[str] = set()  # what `warn_once` said in this process


def warn_once(message: str, stacklevel: int = 2) -> None:
    """A warning about how the data is read, once per process: `imgclf train` lists a folder up to three times (the
    plan, the size, the data) and encodes its labels again at each size it trains at."""
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, stacklevel=stacklevel + 1)


def require_folder(path: str | Path) -> Path:
    """`path` as a folder, or a UserError that says what it is instead (a file, an archive, nothing)."""
    root = Path(path)
    if root.is_dir():
        return root
    if not root.exists():
        raise UserError(f"{root}: no such folder")
    if root.suffix.lower() in (".zip", ".tar", ".gz", ".tgz", ".xz", ".bz2", ".7z"):
        raise UserError(f"{root}: an archive, not a folder: unpack it and give the folder it makes")
    raise UserError(f"{root}: a file, not a folder: give the folder that holds the class folders (or the images, "
                    "with --label-re), or a CSV of file,label rows")


def _unwrap(root: Path, unused: Unused) -> Path:
    """Step into a lone wrapping folder (`data/hymenoptera_data/train/...`, as archives unpack); what lies
    beside a folder stepped into (a README, .DS_Store) goes into `unused`."""
    while True:
        entries = [p for p in root.iterdir() if not p.name.startswith(".")]
        subdirs = [p for p in entries if p.is_dir()]
        if len(subdirs) != 1 or any(is_image_file(p) for p in entries if p.is_file()):
            return root
        if (subdirs[0].name in (*TRAIN_NAMES, *VALID_NAMES)):
            return root
        inner = [p for p in subdirs[0].iterdir() if p.is_dir() and not p.name.startswith(".")]
        if len(inner) < 2 and not any(n.name in TRAIN_NAMES for n in inner):
            return root  # a single class folder: let the one-class check say so
        _account_level(root, subdirs, unused)
        root = subdirs[0]


def folder_labels(paths: Sequence[Path], split_root: Path, label_re: str | None, empty: Unused | None = None
                  ) -> list[str]:
    """Labels by regex on names, or by the first folder under `split_root` (torchvision's ImageFolder): what
    train and evaluate both read, so `class/sub/img.jpg` is `class` to each. `empty`: see `_check_folder_classes`."""
    if label_re:
        labeller = label_from_re(label_re)
        labels = [labeller(p) for p in paths]
        if len(paths) > 2 and len(set(labels)) == len(labels):
            if re.compile(label_re).groups == 0:
                raise _no_group(label_re, f"its whole match differs for each of the {len(paths)} files")
            if not all(is_number(v) for v in labels):  # numbers may be a regression's targets, each its own
                raise UserError(
                    f"--label-re '{label_re}': its group gives each of the {len(paths)} files a label of its own "
                    f"({labels[0]!r}, {labels[1]!r}, ...), so every file would be its own class: capture only the "
                    r"part of the name the files of a class share, e.g. '^(.+)_\d+\.jpg$'")
        return labels
    loose = next((p for p in paths if p.parent == split_root), None)
    if loose is not None:
        raise UserError(
            f"{loose}: image not inside a class folder; put images in {split_root}/<class>/ or use --label-re/--csv"
        )
    labels = [p.relative_to(split_root).parts[0] for p in paths]
    _check_folder_classes(split_root, labels, empty)
    return labels


_FILE_COLS = ("file", "filename", "fname", "path", "image", "name", "id")
_LABEL_COLS = ("label", "labels", "class", "category", "target", "y")


def items_from_csv(
    csv_file: str | Path, folder: str | Path | None = None, valid_pct: float = 0.2, seed: int = 42,
    label_col: str | None = None, stratify: bool = True, split: str = "stratified", test_rows: bool = False,
) -> Items:
    """Rows of `file,label[,is_valid]`; files are relative to `folder` (default: the CSV's folder).

    `label_col` names the label column (a regression target such as `age`); by default the first of
    label/labels/class/category/target/y, else the column after the file's. A multi-label row keeps its
    space-separated tags in one string (`split_tags` reads them). The split column (`is_valid`, or `split`
    with train/valid/test) marks validation rows; test rows are left out of both, unless `test_rows`
    (evaluate), which returns the test rows alone when there are any."""
    csv_path = Path(csv_file)
    if not csv_path.is_file():
        raise UserError(f"{csv_path}: CSV file not found")
    base = Path(folder) if folder is not None else csv_path.parent
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise UserError(f"{csv_path}: needs a header row and at least one data row")
    if rows[0] and (base / rows[0][0].strip()).is_file():  # no header row: file,label[,is_valid]
        rows.insert(0, ["file", "label", "is_valid"][: len(rows[0])])
    if len(rows) < 2:
        raise UserError(f"{csv_path}: needs a header row and at least one data row")
    header = [h.strip().lower() for h in rows[0]]
    fcol = next((header.index(c) for c in _FILE_COLS if c in header), 0)
    if label_col is not None:
        if label_col.strip().lower() not in header:
            raise UserError(f"{csv_path}: no column {label_col!r} (columns: {', '.join(rows[0])})")
        lcol = header.index(label_col.strip().lower())
    else:
        lcol = next((header.index(c) for c in _LABEL_COLS if c in header), 1 if fcol == 0 else 0)
    vcol = _split_column(csv_path, rows[0], header, (fcol, lcol))
    kept: list[tuple[Path, str, bool | None]] = []  # (file, label, split flag: True valid, None test)
    first: dict[Path, tuple[int, str]] = {}  # a file's first row and label: a second row must agree
    repeats: list[str] = []  # files listed twice with the same label: the repeats are left out
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) <= max(fcol, lcol):
            raise UserError(f"{csv_path}:{lineno}: expected a file and a label column")
        if not row[fcol].strip():
            raise UserError(f"{csv_path}:{lineno}: the file name is empty")
        p = base / row[fcol].strip()
        if not p.suffix and not p.exists():
            exts = sorted(IMAGE_EXTS) + sorted(e.upper() for e in IMAGE_EXTS)
            p = next((p.with_suffix(e) for e in exts if p.with_suffix(e).exists()), p)
        label = row[lcol].strip()
        if p in first:
            line0, label0 = first[p]
            if label0 != label:
                raise UserError(f"{csv_path}:{lineno}: {row[fcol].strip()} is listed again with label {label!r}; "
                                f"line {line0} gave it {label0!r} (one row per file; a multi-label row keeps its "
                                "tags in one cell, separated by spaces)")
            repeats.append(f"{row[fcol].strip()} (lines {line0} and {lineno})")
            continue
        first[p] = (lineno, label)
        flag = False if vcol is None else _split_flag(row[vcol] if vcol < len(row) else "", f"{csv_path}:{lineno}",
                                                      rows[0][vcol])
        kept.append((p, label, flag))
    if repeats:
        warnings.warn(f"{csv_path}: {len(repeats)} file(s) listed more than once with the same label, e.g. "
                      f"{repeats[0]}; each is used once", stacklevel=2)
    test = [r for r in kept if r[2] is None]
    if test_rows:  # evaluate: the test rows, or every row when none is marked test
        kept = [(p, label, True) for p, label, _ in test or kept]
    else:
        kept = [r for r in kept if r[2] is not None]
        if test:
            warnings.warn(f"{csv_path}: {len(test)} row(s) marked as test in column {rows[0][vcol]!r} are kept out "
                          "of training and validation; score the run on them with `imgclf evaluate RUN CSV`",
                          stacklevel=2)
    paths, labels, flags = [p for p, _, _ in kept], [label for _, label, _ in kept], [bool(f) for _, _, f in kept]
    missing = [p for p in paths if not p.exists()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"{missing[0]}: file listed in {csv_path.name} not found{more}")
    name = rows[0][lcol].strip() or "label"  # the target's name: `age`, not "label", in model.json and predict's CSV
    if vcol is not None:
        return Items(paths, labels, flags, label_column=name)
    is_valid = split_items(paths, labels, valid_pct, seed, stratify, split)
    return Items(paths, labels, is_valid, split_origin=split_origin(split), label_column=name)


_SPLIT_COLS = ("is_valid", "valid", "is_val", "validation", "split")  # not "set" or "fold": too often other things
_VALID_VALUES = ("1", "true", "t", "yes", "y", "valid", "val", "validation", "dev")
_HELD_OUT_VALUES = ("test", "holdout", "hold-out")
_TRAIN_VALUES = ("0", "false", "f", "no", "n", "train", "training", "")


def _split_column(csv_path: Path, names: Sequence[str], header: Sequence[str], used: tuple[int, int]) -> int | None:
    """The column that says which rows are validation (fastai's `is_valid`, or a `split` of train/valid), or None.
    A column whose name is close to `is_valid` but not it (`isvalid`, `is_vaild`) is a UserError rather than a
    silently drawn split: the user meant a split of their own."""
    for name in _SPLIT_COLS:
        if name in header and header.index(name) not in used:
            return header.index(name)
    for i, h in enumerate(header):
        if i not in used and difflib.get_close_matches(h, _SPLIT_COLS[:1], n=1, cutoff=0.75):
            raise UserError(f"{csv_path}: column {names[i]!r} looks like 'is_valid' misspelled; rename it to "
                            "'is_valid' (true/false per row) to use it as the split, or to anything else to draw one")
    return None


def _split_flag(value: str, where: str, column: str) -> bool | None:
    """True for a validation row, False for a training one, None for a test row (kept out of both)."""
    v = value.strip().lower()
    if v in _VALID_VALUES:
        return True
    if v in _TRAIN_VALUES:
        return False
    if v in _HELD_OUT_VALUES:
        return None
    raise UserError(f"{where}: {column} is {value.strip()!r}; use true/false, 1/0, yes/no, or train/valid/test")


def split_tags(label: str) -> list[str]:
    """The tags of a multi-label row: space-separated, as the planet and fastai CSVs write them."""
    return label.split()


def merge_by_content(items: Items) -> Items:
    """Multi-label data from folders: the same image copied into several class folders is one item with all
    those labels. Files are merged only when their bytes are identical (not just their names), within a split."""
    groups: dict[tuple[bool, str], int] = {}
    paths: list[Path] = []
    tags: list[list[str]] = []
    flags: list[bool] = []
    for p, label, valid in zip(items.paths, items.labels, items.is_valid, strict=True):
        key = (valid, hashlib.sha1(p.read_bytes()).hexdigest())
        if key in groups:
            if label not in tags[groups[key]]:
                tags[groups[key]].append(label)
            continue
        groups[key] = len(paths)
        paths.append(p)
        tags.append([label])
        flags.append(valid)
    return Items(paths, [" ".join(t) for t in tags], flags, tags)


def items_from_files(
    files: Sequence[str | Path], labels: Sequence[str], valid_pct: float = 0.2, seed: int = 42, stratify: bool = True,
) -> Items:
    if len(files) != len(labels):
        raise UserError(f"{len(files)} files but {len(labels)} labels")
    paths = [Path(f) for f in files]
    labels = [str(label) for label in labels]
    return Items(paths, labels, split_items(paths, labels, valid_pct, seed, stratify), split_origin="drawn")
