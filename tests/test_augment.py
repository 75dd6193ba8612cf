"""Batch augmentation: shapes and ranges, seeding, identity and flip cases, the center view."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from imgclf.data.augment import Augment, augment_batch, center_batch, random_transforms

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
