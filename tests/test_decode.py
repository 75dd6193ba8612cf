"""Decoding: every PIL mode to RGB uint8, EXIF orientation, reduced JPEG decode, presizing, bad files."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from imgclf.data.decode import BadImage, decode_all, load_presized, open_image, presize


def rgb(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    a = np.asarray(img)
    assert a.dtype == np.uint8 and a.shape == (img.size[1], img.size[0], 3)
    return a


# --- every odd mode becomes RGB uint8 -----------------------------------------------------------

ODD_MODES = [
    ("P", "gif", {}),
    ("P", "gif", {"transparency": 0}),
    ("L", "png", {}),
    ("LA", "png", {}),
    ("RGBA", "png", {}),
    ("RGBA", "webp", {"lossless": True}),
    ("CMYK", "jpg", {}),
    ("I;16", "png", {}),
    ("I", "tif", {}),
    ("F", "tif", {}),
    ("1", "png", {}),
    ("1", "bmp", {}),
    ("L", "jpg", {}),
    ("RGB", "tif", {}),
]


ODD_IDS = [f"{m}-{e}" + "".join(f"-{k}" for k in s) for m, e, s in ODD_MODES]


@pytest.mark.parametrize(("mode", "ext", "save"), ODD_MODES, ids=ODD_IDS)
def test_odd_modes_become_rgb_uint8(tmp_path, write_image, mode, ext, save):
    path = write_image(tmp_path / f"img.{ext}", mode=mode, size=(23, 17), colour=(180, 90, 30), **save)
    a = rgb(open_image(path))
    assert a.shape == (17, 23, 3)
    assert a.std() > 0 or mode == "1"  # not a blank image
    t = load_presized(path, 12)
    assert t.dtype == torch.uint8 and t.shape == (3, 12, 12)


def test_palette_gif_colours_and_transparency(tmp_path):
    pal = Image.new("P", (6, 4), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((0, 0), 1)
    pal.save(tmp_path / "opaque.gif")
    pal.save(tmp_path / "clear.gif", transparency=1)  # index 1 (blue) is transparent
    a = rgb(open_image(tmp_path / "opaque.gif"))
    assert a[0, 0].tolist() == [0, 0, 255] and a[2, 3].tolist() == [255, 0, 0]
    b = rgb(open_image(tmp_path / "clear.gif"))
    assert b[0, 0].tolist() == [255, 255, 255] and b[2, 3].tolist() == [255, 0, 0]


def test_alpha_composited_over_white(tmp_path):
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(10, 20, 30, 0), (255, 0, 0, 255), (0, 0, 0, 128)])
    rgba.save(tmp_path / "a.png")
    a = rgb(open_image(tmp_path / "a.png"))
    assert a[0, 0].tolist() == [255, 255, 255]  # fully transparent -> white
    assert a[0, 1].tolist() == [255, 0, 0]  # opaque unchanged
    assert np.abs(a[0, 2].astype(int) - 127).max() <= 1  # half black over white -> mid grey
    la = Image.new("LA", (2, 1))
    la.putdata([(0, 0), (100, 255)])
    la.save(tmp_path / "la.png")
    b = rgb(open_image(tmp_path / "la.png"))
    assert b[0, 0].tolist() == [255, 255, 255] and b[0, 1].tolist() == [100, 100, 100]


def test_grey_and_one_bit_values(tmp_path):
    Image.fromarray(np.array([[0, 77, 255]], np.uint8), "L").save(tmp_path / "l.png")
    assert rgb(open_image(tmp_path / "l.png"))[0].tolist() == [[0] * 3, [77] * 3, [255] * 3]
    one = Image.new("1", (2, 1), 0)
    one.putpixel((1, 0), 1)
    one.save(tmp_path / "one.png")
    assert rgb(open_image(tmp_path / "one.png"))[0].tolist() == [[0] * 3, [255] * 3]


def test_cmyk_jpeg_colours(tmp_path):
    img = Image.new("CMYK", (16, 8), (0, 0, 0, 0))  # white
    img.paste((255, 0, 0, 0), (8, 0, 16, 8))  # cyan
    img.save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    a = rgb(open_image(tmp_path / "c.jpg")).astype(int)
    assert np.abs(a[4, 2] - [255, 255, 255]).max() <= 8
    assert np.abs(a[4, 13] - [0, 255, 255]).max() <= 8


def test_sixteen_bit_grey_png_rescaled(tmp_path):
    a16 = np.array([[0, 65535, 32768, 257]], np.uint16)
    Image.fromarray(a16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    a = rgb(open_image(tmp_path / "g16.png"))
    assert a[0, :, 0].tolist() == [0, 255, 128, 1]
    # a dark 16-bit image stays dark: the scale is the bit depth, not the image's own range
    Image.fromarray(np.array([[0, 1000]], np.uint16)).save(tmp_path / "dark.png")
    assert rgb(open_image(tmp_path / "dark.png"))[0, :, 0].tolist() == [0, 4]


def test_int32_and_float_tiff_rescaled(tmp_path):
    Image.fromarray(np.array([[0, 65535, 257 * 100]], np.int32), "I").save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    assert rgb(open_image(tmp_path / "i.tif"))[0, :, 0].tolist() == [0, 255, 100]
    Image.fromarray(np.array([[0, 200, 100]], np.int32), "I").save(tmp_path / "i8.tif")
    assert rgb(open_image(tmp_path / "i8.tif"))[0, :, 0].tolist() == [0, 200, 100]  # 8-bit range kept
    Image.fromarray(np.array([[0.0, 1.0, 0.5]], np.float32), "F").save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "f.tif").mode == "F"
    assert rgb(open_image(tmp_path / "f.tif"))[0, :, 0].tolist() == [0, 255, 128]


# --- orientation, reduced decode, presize -------------------------------------------------------

def test_exif_orientation_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    assert Image.open(tmp_path / "rot.jpg").size == (40, 20)
    up = open_image(tmp_path / "rot.jpg")
    assert up.size == (20, 40)
    a = rgb(up).astype(int)
    assert np.abs(a[5, 10] - [255, 0, 0]).max() < 20  # the left half is now on top
    assert np.abs(a[35, 10] - [0, 0, 255]).max() < 20


def test_jpeg_draft_decodes_reduced(tmp_path):
    big = Image.effect_noise((2000, 1500), 40).convert("RGB")
    big.save(tmp_path / "big.jpg", quality=80)
    assert open_image(tmp_path / "big.jpg").size == (2000, 1500)  # no min_size: full size
    w, h = open_image(tmp_path / "big.jpg", min_size=256).size
    assert 256 <= w < 2000 and 256 <= h < 1500
    assert w * 1500 == h * 2000  # DCT scaling keeps the aspect ratio
    t = load_presized(tmp_path / "big.jpg", 256)
    assert t.shape == (3, 256, 256) and t.dtype == torch.uint8
    # draft applies to JPEG only: a PNG decodes at full size whatever min_size says
    big.resize((600, 450)).save(tmp_path / "big.png")
    assert open_image(tmp_path / "big.png", min_size=64).size == (600, 450)


def test_presize_resizes_short_side_and_center_crops(tmp_path):
    img = Image.new("RGB", (90, 30), (255, 0, 0))
    img.paste((0, 255, 0), (30, 0, 60, 30))
    img.paste((0, 0, 255), (60, 0, 90, 30))
    t = presize(img, 30)  # short side already 30: a pure center crop -> the green third
    assert t.shape == (3, 30, 30) and t.dtype == torch.uint8
    green = torch.tensor([0, 255, 0], dtype=torch.uint8).view(3, 1, 1)
    assert (t[:, :, 1:-1] == green).all()
    tall = presize(Image.new("RGB", (10, 25), (9, 8, 7)), 32)  # upsampled; tall crop
    assert tall.shape == (3, 32, 32) and (tall == torch.tensor([9, 8, 7]).view(3, 1, 1)).all()
    half = presize(img, 15)  # downsampled 2x: the middle third still green away from the edges
    assert half.shape == (3, 15, 15)
    assert (half[1, :, 2:-2] == 255).all() and (half[0, :, 2:-2] == 0).all()


# --- bad files ----------------------------------------------------------------------------------

def make_bad_files(tmp_path, write_image):
    good = write_image(tmp_path / "good.jpg", size=(64, 48))
    zero = tmp_path / "zero.jpg"
    zero.write_bytes(b"")
    data = good.read_bytes()
    trunc = tmp_path / "truncated.jpg"
    trunc.write_bytes(data[: len(data) * 3 // 10])
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a JPEG\n" * 20)
    return zero, trunc, text


def test_bad_files_raise_bad_image(tmp_path, write_image):
    zero, trunc, text = make_bad_files(tmp_path, write_image)
    with pytest.raises(BadImage, match="empty file"):
        open_image(zero)
    with pytest.raises(BadImage, match="cannot decode"):
        open_image(trunc)
    with pytest.raises(BadImage, match="cannot decode"):
        open_image(trunc, min_size=8)
    with pytest.raises(BadImage, match="not an image"):
        open_image(text)
    with pytest.raises(BadImage):
        open_image(tmp_path / "missing.jpg")


def test_decode_all_skips_bad_files_with_one_warning(tmp_path, write_image):
    zero, trunc, text = make_bad_files(tmp_path, write_image)
    colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250)]
    goods = [write_image(tmp_path / f"g{i}.png", colour=c, noise=0) for i, c in enumerate(colours)]
    paths = [goods[0], zero, goods[1], trunc, text, goods[2]]
    with pytest.warns(UserWarning) as record:
        out, keep, bad = decode_all(paths, 16, workers=2, progress=False)
    assert len(record) == 1
    msg = str(record[0].message)
    assert "skipped 3 file(s)" in msg
    for p in (zero, trunc, text):
        assert str(p) in msg
    assert keep == [0, 2, 5]
    assert out.shape == (3, 3, 16, 16) and out.dtype == torch.uint8
    for k, c in enumerate(colours):  # in input order
        assert out[k, :, 0, 0].tolist() == list(c)
        assert torch.equal(out[k], load_presized(goods[k], 16))
    assert sorted(p for p, _ in bad) == sorted([zero, trunc, text])
    assert all(why for _, why in bad)


def test_decode_all_good_files_no_warning(tmp_path, write_image):
    paths = [write_image(tmp_path / f"{i}.jpg", seed=i) for i in range(5)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, keep, bad = decode_all(paths, 20, workers=2, progress=False)
    assert out.shape == (5, 3, 20, 20) and keep == list(range(5)) and bad == []
    for i, p in enumerate(paths):
        assert torch.equal(out[i], load_presized(p, 20))
