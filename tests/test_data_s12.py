"""Data-layer findings of new users (session 12): a train/ folder alone, one image per class, IDX labels out of
range, PIL's warnings named with their file (once), undecodable folder names on figures, the imbalance line, tags
in a single-label CSV and a constant regression target."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf import ImageData, UserError
from imgclf.data.audit import imbalance_text
from imgclf.data.decode import check_header, decode_all, open_image
from imgclf.data.idx import load_idx, write_idx
from imgclf.data.show import plot_counts, short, short_names
from imgclf.data.sources import items_from_csv, items_from_folder
from imgclf.data.targets import encode_targets

# an EXIF block whose only IFD entry is cut short (8 of its 12 bytes): PIL warns "Corrupt EXIF data." on opening
CORRUPT_EXIF = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00" + b"\x12\x01\x03\x00\x01\x00\x00\x00"


def said(record, text: str) -> list[str]:
    return [str(w.message) for w in record if text in str(w.message)]


# --- 1. train/ alone ----------------------------------------------------------------------------------------------

def test_train_folder_alone_is_the_training_folder_with_a_drawn_split(image_folder):
    root = image_folder({"ants": 5, "bees": 5}, name="tonly", split=True, size=(8, 8), ext=".png")
    for p in (root / "val").rglob("*.png"):
        p.unlink()
    for d in sorted((root / "val").iterdir()):
        d.rmdir()
    (root / "val").rmdir()
    run = root / "runs" / "tonly"  # a run written inside the data (`imgclf train .`): not a folder beside train/
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "train.log").write_text("")
    with pytest.warns(UserWarning, match=re.escape(f"{root}: train/ without a valid/ or val/ folder: validation is "
                                                   "a seeded 20% of train/ (--valid-pct, --seed)")):
        items = items_from_folder(root, valid_pct=0.2, seed=3)
    assert sorted(set(items.labels)) == ["ants", "bees"]
    assert all(p.parent.parent == root / "train" for p in items.paths)
    held = [lab for lab, v in zip(items.labels, items.is_valid, strict=True) if v]
    assert sorted(held) == ["ants", "bees"]  # stratified: round(0.2 * 5) of each class
    assert items.split_origin == "drawn"
    assert items.unused.counts == {"run_directory": 1}
    with warnings.catch_warnings(record=True) as record:  # said once per process, not at every listing
        warnings.simplefilter("always")
        again = items_from_folder(root, valid_pct=0.2, seed=3)
    assert again.is_valid == items.is_valid and not said(record, "without a valid/")
    with pytest.warns(UserWarning, match="1 run_directory"):
        data = ImageData.from_folder(root, valid_pct=0.2, seed=3, size=8, progress=False)
    assert data.classes == ["ants", "bees"] and (data.n_train, data.n_valid) == (8, 2)


def test_train_folder_beside_another_folder_still_asks_for_valid(image_folder):
    root = image_folder({"ants": 2, "bees": 2}, split=True, valid_name="test", size=(8, 8), ext=".png")
    with pytest.raises(UserError, match=r"found train/ beside test/ but no valid/ or val/"):
        items_from_folder(root)


# --- 2. one image per class -----------------------------------------------------------------------------------------

def test_every_class_a_single_image_is_a_user_error(image_folder):
    root = image_folder({"ants": 1, "bees": 1}, name="oneper", size=(8, 8), ext=".png")
    items = items_from_folder(root)
    assert items.labels == ["ants", "bees"] and items.is_valid == [False, False]  # no class loses its only image
    with pytest.raises(UserError) as e:
        ImageData.from_folder(root, size=8, progress=False)
    assert str(e.value) == (f"{root}: the validation split is empty: every class has a single image (or copies of "
                            "one), so nothing can be held out for validation; add images or give a valid/ folder (in a "
                            "CSV, an is_valid column)")
    items.split_origin = "given"  # a split the user gave that holds nothing out: said as it is
    with pytest.raises(UserError, match=r"^src: the validation split is empty$"):
        encode_targets(items, "classify", "src")


def test_a_class_of_one_image_always_trains_when_others_can_be_split(image_folder):
    root = image_folder({"ants": 3, "bees": 1}, size=(8, 8), ext=".png")
    for seed in range(6):
        items = items_from_folder(root, valid_pct=0.4, seed=seed)
        split = {(lab, v) for lab, v in zip(items.labels, items.is_valid, strict=True)}
        assert ("bees", False) in split and ("bees", True) not in split
        assert sum(items.is_valid) == 1 and ("ants", True) in split  # round(0.4 * 3) ants


# --- 3. IDX labels out of range ---------------------------------------------------------------------------------------

def idx_folder(root: Path, train_labels: list[int], valid_labels: list[int]) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, labels in (("train", train_labels), ("t10k", valid_labels)):
        write_idx(root / f"{name}-images-idx3-ubyte", rng.integers(0, 256, (len(labels), 4, 4), dtype=np.uint8))
        write_idx(root / f"{name}-labels-idx1-ubyte", np.array(labels, dtype=np.uint8))
    return root


def test_an_idx_label_out_of_range_is_named_with_its_file_and_index(tmp_path):
    train = [i % 10 for i in range(20)]
    train[5] = 42
    root = idx_folder(tmp_path / "fm_badlabel", train, list(range(10)))
    with pytest.raises(UserError) as e:
        load_idx(root)
    assert str(e.value).startswith(f"{root / 'train-labels-idx1-ubyte'}: label 42 at index 5 is outside 0..9 "
                                   "(no image has label 10;")
    fashion = idx_folder(tmp_path / "fashion_bad", list(range(10)) * 2, [3, 1, 12, 0])  # t10k: record 2
    with pytest.raises(UserError, match=re.escape(
            f"{fashion / 't10k-labels-idx1-ubyte'}: label 12 at index 2 is outside 0..9 (Fashion-MNIST's (the folder "
            "name says fashion): 10 class names for labels 0..12)")):
        load_idx(fashion)
    fine = idx_folder(tmp_path / "digits", [0, 1, 2, 0, 1, 2], [2, 1])
    assert load_idx(fine).classes == ["0", "1", "2"]


# --- 4. PIL's warnings named with their file, once -----------------------------------------------------------------

def test_pil_warnings_name_the_file_once_per_file(tmp_path):
    path = tmp_path / "corrupt_exif.jpg"
    Image.new("RGB", (30, 20), (90, 120, 150)).save(path, exif=CORRUPT_EXIF)
    message = f"{path}: Corrupt EXIF data.  Expecting to read 12 bytes but only got 8."
    with pytest.warns(UserWarning, match=re.escape(message)) as record:
        assert open_image(path).size == (30, 20)
    assert [str(w.message) for w in record] == [message]  # PIL's anonymous one is not shown beside it
    with warnings.catch_warnings(record=True) as record:  # the same file again, decoded and opened: not again
        warnings.simplefilter("always")
        images, keep, bad = decode_all([path, path, path], 16, workers=2, progress=False)
        open_image(path, min_size=8)
    assert keep == [0, 1, 2] and not bad and not said(record, "Corrupt EXIF")
    for _ in range(2):  # an upload's bytes: said each time, as "upload"
        with pytest.warns(UserWarning, match=r"^upload: Corrupt EXIF data\."):
            open_image(path.read_bytes())


def test_a_huge_image_is_named_once_in_inspect(image_folder, monkeypatch):
    root = image_folder({"ants": 3, "bees": 3}, size=(8, 8), ext=".png")
    big = root / "ants" / "big.png"
    Image.new("RGB", (80, 60), (200, 40, 40)).save(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # 4,800 px: over the warning limit, under the error one
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        data = ImageData.from_folder(root, size=8, bs=4, progress=False)
        summary = data.summary(progress=False)  # decodes the files again for the audit and its trace
    assert len(said(record, "decompression-bomb warning limit")) == 1
    assert said(record, "80x60 px")[0].startswith(f"{big}: 80x60 px (0 Mpx, over PIL's 0 Mpx")
    assert not said(record, "Image size (")  # PIL's own, which names no file
    assert summary.counts["train"]["ants"] + summary.counts["valid"]["ants"] == 4
    with pytest.warns(UserWarning, match=re.escape(f"{big}: 80x60 px")):  # a header check is its own
        check_header(big)


# --- 5. names that are not UTF-8 on figures ---------------------------------------------------------------------------

def test_a_latin1_folder_name_is_drawn_escaped(tmp_path, write_image):
    root = tmp_path / "lat1"
    for k, (name, colour) in enumerate(((b"abeill\xe9", (200, 40, 40)), (b"ants", (40, 40, 200)))):
        folder = os.path.join(os.fsencode(root), name)
        os.makedirs(folder)
        for i in range(3):
            write_image(Path(os.fsdecode(folder)) / f"{i}.png", size=(8, 8), colour=colour, seed=10 * k + i)
    data = ImageData.from_folder(root, size=8, bs=2, progress=False)
    assert data.classes == ["abeill\udce9", "ants"]  # the name as the file system has it
    assert short_names(data.classes) == ["abeill\\xe9", "ants"] and short("abeill\udce9") == "abeill\\xe9"
    fig = plot_counts(data.counts())
    fig.canvas.draw()  # matplotlib refused the surrogate: set_text(): incompatible function arguments
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["abeill\\xe9", "ants"]
    fig = data.show_batch(n=2)
    fig.canvas.draw()


# --- 6. the imbalance line and quoted names ---------------------------------------------------------------------------

def test_imbalance_line_names_each_end_once_and_quotes_names():
    assert imbalance_text({"ants": 8, "bees": 8}) == "1.00 (all classes 8)"
    assert imbalance_text({"ants ": 8, "Ants": 2, "empty": 0}) == "4.00 ('ants ' 8 / 'Ants' 2)"


def test_labels_outside_the_classes_given_are_quoted(image_folder):
    items = items_from_folder(image_folder({"ants ": 3, "bees": 3}, size=(8, 8), ext=".png"))
    with pytest.raises(UserError, match=re.escape("label(s) 'ants ' not among the classes given ('ants', 'bees')")):
        encode_targets(items, "classify", "src", names=["ants", "bees"])


# --- 7. tags in a single-label CSV, a constant regression target -----------------------------------------------------

def csv_data(tmp_path: Path, write_image, header: str, labels: list[str]) -> Path:
    for i in range(len(labels)):
        write_image(tmp_path / f"{i}.png", size=(8, 8), seed=i)
    rows = [header] + [f"{i}.png,{label}" for i, label in enumerate(labels)]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "labels.csv"


def test_tags_in_a_single_label_csv_are_pointed_out(tmp_path, write_image):
    tags = ["ant bright wide", "ant dark", "bee bright", "bee dark wide", "ant bright", "bee dark"] * 2
    csv_file = csv_data(tmp_path, write_image, "file,label", tags)
    items = items_from_csv(csv_file, seed=0)
    with pytest.warns(UserWarning, match=re.escape(
            f"{csv_file}: labels look like space-separated tags ('ant bright', 'ant bright wide', 'ant dark', ...: "
            "each combination is a class of its own); for multi-label pass --task multi_label")):
        encode_targets(items, "classify", str(csv_file))


def test_class_names_of_several_words_are_not_tags(tmp_path, write_image):
    breeds = ["golden retriever", "labrador retriever", "pug", "great dane"] * 3
    items = items_from_csv(csv_data(tmp_path, write_image, "file,label", breeds), seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert encode_targets(items, "classify", "breeds").names == sorted(set(breeds))


def test_a_constant_regression_target_is_pointed_out(tmp_path, write_image):
    csv_file = csv_data(tmp_path, write_image, "file,age", ["30"] * 6)
    items = items_from_csv(csv_file, label_col="age", seed=0)
    with pytest.warns(UserWarning, match=re.escape(
            f"{csv_file}: the target 'age' is 30 for every training image: a model learns nothing from it")):
        encode_targets(items, "regression", str(csv_file), target_name=items.label_column)
