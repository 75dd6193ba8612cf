"""A corpus of every kind of file a user's folder holds, through `train`, `predict`, `inspect` and `evaluate`.

Good images in odd forms (CMYK, 16-bit, palette with transparency, animated GIF, 1x1, 4000x3, EXIF-rotated,
WebP, TIFF, BMP, a PNG named .jpg, unicode and spaces in the name) must be used; broken files (zero bytes,
truncated JPEG and PNG, text named .jpg, a 20000x20000 PNG bomb) must be skipped and named; entries that are
not images (hidden, notes.txt, a folder named x.jpg, dangling symlinks, symlink loops) must be counted by kind.
Every command exits 0. The whole corpus is ~45 small entries; the bomb is 50 KB on disk.
"""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf.cli import main

COLOURS = {"apples": (200, 40, 40), "grapes": (40, 40, 200)}


def _solid(colour, size=(40, 32), seed=0, mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    a = np.clip(np.asarray(colour, float) + rng.normal(0, 12, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(a, "RGB")
    return img if mode == "RGB" else img.convert(mode)


def png_bomb(path: Path, side: int = 20000) -> Path:
    """A real, valid 1-bit PNG of side x side black pixels: ~50 KB on disk, 400 Mpx once decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    body = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def build_corpus(root: Path) -> tuple[dict[str, Path], dict[str, Path], dict[str, Path]]:
    """Class folders apples/ and grapes/ under `root`: (odd but good images, bad files, unused entries by kind)."""
    odd, bad, unused = {}, {}, {}
    for k, (cls, colour) in enumerate(COLOURS.items()):
        d = root / cls
        d.mkdir(parents=True)
        for i in range(8):  # plain images, so both splits have every class
            _solid(colour, seed=10 * k + i).save(d / f"{cls}_{i}.jpg", quality=90)
    a, g = root / "apples", root / "grapes"
    red, blue = COLOURS["apples"], COLOURS["grapes"]
    # --- odd but good: each must be used
    _solid(red, mode="CMYK").save(a / "cmyk.jpg")
    grey16 = (np.asarray(_solid(red, seed=1).convert("L"), np.uint16) * 257).astype(np.uint16)
    Image.fromarray(grey16).save(a / "grey16.png")
    pal = _solid(red, seed=2).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    pal.save(a / "palette_alpha.png", transparency=0)
    frames = [_solid(c, seed=3).convert("P") for c in (red, blue)]
    frames[0].save(a / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    Image.new("RGB", (1, 1), red).save(a / "one_px.png")
    _solid(red, size=(4000, 3), seed=4).save(a / "wide_4000x3.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    _solid(red, size=(48, 24), seed=5).save(a / "exif_rotated.jpg", exif=exif)
    _solid(red, seed=6).save(a / "café au lait ünïcode.jpg")
    _solid(blue, seed=7).save(g / "png_named.jpg", format="PNG")  # wrong extension: PIL reads the content
    _solid(blue, seed=8).save(g / "webp_image.webp")
    _solid(blue, seed=9).save(g / "tiff_image.tif")
    _solid(blue, seed=10).save(g / "bmp_image.bmp")
    _solid(blue, seed=11, mode="RGBA").save(g / "rgba.png")
    _solid(blue, seed=12, mode="L").save(g / "grey.png")
    float_grey = np.asarray(_solid(blue, seed=13).convert("L"), np.float32) / 255
    Image.fromarray(float_grey, "F").save(g / "float.tif")
    for name in ("cmyk.jpg", "grey16.png", "palette_alpha.png", "animated.gif", "one_px.png", "wide_4000x3.png",
                 "exif_rotated.jpg", "café au lait ünïcode.jpg"):
        odd[name] = a / name
    for name in ("png_named.jpg", "webp_image.webp", "tiff_image.tif", "bmp_image.bmp", "rgba.png", "grey.png",
                 "float.tif"):
        odd[name] = g / name
    # --- bad files: each must be skipped and named
    (a / "zero_bytes.jpg").write_bytes(b"")
    jpg = io.BytesIO()
    _solid(red, size=(64, 64), seed=20).save(jpg, "JPEG")
    (a / "truncated.jpg").write_bytes(jpg.getvalue()[: len(jpg.getvalue()) // 3])
    png = io.BytesIO()
    _solid(blue, size=(64, 64), seed=21).save(png, "PNG")
    (g / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    (g / "text named.jpg").write_text("this is a note, not a picture\n" * 10)
    png_bomb(g / "bomb_20000x20000.png")
    for p in (a / "zero_bytes.jpg", a / "truncated.jpg", g / "truncated.png", g / "text named.jpg",
              g / "bomb_20000x20000.png"):
        bad[p.name] = p
    # --- entries that are not images: each counted by kind
    (a / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (g / "notes.txt").write_text("picked in autumn")
    (g / "folder.jpg").mkdir()
    os.symlink(root / "nowhere" / "gone.jpg", a / "gone.jpg")
    os.symlink("loop.jpg", g / "loop.jpg")  # a link to itself: ELOOP
    os.symlink("..", a / "up")  # a folder link back above itself
    os.symlink("../apples/apples_0.jpg", g / "linked_apple.jpg")  # a link to an image that exists: used
    unused = {"hidden": a / ".DS_Store", "not_image_ext": g / "notes.txt",
              "directory_named_like_image": g / "folder.jpg", "dangling_symlink": a / "gone.jpg",
              "symlink_loop": g / "loop.jpg"}
    odd["linked_apple.jpg"] = g / "linked_apple.jpg"
    return odd, bad, unused


def cli(capsys, recwarn, *args) -> tuple[int, str]:
    """`imgclf ARGS` in this process: its exit code, and everything it said (stdout, stderr, warnings)."""
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    said = out.out + out.err + "".join(f"{w.message}\n" for w in recwarn.list)
    recwarn.clear()
    return code, said


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz") / "fruit"
    return root, *build_corpus(root)


def test_corpus_through_every_command(corpus, tmp_path, capsys, recwarn):
    root, odd, bad, unused = corpus
    run = tmp_path / "run"

    # train: every command exits 0; bad files named, odd ones used, unused entries counted by kind
    code, said = cli(capsys, recwarn, "train", root, "--size", "32", "--recipe", "probe", "--bs", "16",
                     "--out", run, "--quiet")
    assert code == 0, said
    metrics = json.loads((run / "metrics.json").read_text())
    skipped = {Path(s["path"]).name: s["reason"] for s in metrics["skipped_files"]}
    assert set(skipped) == set(bad), skipped
    assert "too large" in skipped["bomb_20000x20000.png"] and "empty" in skipped["zero_bytes.jpg"]
    for name in bad:
        assert name in said, f"{name} not named by train"
    got = metrics["unused_entries"]
    for kind, path in unused.items():
        assert got["counts"].get(kind, 0) >= 1, (kind, got)
        assert str(path) in got["examples"][kind]
    assert got["counts"]["symlink_loop"] == 2  # the self-link and the folder link back up
    assert "not used as images" in said
    n_files = sum(1 for p in root.rglob("*") if p.is_file() and p.suffix != ".txt" and not p.name.startswith("."))
    assert metrics["n_train"] + metrics["n_valid"] == n_files - len(bad)  # every odd image used

    # predict: the whole corpus; every good file gets a row, every bad one is named and has none
    preds = tmp_path / "preds.csv"
    code, said = cli(capsys, recwarn, "predict", run, root, "--csv", preds, "--quiet")
    assert code == 0, said
    rows = {Path(r["path"]).name: r for r in csv.DictReader(preds.open())}
    assert set(odd) <= set(rows) and not set(bad) & set(rows)
    for name in bad:
        assert name in said, f"{name} not named by predict"
    assert "dangling_symlink" in said and "symlink_loop" in said
    assert rows["cmyk.jpg"]["label"] == "apples" and rows["webp_image.webp"]["label"] == "grapes"

    # inspect: inspect.json lists the skipped files and counts the unused entries by kind
    code, said = cli(capsys, recwarn, "inspect", root, "--size", "32", "--out", tmp_path / "insp", "--quiet")
    assert code == 0, said
    report = json.loads((tmp_path / "insp" / "inspect.json").read_text())
    assert {Path(s["path"]).name for s in report["skipped_files"]} == set(bad)
    assert report["unused_entries"]["counts"] == got["counts"]
    assert "not used:" in said and "dangling_symlink" in said
    assert sum(report["totals"].values()) == n_files - len(bad)

    # evaluate on the same folder (class folders: all of it)
    code, said = cli(capsys, recwarn, "evaluate", run, root, "--json", tmp_path / "eval.json", "--quiet")
    assert code == 0, said
    res = json.loads((tmp_path / "eval.json").read_text())
    assert {Path(s["path"]).name for s in res["skipped_files"]} == set(bad)
    assert res["n"] == n_files - len(bad) and res["unused_entries"]["counts"] == got["counts"]
    assert res["accuracy"] > 0.8  # red vs blue: the odd forms decode to their colours


def test_odd_images_decode_to_their_colours(corpus):
    """Each odd-but-good image decodes to an RGB picture of its class colour: not black, white or inverted."""
    from imgclf.data.decode import load_presized, open_image

    root, odd, _, _ = corpus
    assert open_image(odd["exif_rotated.jpg"]).size == (24, 48)  # stored 48x24, EXIF says turn it upright
    for name, path in odd.items():
        x = load_presized(path, 16).float().mean((1, 2))
        red, blue = float(x[0]), float(x[2])
        want_red = path.parent.name == "apples" or name == "linked_apple.jpg"
        if name in ("grey16.png", "grey.png", "float.tif"):  # grey: the class colour's luminance, mid-grey
            assert 30 < red < 200 and abs(red - blue) < 2, (name, x)
        else:
            assert (red > blue + 60) if want_red else (blue > red + 60), (name, x)
