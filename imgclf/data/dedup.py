"""Splits that cannot leak near duplicates: the same picture re-saved, resized, brightened or mirrored.

Byte-identical copies are kept on one side of a drawn split before decoding (`sources.split_items`). Near
duplicates need pixels, so they are found here, once the images are decoded and presized: the audit's
fingerprint (`audit.tensor_fingerprints`: a 16x16 thumbnail less its best-fit plane, cosine >= 0.9 to
another's or to its mirror, `audit.NEAR`) of every presized image, each pair confirmed on 32x32 grey fingerprints
(`audit.confirm_pairs`), grouped transitively (`audit.near_groups`).
A group with members on both sides of the split:

- on a split we drew (`Items.split_origin` "drawn"): its validation members move to training (deterministic:
  the same files, seed and size move the same images), so validation never scores a copy of a training image;
  recorded in `ImageData.near_duplicates` (metrics.json "near_duplicates_moved") and said in one warning line;
- on a given split (a valid/ folder, a CSV's is_valid column, IDX files, older runs' plain split): nothing
  moves (the split is the user's); one warning line with the counts and an example pair.

Cost (2 shared cores under load ~15): hymenoptera's 398 images presized to 256 px, fingerprints + groups in
0.2-0.3 s on one thread (1.3 s on two: thread hand-offs). Above `MAX_IMAGES` images (Fashion-MNIST's 70,000)
the all-pairs search is skipped, with a note in the record: 10,000 images take ~0.8 s (audit.near_pairs),
growing as the square.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .audit import FINE_NEAR, NEAR, TooAlike, near_groups, tensor_fingerprints
from .sources import content_keys

if TYPE_CHECKING:
    from .core import ImageData

MAX_IMAGES = 20_000  # all pairs of 20,000 fingerprints: ~3 s on two quiet cores; beyond, the check is skipped


@dataclass
class NearDuplicates:
    """What the split's near-duplicate check found and did (metrics.json "near_duplicates_moved")."""

    checked: bool
    split_origin: str
    groups_straddling: int = 0  # groups with members in train and in valid, before any move
    moved: list[str] = field(default_factory=list)  # validation files moved to training
    examples: list[tuple[str, str]] = field(default_factory=list)  # (validation file, a training file like it)
    seconds: float = 0.0
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"checked": self.checked, "split_origin": self.split_origin,
                "groups_straddling": self.groups_straddling, "n_moved": len(self.moved), "moved": self.moved,
                "examples": [list(e) for e in self.examples],
                "method": f"cosine of 16x16 thumbnails of the presized images less their best-fit planes "
                          f"(or one's mirror) >= {NEAR}, and of 32x32 grey ones >= {FINE_NEAR}",
                "seconds": round(self.seconds, 4), "note": self.note}


def _name(path: Path, root: str) -> str:
    try:
        return os.path.relpath(path, root) if os.path.isdir(root) else str(path)
    except ValueError:
        return str(path)


def keep_near_duplicates_together(data: ImageData, threshold: float = NEAR) -> NearDuplicates:
    """Find near-duplicate groups straddling `data`'s split; on a drawn split move their validation members
    to training (in place: images, targets, paths and `data.items.is_valid`); warn once either way."""
    origin = data.items.split_origin
    t0 = time.perf_counter()
    n = data.n_train + data.n_valid
    if origin == "checked":
        return NearDuplicates(False, origin, note="checked when these items were first decoded")
    if not isinstance(data.train_images, torch.Tensor) or not isinstance(data.valid_images, torch.Tensor):
        return NearDuplicates(False, origin, note="images decoded per batch (too many to hold): not checked")
    if n > MAX_IMAGES:
        return NearDuplicates(False, origin, note=f"{n} images: more than {MAX_IMAGES} to compare pairwise; "
                                                  "not checked (`imgclf inspect` finds them from the files)")
    threads = torch.get_num_threads()
    if n < 5_000:  # small problems: one thread (on 2 busy cores, hymenoptera's check took 1.3 s on two, 0.5 s on one)
        torch.set_num_threads(1)
    try:
        prints = torch.cat([tensor_fingerprints(data.train_images), tensor_fingerprints(data.valid_images)])
        groups = near_groups(prints, threshold, image=lambda i: (
            data.train_images[i] if i < data.n_train else data.valid_images[i - data.n_train]))
    except TooAlike as e:
        return NearDuplicates(False, origin, note=str(e), seconds=time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    straddling = []
    for group in groups:
        train = [i for i in group if i < data.n_train]
        valid = [i - data.n_train for i in group if i >= data.n_train]
        if train and valid:
            straddling.append((train, valid))
    out = NearDuplicates(True, origin, groups_straddling=len(straddling))
    root = data.source
    out.examples = [(_name(data.valid_paths[v[0]], root), _name(data.train_paths[t[0]], root))
                    for t, v in straddling[:5]]
    if not straddling:
        out.seconds = time.perf_counter() - t0
        return out
    valid_idx = sorted(i for _, v in straddling for i in v)
    n_valid_dup = len(valid_idx)
    e = out.examples[0]
    if origin == "drawn":
        _move_to_train(data, valid_idx)
        out.moved = [_name(data.train_paths[-len(valid_idx) + k], root) for k in range(len(valid_idx))]
        warnings.warn(f"{data.source}: moved {n_valid_dup} validation image(s) to training: near duplicates "
                      f"(same picture re-saved, resized or mirrored) of training images, in {len(straddling)} "
                      f"group(s); e.g. {e[0]} ~ {e[1]}", stacklevel=3)
    else:
        why = "older runs' plain split" if origin == "legacy" else "the split is given, so nothing moves"
        warnings.warn(f"{data.source}: {n_valid_dup} validation image(s) in {len(straddling)} group(s) are near "
                      f"duplicates of training images ({why}): validation accuracy overstates; e.g. {e[0]} ~ "
                      f"{e[1]}; `imgclf inspect` lists them", stacklevel=3)
    out.seconds = time.perf_counter() - t0
    return out


def _move_to_train(data: ImageData, valid_idx: list[int]) -> None:
    """Append the validation rows `valid_idx` to the training split (in their order) and drop them from valid."""
    move = torch.tensor(valid_idx, dtype=torch.long)
    stay = torch.ones(data.n_valid, dtype=torch.bool)
    stay[move] = False
    moved_paths = [data.valid_paths[i] for i in valid_idx]
    data.train_images = torch.cat([data.train_images, data.valid_images[move]])
    data.train_y = torch.cat([data.train_y, data.valid_y[move]])
    data.train_paths = [*data.train_paths, *moved_paths]
    data.valid_images, data.valid_y = data.valid_images[stay], data.valid_y[stay]
    data.valid_paths = [p for p, s in zip(data.valid_paths, stay.tolist(), strict=True) if s]
    moved = set(moved_paths)
    data.items.is_valid = [v and p not in moved for p, v in zip(data.items.paths, data.items.is_valid, strict=True)]


# --- what a run trained on, by content: `evaluate` and `interpret --data` warn when they score it ---
TRAIN_CONTENT_FILE = "train_content.json"
CONTENT_METHOD = "blake2b-128 of the file bytes (images from arrays: of their uint8 pixels)"


def array_keys(images: torch.Tensor) -> list[str]:
    """Content keys of images that came as arrays (IDX rows): blake2b of each image's uint8 bytes, as given."""
    return [hashlib.blake2b(x.contiguous().numpy().tobytes(), digest_size=16).hexdigest() for x in images]


def training_keys(data: ImageData) -> list[str]:
    """The content key of every training image of `data` (after any near-duplicate moves)."""
    if data.arrays is not None:
        return array_keys(data.arrays[0])
    return content_keys(data.train_paths)


def validation_keys(data: ImageData) -> list[str]:
    """The content key of every validation image of `data` (what `interpret` scores)."""
    if data.arrays is not None:
        return array_keys(data.arrays[1])
    return content_keys(data.valid_paths)


def write_training_content(out: str | Path, data: Any) -> dict[str, Any]:
    """`RUN/train_content.json`: the training images' content keys, so a later `evaluate` can tell which of the
    images it scores the run trained on (by bytes, not names). Cost: hashing the files again, 0.3 s for
    hymenoptera's 398 (2 shared, busy cores); the file holds 35 bytes an image (2 MB for Fashion-MNIST)."""
    t = time.perf_counter()
    if not hasattr(data, "train_paths"):  # streamed shards (ShardData): no files to hash here
        return {"n": 0, "note": "streamed shards: training content not recorded"}
    keys = training_keys(data)
    rec = {"method": CONTENT_METHOD, "n": len(keys), "keys": sorted(set(keys))}
    (Path(out) / TRAIN_CONTENT_FILE).write_text(json.dumps(rec, separators=(",", ":")))
    return {"n": len(keys), "seconds": round(time.perf_counter() - t, 4)}


def read_training_content(run: str | Path) -> set[str] | None:
    """The content keys a run trained on; None for a run written before they were recorded."""
    path = Path(run) / TRAIN_CONTENT_FILE
    if not path.is_file():
        return None
    return set(json.loads(path.read_text())["keys"])


@dataclass
class SeenCheck:
    """Which scored images a run trained on (same bytes): `seen[i]`; `available` False for older runs."""

    available: bool
    seen: list[bool]

    @property
    def n_seen(self) -> int:
        return sum(self.seen)


def check_seen(run: str | Path | None, keys: list[str]) -> SeenCheck:
    """Mark which of the scored images (by content `keys`) `run` trained on. No record (an older run, or no
    run directory known): unavailable, and one warning saying so."""
    trained = read_training_content(run) if run is not None else None
    if trained is None:
        why = (f"{run}: no {TRAIN_CONTENT_FILE} (a run written before imgclf recorded its training images, or "
               "trained from streamed shards)"
               if run is not None else "no run directory given")
        warnings.warn(f"{why}: whether the images scored include training images cannot be checked", stacklevel=3)
        return SeenCheck(False, [False] * len(keys))
    return SeenCheck(True, [k in trained for k in keys])
