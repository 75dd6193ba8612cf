"""`imgclf inspect`, `data.summary()` and `data.show_batch()`: every figure checked against what was written."""

from __future__ import annotations

import json
import shutil
import statistics
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import HYMENOPTERA
from PIL import Image, ImageDraw, ImageOps

from imgclf.cli import main
from imgclf.data.audit import NEAR, fingerprints, near_pairs, thumbnail
from imgclf.data.core import ImageData
from imgclf.data.show import plot_counts, short, show_batch
from imgclf.data.sources import find_images

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def shapes_image(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A random background with six random shapes: distinct seeds give visibly distinct pictures."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3)))
    d = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(rng.integers(-8, w)), int(rng.integers(-8, h))
        box = [x0, y0, x0 + int(rng.integers(6, w // 2)), y0 + int(rng.integers(6, h // 2))]
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=colour)
    return img


def shapes_folder(root: Path, counts: dict[str, tuple[int, int]]) -> Path:
    """root/{train,valid}/<class>/<class>_<n>.jpg with (n_train, n_valid) distinct pictures per class."""
    seed = 0
    for name, (n_train, n_valid) in counts.items():
        for split, n in (("train", n_train), ("valid", n_valid)):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for _ in range(n):
                shapes_image(seed).save(root / split / name / f"{name}_{seed}.jpg", quality=90)
                seed += 1
    return root


def load(root, size=32, **kw) -> ImageData:
    return ImageData.from_folder(root, size=size, progress=False, workers=2, **kw)


def rel_groups(groups, root: Path) -> list[set[str]]:
    return [{str(Path(p).relative_to(root)) for p in g.paths} for g in groups]


# --- the figures of the summary -----------------------------------------------------------------

def test_summary_counts_sizes_modes_skipped_trace_batch(image_folder, write_image):
    root = image_folder({"cats": 6, "dogs": 4}, split=True, n_valid=2, size=(40, 30))
    write_image(root / "train" / "dogs" / "wide.png", mode="L", size=(90, 20), colour=(90, 90, 90))
    write_image(root / "train" / "dogs" / "tall.png", mode="RGBA", size=(24, 70), colour=(10, 200, 30))
    (root / "train" / "cats" / "broken.jpg").write_bytes(b"")
    with pytest.warns(UserWarning, match="broken.jpg"):
        data = load(root, size=32, bs=4)
    s = data.summary(MEAN, STD, progress=False)
    d = s.to_dict()

    assert d["counts"] == {"train": {"cats": 6, "dogs": 6}, "valid": {"cats": 2, "dogs": 2}}
    assert d["totals"] == {"train": 12, "valid": 4}
    assert d["imbalance_ratio"] == 1.0
    widths = [40] * 14 + [90, 24]
    heights = [30] * 14 + [20, 70]
    assert d["image_sizes"]["width"] == {"min": 24, "median": statistics.median(widths), "max": 90}
    assert d["image_sizes"]["height"] == {"min": 20, "median": statistics.median(heights), "max": 70}
    assert d["modes"] == {"RGB": 14, "L": 1, "RGBA": 1}
    assert d["formats"] == {"JPEG": 14, "PNG": 2}
    assert [Path(f["path"]).name for f in d["skipped_files"]] == ["broken.jpg"]
    assert "empty" in d["skipped_files"][0]["reason"]
    assert d["labeller"] == "class folder names" and d["classes"] == ["cats", "dogs"]

    # the trace: the first training file of each class, followed through the pipeline
    assert [t["label"] for t in d["trace"]] == ["cats", "dogs"]
    for t in d["trace"]:
        assert Path(t["path"]).parent.name == t["label"]
        assert t["file"] == {"format": "JPEG", "mode": "RGB", "size": [40, 30]}
        assert t["decoded"] == {"mode": "RGB", "size": [40, 30]}
        assert t["presized"] == {"shape": [3, data.presize, data.presize], "dtype": "uint8"}
        assert t["tensor"] == {"shape": [3, 32, 32], "dtype": "float32"}
    # the batch: what the learner's train loader yields
    b = d["batch"]
    assert b["x_shape"] == [4, 3, 32, 32] and b["x_dtype"] == "float32" and b["channels_last"]
    assert b["y_shape"] == [4] and b["y_dtype"] == "int64" and b["batches_per_epoch"] == 3
    assert -1.0 <= b["x_min"] < b["x_max"] <= 1.0 and b["mean"] == list(MEAN)
    # distinct noisy images, many of one colour: no false duplicates
    assert d["duplicates"]["exact"] == [] and d["duplicates"]["near"] == [] and d["duplicates"]["n_leaks"] == 0
    assert any("skipped" in n for n in d["notes"])

    text = str(s)
    for needle in ("cats", "imbalance", "median", "broken.jpg", "presized 3x37x37 uint8", "tensor 3x32x32 float32",
                   "x 4x3x32x32 float32", "exact duplicates (same bytes): none"):
        assert needle in text, needle
    json.dumps(d)  # all of it goes to inspect.json


def test_no_false_duplicates_among_many_noisy_images(image_folder):
    root = image_folder({"a": 30, "b": 30, "c": 30}, split=True, n_valid=10, size=(40, 30))
    s = load(root).summary(MEAN, STD, progress=False)
    assert s.exact == [] and s.near == []


def test_planted_exact_near_and_leaks_are_found(tmp_path):
    root = shapes_folder(tmp_path / "shapes", {"a": (8, 3), "b": (8, 3)})
    train_a, train_b = sorted((root / "train" / "a").iterdir()), sorted((root / "train" / "b").iterdir())
    # an exact copy within train
    shutil.copyfile(train_a[0], root / "train" / "a" / "copy.jpg")
    # a near copy within train: 90% size, JPEG quality 40
    img = Image.open(train_b[1])
    img.resize((img.width * 9 // 10, img.height * 9 // 10)).save(root / "train" / "b" / "small.jpg", quality=40)
    # a leak: a mirrored, re-saved copy in valid
    ImageOps.mirror(Image.open(train_a[2])).save(root / "valid" / "a" / "mirror.jpg", quality=75)
    # a leak with the wrong label: a byte copy of a "b" picture among valid "a"
    shutil.copyfile(train_b[3], root / "valid" / "a" / "wrong.jpg")

    s = load(root).summary(MEAN, STD, progress=False)
    r = lambda p: str(p.relative_to(root))  # noqa: E731
    assert rel_groups(s.exact, root) == [{r(train_a[0]), "train/a/copy.jpg"}, {r(train_b[3]), "valid/a/wrong.jpg"}]
    assert rel_groups(s.near, root) == [{r(train_a[2]), "valid/a/mirror.jpg"}, {r(train_b[1]), "train/b/small.jpg"}]
    exact_copy, wrong = s.exact
    assert not exact_copy.leak and exact_copy.where == "train" and not exact_copy.labels_differ
    assert wrong.leak and wrong.where == "train+valid" and wrong.labels_differ
    mirror, small = s.near
    assert mirror.leak and not small.leak and small.kind == "near"
    assert len(s.leaks) == 2
    d = s.to_dict()["duplicates"]
    assert (d["n_exact_groups"], d["n_near_groups"], d["n_leaks"]) == (2, 2, 2)
    assert {f["split"] for f in d["exact"][1]["files"]} == {"train", "valid"}
    notes = " ".join(s.notes)
    assert "2 picture(s) in both train and valid" in notes and "different labels" in notes
    text = str(s)
    assert "[leak] [labels differ]" in text and "valid/a/mirror.jpg" in text


def test_fingerprint_margins():
    """Copies score at or above the threshold, distinct pictures below it; flat images match nothing."""
    base = [shapes_image(seed, (96, 72)) for seed in range(40)]

    def resaved(img, **kw):
        import io

        b = io.BytesIO()
        img.save(b, "JPEG", **kw)
        return Image.open(io.BytesIO(b.getvalue())).convert("RGB")

    copies = [resaved(base[0], quality=30), resaved(base[1].resize((48, 36)), quality=85),
              resaved(ImageOps.mirror(base[2]), quality=85), base[3].point(lambda v: min(255, int(v * 1.15)))]
    flat = [Image.new("RGB", (50, 40), (120, 30, 200)), Image.new("RGB", (50, 40), (120, 30, 200))]
    prints = fingerprints(torch.from_numpy(np.stack([thumbnail(i) for i in base + copies + flat])))
    assert prints[-2:].abs().sum() == 0  # no structure: no fingerprint
    pairs = near_pairs(prints)
    assert sorted(pairs) == [(0, 40), (1, 41), (2, 42), (3, 43)]
    sims = prints[:40] @ prints[:40].T
    assert sims.fill_diagonal_(0).max() < NEAR - 0.1  # distinct pictures stay well below


def test_label_sources_are_named(image_folder, tmp_path):
    root = image_folder({"cats": 4, "dogs": 4})
    data = ImageData.from_name_re(root, r"^(.+)_\d+\.jpg$", size=16, progress=False)
    assert data.labeller == "regex '^(.+)_\\\\d+\\\\.jpg$' on file names"
    rows = ["file,label"] + [f"{p.relative_to(root)},{p.parent.name}" for p in find_images(root)]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    data = ImageData.from_csv(root / "labels.csv", size=16, progress=False)
    s = data.summary(progress=False)
    assert s.labeller == "the label column of labels.csv" and "labels from the label column" in str(s)
    assert sum(s.counts["train"].values()) + sum(s.counts["valid"].values()) == 8


def test_lazy_data_truncated_file_is_reported(image_folder):
    root = image_folder({"cats": 5, "dogs": 5}, split=True, n_valid=2)
    bad = root / "train" / "dogs" / "dogs_1.jpg"
    whole = bad.read_bytes()
    bad.write_bytes(whole[: len(whole) * 2 // 3])  # cut short: the header reads, the lazy store's screen passes it
    data = ImageData.from_folder(root, size=16, progress=False, in_memory=False)
    with pytest.warns(UserWarning):  # the lazy batch loader warns about the file too
        s = data.summary(progress=False)
    assert [p.name for p, _ in s.skipped] == ["dogs_1.jpg"]
    assert s.counts["train"] == {"cats": 5, "dogs": 4}


# --- figures ------------------------------------------------------------------------------------

def _overlaps(texts) -> list[tuple[str, str]]:
    boxes = [(t.get_text(), t.get_window_extent()) for t in texts if t.get_text()]
    return [(a, b) for i, (a, ba) in enumerate(boxes) for b, bb in boxes[i + 1:] if ba.overlaps(bb)]


@pytest.fixture
def forty_classes(image_folder):
    names = {f"class_{i:02d}_with_a_rather_long_descriptive_name": 2 + i % 3 for i in range(40)}
    return image_folder(names, split=True, n_valid=1, size=(20, 16))


def test_show_batch_is_the_loader_batch_denormalised(forty_classes):
    data = load(forty_classes, size=24)
    fig = show_batch(data, n=16, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), seed=3)
    x, y = next(iter(data.loader("train", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), seed=3, bs=16,
                                 channels_last=False)))
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 16
    for ax, xi, yi in zip(shown, x, y.tolist(), strict=True):
        want = (xi * torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) + torch.tensor([0.485, 0.456, 0.406])
                .view(3, 1, 1)).clamp(0, 1).permute(1, 2, 0).numpy()
        np.testing.assert_allclose(ax.images[0].get_array(), want, atol=1e-5)
        title = ax.get_title()
        assert title == short(data.classes[yi], len(title)) and len(title) <= 26
    assert fig._suptitle is not None and "augmented" in fig._suptitle.get_text()
    fig.draw_without_rendering()
    assert not _overlaps([ax.title for ax in fig.axes] + [fig._suptitle])
    # the ImageData method is the same figure
    assert len([ax for ax in data.show_batch(n=5).axes if ax.images]) == 5


def test_counts_figure_readable_for_forty_classes(forty_classes):
    data = load(forty_classes, size=16)
    counts = data.summary(progress=False).counts
    fig = plot_counts(counts)
    ax = fig.axes[0]
    bars = ax.patches
    assert [round(b.get_width()) for b in bars[:40]] == [counts["train"][c] for c in data.classes]
    assert [round(b.get_width()) for b in bars[40:]] == [counts["valid"][c] for c in data.classes]
    assert ax.get_xlabel() == "images" and "imbalance 2.0x" in ax.get_title()
    fig.draw_without_rendering()
    assert not _overlaps(ax.get_yticklabels())
    # many more classes: the largest and smallest halves, and the title says so
    many = {"train": {f"c{i:03d}": i + 1 for i in range(200)}, "valid": {}}
    fig = plot_counts(many)
    assert len(fig.axes[0].get_yticklabels()) == 60 and "of 200 classes" in fig.axes[0].get_title()


# --- the command --------------------------------------------------------------------------------

def test_cli_inspect_hymenoptera(hymenoptera, tmp_path, capsys):
    out = tmp_path / "insp"
    assert main(["inspect", str(hymenoptera), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "imbalance" in printed and "near duplicates" in printed and str(out) in printed
    d = json.loads((out / "inspect.json").read_text())
    on_disk = {split: Counter(p.parent.name for p in find_images(hymenoptera / folder))
               for split, folder in (("train", "train"), ("valid", "val"))}
    assert d["counts"] == {s: dict(sorted(c.items())) for s, c in on_disk.items()}
    assert d["size"] == 256 and d["presize"] == 293 and d["batch"]["x_shape"] == [64, 3, 256, 256]
    assert d["batch"]["mean"] == [0.5, 0.5, 0.5]  # the default backbone's normalisation
    assert d["trace"][0]["tensor"]["shape"] == [3, 256, 256] and d["skipped_files"] == []
    assert d["modes"]["RGB"] >= 390 and d["image_sizes"]["width"]["max"] >= d["image_sizes"]["width"]["median"]
    for name in ("show_batch.png", "counts.png"):
        with Image.open(out / name) as im:
            assert im.width > 400 and im.height > 200


def test_cli_default_out_and_errors(tiny_split_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert main(["inspect", str(tiny_split_folder), "--size", "32", "--show", "4", "--quiet"]) == 0
    assert (tmp_path / "runs" / "tiny_split-inspect" / "inspect.json").is_file()
    assert (tmp_path / "runs" / "tiny_split-inspect-2" / "show_batch.png").is_file()  # never overwritten
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("imgclf: error:") and "no such" in err[0]
    assert main(["inspect", str(tiny_split_folder), "--show", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--show" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_the_summary_says_when_near_duplicates_were_not_looked_for_and_what_the_split_moved(tmp_path):
    """Fashion-MNIST's silhouettes defeat the files' fingerprint (a chain of look-alikes): the summary said
    "near duplicates: none" right after the split's own check had moved images as near duplicates."""
    import gzip
    import warnings

    from test_leaks import pictures_with_copies

    from imgclf.data.audit import summarize
    from imgclf.data.idx import read_idx

    x = read_idx(HYMENOPTERA.parent / "fashion-mnist" / "train-images-idx3-ubyte.gz")[:240]
    with gzip.open(HYMENOPTERA.parent / "fashion-mnist" / "train-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)[:240]
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        (tmp_path / "fm" / f"c{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.squeeze()).save(tmp_path / "fm" / f"c{label}" / f"{i}.png")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        s = summarize(ImageData.from_folder(tmp_path / "fm", size=28, progress=False), progress=False)
    text, d = str(s), s.to_dict()["duplicates"]
    assert "near duplicates (same picture, cosine >= 0.9): not looked for: " in text and "chain" in text
    assert not d["near_checked"] and "chain" in d["near_note"] and d["n_near_groups"] == 0

    root = pictures_with_copies(tmp_path / "copies")  # real copies on a drawn split: the split moves them
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        data = ImageData.from_folder(root, size=32, valid_pct=0.5, seed=1, progress=False)
        s = summarize(data, progress=False)
    n = len(data.near_duplicates.moved)
    assert n > 0 and s.to_dict()["duplicates"]["split_check"]["n_moved"] == n
    assert f"split: {n} validation image(s) moved to training as near duplicates" in str(s)


def test_inspect_reports_an_empty_class_folder_and_goes_on(image_folder, tmp_path, capsys):
    """Training refuses an empty class folder (a failed copy, mostly); the audit names it and audits the rest."""
    root = image_folder({"daisy": 6, "rose": 6})
    (root / "sunflower").mkdir()
    assert main(["train", str(root), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "sunflower: class folder has no images" in capsys.readouterr().err
    out = tmp_path / "audit"
    with pytest.warns(UserWarning, match="1 empty_class_folder"):
        assert main(["inspect", str(root), "--size", "32", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "empty_class_folder 1: sunflower" in printed and "`imgclf train` stops on them" in printed
    report = json.loads((out / "inspect.json").read_text())
    assert report["classes"] == ["daisy", "rose"] and report["unused_entries"]["counts"] == {"empty_class_folder": 1}
