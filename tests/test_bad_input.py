"""Bad input, answered: a regex without a group, pretrained weights that cannot be had, and every entry of a
data folder that is not used accounted for by kind (sources), with the decode edge cases that name a file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf.cli import main
from imgclf.cli.common import expand_images
from imgclf.data import ImageData
from imgclf.data.decode import BadImage, check_header, load_presized, open_image
from imgclf.data.sources import Unused, items_from_folder, label_from_re, scan_images
from imgclf.data.store import screen
from imgclf.errors import UserError
from imgclf.models.registry import check_pretrained

# --- --label-re ----------------------------------------------------------------------------------

def test_label_re_without_group_is_named(tmp_path, write_image, capsys):
    root = tmp_path / "pets"
    for name in ("Abyssinian_1.jpg", "Abyssinian_2.jpg", "beagle_1.jpg", "beagle_2.jpg", "beagle_3.jpg"):
        write_image(root / name)
    code = main(["train", str(root), "--label-re", r"^.+_\d+\.jpg$", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "has no capture group" in err and r"'^.+_\d+\.jpg$'" in err and "parentheses" in err
    assert not (tmp_path / "run").exists()
    # a group-less match that is not the whole name, but differs for every file: the same error, at the items
    with pytest.raises(UserError, match="has no capture group and its whole match differs for each of the 5"):
        items_from_folder(root, label_re=r"^[a-zA-Z]+_\d")
    # with the group, the same names label fine; a group-less prefix still is the label
    assert sorted(set(items_from_folder(root, label_re=r"^(.+)_\d+\.jpg$").labels)) == ["Abyssinian", "beagle"]
    assert label_from_re(r"^[a-z]+")(Path("cat_001.png")) == "cat"
    with pytest.raises(UserError, match="group is empty"):
        label_from_re(r"^(x*)")(Path("cat_001.png"))


# --- pretrained weights ----------------------------------------------------------------------------

def test_arch_without_weights_fails_fast_naming_the_two_ways_on(tmp_path, write_image):
    """Offline made certain (HF_HUB_OFFLINE=1, empty Hugging Face and torch caches), so the test means the
    same on a machine with internet: one line naming --weights FILE and --no-pretrained, before any image is
    decoded (the data holds a broken file that decoding would warn about) and before a run directory exists."""
    data = tmp_path / "data"
    for cls in ("a", "b"):
        for i in range(3):
            write_image(data / cls / f"{i}.jpg")
    (data / "a" / "broken.jpg").write_bytes(b"")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "th")}
    p = subprocess.run([sys.executable, "-m", "imgclf", "train", str(data), "--arch", "resnet18", "--out",
                        str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("imgclf: error: --arch resnet18: pretrained weights unavailable")
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr  # no decode warning: it failed before the data
    assert "--weights FILE" in p.stderr and "--no-pretrained" in p.stderr
    assert not (tmp_path / "run").exists()


def test_check_pretrained_lets_the_working_ways_through(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the embedded default, ours and --no-pretrained need no network
    check_pretrained("efficientnet_lite0")
    check_pretrained("xresnet18")
    check_pretrained("resnet18", pretrained=False)
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    check_pretrained("resnet18", weights=str(weights))
    with pytest.raises(UserError, match="weights file not found"):
        check_pretrained("resnet18", weights=str(tmp_path / "missing.pth"))
    with pytest.raises(UserError, match="timm publishes none for it.*--no-pretrained"):
        check_pretrained("coatnet_0_224")  # a timm arch with no published weights
    with pytest.raises(UserError, match="unknown architecture"):
        check_pretrained("resnet_nope")


# --- entries not used, by kind ---------------------------------------------------------------------

def test_scan_images_accounts_for_every_entry(tmp_path, write_image):
    root = tmp_path / "d"
    used = [write_image(root / "cats" / "c1.jpg"), write_image(root / "cats" / "weird.jpg" / "inside.png")]
    real = write_image(tmp_path / "elsewhere" / "dogs" / "d1.png")
    os.symlink(real.parent, root / "dogs")  # a class folder that is a symlink: followed
    os.symlink(real, root / "cats" / "link.png")  # a link to an image: used under its own name
    used += [root / "dogs" / "d1.png", root / "cats" / "link.png"]
    write_image(root / ".cache" / "hidden.jpg")  # a hidden folder: counted once, not looked into
    (root / "cats" / ".DS_Store").write_bytes(b"x")
    (root / "cats" / "notes.txt").write_text("x")
    (root / "cats" / "x.jpg.bak").write_bytes(b"x")
    os.symlink(root / "nowhere.jpg", root / "cats" / "gone.jpg")
    os.symlink("self.jpg", root / "cats" / "self.jpg")
    os.symlink(root, root / "cats" / "back_up")
    os.mkfifo(root / "cats" / "pipe.jpg")
    paths, unused = scan_images(root)
    assert paths == sorted(used)
    assert unused.counts == {"hidden": 2, "not_image_ext": 2, "directory_named_like_image": 1,
                             "dangling_symlink": 1, "symlink_loop": 2, "not_a_file": 1}
    assert unused.examples["dangling_symlink"] == [root / "cats" / "gone.jpg"]
    d = unused.to_dict()
    assert d["total"] == 9 and list(d["counts"])[0] == "not_image_ext"  # kinds in a fixed order
    line = unused.describe(root)
    assert "1 dangling_symlink (e.g. cats/gone.jpg)" in line and "\n" not in line


def test_split_and_wrapper_leftovers_are_counted(image_folder, tmp_path, write_image):
    root = image_folder({"a": 3, "b": 3}, split=True, valid_name="valid")
    write_image(root / "test" / "a" / "t.jpg")  # beside train/ and valid/: not used
    (root / "README.txt").write_text("x")
    wrapper = tmp_path / "download"
    wrapper.mkdir()
    root.rename(wrapper / "inner")
    (wrapper / "LICENSE.txt").write_text("x")  # beside the lone folder the loader steps into
    items = items_from_folder(wrapper)
    assert items.unused.counts == {"outside_split": 1, "not_image_ext": 2}
    assert items.unused.examples["outside_split"] == [wrapper / "inner" / "test"]


def test_image_data_warns_once_and_carries_the_counts(image_folder):
    root = image_folder({"a": 4, "b": 4})
    (root / "a" / "notes.txt").write_text("x")
    os.symlink(root / "missing.png", root / "b" / "gone.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = ImageData.from_folder(root, size=16, progress=False)
        small = data.resized(24)  # the recipe search re-decodes: no second warning, the same counts
    said = [str(w.message) for w in caught if "not used" in str(w.message)]
    assert len(said) == 1 and "1 not_image_ext" in said[0] and "1 dangling_symlink" in said[0]
    assert data.unused.counts == small.unused.counts == {"not_image_ext": 1, "dangling_symlink": 1}


def test_metrics_and_inspect_json_count_unused_kinds(image_folder, tmp_path, capsys):
    root = image_folder({"a": 6, "b": 6}, size=(24, 24))
    (root / "a" / ".hidden.jpg").write_bytes(b"x")
    (root / "b" / "labels.csv").write_text("x")
    os.symlink("loop.png", root / "b" / "loop.png")
    assert main(["train", str(root), "--arch", "simple_cnn", "--epochs", "1", "--size", "16", "--bs", "8",
                 "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert main(["inspect", str(root), "--size", "16", "--out", str(tmp_path / "insp"), "--quiet"]) == 0
    want = {"not_image_ext": 1, "hidden": 1, "symlink_loop": 1}
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    report = json.loads((tmp_path / "insp" / "inspect.json").read_text())
    assert metrics["unused_entries"]["counts"] == report["unused_entries"]["counts"] == want
    assert report["unused_entries"]["examples"]["symlink_loop"] == [str(root / "b" / "loop.png")]
    assert "symlink_loop 1: b/loop.png" in capsys.readouterr().out


def test_predict_globs_count_non_images_instead_of_failing(tmp_path, write_image):
    imgs = [write_image(tmp_path / "in" / f"{i}.png") for i in range(2)]
    (tmp_path / "in" / "notes.txt").write_text("x")
    os.symlink(tmp_path / "nowhere.png", tmp_path / "in" / "gone.png")
    with pytest.warns(UserWarning, match=r"2 entries not used as images: 1 not_image_ext .*1 dangling_symlink"):
        assert expand_images([str(tmp_path / "in" / "*")]) == imgs
    with pytest.raises(UserError, match="not an image file"):  # a file named outright still is an error
        expand_images([str(tmp_path / "in" / "notes.txt")])


# --- decoding edge cases ---------------------------------------------------------------------------

def test_large_images_named_and_extreme_shapes_cheap(tmp_path, monkeypatch):
    wide = tmp_path / "wide.png"
    Image.fromarray(np.full((3, 4000, 3), (200, 30, 30), np.uint8)).save(wide)
    x = load_presized(wide, 256)  # cut to its 3x3 square before resampling, not 341,333 x 256
    assert x.shape == (3, 256, 256) and int(x[0].float().mean()) == 200
    # between PIL's warning and error limits: decoded, with a warning naming the file (PIL's names none)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # PIL's documented knob, lowered to make 4000x3 "huge"
    big = tmp_path / "big.png"
    Image.new("RGB", (80, 60), (1, 2, 3)).save(big)  # 4,800 px: over 4,000, under the error limit of 8,000
    for check in (check_header, open_image):
        with pytest.warns(UserWarning, match=r"big\.png: 80x60 px .*decoded anyway") as got:
            check(big)
        assert len(got) == 1  # PIL's own warning, which names no file, is not shown beside it
    Image.new("RGB", (100, 100)).save(tmp_path / "bomb.png")  # 10,000 px: over 2x the limit
    for check in (check_header, open_image):
        with pytest.raises(BadImage, match="too large"):
            check(tmp_path / "bomb.png")


def test_lazy_screen_gives_the_decoders_reasons(tmp_path, write_image):
    good = write_image(tmp_path / "good.jpg")
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.warns(UserWarning, match="skipped 2 file"):
        keep, bad = screen([good, tmp_path / "zero.jpg", tmp_path / "text.jpg"])
    assert keep == [0]
    assert dict((p.name, why) for p, why in bad) == {"zero.jpg": "empty file (0 bytes)",
                                                     "text.jpg": "not an image PIL can read"}


def test_unused_merges_and_caps_examples():
    a, b = Unused(), Unused()
    for i in range(4):
        a.add("hidden", Path(f".h{i}"))
        b.add("hidden", Path(f".k{i}"))
    a.update(b)
    assert a.counts == {"hidden": 8} and len(a.examples["hidden"]) == Unused.max_examples and a
    assert not Unused()


def test_predict_of_nothing_decodable_fails_and_writes_nothing(trained_run, tmp_path, capsys):
    """A single undecodable file: exit code 2 and one line, not an empty CSV that reads as success."""
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "preds.csv"
    assert main(["predict", str(trained_run), str(bad), "--csv", str(out), "--quiet"]) == 2
    assert "none of the 1 image file(s) could be decoded" in capsys.readouterr().err
    assert not out.exists()


def test_a_class_with_no_validation_image_is_warned_of(image_folder):
    """Trained on, never scored: train says so, since its recall can only read n/a."""
    root = image_folder({"a": 6, "b": 6, "c": 1})
    with pytest.warns(UserWarning, match=r"class\(es\) c have no validation images"):
        data = ImageData.from_folder(root, size=16, progress=False)
    assert (data.train_y == 2).sum() == 1 and not (data.valid_y == 2).any()


@pytest.mark.parametrize("in_memory", [True, False])
def test_bad_files_in_both_splits_are_named_in_one_warning(tmp_path, image_folder, in_memory):
    root = image_folder({"a": 4, "b": 4}, split=True, n_valid=2)
    (root / "train" / "a" / "zero.jpg").write_bytes(b"")
    (root / "val" / "b" / "notes.jpg").write_text("not an image")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = ImageData.from_folder(root, size=16, progress=False, in_memory=in_memory)
    said = [str(w.message) for w in caught if "could not be decoded" in str(w.message)]
    assert len(said) == 1 and said[0].startswith("skipped 2 file(s)"), said
    assert "zero.jpg: empty file" in said[0] and "notes.jpg: not an image" in said[0]
    assert data.n_train == 8 and data.n_valid == 4
