"""Where items and labels come from: file discovery, folder/regex/CSV labels, splits, and user errors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from imgclf.data.core import ImageData
from imgclf.data.sources import (
    find_images,
    folder_labels,
    items_from_csv,
    items_from_files,
    items_from_folder,
    label_from_re,
    random_split,
)
from imgclf.data.targets import encode_targets
from imgclf.errors import UserError

PETS_RE = r"^(.+)_\d+\.jpg$"
FOOD_RE = r"^(\d+)_"


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    path.write_text("\n".join(",".join(r) for r in rows) + "\n", encoding="utf-8")
    return path


# --- find_images --------------------------------------------------------------------------------

def test_find_images_recursive_case_insensitive_skips_hidden_and_non_images(tmp_path, write_image):
    root = tmp_path / "imgs"
    wanted = [
        write_image(root / "a" / "x.jpg"),
        write_image(root / "a" / "b" / "c" / "deep.JPG", format="JPEG"),
        write_image(root / "z.Png", format="PNG"),
        write_image(root / "t.tiff"),
        write_image(root / "w.webp"),
        write_image(root / "a" / "g.gif", mode="P"),
        write_image(root / "a" / "j.JPEG", format="JPEG"),
        write_image(root / "bm.bmp"),
    ]
    # none of these may be found
    write_image(root / "a" / ".hidden.jpg")
    write_image(root / ".cache" / "q.jpg")
    write_image(root / "a" / ".ipynb_checkpoints" / "r.jpg")
    (root / "notes.txt").write_text("not an image")
    (root / "a" / "labels.csv").write_text("file,label\n")
    (root / "a" / "x.jpg.bak").write_bytes(b"\xff\xd8")
    (root / "folder.jpg").mkdir()  # a directory with an image-like name is not a file

    assert find_images(root) == sorted(wanted)
    assert find_images(str(root)) == sorted(wanted)  # str accepted


def test_find_images_single_file_and_errors(tmp_path, write_image):
    img = write_image(tmp_path / "one.png")
    assert find_images(img) == [img]
    txt = tmp_path / "one.txt"
    txt.write_text("x")
    with pytest.raises(UserError, match="not an image file") as e:
        find_images(txt)
    assert str(txt) in str(e.value)
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match="no such file or directory") as e:
        find_images(missing)
    assert str(missing) in str(e.value)


# --- folder labels and splits -------------------------------------------------------------------

def test_folder_labels_come_from_parent_folders(image_folder):
    root = image_folder({"cats": 5, "dogs": 7})
    items = items_from_folder(root)
    assert len(items.paths) == 12
    assert all(label == p.parent.name for p, label in zip(items.paths, items.labels, strict=True))
    assert Counter(items.labels) == {"cats": 5, "dogs": 7}
    assert sum(items.is_valid) == round(12 * 0.2)
    assert encode_targets(items, "classify", str(root)).names == ["cats", "dogs"]


@pytest.mark.parametrize("valid_name", ["valid", "val", "validation"])
def test_train_valid_folders_are_the_split(image_folder, valid_name):
    root = image_folder({"ants": 4, "bees": 6}, split=True, valid_name=valid_name, n_valid=2)
    items = items_from_folder(root, valid_pct=0.5)  # valid_pct is ignored when the folders split
    assert len(items.paths) == 10 + 4
    for p, label, v in zip(items.paths, items.labels, items.is_valid, strict=True):
        assert p.parent.parent.name == (valid_name if v else "train")
        assert label == p.parent.name
    train_paths, train_labels = items.split(valid=False)
    valid_paths, valid_labels = items.split(valid=True)
    assert Counter(train_labels) == {"ants": 4, "bees": 6}
    assert Counter(valid_labels) == {"ants": 2, "bees": 2}
    assert all(p.parent.parent == root / "train" for p in train_paths)
    assert all(p.parent.parent == root / valid_name for p in valid_paths)


def test_explicit_valid_folder_name(image_folder):
    root = image_folder({"a": 3, "b": 3}, split=True, valid_name="holdout")
    # "holdout" is not a name it looks for by itself: train/ beside it must not become a class
    with pytest.raises(UserError, match="--valid NAME"):
        items_from_folder(root)
    items = items_from_folder(root, valid="holdout")
    assert sum(items.is_valid) == 2 and len(items.paths) == 8
    with pytest.raises(UserError, match="validation folder not found") as e:
        items_from_folder(root, valid="nope")
    assert str(root / "nope") in str(e.value)


def test_valid_folder_without_train_folder(image_folder):
    root = image_folder({"a": 2, "b": 2}, split=True)
    (root / "train").rename(root / "trn")
    with pytest.raises(UserError, match="no train/ folder") as e:
        items_from_folder(root)
    assert str(root) in str(e.value)


def test_random_split_is_seeded_and_sized():
    a = random_split(100, 0.2, seed=1)
    assert a == random_split(100, 0.2, seed=1)
    assert a != random_split(100, 0.2, seed=2)
    assert sum(a) == 20
    assert sum(random_split(10, 0.35, seed=0)) == round(3.5)  # round-half-even: 4
    assert sum(random_split(3, 0.01, seed=0)) == 1  # never an empty validation set
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(UserError, match="valid-pct"):
            random_split(10, bad, seed=0)


def test_folder_random_split_same_seed_same_split(image_folder):
    root = image_folder({"cats": 10, "dogs": 10})
    a = items_from_folder(root, valid_pct=0.25, seed=7)
    b = items_from_folder(root, valid_pct=0.25, seed=7)
    c = items_from_folder(root, valid_pct=0.25, seed=8)
    assert a.is_valid == b.is_valid
    assert a.is_valid != c.is_valid
    assert sum(a.is_valid) == sum(c.is_valid) == 4  # stratified: round(0.25 * 10) = 2 (half to even) per class


# --- labels from file names ---------------------------------------------------------------------

def test_label_from_re_pets_and_food_patterns():
    pets = label_from_re(PETS_RE)
    assert pets(Path("/d/Abyssinian_1.jpg")) == "Abyssinian"
    assert pets(Path("great_pyrenees_12.jpg")) == "great_pyrenees"
    assert pets(Path("x/yorkshire_terrier_190.jpg")) == "yorkshire_terrier"
    food = label_from_re(FOOD_RE)
    assert food(Path("food-11/training/0_12.jpg")) == "0"
    assert food(Path("10_3.jpg")) == "10"
    whole = label_from_re(r"^[a-z]+")  # no group: the whole match
    assert whole(Path("cat_001.png")) == "cat"
    bad = Path("/d/Abyssinian.png")
    with pytest.raises(UserError, match="does not match") as e:
        pets(bad)
    assert str(bad) in str(e.value)


def test_folder_with_label_re_allows_loose_files(tmp_path, write_image):
    root = tmp_path / "pets"
    names = ["Abyssinian_1.jpg", "Abyssinian_2.jpg", "Abyssinian_3.jpg",
             "great_pyrenees_1.jpg", "great_pyrenees_20.jpg", "great_pyrenees_31.jpg"]
    for i, n in enumerate(names):
        write_image(root / n, seed=i)
    items = items_from_folder(root, label_re=PETS_RE, seed=0)
    assert [p.name for p in items.paths] == sorted(names)
    assert items.labels == [n.rsplit("_", 1)[0] for n in sorted(names)]
    assert sum(items.is_valid) == 2  # stratified: one of each class's three


def test_food_regex_on_flat_folder(tmp_path, write_image):
    root = tmp_path / "food"
    for i, n in enumerate(["0_1.jpg", "0_2.jpg", "3_1.jpg", "10_1.jpg", "10_22.jpg"]):
        write_image(root / n, seed=i)
    items = items_from_folder(root, label_re=FOOD_RE)
    assert dict(zip([p.name for p in items.paths], items.labels, strict=True)) == {
        "0_1.jpg": "0", "0_2.jpg": "0", "10_1.jpg": "10", "10_22.jpg": "10", "3_1.jpg": "3"}


# --- CSV ----------------------------------------------------------------------------------------

def test_csv_file_label_random_split(tmp_path, write_image):
    rows = [["file", "label"]]
    for i in range(10):
        write_image(tmp_path / "imgs" / f"im{i}.png", seed=i)
        rows.append([f"imgs/im{i}.png", "odd" if i % 2 else "even"])
    csv_path = write_csv(tmp_path / "labels.csv", rows)
    items = items_from_csv(csv_path, seed=3)
    assert items.paths == [tmp_path / "imgs" / f"im{i}.png" for i in range(10)]
    assert items.labels == ["odd" if i % 2 else "even" for i in range(10)]
    assert items.is_valid == random_split(10, 0.2, 3, labels=items.labels)  # stratified: one of each class
    assert sorted(lab for lab, v in zip(items.labels, items.is_valid, strict=True) if v) == ["even", "odd"]
    assert items_from_csv(csv_path, seed=3).is_valid == items.is_valid


def test_csv_is_valid_column_and_extensionless_files(tmp_path, write_image):
    img_dir = tmp_path / "images"
    write_image(img_dir / "a.png")
    write_image(img_dir / "b.jpg")
    write_image(img_dir / "c.webp")
    write_image(img_dir / "d.jpeg")
    (tmp_path / "meta").mkdir()
    csv_path = write_csv(tmp_path / "meta" / "train.csv", [
        ["File", "Label", "is_valid"],
        ["a", "x", "0"],
        ["b", "y", "1"],
        ["c.webp", "x", "True"],
        ["d", "y", "false"],
        ["", "", ""],  # blank rows are skipped
    ])
    items = items_from_csv(csv_path, folder=img_dir)
    assert items.paths == [img_dir / "a.png", img_dir / "b.jpg", img_dir / "c.webp", img_dir / "d.jpeg"]
    assert items.labels == ["x", "y", "x", "y"]
    assert items.is_valid == [False, True, True, False]


def test_csv_split_column_in_the_words_people_use(tmp_path, write_image):
    """A `split` column of train/valid/test (test rows kept out, and what evaluate scores), y/n values, and
    a misspelled is_valid or an unknown value as a clear error naming the column, line and value."""
    for name in "abcdef":
        write_image(tmp_path / f"{name}.png")
    rows = [["a", "x", "train"], ["b", "y", "valid"], ["c", "x", "test"], ["d", "y", "train"], ["e", "x", "val"],
            ["f", "y", "test"]]
    csv_path = write_csv(tmp_path / "l.csv", [["file", "label", "split"], *rows])
    with pytest.warns(UserWarning, match=r"2 row\(s\) marked as test in column 'split' are kept out"):
        items = items_from_csv(csv_path)
    assert [p.name for p in items.paths] == ["a.png", "b.png", "d.png", "e.png"]
    assert items.is_valid == [False, True, False, True]
    test = items_from_csv(csv_path, test_rows=True)  # evaluate's view: the test rows alone
    assert [p.name for p in test.paths] == ["c.png", "f.png"] and test.labels == ["x", "y"]
    yn = write_csv(tmp_path / "yn.csv", [["file", "label", "is_valid"], ["a", "x", "n"], ["b", "y", "Y"],
                                         ["c", "x", "no"], ["d", "y", "yes"]])
    assert items_from_csv(yn).is_valid == [False, True, False, True]
    assert items_from_csv(yn, test_rows=True).paths == [tmp_path / f"{n}.png" for n in "abcd"]  # no test rows: all
    bad = write_csv(tmp_path / "bad.csv", [["file", "label", "is_valid"], ["a", "x", "0"], ["b", "y", "maybe"]])
    with pytest.raises(UserError, match=r"bad.csv:3: is_valid is 'maybe'; use true/false"):
        items_from_csv(bad)
    typo = write_csv(tmp_path / "typo.csv", [["file", "label", "is_vaild"], ["a", "x", "0"], ["b", "y", "1"]])
    with pytest.raises(UserError, match=r"column 'is_vaild' looks like 'is_valid' misspelled"):
        items_from_csv(typo)


def test_csv_rows_that_cannot_mean_what_they_say(tmp_path, write_image):
    """One file with two labels, an empty file name: an error with the line; a repeated row: used once."""
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png")
    clash = write_csv(tmp_path / "clash.csv", [["file", "label"], ["a.png", "x"], ["b.png", "y"], ["a.png", "y"]])
    with pytest.raises(UserError, match=r"clash.csv:4: a.png is listed again with label 'y'; line 2 gave it 'x'"):
        items_from_csv(clash)
    empty = write_csv(tmp_path / "empty.csv", [["file", "label"], ["a.png", "x"], ["", "y"]])
    with pytest.raises(UserError, match=r"empty.csv:3: the file name is empty"):
        items_from_csv(empty)
    twice = write_csv(tmp_path / "twice.csv", [["file", "label"], ["a.png", "x"], ["b.png", "y"], ["a.png", "x"]])
    with pytest.warns(UserWarning, match=r"1 file\(s\) listed more than once with the same label, e.g. a.png "
                                         r"\(lines 2 and 4\)"):
        items = items_from_csv(twice, valid_pct=0.5)
    assert items.paths == [tmp_path / "a.png", tmp_path / "b.png"]


def test_a_label_group_that_names_each_file_is_refused(tmp_path, write_image):
    for i in range(4):
        write_image(tmp_path / "d" / f"cat_{i}.jpg")
    with pytest.raises(UserError, match=r"its group gives each of the 4 files a label of its own"):
        items_from_folder(tmp_path / "d", label_re=r"(.+)\.jpg")
    assert set(items_from_folder(tmp_path / "d", label_re=r"^(.+)_\d+\.jpg$", valid_pct=0.25).labels) == {"cat"}
    for i in range(3):  # numbers, one per file, may be a regression's targets: allowed
        write_image(tmp_path / "ages" / f"{20 + i}_x.jpg")
    assert folder_labels(sorted((tmp_path / "ages").iterdir()), tmp_path / "ages", r"^(\d+)_") == ["20", "21", "22"]


def test_a_file_or_archive_given_for_the_folder_is_named_as_such(tmp_path, write_image):
    img = write_image(tmp_path / "one.jpg")
    (tmp_path / "data.zip").write_bytes(b"PK")
    with pytest.raises(UserError, match=r"one.jpg: a file, not a folder"):
        items_from_folder(img)
    with pytest.raises(UserError, match=r"data.zip: an archive, not a folder: unpack it"):
        items_from_folder(tmp_path / "data.zip")


def test_evaluate_labels_nested_folders_as_train_does(tmp_path, write_image):
    """class/sub/img.jpg is `class` to train (the first folder under the root), so it is to evaluate too."""
    from imgclf.infer.evaluate import labelled_items

    write_image(tmp_path / "test" / "cats" / "indoor" / "1.jpg")
    write_image(tmp_path / "test" / "dogs" / "2.jpg")
    items = labelled_items(tmp_path / "test")
    assert sorted(items.labels) == ["cats", "dogs"]
    write_image(tmp_path / "test" / "loose.jpg")
    with pytest.raises(UserError, match="image not inside a class folder"):
        labelled_items(tmp_path / "test")


def test_csv_column_names_are_found_in_any_order(tmp_path, write_image):
    write_image(tmp_path / "p.png")
    write_image(tmp_path / "q.png")
    csv_path = write_csv(tmp_path / "l.csv", [["class", "fname"], ["cat", "p.png"], ["dog", "q.png"]])
    items = items_from_csv(csv_path, valid_pct=0.5, seed=0)
    assert items.paths == [tmp_path / "p.png", tmp_path / "q.png"]
    assert items.labels == ["cat", "dog"]


def test_csv_missing_files_named(tmp_path, write_image):
    write_image(tmp_path / "here.png")
    csv_path = write_csv(tmp_path / "labels.csv",
                         [["file", "label"], ["here.png", "a"], ["gone.png", "b"], ["gone2", "b"]])
    with pytest.raises(UserError, match=r"not found \(and 1 more\)") as e:
        items_from_csv(csv_path)
    assert str(tmp_path / "gone.png") in str(e.value) and "labels.csv" in str(e.value)
    with pytest.raises(UserError, match="CSV file not found") as e:
        items_from_csv(tmp_path / "nope.csv")
    assert str(tmp_path / "nope.csv") in str(e.value)
    write_csv(tmp_path / "empty.csv", [["file", "label"]])
    with pytest.raises(UserError, match="header row and at least one data row"):
        items_from_csv(tmp_path / "empty.csv")


def test_files_and_labels(tmp_path):
    items = items_from_files([tmp_path / "a.jpg", str(tmp_path / "b.jpg"), "c.jpg"], ["x", 1, "x"], seed=0)
    assert items.paths == [tmp_path / "a.jpg", tmp_path / "b.jpg", Path("c.jpg")]
    assert items.labels == ["x", "1", "x"]
    assert items.is_valid == random_split(3, 0.2, 0, labels=items.labels)  # stratified: class 1's one file trains
    assert items.is_valid[1] is False and sum(items.is_valid) == 1
    with pytest.raises(UserError, match="2 files but 1 labels"):
        items_from_files(["a.jpg", "b.jpg"], ["x"])


# --- user errors name what and where ------------------------------------------------------------

def test_missing_folder(tmp_path):
    missing = tmp_path / "no_such"
    with pytest.raises(UserError, match="no such folder") as e:
        items_from_folder(missing)
    assert str(missing) in str(e.value)


def test_folder_without_images(tmp_path):
    root = tmp_path / "empty"
    (root / "cats").mkdir(parents=True)
    (root / "cats" / "readme.txt").write_text("x")
    with pytest.raises(UserError, match="no images found") as e:
        items_from_folder(root)
    assert str(root) in str(e.value)


def test_split_folder_without_images(image_folder):
    root = image_folder({"a": 2, "b": 2}, split=True)
    for p in (root / "val").rglob("*.jpg"):
        p.unlink()
    with pytest.raises(UserError, match="no images found") as e:
        items_from_folder(root)
    assert str(root / "val") in str(e.value)


def test_one_class(image_folder):
    root = image_folder({"cats": 5})
    with pytest.raises(UserError, match=r"one class \('cats'\)") as e:
        ImageData.from_folder(root, size=16, progress=False)
    assert str(root) in str(e.value)


def test_empty_splits_are_errors(image_folder):
    root = image_folder({"a": 2, "b": 2})
    items = items_from_folder(root)
    items.is_valid = [False] * 4
    with pytest.raises(UserError, match="validation split is empty"):
        encode_targets(items, "classify", "src")
    items.is_valid = [True] * 4
    with pytest.raises(UserError, match="training split is empty"):
        encode_targets(items, "classify", "src")


def test_empty_class_folder(image_folder):
    root = image_folder({"cats": 3, "dogs": 3})
    (root / "birds").mkdir()
    with pytest.raises(UserError, match="class folder has no images") as e:
        items_from_folder(root)
    assert str(root / "birds") in str(e.value)
    (root / "birds").rmdir()
    (root / ".git").mkdir()  # hidden folders are not classes
    assert len(items_from_folder(root).paths) == 6


def test_empty_class_folder_in_split(image_folder):
    root = image_folder({"cats": 3, "dogs": 3}, split=True)
    (root / "val" / "birds").mkdir()
    with pytest.raises(UserError, match="class folder has no images") as e:
        items_from_folder(root)
    assert str(root / "val" / "birds") in str(e.value)


def test_loose_images_in_root(image_folder, write_image):
    root = image_folder({"cats": 3, "dogs": 3})
    loose = write_image(root / "stray.jpg")
    with pytest.raises(UserError, match="not inside a class folder") as e:
        items_from_folder(root)
    assert str(loose) in str(e.value)


def test_only_loose_images(tmp_path, write_image):
    root = tmp_path / "flat"
    for i in range(4):
        write_image(root / f"img{i}.jpg", seed=i)
    with pytest.raises(UserError, match="not inside a class folder") as e:
        items_from_folder(root)
    assert str(root / "img0.jpg") in str(e.value)


def test_loose_images_in_train_folder(image_folder, write_image):
    """An image directly in train/ must not silently become a class called 'train'."""
    root = image_folder({"cats": 3, "dogs": 3}, split=True)
    loose = write_image(root / "train" / "stray.jpg")
    with pytest.raises(UserError, match="not inside a class folder") as e:
        items_from_folder(root)
    assert str(loose) in str(e.value)


def test_bad_regex(tmp_path, tiny_folder):
    with pytest.raises(UserError, match="invalid regex") as e:
        label_from_re("([a-z")
    assert "([a-z" in str(e.value)
    with pytest.raises(UserError, match="invalid regex"):
        items_from_folder(tiny_folder, label_re="(unclosed")
