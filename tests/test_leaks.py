"""Splits that cannot leak near duplicates, and scoring that says when it scores training images."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance

from imgclf import ImageData
from imgclf.data.dedup import TRAIN_CONTENT_FILE
from imgclf.evaluate.interpret import Interpretation, format_summary
from imgclf.infer import evaluate


def picture(seed: int) -> Image.Image:
    """A smooth random 48x48 picture (6x6 colours upsampled): distinct seeds give unrelated pictures."""
    a = np.random.default_rng(seed).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(a).resize((48, 48), Image.Resampling.BICUBIC)


def pictures_with_copies(root, n: int = 6, given_split: bool = False):
    """Classes a and b, n pictures each, each also re-saved as JPEG q70 12% brighter (`<i>_copy.jpg`).
    `given_split`: train/ holds the originals and val/ the copies of the first two of each class plus two
    new pictures."""
    for c, cls in enumerate(("a", "b")):
        for i in range(n):
            img = picture(c * 100 + i)
            folder = root / "train" / cls if given_split else root / cls
            folder.mkdir(parents=True, exist_ok=True)
            img.save(folder / f"{i}.png")
            if not given_split:
                ImageEnhance.Brightness(img).enhance(1.12).save(folder / f"{i}_copy.jpg", quality=70)
            elif i < 2:
                (root / "val" / cls).mkdir(parents=True, exist_ok=True)
                ImageEnhance.Brightness(img).enhance(1.12).save(root / "val" / cls / f"{i}_copy.jpg", quality=70)
        if given_split:
            for i in range(2):
                picture(c * 100 + 50 + i).save(root / "val" / cls / f"new{i}.png")
    return root


def test_near_duplicates_end_on_one_side_of_a_drawn_split(tmp_path):
    root = pictures_with_copies(tmp_path / "d")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = ImageData.from_folder(root, size=32, valid_pct=0.5, seed=1, progress=False)
    rec = data.near_duplicates
    assert rec.checked and rec.split_origin == "drawn"
    assert rec.groups_straddling > 0 and len(rec.moved) == rec.groups_straddling  # one member moved per pair
    # every picture and its copy are now on one side
    side = {p.relative_to(root).as_posix(): "train" for p in data.train_paths}
    side.update({p.relative_to(root).as_posix(): "valid" for p in data.valid_paths})
    for cls in ("a", "b"):
        for i in range(6):
            assert side[f"{cls}/{i}.png"] == side[f"{cls}/{i}_copy.jpg"], (cls, i)
    assert data.n_train + data.n_valid == 24 and data.n_valid == 12 - len(rec.moved)
    assert [w for w in caught if f"moved {len(rec.moved)} validation image(s) to training" in str(w.message)]
    # the items agree (a resize rebuilds from them) and the resized data keeps the record, moving nothing again
    assert sum(data.items.is_valid) == data.n_valid
    small = data.resized(24)
    assert small.near_duplicates is rec
    # the same images in the same order, moves included: row i is one image at every size (distill's teacher)
    assert small.train_paths == data.train_paths and small.valid_paths == data.valid_paths
    assert torch.equal(small.train_y, data.train_y) and small.presize == 27
    # the same seed moves the same images
    again = ImageData.from_folder(root, size=32, valid_pct=0.5, seed=1, progress=False)
    assert again.valid_paths == data.valid_paths


def test_a_given_split_only_warns(tmp_path):
    root = pictures_with_copies(tmp_path / "d", given_split=True)
    with pytest.warns(UserWarning, match=r"4 validation image\(s\) in 4 group\(s\) are near duplicates"):
        data = ImageData.from_folder(root, size=32, progress=False)
    rec = data.near_duplicates
    assert rec.split_origin == "given" and rec.groups_straddling == 4 and rec.moved == []
    assert data.n_train == 12 and data.n_valid == 8  # nothing moved
    assert {e[0].split("/")[-1] for e in rec.examples} <= {"0_copy.jpg", "1_copy.jpg"}


def test_evaluate_on_training_images_warns_and_scores_the_unseen(trained_run, tmp_path):
    data = trained_run.parent / "data"
    trained = json.loads((trained_run / TRAIN_CONTENT_FILE).read_text())
    assert trained["n"] == 36 and len(trained["keys"]) == 36
    mixed = tmp_path / "mixed"  # 4 training images (copied under new names) + every validation image
    for cls in ("cats", "dogs", "frogs"):
        shutil.copytree(data / "val" / cls, mixed / cls)
    for i, p in enumerate(sorted((data / "train" / "cats").glob("*.jpg"))[:4]):
        shutil.copy(p, mixed / "cats" / f"renamed{i}.jpg")
    with pytest.warns(UserWarning, match=r"4 of 22 images scored were in this run's training set \(same bytes\); "
                                         r"accuracy on the 18 unseen: "):
        res = evaluate(trained_run, mixed, progress=False)
    assert res["n"] == 22 and res["n_seen_in_training"] == 4 and res["n_unseen"] == 18
    on_val = evaluate(trained_run, data / "val", progress=False)
    assert on_val["n_seen_in_training"] == 0 and on_val["accuracy_unseen"] == on_val["accuracy"]
    assert res["accuracy_unseen"] == on_val["accuracy"]  # the unseen ones are exactly the validation images
    assert res["accuracy_unseen_low"] <= res["accuracy_unseen"] <= res["accuracy_unseen_high"]


def test_interpret_data_counts_training_images(trained_run):
    train_only = trained_run.parent / "data" / "train"  # no split folders: the run's seeded split of it, all seen
    with pytest.warns(UserWarning, match=r"were in this run's training set"):
        interp = Interpretation.from_run(trained_run, data=train_only, progress=False)
    d = interp.to_dict()
    assert d["n_seen_in_training"] == d["n_valid"] > 0 and "accuracy_unseen" not in d
    assert "were training images (same bytes)" in format_summary(d)


def test_an_older_run_says_the_check_is_unavailable_once(trained_run, tmp_path):
    old = tmp_path / "old_run"
    shutil.copytree(trained_run, old)
    (old / TRAIN_CONTENT_FILE).unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = evaluate(old, trained_run.parent / "data" / "val", progress=False)
    notes = [str(w.message) for w in caught if "cannot be checked" in str(w.message)]
    assert len(notes) == 1 and TRAIN_CONTENT_FILE in notes[0]
    assert res["n_seen_in_training"] is None and "accuracy_unseen" not in res


def test_look_alike_chains_are_not_taken_for_copies():
    """Fashion-MNIST's grey silhouettes match each other in long chains (not copies: they would all match one
    another); the check says it cannot tell them apart instead of moving most of a small validation split. Copies
    of one hymenoptera photo (re-saved, resized, brightened, mirrored) among the others still form one group."""
    import gzip
    import io
    from pathlib import Path

    import torch

    from imgclf.data.audit import TooAlike, near_groups, tensor_fingerprints

    shared = Path(__file__).resolve().parents[2] / "shared" / "datasets"
    with gzip.open(shared / "fashion-mnist" / "train-images-idx3-ubyte.gz") as f:
        raw = f.read()
    fashion = np.frombuffer(raw, np.uint8, count=300 * 784, offset=16).reshape(300, 1, 28, 28)
    with pytest.raises(TooAlike, match="chain"):
        near_groups(tensor_fingerprints(torch.from_numpy(fashion.copy()).expand(-1, 3, -1, -1).contiguous()))

    def presized(img: Image.Image) -> torch.Tensor:
        img = img.convert("RGB").resize((64, 64))
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)

    photos = sorted((shared / "hymenoptera" / "train" / "ants").glob("*.jpg"))[:40]
    images = [presized(Image.open(p)) for p in photos]
    base = Image.open(photos[0]).convert("RGB")
    for variant in range(4):
        buf = io.BytesIO()
        copy = base.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if variant == 3 else base
        copy = ImageEnhance.Brightness(copy).enhance(1.1) if variant == 2 else copy
        copy = copy.resize((base.width // 2, base.height // 2)) if variant == 1 else copy
        copy.save(buf, "JPEG", quality=40)
        images.append(presized(Image.open(buf)))
    groups = near_groups(tensor_fingerprints(torch.stack(images)))
    assert [0, 40, 41, 42, 43] in groups
    assert all(len(g) < 5 for g in groups if g != [0, 40, 41, 42, 43])


def test_distinct_small_grey_pictures_stay_in_validation(tmp_path):
    """10 classes x 6 Fashion-MNIST PNGs (28 px): the 16x16 fingerprint took distinct garments of one kind for
    copies and moved validation images to training; the 32x32 grey check (audit.confirm_pairs) keeps them. A
    real copy (upscaled to 40 px, JPEG q70, brightened, mirrored) of one of them still moves."""
    import gzip
    from pathlib import Path

    shared = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fashion-mnist"
    with gzip.open(shared / "train-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(shared / "train-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    rng = np.random.default_rng(0)
    root = tmp_path / "fm"
    for c in range(10):
        (root / str(c)).mkdir(parents=True)
        for i in rng.choice(np.flatnonzero(labels == c), 6, replace=False):
            Image.fromarray(images[i]).save(root / str(c) / f"{i}.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = ImageData.from_folder(root, size=32, progress=False)
    assert data.near_duplicates.checked and data.near_duplicates.moved == []
    assert data.n_valid == 10  # one of each class
    original = data.valid_paths[0]
    copy = Image.open(original).resize((40, 40), Image.Resampling.BICUBIC).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    ImageEnhance.Brightness(copy.convert("RGB")).enhance(1.1).save(original.parent / "copy.jpg", quality=70)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = ImageData.from_folder(root, size=32, progress=False)
    side = {p.name: "train" for p in again.train_paths} | {p.name: "valid" for p in again.valid_paths}
    assert side[original.name] == side["copy.jpg"]
    # and the pair is found as one, wherever the split put them
    import torch

    from imgclf.data.audit import near_groups, tensor_fingerprints

    both = torch.cat([again.train_images, again.valid_images])
    paths = [p.name for p in again.train_paths + again.valid_paths]
    groups = near_groups(tensor_fingerprints(both), image=lambda i: both[i])
    assert sorted([paths.index(original.name), paths.index("copy.jpg")]) in groups and len(groups) == 1
