"""The random split: stratified by class, copies of one file kept on one side, reproducible with the seed."""

from __future__ import annotations

import csv
import shutil
from collections import Counter

import pytest

from imgclf.data.core import ImageData
from imgclf.data.sources import items_from_csv, items_from_files, items_from_folder, random_split
from imgclf.errors import UserError


def _valid_by_class(items) -> tuple[Counter, Counter]:
    total, held = Counter(items.labels), Counter(lab for lab, v in zip(items.labels, items.is_valid, strict=True) if v)
    return total, held


def test_37_classes_all_in_validation(image_folder):
    """The user's report: 4 of 37 classes had no validation image; stratified, every class has one."""
    root = image_folder({f"c{i:02d}": 3 + i % 4 for i in range(37)}, size=(8, 8), ext=".png")
    items = items_from_folder(root, valid_pct=0.2, seed=42)
    total, held = _valid_by_class(items)
    assert len(total) == 37
    for label, n in total.items():
        assert held[label] == min(max(1, round(0.2 * n)), n - 1), label
        assert n - held[label] >= 1  # every class keeps training images
    # the old plain random split on the same items leaves some classes out (what the user saw)
    plain = random_split(len(items.paths), 0.2, 42)
    assert len({lab for lab, v in zip(items.labels, plain, strict=True) if v}) < 37


def test_class_sizes_follow_valid_pct(image_folder):
    root = image_folder({"a": 10, "b": 20, "c": 2}, size=(8, 8), ext=".png")
    total, held = _valid_by_class(items_from_folder(root, valid_pct=0.3, seed=0))
    assert held == Counter({"a": 3, "b": 6, "c": 1})


def test_copies_stay_on_one_side(image_folder):
    """Copies of a file under other names in the same class are never split across train and valid."""
    root = image_folder({"a": 6, "b": 6}, size=(8, 8), ext=".png")
    for cls in ("a", "b"):
        src = root / cls / f"{cls}_0.png"
        for k in range(3):
            shutil.copy(src, src.with_name(f"copy{k}_{src.name}"))
    for seed in range(20):
        items = items_from_folder(root, valid_pct=0.3, seed=seed)
        side = dict(zip(map(str, items.paths), items.is_valid, strict=True))
        for src in (root / "a" / "a_0.png", root / "b" / "b_0.png"):
            copies = [side[str(src.with_name(f"copy{k}_{src.name}"))] for k in range(3)]
            assert len(set(copies + [side[str(src)]])) == 1, (seed, src)
        total, held = _valid_by_class(items)
        assert all(1 <= held[c] <= total[c] - 1 for c in total)


def test_same_seed_same_split(image_folder):
    root = image_folder({"a": 9, "b": 7, "c": 5}, size=(8, 8), ext=".png")
    a = items_from_folder(root, valid_pct=0.25, seed=7)
    b = items_from_folder(root, valid_pct=0.25, seed=7)
    assert a.paths == b.paths and a.is_valid == b.is_valid
    others = [items_from_folder(root, valid_pct=0.25, seed=s).is_valid for s in range(8, 12)]
    assert any(o != a.is_valid for o in others)


def test_single_image_class_stays_in_training(image_folder):
    root = image_folder({"a": 5, "b": 5, "solo": 1}, size=(8, 8), ext=".png")
    for seed in range(10):
        items = items_from_folder(root, valid_pct=0.5, seed=seed)
        assert not any(v for lab, v in zip(items.labels, items.is_valid, strict=True) if lab == "solo")
    data = ImageData.from_folder(root, valid_pct=0.5, seed=0, size=16, bs=4, progress=False)
    assert data.counts()["train"]["solo"] == 1


def test_class_of_one_file_copied_stays_in_training(image_folder):
    """A class whose images are all copies of one file cannot be split without leaking: all in training."""
    root = image_folder({"a": 5, "b": 3}, size=(8, 8), ext=".png")
    for p in (root / "b").iterdir():
        p.unlink()
    (root / "b").mkdir(exist_ok=True)
    image_folder({"x": 1}, name="one", size=(8, 8), ext=".png", seed=5)  # not a copy of a_0
    src = root.parent / "one" / "x" / "x_0.png"
    for k in range(3):
        shutil.copy(src, root / "b" / f"b_{k}.png")
    items = items_from_folder(root, valid_pct=0.4, seed=1)
    total, held = _valid_by_class(items)
    assert held["b"] == 0 and held["a"] == 2


def test_every_class_single_holds_nothing_out_and_training_says_why(image_folder):
    """Holding any image out would leave its class with none to train on (the plain split did, and training then
    stopped on a class "without training images" that had one): the data refuses, saying why."""
    root = image_folder({"a": 1, "b": 1, "c": 1, "d": 1, "e": 1}, size=(8, 8), ext=".png")
    items = items_from_folder(root, valid_pct=0.2, seed=0)
    assert sum(items.is_valid) == 0
    with pytest.raises(UserError, match="every class has a single image .* add images or give a valid/ folder"):
        ImageData.from_folder(root, size=8, progress=False)


def test_regression_csv_not_stratified_but_copies_together(tmp_path, write_image):
    """Regression targets are not classes: the plain random split, copies still kept whole."""
    rows = []
    for i in range(10):
        write_image(tmp_path / f"img{i}.png", size=(8, 8), seed=i)
        rows.append([f"img{i}.png", str(i)])
    for k in range(4):
        shutil.copy(tmp_path / "img0.png", tmp_path / f"dup{k}.png")
        rows.append([f"dup{k}.png", "0"])
    with open(tmp_path / "ages.csv", "w", newline="") as f:
        csv.writer(f).writerows([["file", "age"], *rows])
    for seed in range(10):
        items = items_from_csv(tmp_path / "ages.csv", seed=seed, stratify=False)
        side = {p.name: v for p, v in zip(items.paths, items.is_valid, strict=True)}
        assert len({side["img0.png"], *(side[f"dup{k}.png"] for k in range(4))}) == 1
        assert 1 <= sum(items.is_valid) <= round(0.2 * 14)
    # without copies the unstratified split is exactly the one of before: the first items of a seeded shuffle
    plain = items_from_files([tmp_path / f"img{i}.png" for i in range(10)], [str(i) for i in range(10)],
                             seed=3, stratify=False)
    assert plain.is_valid == random_split(10, 0.2, 3)


def test_data_regression_and_multi_label_split(tmp_path, write_image):
    """ImageData passes the task on: a regression CSV (numbers as labels) splits like before."""
    rows = []
    for i in range(12):
        write_image(tmp_path / f"img{i}.png", size=(16, 16), seed=i)
        rows.append([f"img{i}.png", str(i % 3)])
    with open(tmp_path / "t.csv", "w", newline="") as f:
        csv.writer(f).writerows([["file", "target"], *rows])
    data = ImageData.from_csv(tmp_path / "t.csv", task="regression", seed=5, size=16, bs=4, progress=False)
    assert data.items.is_valid == random_split(12, 0.2, 5)
    data = ImageData.from_csv(tmp_path / "t.csv", seed=5, size=16, bs=4, progress=False)  # classify: stratified
    assert Counter(lab for lab, v in zip(data.items.labels, data.items.is_valid, strict=True) if v) == Counter(
        {"0": 1, "1": 1, "2": 1})


def test_bad_valid_pct(image_folder):
    root = image_folder({"a": 3}, size=(8, 8), ext=".png")
    for bad in (0, 1, -0.1, 1.5):
        with pytest.raises(UserError, match="--valid-pct"):
            items_from_folder(root, valid_pct=bad)


def test_hymenoptera_without_folders_is_stratified(hymenoptera, tmp_path):
    """The real data, its train/ + val/ merged into class folders: the random split keeps the class shares."""
    for cls in ("ants", "bees"):
        (tmp_path / "all" / cls).mkdir(parents=True)
        for part in ("train", "val"):
            for p in (hymenoptera / part / cls).iterdir():
                shutil.copy(p, tmp_path / "all" / cls / f"{part}_{p.name}")
    items = items_from_folder(tmp_path / "all", valid_pct=0.2, seed=42)
    total, held = _valid_by_class(items)
    # exact copies inside the data set may shift a class by a file; otherwise round(0.2 * n)
    assert all(abs(held[c] - round(0.2 * total[c])) <= 1 for c in total)
    assert items.is_valid == items_from_folder(tmp_path / "all", valid_pct=0.2, seed=42).is_valid


def test_runs_written_before_stratified_splits_rebuild_their_own_split(image_folder):
    """A config.json without `data.split` (imgclf before 2026-11-30) reads as the plain random split, so
    interpret/report/export score the images that run was validated on; new configs say "stratified"."""
    from imgclf.config import RunConfig
    from imgclf.data.sources import items_from_folder, random_split

    old = RunConfig.from_dict({"data": {"path": "x", "valid_pct": 0.25, "seed": 3}})
    assert old.data.split == "random" and RunConfig().data.split == "stratified"
    assert RunConfig.from_dict(RunConfig().to_dict()).data.split == "stratified"
    root = image_folder({"a": 7, "b": 3})
    items = items_from_folder(root, valid_pct=0.25, seed=3, split="random")
    assert items.is_valid == random_split(10, 0.25, 3)  # the old code's split, to the item
    stratified = items_from_folder(root, valid_pct=0.25, seed=3)
    assert {lab for lab, v in zip(stratified.labels, stratified.is_valid, strict=True) if v} == {"a", "b"}
