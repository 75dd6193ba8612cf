"""Tar shards: writing (`imgclf shard`), streaming them back (`ShardData`), and training from them."""

from __future__ import annotations

import csv
import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgclf.cli import main
from imgclf.config import ModelConfig
from imgclf.data.core import ImageData, presize_for
from imgclf.data.shards import DEFAULT_PRESIZE, MANIFEST, ShardData, verify_shards, write_shards
from imgclf.errors import UserError
from imgclf.models import recommended_size

MEAN = STD = (0.5, 0.5, 0.5)


def _make_folder(root: Path) -> Path:
    """3 classes x 20 images of odd sizes, one corrupt file, and a CMYK, a grey and a palette image."""
    rng = np.random.default_rng(0)
    for c, tint in zip("abc", (0, 100, 200), strict=True):
        (root / c).mkdir(parents=True)
        for i in range(20):
            w, h = (int(v) for v in rng.integers(17, 61, 2))
            a = rng.integers(0, 60, (h, w, 3), dtype=np.uint8) + tint
            Image.fromarray(a.astype(np.uint8)).save(root / c / f"{i}.jpg")
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    Image.new("CMYK", (41, 29), (10, 20, 30, 0)).save(root / "b" / "cmyk.jpg")
    Image.new("L", (23, 47), 128).save(root / "c" / "grey.png")
    Image.new("P", (33, 21), 3).save(root / "c" / "palette.gif")
    return root


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    data = _make_folder(root / "data")
    with pytest.warns(UserWarning, match="broken.jpg"):
        manifest = write_shards(data, root / "shards", shard_size=10, presize=40, progress=False)
    return data, root / "shards", manifest


def _epoch_samples(loader, seed: int) -> list[tuple[str, str, dict[str, bytes]]]:
    return list(loader.samples(seed))


def test_manifest_counts_checksums_and_skipped(written):
    data, shards, m = written
    assert m["classes"] == ["a", "b", "c"]
    n_train, n_valid = m["splits"]["train"]["count"], m["splits"]["valid"]["count"]
    assert n_train + n_valid == 63  # 60 + CMYK + grey + palette; the broken file is left out
    assert sum(m["splits"]["train"]["counts"].values()) == n_train
    assert [s["path"] for s in m["skipped"]] == [str(data / "a" / "broken.jpg")]
    for split, n in (("train", n_train), ("valid", n_valid)):
        assert sum(s["count"] for s in m["shards"] if s["split"] == split) == n
    for s in m["shards"]:
        assert s["count"] <= 10
        f = shards / s["name"]
        assert f.stat().st_size == s["bytes"]
        assert hashlib.sha256(f.read_bytes()).hexdigest() == s["sha256"]
    assert json.loads((shards / MANIFEST).read_text()) == m
    assert verify_shards(shards) == []
    assert not list(shards.parent.glob(".shards.tmp-*"))  # the temporary folder was renamed into place


def test_every_image_once_per_epoch_with_its_label(written):
    data, shards, m = written
    d = ShardData(shards, size=16, bs=8)
    for split in ("train", "valid"):
        samples = _epoch_samples(d.loader(split, MEAN, STD, view="center"), 0)
        paths = [json.loads(p["json"])["path"] for _, _, p in samples]
        assert len(paths) == len(set(paths)) == m["splits"][split]["count"]
        for _, _, parts in samples:  # the label is the class folder the file came from
            assert m["classes"][int(parts["cls"])] == Path(json.loads(parts["json"])["path"]).parent.name
    # the augmented training loader: every image once an epoch, batches of uint8 -> normalised floats
    dl = d.loader("train", MEAN, STD, seed=3)
    ys = [y for _, y in dl]
    xb, _ = next(iter(dl))
    assert xb.shape[1:] == (3, 16, 16) and xb.dtype == torch.float32
    assert len(ys) == len(dl)
    counts = torch.cat(ys).bincount(minlength=3).tolist()
    assert dict(zip(m["classes"], counts, strict=True)) == m["splits"]["train"]["counts"]


def test_shuffled_across_epochs_and_shards(written):
    _, shards, m = written
    dl = ShardData(shards, size=16, bs=8).loader("train", MEAN, STD, seed=0)
    first, second = _epoch_samples(dl, 1), _epoch_samples(dl, 2)
    keys1, keys2 = [k for _, k, _ in first], [k for _, k, _ in second]
    assert sorted(keys1) == sorted(keys2) and keys1 != keys2
    assert len({url for url, _, _ in first[:10]}) > 1  # the first ten come from several shards
    # and the loader draws a new order each epoch
    y1, y2 = (torch.cat([y for _, y in dl]) for _ in range(2))
    assert not torch.equal(y1, y2)


def test_same_validation_images_as_the_folder(written):
    data, shards, _ = written
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the broken file, warned about again
        folder = ImageData.from_folder(data, size=16, progress=False)
    samples = _epoch_samples(ShardData(shards, size=16).loader("valid", MEAN, STD), 0)
    assert sorted(json.loads(p["json"])["path"] for _, _, p in samples) == sorted(map(str, folder.valid_paths))


def test_resume_mid_epoch_gives_the_rest_of_the_epoch(written):
    _, shards, _ = written
    d = ShardData(shards, size=16, bs=8)
    full = list(d.loader("train", MEAN, STD, seed=5))
    dl = d.loader("train", MEAN, STD, seed=5)
    it = iter(dl)
    next(it), next(it)
    state = dl.state_dict()
    it.close()
    again = d.loader("train", MEAN, STD, seed=5)
    again.load_state_dict(state)
    rest = list(again)
    assert len(rest) == len(full) - 2
    for (x, y), (xr, yr) in zip(full[2:], rest, strict=True):
        assert torch.equal(y, yr) and torch.allclose(x, xr)


def test_truncated_shard_is_named(written, tmp_path):
    _, shards, m = written
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in shards.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    victim = copy / "train-000001.tar"
    victim.write_bytes(victim.read_bytes()[:3000])
    with pytest.raises(UserError, match="train-000001.tar.*truncated"):
        ShardData(copy, size=16)
    assert any("train-000001.tar" in p for p in verify_shards(copy))
    dl = ShardData(copy, size=16, check=False).loader("train", MEAN, STD, view="center")
    with pytest.raises(UserError, match="train-000001.tar"):
        list(dl)


def test_refuses_to_overwrite(written, capsys):
    data, shards, _ = written
    before = (shards / MANIFEST).read_text()
    assert main(["shard", str(data), "--out", str(shards), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (shards / MANIFEST).read_text() == before


def test_cli_shard_then_train(tmp_path, capsys):
    data = _make_folder(tmp_path / "data")
    shards = tmp_path / "shards"
    with pytest.warns(UserWarning, match="broken.jpg"):
        assert main(["shard", str(data), "--out", str(shards), "--shard-size", "16", "--quiet"]) == 0
    assert "train on them: imgclf train" in capsys.readouterr().out
    m = json.loads((shards / MANIFEST).read_text())
    assert m["presize"] == DEFAULT_PRESIZE and len(m["shards"]) == 5  # images this small keep their own bytes
    assert DEFAULT_PRESIZE == presize_for(recommended_size(ModelConfig().arch))  # the default backbone's
    run = tmp_path / "run"
    assert main(["train", str(shards), "--arch", "simple_cnn", "--no-pretrained", "--epochs", "1", "--size", "16",
                 "--out", str(run), "--quiet"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["n_train"], metrics["n_valid"]) == (m["splits"]["train"]["count"], m["splits"]["valid"]["count"])
    assert metrics["counts"]["valid"] == m["splits"]["valid"]["counts"]
    assert [f["path"] for f in metrics["skipped_files"]] == [str(data / "a" / "broken.jpg")]
    config = json.loads((run / "config.json").read_text())
    assert config["status"] == "done" and config["resolved"]["classes"] == ["a", "b", "c"]
    assert (run / "model.safetensors").is_file()
    # --force replaces the shards in place
    with pytest.warns(UserWarning, match="broken.jpg"):
        assert main(["shard", str(data), "--out", str(shards), "--force", "--original", "--quiet"]) == 0
    assert json.loads((shards / MANIFEST).read_text())["presize"] is None
    # but never the data itself, a folder around it, or a folder that holds no shards: nothing is deleted
    before = sorted(p.relative_to(tmp_path) for p in data.rglob("*"))
    for out, said in ((data, "that is, holds or sits inside the data"),
                      (data.parent, "that is, holds or sits inside the data"),
                      (data / "a" / "shards", "that is, holds or sits inside the data"),
                      (run, "is not a shard folder")):
        with pytest.raises(UserError, match=said):
            write_shards(data, out, force=True, progress=False)
    assert sorted(p.relative_to(tmp_path) for p in data.rglob("*")) == before and (run / "model.safetensors").is_file()


def test_ranks_share_each_epoch(written):
    """Under torchrun each rank streams every shard and keeps its strided share, padded to equal lengths."""
    _, shards, m = written
    d = ShardData(shards, size=16, bs=8)
    whole = [k for _, k, _ in _epoch_samples(d.loader("valid", MEAN, STD), 0)]
    shares = [[k for _, k, _ in _epoch_samples(d.loader("valid", MEAN, STD).shard(r, 5), 0)] for r in range(5)]
    assert len({len(s) for s in shares}) == 1 and len(shares[0]) == -(-len(whole) // 5)
    assert sorted({k for s in shares for k in s}) == sorted(whole)
    for r, share in enumerate(shares):
        assert share[: len(whole[r::5])] == whole[r::5]


def test_shards_from_a_url(written):
    """Shards on any fsspec file system (here its in-memory one, as an object store would be): same samples."""
    import fsspec  # torch requires it: present wherever imgclf is

    _, shards, m = written
    fs = fsspec.filesystem("memory")
    for f in shards.iterdir():
        fs.pipe(f"/h2shards/{f.name}", f.read_bytes())
    d = ShardData("memory://h2shards", size=16, bs=8)
    assert (d.n_train, d.n_valid) == (m["splits"]["train"]["count"], m["splits"]["valid"]["count"])
    local = _epoch_samples(ShardData(shards, size=16).loader("valid", MEAN, STD), 0)
    remote = _epoch_samples(d.loader("valid", MEAN, STD), 0)
    assert [(k, p) for _, k, p in remote] == [(k, p) for _, k, p in local]
    assert sum(len(y) for _, y in d.loader("train", MEAN, STD)) == m["splits"]["train"]["count"]


def test_near_duplicates_move_as_imgclf_train_moves_them(tmp_path):
    """A resized copy on the validation side of a drawn split moves to training, in the shards as in ImageData."""
    rng = np.random.default_rng(1)
    for c in ("x", "y"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(24):
            img = Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).resize((48, 48))
            img.save(tmp_path / "data" / c / f"{i}.png")
            if i % 3 == 0:
                img.resize((40, 40)).save(tmp_path / "data" / c / f"{i}_copy.jpg", quality=90)
    with pytest.warns(UserWarning, match="near duplicates"):
        folder = ImageData.from_folder(tmp_path / "data", size=16, progress=False)
    assert folder.near_duplicates.moved
    with pytest.warns(UserWarning, match="near duplicates"):
        m = write_shards(tmp_path / "data", tmp_path / "shards", presize=folder.presize, progress=False)
    assert sorted(m["near_duplicates"]["moved"]) == sorted(str(tmp_path / "data" / p) for p in
                                                           folder.near_duplicates.moved)
    samples = _epoch_samples(ShardData(tmp_path / "shards", size=16).loader("valid", MEAN, STD), 0)
    assert sorted(json.loads(p["json"])["path"] for _, _, p in samples) == sorted(map(str, folder.valid_paths))


def test_pixel_shards_hold_the_presized_images_exactly(written, tmp_path, capsys):
    """`--pixels`: every image stored presized as uint8 `.npy`, read back tensor-equal to the folder's decode at
    that presize, with nothing to decode; a different training size resizes them; --original excludes it."""
    data, _, _ = written
    out = tmp_path / "px"
    with pytest.warns(UserWarning, match="broken.jpg"):
        assert main(["shard", str(data), "--out", str(out), "--presize", "16", "--pixels", "--quiet"]) == 0
    capsys.readouterr()
    m = json.loads((out / MANIFEST).read_text())
    assert m["encoding"] == "npy" and m["presize"] == 16
    d = ShardData(out, size=16, crop_pct=1.0, bs=8)
    dl = d.loader("valid", MEAN, STD, view="center")
    samples = _epoch_samples(dl, 0)
    assert all(set(p) == {"npy", "cls", "json"} for _, _, p in samples)
    x, _ = dl._decode(samples)
    folder = ImageData.from_folder(data, size=16, crop_pct=1.0, bs=8, progress=False)
    by_path = dict(zip(map(str, folder.valid_paths), folder.valid_images, strict=True))
    expect = torch.stack([by_path[json.loads(p["json"])["path"]] for _, _, p in samples])
    assert torch.equal(x, expect)
    big = ShardData(out, size=24, crop_pct=1.0, bs=8).loader("valid", MEAN, STD, view="center")
    assert big._decode(samples)[0].shape[1:] == (3, 24, 24)
    assert main(["shard", str(data), "--out", str(tmp_path / "both"), "--pixels", "--original", "--quiet"]) == 2
    assert "choose one" in capsys.readouterr().err


def test_pretrained_fine_tune_streams_its_cached_features(written, tmp_path):
    """The default for shards (the pretrained backbone's fine_tune, its head on cached features) runs end to end:
    the feature engine's parity check takes its first images from the stream (shards hold nothing indexable)."""
    _, shards, m = written
    out = tmp_path / "run"
    assert main(["train", str(shards), "--size", "32", "--epochs", "1", "--freeze-epochs", "1", "--out", str(out),
                 "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_valid"] == m["splits"]["valid"]["count"] and 0 <= metrics["accuracy"] <= 1
    assert json.loads((out / "config.json").read_text())["status"] == "done"


def test_tar_reader_reads_what_tarfile_writes_in_every_format(tmp_path):
    """The shard reader's own header parsing (shards.tar_members) against the standard library's writer: ustar,
    GNU and pax archives, long names (> 100 characters), empty and block-sized files, a directory and a symlink
    skipped; a flipped header byte and a cut archive are errors, not wrong samples."""
    import io
    import tarfile

    from imgclf.data.shards import tar_members

    files = {"a.jpg": b"x" * 700, "a.cls": b"3", "b.json": b"", "c.npy": bytes(range(256)) * 2,
             "deep/" + "n" * 120 + ".jpg": b"long name", "ü-unicode.cls": b"1"}
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        if fmt == tarfile.USTAR_FORMAT:  # ustar cannot hold a 120-character base name
            want = {k: v for k, v in files.items() if not k.startswith("deep/")}
        else:
            want = files
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
            tar.addfile(_dir_info())
            for name, data in want.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            link = tarfile.TarInfo("link.jpg")
            link.type, link.linkname = tarfile.SYMTYPE, "a.jpg"
            tar.addfile(link)
        raw = buf.getvalue()
        assert list(tar_members(io.BytesIO(raw))) == list(want.items()), fmt
        bad = bytearray(raw)
        bad[512 + 10] ^= 0x20  # a byte of the second header's name
        with pytest.raises(tarfile.ReadError):
            list(tar_members(io.BytesIO(bytes(bad))))
        with pytest.raises(EOFError):
            list(tar_members(io.BytesIO(raw[:512 * 3 + 100])))


def _dir_info():
    import tarfile

    info = tarfile.TarInfo("somedir")
    info.type = tarfile.DIRTYPE
    return info


def test_npy_reader_equals_numpy(tmp_path):
    import io

    from imgclf.data.shards import npy_array

    rng = np.random.default_rng(0)
    for a in (rng.integers(0, 255, (3, 9, 9), dtype=np.uint8), rng.normal(size=(2, 5)).astype(np.float32),
              rng.integers(0, 255, (3, 9, 9), dtype=np.uint8),  # the same header again: the kept parse
              np.asfortranarray(rng.normal(size=(4, 3))),
              np.zeros((0, 3), np.int16)):
        buf = io.BytesIO()
        np.save(buf, a, allow_pickle=False)
        got = npy_array(buf.getvalue())
        assert got.dtype == a.dtype and got.shape == a.shape and np.array_equal(got, a)
    with pytest.raises(ValueError):
        npy_array(b"not an npy file at all")


def test_a_numeric_label_column_is_refused_as_a_regression_target(tmp_path, write_image):
    """Ages as labels made 59 'classes' out of 96 images; the error came only at train --task regression."""
    rows = []
    for i in range(40):
        write_image(tmp_path / "imgs" / f"{i}.png", size=(20, 20), seed=i)
        rows.append((f"imgs/{i}.png", str(18 + i)))
    with open(tmp_path / "ages.csv", "w", newline="") as f:
        csv.writer(f).writerows([("file", "age"), *rows])
    with pytest.raises(UserError, match=r"labels are numbers \(40 distinct among 40 images\).*--task regression"):
        write_shards(tmp_path / "ages.csv", tmp_path / "shards", progress=False)
    assert not (tmp_path / "shards").exists()
    # a folder beside a CSV is not its data (the rows name the files): shards may go there
    with open(tmp_path / "kinds.csv", "w", newline="") as f:
        csv.writer(f).writerows([("file", "kind"), *((p, "odd" if int(a) % 2 else "even") for p, a in rows)])
    m = write_shards(tmp_path / "kinds.csv", tmp_path / "shards", progress=False)
    assert m["classes"] == ["even", "odd"] and (tmp_path / "shards" / MANIFEST).is_file()
