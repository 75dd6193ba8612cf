"""Choosing the probe's decay by grouped, stratified k-fold CV on the training features (`select_probe`)."""

from __future__ import annotations

import inspect

import torch

from imgclf.train.probe import fit_linear_probe, grouped_stratified_folds, select_probe


def blobs(n: int, d: int, signal: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three Gaussian classes whose centres lie `signal` standard deviations apart per dimension."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centres = torch.randn(3, d, generator=g) * signal
    return centres[y] + torch.randn(n, d, generator=g), y


def test_selection_never_sees_validation():
    params = inspect.signature(select_probe).parameters
    assert list(params)[:3] == ["x", "y", "n_classes"]
    assert not [p for p in params if "valid" in p or p in ("xv", "yv")]


def test_separable_features_get_a_weak_decay_and_noisy_ones_a_strong_one():
    x, y = blobs(150, 20, 3.0)
    sep = select_probe(x, y, 3)
    assert sep.wd <= 1e-3 and sep.cv_accuracy == 1.0
    x, y = blobs(60, 200, 0.15)
    noisy = select_probe(x, y, 3)
    assert noisy.wd >= 0.1
    assert noisy.cv_loss == min(r["cv_loss"] for r in noisy.table)
    assert len(noisy.table) == 7 and noisy.oof_logits.shape == (60, 3)
    # the refit is fit_linear_probe's head at the chosen decay (both start from zero on the same objective)
    ref = next(f for f in fit_linear_probe(x, y, x[:5], y[:5], 3, wds=[noisy.wd]))
    assert torch.allclose(ref.weight, noisy.fit.weight, atol=1e-3)
    assert torch.allclose(ref.bias, noisy.fit.bias, atol=1e-3)
    # out-of-fold logits are what the accuracy in the table was computed from
    assert abs(float((noisy.oof_logits.argmax(1) == y).float().mean()) - noisy.cv_accuracy) < 1e-6


def test_groups_stay_in_one_fold_and_classes_spread_evenly():
    n = 40
    y = torch.cat([torch.zeros(30), torch.ones(10)]).long()
    x = torch.randn(n, 8)
    groups = torch.arange(n).repeat(2)  # an image and its mirror: rows i and i + n
    folds = grouped_stratified_folds(torch.cat([y, y]), groups, folds=5, seed=3)
    assert torch.equal(folds[:n], folds[n:])
    per_class = [torch.bincount(folds[:n][y == c], minlength=5) for c in (0, 1)]
    assert per_class[0].tolist() == [6] * 5 and per_class[1].tolist() == [2] * 5
    assert torch.equal(folds, grouped_stratified_folds(torch.cat([y, y]), groups, folds=5, seed=3))
    sel = select_probe(torch.cat([x, x + 0.01]), torch.cat([y, y]), 2, groups=groups, seed=3, wds=(0.01, 1.0))
    assert torch.equal(sel.folds, folds)
    # fewer groups than folds: as many folds as groups
    assert grouped_stratified_folds(torch.tensor([0, 1, 0]), torch.tensor([7, 8, 7]), folds=5).tolist() == [0, 1, 0]


def test_size_ties_say_which_way_the_choice_went():
    """128 -> 192 -> 256, each step up clearly better than the last kept, yet 256 within a standard error of 192:
    the note must not claim the smaller one was kept. A larger size that ties with the kept one: the cheaper
    one is kept, and the note says so."""
    from imgclf.train.candidate import Candidate
    from imgclf.train.recipes import clearly_better, size_ties

    def probe(size: int, loss: float, se: float = 0.05) -> Candidate:
        return Candidate(f"probe@{size}", "probe", size, None, None, 0.0, selection={"loss": loss, "loss_se": se})

    p128, p192, p256 = probe(128, 0.60), probe(192, 0.45), probe(256, 0.40)
    assert clearly_better(p192, p128) and not clearly_better(p256, p192)
    notes = size_ties([p128, p192, p256], p256)
    assert len(notes) == 1 and notes[0].startswith("probe@256 was kept although") and "probe@192" in notes[0]
    assert "cheaper, smaller one is kept" not in notes[0]
    notes = size_ties([p128, p192, p256], p192)
    assert len(notes) == 1 and "cannot tell probe@256 from probe@192" in notes[0]
    assert size_ties([p128, probe(256, 0.2)], probe(256, 0.2)) == []
