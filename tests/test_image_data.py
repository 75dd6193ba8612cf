"""ImageData and BatchLoader: decoded splits, batches, seeded shuffling, bad files, every constructor."""

from __future__ import annotations

import pytest
import torch

from imgclf.data.augment import center_batch
from imgclf.data.core import ImageData, presize_for
from imgclf.data.loaders import BatchLoader, TensorLoader
from imgclf.errors import UserError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PETS_RE = r"^(.+)_\d+\.jpg$"


def load(root, size=32, **kw) -> ImageData:
    return ImageData.from_folder(root, size=size, progress=False, workers=2, **kw)


def indexed_images(n: int, p: int = 8) -> torch.Tensor:
    """Image i is filled with the value i, so a batch tells which items it holds."""
    return torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, p, p).contiguous()


def ids(x: torch.Tensor) -> list[int]:
    """Recover the item indices from a center-view batch of `indexed_images` (mean 0, std 1)."""
    return (x[:, 0, 0, 0] * 255).round().long().tolist()


# --- ImageData ----------------------------------------------------------------------------------

def test_presize_for():
    assert presize_for(224) == 256
    assert presize_for(32) == 37
    assert presize_for(64) == 73


def test_from_folder_split(tiny_split_folder):
    data = load(tiny_split_folder, size=32, bs=4)
    assert data.classes == ["cats", "dogs"]
    assert data.counts() == {"train": {"cats": 6, "dogs": 6}, "valid": {"cats": 3, "dogs": 3}}
    assert (data.n_train, data.n_valid) == (12, 6)
    assert data.presize == presize_for(32) == round(32 / 0.875)
    assert data.train_images.shape == (12, 3, 37, 37) and data.train_images.dtype == torch.uint8
    assert data.valid_images.shape == (6, 3, 37, 37) and data.valid_images.dtype == torch.uint8
    assert data.train_y.dtype == torch.long and data.skipped == []
    for paths, y in ((data.train_paths, data.train_y), (data.valid_paths, data.valid_y)):
        assert [data.classes[i] for i in y.tolist()] == [p.parent.name for p in paths]
    # images line up with their labels: cats are red-ish, dogs blue-ish
    for images, y in ((data.train_images, data.train_y), (data.valid_images, data.valid_y)):
        rgb = images.float().mean((2, 3))
        red = rgb[:, 0] > rgb[:, 2] + 50
        assert torch.equal(red, y == 0)
    assert "2 classes, 12 train, 6 valid" in repr(data)


def test_from_folder_random_split(tiny_folder):
    a = load(tiny_folder, size=16, valid_pct=0.25, seed=1)
    assert (a.n_train, a.n_valid) == (16, 4)  # stratified: round(0.25 * 10) = 2 (half to even) per class
    assert a.train_images.shape == (16, 3, presize_for(16), presize_for(16))
    b = load(tiny_folder, size=16, valid_pct=0.25, seed=1)
    assert b.valid_paths == a.valid_paths and torch.equal(b.valid_images, a.valid_images)
    assert load(tiny_folder, size=16, valid_pct=0.25, seed=2).valid_paths != a.valid_paths


def test_size_too_small(tiny_split_folder):
    with pytest.raises(UserError, match="too small"):
        load(tiny_split_folder, size=4)


def test_class_without_training_images(image_folder):
    root = image_folder({"cats": 3, "dogs": 3}, split=True)
    for p in (root / "train" / "dogs").iterdir():
        p.unlink()
    (root / "train" / "dogs").rmdir()
    with pytest.raises(UserError, match="dogs have no training images") as e:
        load(root)
    assert str(root) in str(e.value)


def test_corrupt_files_skipped_with_warning(tiny_split_folder):
    broken = tiny_split_folder / "train" / "cats" / "broken.jpg"
    broken.write_bytes(b"")
    text = tiny_split_folder / "val" / "dogs" / "readme.jpg"
    text.write_text("not an image")
    with pytest.warns(UserWarning, match="could not be decoded") as record:
        data = load(tiny_split_folder)
    msgs = " ".join(str(w.message) for w in record)
    assert str(broken) in msgs and str(text) in msgs
    assert sorted(p for p, _ in data.skipped) == sorted([broken, text])
    assert (data.n_train, data.n_valid) == (12, 6)
    assert broken not in data.train_paths and text not in data.valid_paths
    assert data.counts() == {"train": {"cats": 6, "dogs": 6}, "valid": {"cats": 3, "dogs": 3}}


def test_all_valid_images_bad(image_folder):
    root = image_folder({"a": 3, "b": 3}, split=True, n_valid=1)
    for p in (root / "val").rglob("*.jpg"):
        p.write_bytes(b"")
    with pytest.warns(UserWarning), pytest.raises(UserError, match="no decodable images left in the valid"):
        load(root)


def test_constructors_agree(image_folder, tmp_path):
    root = image_folder({"cats": 6, "dogs": 5, "eels": 5})
    folder = load(root, size=16, seed=3)
    by_name = ImageData.from_name_re(root, PETS_RE, seed=3, size=16, progress=False)
    csv_path = tmp_path / "labels.csv"
    rel = [p.relative_to(root) for p in sorted(root.rglob("*.jpg"))]
    csv_path.write_text("file,label\n" + "".join(f"{r.as_posix()},{r.parent.name}\n" for r in rel))
    by_csv = ImageData.from_csv(csv_path, folder=root, seed=3, size=16, progress=False)
    by_files = ImageData.from_files([root / r for r in rel], [r.parent.name for r in rel], seed=3, size=16,
                                    progress=False)
    assert folder.classes == ["cats", "dogs", "eels"]
    assert (folder.n_train, folder.n_valid) == (13, 3)
    for other in (by_name, by_csv, by_files):
        assert other.classes == folder.classes
        assert other.train_paths == folder.train_paths and other.valid_paths == folder.valid_paths
        assert torch.equal(other.train_y, folder.train_y) and torch.equal(other.valid_y, folder.valid_y)
        assert torch.equal(other.train_images, folder.train_images)
        assert torch.equal(other.valid_images, folder.valid_images)


def test_csv_with_is_valid(tmp_path, image_folder):
    root = image_folder({"cats": 3, "dogs": 3})
    rows = [f"{p.relative_to(root).as_posix()},{p.parent.name},{int(p.stem.endswith('_0'))}"
            for p in sorted(root.rglob("*.jpg"))]
    (root / "labels.csv").write_text("file,label,is_valid\n" + "\n".join(rows) + "\n")
    data = ImageData.from_csv(root / "labels.csv", size=16, progress=False)
    assert sorted(p.name for p in data.valid_paths) == ["cats_0.jpg", "dogs_0.jpg"]
    assert data.n_train == 4


# --- loaders ------------------------------------------------------------------------------------

def test_train_loader_batches(tiny_split_folder):
    data = load(tiny_split_folder, size=32, bs=5)
    dl = data.loader("train", MEAN, STD, seed=0)
    assert dl.view == "augment" and dl.shuffle
    batches = list(dl)
    assert len(dl) == len(batches) == 3
    assert [len(y) for _, y in batches] == [5, 5, 2]
    for x, y in batches:
        assert x.device.type == "cpu" and x.dtype == torch.float32
        assert x.shape == (len(y), 3, 32, 32)
        assert x.is_contiguous(memory_format=torch.channels_last)
        assert y.dtype == torch.int64
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == sorted(data.train_y.tolist())
    plain = data.loader("train", MEAN, STD, channels_last=False)
    assert next(iter(plain))[0].is_contiguous()


def test_valid_loader_is_center_view_in_order(tiny_split_folder):
    data = load(tiny_split_folder, size=32, bs=4)
    dl = data.loader("valid", MEAN, STD)
    assert dl.view == "center" and not dl.shuffle and len(dl) == 2
    xs, ys = zip(*dl, strict=True)
    assert torch.equal(torch.cat(ys), data.valid_y)
    expected = center_batch(data.valid_images, 32, torch.tensor(MEAN), torch.tensor(STD))
    assert torch.allclose(torch.cat(xs), expected)
    flipped = torch.cat([x for x, _ in data.loader("valid", MEAN, STD, view="flip")])
    assert torch.allclose(flipped, expected.flip(-1))
    # a train loader asked for the center view is deterministic and not shuffled
    centered = data.loader("train", MEAN, STD, view="center")
    assert torch.equal(torch.cat([y for _, y in centered]), data.train_y)


def test_shuffle_is_seeded_and_covers_every_item():
    images, targets = indexed_images(23), torch.arange(23)

    def epochs(seed: int, n: int = 2) -> list[list[int]]:
        dl = BatchLoader(images, targets, 8, (0, 0, 0), (1, 1, 1), bs=5, shuffle=True, seed=seed)
        return [[i for x, y in dl for i in ids(x)] for _ in range(n)]

    a, b, c = epochs(7), epochs(7), epochs(8)
    assert a == b  # same seed: same order, epoch after epoch
    assert a != c
    assert a[0] != a[1]  # a new order each epoch
    for order in a + c:
        assert sorted(order) == list(range(23))
    dl = BatchLoader(images, targets, 8, (0, 0, 0), (1, 1, 1), bs=5, shuffle=True, seed=7)
    for x, y in dl:  # targets travel with their images
        assert ids(x) == y.tolist()


def test_last_batch_of_one_dropped_only_when_training():
    images, targets = indexed_images(11), torch.arange(11)
    train = BatchLoader(images, targets, 8, (0, 0, 0), (1, 1, 1), bs=5, shuffle=True, seed=0)
    assert len(train) == 2
    sizes = [len(y) for _, y in train]
    assert sizes == [5, 5]
    valid = BatchLoader(images, targets, 8, (0, 0, 0), (1, 1, 1), bs=5, shuffle=False)
    assert len(valid) == 3 and [len(y) for _, y in valid] == [5, 5, 1]
    assert [i for x, _ in valid for i in ids(x)] == list(range(11))
    two_left = BatchLoader(indexed_images(12), torch.arange(12), 8, (0, 0, 0), (1, 1, 1), bs=5, shuffle=True)
    assert [len(y) for _, y in two_left] == [5, 5, 2]  # only a batch of ONE is dropped


def test_tiny_train_split_drops_its_batch_of_one(image_folder):
    root = image_folder({"cats": 3, "dogs": 3}, split=True)
    data = load(root, size=16)
    dl = data.loader("train", MEAN, STD, bs=5)  # 6 train images: 5 + 1 -> the 1 is dropped
    assert len(dl) == 1 and [len(y) for _, y in dl] == [5]


def test_bad_view():
    with pytest.raises(ValueError, match="view"):
        BatchLoader(indexed_images(2), torch.arange(2), 8, (0, 0, 0), (1, 1, 1), view="random")


def test_tensor_loader():
    x, y = torch.arange(21).float().unsqueeze(1), torch.arange(21)
    dl = TensorLoader(x, y, bs=4, shuffle=True, seed=1)
    assert len(dl) == 5  # 21 = 5 * 4 + 1: the batch of one is dropped
    seen = [(xb.squeeze(1).long().tolist(), yb.tolist()) for xb, yb in dl]
    assert all(a == b for a, b in seen) and all(len(b) == 4 for _, b in seen)
    assert len({i for _, b in seen for i in b}) == 20
    assert [b for _, b in seen] == [yb.tolist() for _, yb in TensorLoader(x, y, bs=4, shuffle=True, seed=1)]
    assert [yb.tolist() for _, yb in TensorLoader(x, y, bs=8)] == [list(range(8)), list(range(8, 16)),
                                                                    list(range(16, 21))]


# --- the real data set --------------------------------------------------------------------------

def test_hymenoptera(hymenoptera):
    data = ImageData.from_folder(hymenoptera, size=64, progress=False)
    assert data.classes == ["ants", "bees"]
    assert (data.n_train, data.n_valid) == (245, 153)
    assert data.counts() == {"train": {"ants": 124, "bees": 121}, "valid": {"ants": 70, "bees": 83}}
    assert data.skipped == []
    assert data.train_images.shape == (245, 3, 73, 73) and data.train_images.dtype == torch.uint8
    gif = [i for i, p in enumerate(data.train_paths) if p.suffix == ".gif"]
    assert [data.train_paths[i].name for i in gif] == ["imageNotFound.gif"]
    assert data.train_images[gif[0]].float().std() > 0  # the palette GIF decoded to a real picture
    x, y = next(iter(data.loader("train", MEAN, STD, bs=32)))
    assert x.shape == (32, 3, 64, 64) and torch.isfinite(x).all() and y.dtype == torch.int64


def test_lazy_store_gives_the_same_batches_as_memory(image_folder):
    """Data too large for memory is decoded per batch: same pixels, bad files still screened out."""
    root = image_folder({"cats": 5, "dogs": 5}, split=True)
    (root / "train" / "cats" / "zero.jpg").write_bytes(b"")
    with pytest.warns(UserWarning, match="zero.jpg"):
        mem = ImageData.from_folder(root, size=32, bs=4, progress=False, in_memory=True)
    with pytest.warns(UserWarning, match="zero.jpg"):
        lazy = ImageData.from_folder(root, size=32, bs=4, progress=False, in_memory=False)
    assert not lazy.in_memory and lazy.train_paths == mem.train_paths
    assert torch.equal(lazy.train_images[torch.arange(len(lazy.train_paths))], mem.train_images)
    xl = [x for x, _ in lazy.loader("valid", (0.5,) * 3, (0.5,) * 3)]
    xm = [x for x, _ in mem.loader("valid", (0.5,) * 3, (0.5,) * 3)]
    assert all(torch.equal(a, b) for a, b in zip(xl, xm, strict=True))
