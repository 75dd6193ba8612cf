"""Batch augmentation: shapes and ranges, seeding, identity and flip cases, the center view; each op alone,
what it must preserve; presets, `parse` and `describe`."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from imgclf.data.augment import Augment, augment_batch, center_batch, random_transforms
from imgclf.errors import UserError

MEAN = torch.tensor([0.485, 0.456, 0.406])
STD = torch.tensor([0.229, 0.224, 0.225])
OFF = Augment(flip=False, p_affine=0.0, p_lighting=0.0)


def batch(b: int = 8, p: int = 40, seed: int = 0, lo: int = 0, hi: int = 256) -> torch.Tensor:
    """Random uint8 images: no symmetry, so a flip or a shift is always visible."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi, (b, 3, p, p), generator=g, dtype=torch.uint8)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def unnormalise(x: torch.Tensor) -> torch.Tensor:
    return x * STD.view(1, -1, 1, 1) + MEAN.view(1, -1, 1, 1)


def test_shape_dtype_and_range():
    x = batch()
    before = x.clone()
    out = augment_batch(x, 32, Augment(), gen(0), MEAN, STD)
    assert out.shape == (8, 3, 32, 32) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    raw = unnormalise(out)
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    assert torch.equal(x, before)  # the uint8 batch is not modified


def test_default_augment_changes_images():
    x = batch(p=32)
    out = augment_batch(x, 32, Augment(), gen(0), MEAN, STD)
    ident = center_batch(x, 32, MEAN, STD)
    changed = (out - ident).abs().flatten(1).amax(1) > 0.1
    assert changed.sum() >= 6  # p_affine 0.75 and p_lighting 0.75: almost every image moves


def test_seeded():
    x = batch()
    a = augment_batch(x, 32, Augment(), gen(1), MEAN, STD)
    b = augment_batch(x, 32, Augment(), gen(1), MEAN, STD)
    c = augment_batch(x, 32, Augment(), gen(2), MEAN, STD)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.equal(random_transforms(4, Augment(), gen(3)), random_transforms(4, Augment(), gen(3)))


def test_identity_at_same_size_reproduces_input():
    """With every probability 0 and no flip, sampling at output size == input size hits pixel centres."""
    x = batch(p=24)
    out = augment_batch(x, 24, OFF, gen(0), MEAN, STD)
    assert torch.allclose(out, center_batch(x, 24, MEAN, STD), atol=1e-4)
    assert torch.allclose(unnormalise(out) * 255, x.float(), atol=1e-2)
    mats = random_transforms(5, OFF, gen(0))
    assert torch.equal(mats, torch.eye(3, dtype=torch.float64).expand(5, 3, 3))


def test_identity_at_smaller_size_is_a_plain_resize():
    """Zoom 1 means the whole presized square, resampled to `size` (not the center crop)."""
    x = batch(p=40)
    out = augment_batch(x, 32, OFF, gen(0), MEAN, STD)
    resized = F.interpolate(x.float() / 255, size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.allclose(unnormalise(out), resized, atol=1e-4)


def test_flip_only_gives_image_or_mirror():
    x = batch(b=16, p=20)
    out = augment_batch(x, 20, Augment(flip=True, p_affine=0.0, p_lighting=0.0), gen(5), MEAN, STD)
    plain = center_batch(x, 20, MEAN, STD)
    same = (out - plain).abs().flatten(1).amax(1) < 1e-4
    mirrored = (out - plain.flip(-1)).abs().flatten(1).amax(1) < 1e-4
    assert (same ^ mirrored).all()  # each image is exactly one of the two
    assert same.any() and mirrored.any()


def test_lighting_only_is_per_image_contrast_and_brightness():
    x = batch(b=12, p=16, lo=80, hi=176)  # mid-range values: nothing clamps
    aug = Augment(flip=False, p_affine=0.0, p_lighting=1.0, max_lighting=0.2)
    out = unnormalise(augment_batch(x, 16, aug, gen(0), MEAN, STD)).flatten(1).double()
    inp = (x.double() / 255).flatten(1)
    for i in range(len(x)):  # out = (in - 0.5) * contrast + 0.5 + shift, fitted per image
        a = torch.stack([inp[i] - 0.5, torch.ones_like(inp[i])], 1)
        sol = torch.linalg.lstsq(a, out[i].unsqueeze(1) - 0.5).solution.squeeze(1)
        contrast, shift = sol.tolist()
        assert 0.8 - 1e-4 <= contrast <= 1 / 0.8 + 1e-4
        assert -0.1 - 1e-4 <= shift <= 0.1 + 1e-4
        assert (a @ sol + 0.5 - out[i]).abs().max() < 1e-4


def test_center_batch_is_exact_center_crop():
    x = batch(b=2, p=10)
    out = center_batch(x, 6, MEAN, STD)
    expected = (x[..., 2:8, 2:8].float() / 255 - MEAN.view(1, 3, 1, 1)) / STD.view(1, 3, 1, 1)
    assert out.shape == (2, 3, 6, 6) and out.dtype == torch.float32
    assert torch.allclose(out, expected, atol=1e-6)
    odd = center_batch(batch(b=1, p=9), 6, MEAN, STD)  # (9 - 6) // 2 = 1 pixel off the top-left
    assert torch.allclose(odd, (batch(b=1, p=9)[..., 1:7, 1:7].float() / 255 - MEAN.view(1, 3, 1, 1))
                          / STD.view(1, 3, 1, 1), atol=1e-6)
    assert torch.allclose(center_batch(x, 10, MEAN, STD), (x.float() / 255 - MEAN.view(1, 3, 1, 1))
                          / STD.view(1, 3, 1, 1), atol=1e-6)


def test_center_batch_upsamples_when_presize_is_smaller():
    x = batch(b=2, p=8)
    out = center_batch(x, 12, MEAN, STD)
    up = F.interpolate(x.float(), size=(12, 12), mode="bilinear", align_corners=False) / 255
    assert out.shape == (2, 3, 12, 12)
    assert torch.allclose(unnormalise(out), up, atol=1e-5)


# --- each op alone ------------------------------------------------------------------------------

BASE = replace(Augment.preset("none"), p_affine=1.0, p_lighting=1.0)  # every image gets the op under test
OPS = {
    "flip": {"flip": True},
    "rotate": {"max_rotate": 20.0},
    "zoom": {"max_zoom": 1.5},
    "warp": {"max_warp": 0.4},
    "translate": {"max_translate": 0.2},
    "shear": {"max_shear": 15.0},
    "pad": {"pad": 4},
    "lighting": {"max_lighting": 0.3},
    "saturation": {"max_saturation": 0.5},
    "hue": {"max_hue": 0.1},
    "noise": {"noise": 0.1},
    "salt_pepper": {"salt_pepper": 0.05},
    "erase": {"erase": 1.0},
}


def raw_view(x: torch.Tensor, aug: Augment, seed: int = 0, size: int | None = None) -> torch.Tensor:
    """The augmented batch back in [0, 1] pixel units."""
    return unnormalise(augment_batch(x, size or x.shape[-1], aug, gen(seed), MEAN, STD))


@pytest.mark.parametrize("name", list(OPS))
def test_each_op_shape_range_seed_and_effect(name):
    x = batch(p=40)
    aug = replace(BASE, **OPS[name])
    out = augment_batch(x, 32, aug, gen(0), MEAN, STD)
    assert out.shape == (8, 3, 32, 32) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    if name != "erase":  # erasing fills with normal noise in normalised space: checked below
        raw = unnormalise(out)
        assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    assert torch.equal(out, augment_batch(x, 32, aug, gen(0), MEAN, STD))
    assert not torch.equal(out, augment_batch(x, 32, aug, gen(1), MEAN, STD))
    off = augment_batch(x, 32, BASE, gen(0), MEAN, STD)
    changed = (out - off).abs().flatten(1).amax(1) > 0.05
    assert changed.sum() >= (1 if name == "flip" else 6), changed
    _, value = next(iter(OPS[name].items()))
    assert aug.describe() == (["flip"] if name == "flip" else [f"{name}({value:g})"])


def test_none_preset_is_the_resampled_square():
    x = batch(p=24)
    assert torch.allclose(augment_batch(x, 24, Augment.preset("none"), gen(3), MEAN, STD),
                          center_batch(x, 24, MEAN, STD), atol=1e-4)
    resized = F.interpolate(batch(p=40).float() / 255, size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.allclose(raw_view(batch(p=40), Augment.preset("none"), size=32), resized, atol=1e-4)


def test_strong_preset_runs_seeded():
    x = batch(b=16, p=40)
    aug = Augment.preset("strong")
    out = augment_batch(x, 32, aug, gen(0), MEAN, STD)
    assert out.shape == (16, 3, 32, 32) and torch.isfinite(out).all()
    assert torch.equal(out, augment_batch(x, 32, aug, gen(0), MEAN, STD))
    assert not torch.equal(out, augment_batch(x, 32, aug, gen(1), MEAN, STD))


def grey(b: int = 8, p: int = 32, lo: int = 0, hi: int = 256) -> torch.Tensor:
    return batch(b, p, lo=lo, hi=hi)[:, :1].expand(b, 3, p, p).contiguous()


@pytest.mark.parametrize("kw", [{"max_saturation": 0.8}, {"max_hue": 0.25}, {"max_saturation": 0.5, "max_hue": 0.1,
                                                                             "max_lighting": 0.3}])
def test_saturation_and_hue_keep_grey_images_grey(kw):
    raw = raw_view(grey(), replace(BASE, **kw))
    assert (raw - raw[:, :1]).abs().max() < 1e-5
    assert not torch.allclose(raw_view(batch(p=32), replace(BASE, **kw)), batch(p=32).float() / 255, atol=1e-2)


YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64)


def test_saturation_scales_chroma_and_hue_rotates_it():
    """In YIQ, saturation scales the chroma I + iQ by one factor per image and hue rotates it; both keep luma Y.
    Fitted per image as one complex number k with chroma_out = k * chroma_in."""
    x = batch(b=12, p=16, lo=100, hi=156)  # close to grey: nothing clamps
    inp = torch.einsum("ij,bjhw->bihw", YIQ, x.double() / 255).flatten(2)
    z_in = torch.complex(inp[:, 1], inp[:, 2])
    for kw, lo, hi, turn in (({"max_saturation": 0.5}, 1 / 1.5, 1.5, 0.0), ({"max_hue": 0.1}, 1.0, 1.0, 0.1)):
        out = torch.einsum("ij,bjhw->bihw", YIQ, raw_view(x, replace(BASE, **kw)).double()).flatten(2)
        assert torch.allclose(out[:, 0], inp[:, 0], atol=1e-4)  # luma kept
        z_out = torch.complex(out[:, 1], out[:, 2])
        k = (z_in.conj() * z_out).sum(1) / (z_in.abs() ** 2).sum(1)
        assert (z_out - k[:, None] * z_in).abs().max() < 1e-4  # one factor per image explains every pixel
        assert ((k.abs() >= lo - 1e-4) & (k.abs() <= hi + 1e-4)).all()
        assert (k.angle().abs() <= turn * 2 * torch.pi + 1e-4).all()
        moved = k.angle().abs() > 1e-3 if turn else (k.abs() - 1).abs() > 1e-3
        assert moved.sum() >= 10


def test_noise_is_zero_mean_with_bounded_std():
    x = batch(b=16, p=32, lo=96, hi=160)  # mid-range: std 0.1 noise rarely clamps
    resid = (raw_view(x, replace(BASE, noise=0.1)) - x.float() / 255).flatten(1)
    std = resid.std(1)
    assert (std <= 0.1 * 1.05).all() and 0.02 < std.mean() < 0.08  # per-image std uniform in [0, 0.1]
    assert resid.mean(1).abs().max() < 0.01


def test_salt_pepper_fraction():
    x = batch(b=8, p=64, lo=80, hi=176)  # no natural black or white pixel
    raw = raw_view(x, replace(BASE, salt_pepper=0.1))
    black = (raw.abs() < 1e-5).all(1)
    white = ((raw - 1).abs() < 1e-5).all(1)
    assert abs(black.float().mean() - 0.05) < 0.01 and abs(white.float().mean() - 0.05) < 0.01
    kept = ~(black | white)
    assert torch.allclose(raw.permute(0, 2, 3, 1)[kept], (x.float() / 255).permute(0, 2, 3, 1)[kept], atol=1e-4)


def test_pad_is_a_shift_with_zero_border():
    """Pad 3 and crop back: each image is the input shifted by whole pixels, the uncovered border exactly 0."""
    x = batch(b=16, p=16, lo=1)  # no zero pixel in the input
    raw = raw_view(x, replace(BASE, pad=3))
    padded = F.pad(x.float() / 255, (3, 3, 3, 3))
    shifts = []
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(7) for dx in range(7)
                if torch.allclose(raw[i], padded[i, :, dy : dy + 16, dx : dx + 16], atol=1e-4)]
        assert len(hits) == 1
        shifts.append(hits[0])
    assert len(set(shifts)) > 3
    dy, dx = next(s for s in shifts if s[0] != 3)
    i = shifts.index((dy, dx))
    border = raw[i, :, :3 - dy] if dy < 3 else raw[i, :, 16 + 3 - dy:]
    assert border.numel() > 0 and border.abs().max() < 1e-6


def test_erase_area_and_box():
    x = batch(b=32, p=64)
    aug = replace(BASE, erase=1.0)
    on = augment_batch(x, 64, aug, gen(4), MEAN, STD)
    off = augment_batch(x, 64, BASE, gen(4), MEAN, STD)  # erasing draws last: the rest is the same
    mask = (on != off).any(1)  # (B, H, W)
    frac = mask.flatten(1).float().mean(1)
    assert (frac >= 0.015).all() and (frac <= 0.36).all()  # area 2%..1/3, up to rounding the box sides
    rows, cols = mask.any(2), mask.any(1)
    assert torch.equal(mask, rows[:, :, None] & cols[:, None, :])  # one rectangle per image
    fill = on.permute(0, 2, 3, 1)[mask]
    assert abs(fill.mean()) < 0.1 and 0.9 < fill.std() < 1.1  # standard normal noise
    assert torch.equal(on.permute(0, 2, 3, 1)[~mask], off.permute(0, 2, 3, 1)[~mask])
    some = augment_batch(batch(b=64, p=16), 16, replace(BASE, erase=0.5), gen(0), MEAN, STD)
    erased = (some != augment_batch(batch(b=64, p=16), 16, BASE, gen(0), MEAN, STD)).flatten(1).any(1)
    assert 20 <= erased.sum() <= 44


def test_op_probabilities_gate_geometry_and_colour():
    x = batch(p=32)
    plain = raw_view(x, BASE)
    off = replace(BASE, p_affine=0.0, p_lighting=0.0, max_rotate=30.0, max_shear=20.0, max_translate=0.2,
                  max_saturation=0.5, max_hue=0.2, max_lighting=0.3)
    assert torch.allclose(raw_view(x, off), plain, atol=1e-5)
    assert off.describe() == []


# --- presets, parse, describe -------------------------------------------------------------------

def test_presets():
    assert Augment.preset("default") == Augment() == Augment.parse("default")
    none = Augment.preset("none")
    assert not none.flip and none.describe() == []
    assert Augment.parse("light").describe() == ["flip", "rotate(5)", "zoom(1.1)", "lighting(0.1)"]
    assert Augment().describe() == ["flip", "rotate(10)", "zoom(1.25)", "warp(0.2)", "lighting(0.2)"]
    assert Augment.parse("Strong").describe() == [
        "flip", "rotate(15)", "zoom(1.4)", "warp(0.3)", "translate(0.1)", "shear(10)", "lighting(0.3)",
        "saturation(0.3)", "hue(0.05)", "noise(0.03)", "erase(0.25)"]
    with pytest.raises(UserError, match="none, light, default, strong"):
        Augment.preset("heavy")


def test_parse_overrides():
    a = Augment.parse("default,noise=0.05,erase=0.25")
    assert a == replace(Augment(), noise=0.05, erase=0.25)
    b = Augment.parse("flip=0,rotate=20")
    assert b == replace(Augment(), flip=False, max_rotate=20.0)
    c = Augment.parse(" strong , pad=4, flip=off, salt_pepper=0.01 ,hue=0")
    assert c == replace(Augment.preset("strong"), pad=4, flip=False, salt_pepper=0.01, max_hue=0.0)
    assert isinstance(c.pad, int) and "pad(4)" in c.describe() and "hue(0.05)" not in c.describe()
    assert Augment.parse("none,translate=0.1,p_affine=1").describe() == ["translate(0.1)"]


@pytest.mark.parametrize("spec", ["sharpen=1", "rotate=abc", "flip=2", "lighting=1", "zoom=0.5", "pad=2.5",
                                  "heavy", "", " , ", "default,strong", "noise=-0.1", "hue=nan", "shear=90"])
def test_bad_spec_raises_user_error(spec):
    with pytest.raises(UserError) as e:
        Augment.parse(spec)
    assert "\n" not in str(e.value)


def test_unknown_name_lists_valid_names():
    with pytest.raises(UserError, match="flip, rotate, zoom, warp, translate, shear, pad, lighting"):
        Augment.parse("default,blur=1")


def test_to_dict_round_trip_and_old_dicts():
    strong = Augment.parse("strong,pad=2")
    assert Augment(**strong.to_dict()) == strong
    old = {"flip": True, "max_rotate": 10.0, "max_zoom": 1.25, "max_warp": 0.2, "max_lighting": 0.2,
           "p_affine": 0.75, "p_lighting": 0.75}  # a model.json written before the new ops
    assert Augment(**old) == Augment() and set(old) < set(Augment().to_dict())
