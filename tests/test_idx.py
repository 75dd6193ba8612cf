"""IDX files (MNIST, Fashion-MNIST) as a data source: the reader, ImageData.from_idx, and `imgclf train` on them."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgclf import ImageData, UserError
from imgclf.cli import main
from imgclf.config import DataConfig, RunConfig
from imgclf.data.decode import presize
from imgclf.data.idx import FASHION_MNIST_CLASSES, is_idx_folder, presize_arrays, read_idx, write_idx
from imgclf.train.job import load_data

FASHION = Path(__file__).resolve().parents[2] / "shared/datasets/fashion-mnist"


@pytest.fixture
def fashion() -> Path:
    """The real Fashion-MNIST IDX files in `../shared/datasets/`; FAILS (never skips) when they are missing."""
    if not (FASHION / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"real data set missing: {FASHION} (expected the four Fashion-MNIST IDX .gz files)")
    return FASHION


def raw_idx_bytes(a: np.ndarray, code: int) -> bytes:
    """An IDX file written by hand (independent of `write_idx`): magic, big-endian dims, big-endian data."""
    be = a.astype(a.dtype.newbyteorder(">"))
    return bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + be.tobytes()


def tiny_idx_folder(root: Path, n_train: int = 12, n_valid: int = 6, n_classes: int = 3, gz: bool = True,
                    hw: tuple[int, int] = (28, 28)) -> Path:
    """train-* (gzipped when `gz`) and t10k-* (never gzipped) of random grey images, labels cycling 0..n-1."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, n, ext in (("train", n_train, ".gz" if gz else ""), ("t10k", n_valid, "")):
        write_idx(root / f"{name}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, *hw), dtype=np.uint8))
        write_idx(root / f"{name}-labels-idx1-ubyte{ext}", (np.arange(n) % n_classes).astype(np.uint8))
    return root


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_reads_hand_written_files_exactly(tmp_path, gz):
    rng = np.random.default_rng(1)
    cases = [(rng.integers(0, 256, (5, 4, 3), dtype=np.uint8), 0x08), (np.arange(7, dtype=np.uint8), 0x08),
             (rng.integers(-3000, 3000, (4, 2), dtype=np.int16), 0x0B),
             (rng.normal(size=(3, 2)).astype(np.float32), 0x0D)]
    for i, (a, code) in enumerate(cases):
        path = tmp_path / (f"a{i}.idx" + (".gz" if gz else ""))
        data = raw_idx_bytes(a, code)
        path.write_bytes(gzip.compress(data) if gz else data)
        got = read_idx(path)
        assert got.dtype == a.dtype.newbyteorder("=") and got.shape == a.shape and np.array_equal(got, a)
        assert np.array_equal(read_idx(path, limit=2), a[:2])  # only the first records
        # our writer writes the same bytes
        assert write_idx(tmp_path / f"b{i}.idx", a).read_bytes() == data


def test_read_idx_says_what_is_wrong(tmp_path):
    (tmp_path / "notidx").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(UserError, match="notidx: not an IDX file"):
        read_idx(tmp_path / "notidx")
    data = raw_idx_bytes(np.zeros((10, 28, 28), np.uint8), 0x08)
    (tmp_path / "short").write_bytes(data[:-100])
    with pytest.raises(UserError, match="short: truncated"):
        read_idx(tmp_path / "short")


def test_from_idx_on_a_tiny_set_names_items_and_presizes_like_files(tmp_path):
    root = tiny_idx_folder(tmp_path / "digits")
    assert is_idx_folder(root) and not is_idx_folder(tmp_path)
    data = ImageData.from_idx(root, size=16, progress=False)
    assert data.classes == ["0", "1", "2"]  # not Fashion-MNIST's: the folder name does not say so
    assert (data.n_train, data.n_valid) == (12, 6) and data.in_memory
    assert data.train_paths[5] == root / "train-images-idx3-ubyte.gz#5"
    assert data.valid_paths[0].name == "t10k-images-idx3-ubyte#0"
    assert data.train_y.tolist() == [i % 3 for i in range(12)]
    raw = read_idx(root / "train-images-idx3-ubyte.gz")
    assert data.train_images.shape == (12, 3, 18, 18) and data.train_images.dtype == torch.uint8
    for i in range(12):  # bit for bit what decoding the same picture from a file gives
        assert torch.equal(data.train_images[i], presize(Image.fromarray(raw[i]).convert("RGB"), 18))
    # the auto recipe re-presizes at other sizes: from the arrays, same classes and items
    bigger = data.resized(40)
    assert bigger.train_images.shape == (12, 3, 46, 46) and bigger.classes == data.classes
    assert bigger.train_paths == data.train_paths and torch.equal(bigger.valid_y, data.valid_y)
    # subsets read the first records only
    sub = ImageData.from_idx(root, size=16, n_train=6, n_valid=3, progress=False)
    assert (sub.n_train, sub.n_valid) == (6, 3) and torch.equal(sub.train_images, data.train_images[:6])


def test_presize_arrays_matches_presize_on_odd_shapes():
    rng = np.random.default_rng(2)
    grey = rng.integers(0, 256, (3, 20, 50), dtype=np.uint8)  # wide: short side resized, centre cropped
    rgb = rng.integers(0, 256, (2, 3, 60, 30), dtype=np.uint8)
    for size in (12, 37):  # down (PIL's reducing path) and up
        got = presize_arrays(grey, size, progress=False)
        for i in range(3):
            assert torch.equal(got[i], presize(Image.fromarray(grey[i]).convert("RGB"), size))
        got = presize_arrays(torch.from_numpy(rgb), size, progress=False)
        for i in range(2):
            assert torch.equal(got[i], presize(Image.fromarray(rgb[i].transpose(1, 2, 0)), size))


def test_class_names_argument_file_and_errors(tmp_path):
    root = tiny_idx_folder(tmp_path / "mnist-like", gz=False)
    (root / "classes.txt").write_text("zero\none\ntwo\n")
    assert ImageData.from_idx(root, size=8, progress=False).classes == ["zero", "one", "two"]
    assert ImageData.from_idx(root, size=8, classes=["a", "b", "c"], progress=False).classes == ["a", "b", "c"]
    with pytest.raises(UserError, match="2 class names for labels 0..2"):
        ImageData.from_idx(root, size=8, classes=["a", "b"], progress=False)
    with pytest.raises(UserError, match="half the memory.*smaller --size.*28x28 px"):  # in_memory=False: as if too big
        ImageData.from_idx(root, size=8, in_memory=False, progress=False)
    (root / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(UserError, match="lacks t10k-labels"):
        ImageData.from_idx(root, size=8, progress=False)


def test_fashion_mnist_from_idx(fashion):
    data = ImageData.from_idx(fashion, size=32, n_train=200, n_valid=100, progress=False)
    assert data.classes == list(FASHION_MNIST_CLASSES) and len(data.classes) == 10
    assert data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot"
    with gzip.open(fashion / "train-labels-idx1-ubyte.gz") as f:  # read independently: 8-byte header
        train_labels = np.frombuffer(f.read(), np.uint8, offset=8)
    with gzip.open(fashion / "t10k-labels-idx1-ubyte.gz") as f:
        valid_labels = np.frombuffer(f.read(), np.uint8, offset=8)
    with gzip.open(fashion / "train-images-idx3-ubyte.gz") as f:  # 16-byte header
        first = np.frombuffer(f.read(16 + 784), np.uint8, offset=16).reshape(28, 28)
    assert len(train_labels) == 60_000 and len(valid_labels) == 10_000
    assert int(data.train_y[0]) == int(train_labels[0])
    assert data.train_y.tolist() == train_labels[:200].tolist() and data.valid_y.tolist() == valid_labels[:100].tolist()
    assert data.train_images.shape == (200, 3, 37, 37) and data.train_images.dtype == torch.uint8
    assert data.valid_images.shape == (100, 3, 37, 37)
    x = data.train_images
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # grey on all three channels
    assert torch.equal(x[0], presize(Image.fromarray(first).convert("RGB"), 37))
    assert data.train_paths[0].name == "train-images-idx3-ubyte.gz#0"
    assert "Fashion-MNIST" in data.labeller


def fashion_subset(fashion: Path, sub: Path, n_train: int, n_valid: int) -> Path:
    """The first `n_train` / `n_valid` Fashion-MNIST records as a folder of their own (the name says fashion)."""
    sub.mkdir()
    for name, n in (("train", n_train), ("t10k", n_valid)):
        write_idx(sub / f"{name}-images-idx3-ubyte.gz", read_idx(fashion / f"{name}-images-idx3-ubyte.gz", n))
        write_idx(sub / f"{name}-labels-idx1-ubyte.gz", read_idx(fashion / f"{name}-labels-idx1-ubyte.gz", n))
    return sub


def test_load_data_routes_idx_folders(tmp_path):
    root = tiny_idx_folder(tmp_path / "some-idx")
    data = load_data(RunConfig(data=DataConfig(path=str(root), size=16)), progress=False)
    assert (data.n_train, data.n_valid) == (12, 6) and data.train_paths[0].name.endswith("#0")


def test_train_cli_probe_on_a_fashion_mnist_subset(tmp_path, fashion, capsys):
    """`imgclf train DIR` on IDX files: routed, official names, and a probe at 32 px beats chance clearly."""
    sub = fashion_subset(fashion, tmp_path / "fashion-mnist-small", 300, 150)
    out = tmp_path / "run"
    assert main(["train", str(sub), "--size", "32", "--recipe", "probe", "--out", str(out), "--quiet"]) == 0
    assert "accuracy" in capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    meta = json.loads((out / "model.json").read_text())
    assert (m["n_train"], m["n_valid"], m["n_classes"]) == (300, 150, 10)
    assert meta["classes"] == list(FASHION_MNIST_CLASSES) and m["skipped_files"] == []
    assert m["accuracy"] > 0.6, m  # chance is 0.1


def test_inspect_summary_of_idx_data_reads_the_arrays(fashion):
    data = ImageData.from_idx(fashion, n_train=120, n_valid=60, size=32, progress=False)
    s = data.summary(progress=False)
    assert sum(s.counts["train"].values()) == 120 and sum(s.counts["valid"].values()) == 60
    assert not s.skipped and s.modes == {"L": 180}
    assert s.image_sizes["width"]["median"] == 28


def test_from_scratch_cli_on_fashion_mnist_and_evaluate_idx(tmp_path, fashion, capsys):
    """Our small-image ResNet from scratch (the scratch recipe, chosen for a random-init arch) at 28 px with the
    whole image as the validation view; then `imgclf evaluate RUN IDX-DIR --tta` scores the t10k files."""
    sub = fashion_subset(fashion, tmp_path / "fashion-mnist-small", 1200, 300)
    out = tmp_path / "run"
    assert main(["train", str(sub), "--arch", "xresnet_tiny", "--epochs", "3", "--lr", "8e-3",
                 "--augment", "light,pad=2", "--out", str(out), "--quiet"]) == 0
    assert "recipe: scratch" in capsys.readouterr().out
    conf = json.loads((out / "config.json").read_text())
    assert conf["resolved"]["recipe"] == "scratch"
    # from scratch the images' own 28 px (not xresnet_tiny's 32), whole: size = presize, crop 1
    assert (conf["resolved"]["size"], conf["resolved"]["presize"], conf["resolved"]["crop_pct"]) == (28, 28, 1.0)
    assert conf["data"]["size"] is None and conf["data"]["crop_pct"] is None  # what the user gave: nothing
    assert conf["resolved"]["augment"] == ["flip", "rotate(5)", "zoom(1.1)", "pad(2)", "lighting(0.1)"]
    m = json.loads((out / "metrics.json").read_text())
    assert m["accuracy"] > 0.6, m  # chance is 0.1
    assert main(["evaluate", str(out), str(sub), "--tta", "--json", str(tmp_path / "ev.json")]) == 0
    ev = json.loads((tmp_path / "ev.json").read_text())
    assert ev["n"] == 300 and abs(ev["accuracy"] - m["accuracy"]) < 0.02  # the same 300 images, rescored
    assert 0.5 < ev["tta_accuracy"] <= 1 and ev["tta_views"] == ["center", "flip"]
    assert len(ev["per_class_accuracy"]) == 10
