"""MixUp and CutMix: blended inputs, matching soft targets, training batches only, reproducible."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from imgclf.data.loaders import TensorLoader
from imgclf.train import Learner
from imgclf.train.callbacks import CutMix, MixUp
from imgclf.train.callbacks.mixup import mix_targets


def fake_learn(n: int = 16, classes: int = 5, training: bool = True, seed: int = 0, channels_last: bool = False):
    """Just the attributes the callbacks touch, so one event can be run and inspected."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 12, 10, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (n,), generator=g)
    return SimpleNamespace(xb=x, yb=y, pred=torch.zeros(n, classes), training=training)


def run_batch(cb, learn):
    """before_batch then after_pred; returns the (lam, perm) the callback used."""
    cb.before_batch(learn)
    lam, perm = cb.lam, cb.perm
    cb.after_pred(learn)
    return lam, perm


@pytest.mark.parametrize("cls", [MixUp, CutMix])
def test_soft_targets_rows_sum_to_one_and_match_lam(cls):
    learn = fake_learn()
    y = learn.yb.clone()
    lam, perm = run_batch(cls(seed=1), learn)
    assert 0 < lam < 1
    assert learn.yb.dtype == torch.float32 and learn.yb.shape == (16, 5)
    torch.testing.assert_close(learn.yb.sum(1), torch.ones(16))
    expect = lam * nn.functional.one_hot(y, 5).float() + (1 - lam) * nn.functional.one_hot(y[perm], 5).float()
    torch.testing.assert_close(learn.yb, expect)


def test_float_targets_are_blended_as_they_are():
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])  # multi-hot
    out = mix_targets(y, 0.25, torch.tensor([1, 0]), 3)
    torch.testing.assert_close(out, torch.tensor([[0.25, 0.75, 0.25], [0.75, 0.25, 0.75]]))


def test_mixup_inputs_are_the_convex_combination():
    learn = fake_learn()
    x = learn.xb.clone()
    lam, perm = run_batch(MixUp(seed=2), learn)
    torch.testing.assert_close(learn.xb, lam * x + (1 - lam) * x[perm])


def test_cutmix_pastes_one_box_of_area_one_minus_lam():
    learn = fake_learn(n=32)
    x = learn.xb.clone()
    cb = CutMix(seed=3)
    lam, perm = run_batch(cb, learn)
    h, w = x.shape[-2:]
    moved = perm != torch.arange(len(x))
    assert moved.any()
    changed = (learn.xb != x).any(1)[moved]  # (n, H, W): pixels that came from the partner
    # every moved image changed in the same box, of exactly (1 - lam) of the image
    assert (changed == changed[0]).all()
    assert changed[0].sum().item() == pytest.approx((1 - lam) * h * w, abs=0.5)
    rows, cols = changed[0].nonzero(as_tuple=True)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    assert changed[0][box].all()  # a filled rectangle
    torch.testing.assert_close(learn.xb[:, :, box[0], box[1]], x[perm][:, :, box[0], box[1]])
    # outside the box the image is its own
    mask = torch.ones(h, w, dtype=torch.bool)
    mask[box] = False
    torch.testing.assert_close(learn.xb[:, :, mask], x[:, :, mask])


@pytest.mark.parametrize("cls", [MixUp, CutMix])
def test_validation_batches_untouched(cls):
    learn = fake_learn(training=False)
    x, y = learn.xb, learn.yb
    run_batch(cls(), learn)
    assert learn.xb is x and learn.yb is y


@pytest.mark.parametrize("cls", [MixUp, CutMix])
def test_same_seed_same_blends_and_state_resumes(cls):
    def draws(cb, k=3):
        out = []
        for _ in range(k):
            learn = fake_learn()
            run_batch(cb, learn)
            out.append(learn.xb)
        return out

    a, b, c = draws(cls(seed=7)), draws(cls(seed=7)), draws(cls(seed=8))
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    cb = cls(seed=7)
    draws(cb, 1)
    resumed = cls(seed=99)
    resumed.load_state_dict(cb.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(draws(resumed, 2), a[1:], strict=True))


@pytest.mark.parametrize("cls", [MixUp, CutMix])
def test_channels_last_kept(cls):
    learn = fake_learn(channels_last=True)
    run_batch(cls(), learn)
    assert learn.xb.is_contiguous(memory_format=torch.channels_last)


def test_cross_entropy_takes_soft_targets_with_label_smoothing():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(8, 4, generator=g), torch.randint(0, 4, (8,), generator=g)
    perm, lam = torch.randperm(8, generator=g), 0.3
    for ls in (0.0, 0.1):
        ce = nn.CrossEntropyLoss(label_smoothing=ls)
        torch.testing.assert_close(ce(logits, nn.functional.one_hot(y, 4).float()), ce(logits, y))
        # linear in the target: the mixed loss is the lam-weighted loss of the two labels
        mixed = ce(logits, mix_targets(y, lam, perm, 4))
        torch.testing.assert_close(mixed, lam * ce(logits, y) + (1 - lam) * ce(logits, y[perm]))


def image_learner(cb, n: int = 192, seed: int = 0) -> Learner:
    """Two classes of 1x8x8 images told apart by brightness: learnable in a few epochs, even when blended."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.5 + (y.float() * 2 - 1)[:, None, None, None]
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    k = n * 3 // 4
    return Learner(model, TensorLoader(x[:k], y[:k], 16, shuffle=True, seed=seed), TensorLoader(x[k:], y[k:], 64),
                   loss_func=nn.CrossEntropyLoss(label_smoothing=0.1), valid_loss_func=nn.CrossEntropyLoss(),
                   cbs=[cb], device="cpu", precision="fp32", channels_last=False, progress=False)


@pytest.mark.parametrize("cls", [MixUp, CutMix])
def test_learner_trains_with_mixing(cls):
    learn = image_learner(cls())
    learn.fit_one_cycle(4, 1e-2)
    h = learn.recorder.history
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["valid_loss"]) for r in h)
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    assert h[-1]["accuracy"] > 0.9
    # the loss the learner trained on was the mixed one; validation saw plain int targets
    assert learn.yb.dtype == torch.int64


def test_cutmix_leaves_non_image_batches_with_a_warning():
    learn = SimpleNamespace(xb=torch.randn(8, 16), yb=torch.zeros(8, dtype=torch.long), pred=torch.zeros(8, 2),
                            training=True)
    x, y = learn.xb, learn.yb
    with pytest.warns(UserWarning, match="CutMix"):
        run_batch(CutMix(), learn)
    assert learn.xb is x and learn.yb is y
