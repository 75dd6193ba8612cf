"""Named schedules, weight decay (decoupled vs L2) for every optimizer, and dropout in our own heads."""

from __future__ import annotations

import pytest
import torch
from test_learner import synth_learner
from torch import nn

from imgclf.errors import UserError
from imgclf.models.cnn import simple_cnn
from imgclf.models.xresnet import XResNet
from imgclf.train.optim import OPTIMIZERS, apply_decoupled_wd, make_optimizer
from imgclf.train.schedule import (
    SCHEDULES,
    constant,
    get_schedule,
    one_cycle_lr,
    one_cycle_mom,
    step_decay,
    warmup_cosine,
)

GRID = [i / 200 for i in range(201)]


# ------------------------------------------------------------------ schedules
def test_warmup_cosine_shape():
    assert warmup_cosine(0.0) == pytest.approx(1e-3)
    assert warmup_cosine(0.05) == pytest.approx(1.0)
    assert warmup_cosine(1.0) == pytest.approx(1e-3)
    assert warmup_cosine(0.525) == pytest.approx((1 + 1e-3) / 2)  # halfway down the cosine
    xs = [warmup_cosine(p) for p in GRID]
    peak = xs.index(max(xs))
    assert GRID[peak] == pytest.approx(0.05)
    assert xs[: peak + 1] == sorted(xs[: peak + 1]) and xs[peak:] == sorted(xs[peak:], reverse=True)
    assert warmup_cosine(0.0, warmup=0.0) == pytest.approx(1.0) and warmup_cosine(1.0, final=0.1) == pytest.approx(0.1)


def test_step_decay_values_at_milestones():
    assert [step_decay(p) for p in (0.0, 0.49, 0.5, 0.74, 0.75, 1.0)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
    assert step_decay(0.3, milestones=(0.2, 0.3), gamma=0.5) == pytest.approx(0.25)
    assert step_decay(0.0, warmup=0.1) == pytest.approx(0.1)
    assert step_decay(0.05, warmup=0.1) == pytest.approx(0.55)
    assert step_decay(0.1, warmup=0.1) == pytest.approx(1.0)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_every_schedule_stays_in_unit_interval(name):
    lr_sched, mom_sched = get_schedule(name)
    assert all(0 < lr_sched(p) <= 1 for p in GRID), name
    assert max(lr_sched(p) for p in GRID) == pytest.approx(1.0)
    if mom_sched is not None:
        assert all(0.8 < mom_sched(p) < 1 for p in GRID)


def test_get_schedule_names_and_bad_name():
    assert get_schedule("one_cycle") == (one_cycle_lr, one_cycle_mom)
    assert get_schedule("cosine") == (warmup_cosine, None)
    assert get_schedule("step") == (step_decay, None)
    assert get_schedule("constant") == (constant, None)
    with pytest.raises(UserError, match="--schedule cosin: unknown schedule") as e:
        get_schedule("cosin")
    assert "\n" not in str(e.value) and all(n in str(e.value) for n in SCHEDULES)


def test_fit_schedule_follows_the_schedule():
    learn = synth_learner()
    learn.fit_schedule(3, 1e-2, schedule="cosine")
    lrs = learn.recorder.lrs
    assert lrs[0] == pytest.approx(1e-5) and max(lrs) == pytest.approx(1e-2, rel=0.05)
    n = len(lrs)
    assert n == 3 * len(learn.train_dl) and lrs[-1] == pytest.approx(1e-2 * warmup_cosine((n - 1) / n))
    assert learn.recorder.history[-1]["accuracy"] > 0.8
    with pytest.raises(UserError):
        learn.fit_schedule(1, 1e-2, schedule="linear")


def test_fit_schedule_one_cycle_is_fit_one_cycle():
    def run(how):
        torch.manual_seed(0)
        learn = synth_learner(seed=3)
        how(learn)
        return learn.recorder.history[-1]["valid_loss"], learn.recorder.lrs

    assert run(lambda lrn: lrn.fit_one_cycle(2, 1e-2)) == run(lambda lrn: lrn.fit_schedule(2, 1e-2))


# ------------------------------------------------------------------ weight decay
def tiny_params(seed: int = 0) -> tuple[nn.Linear, list[list[nn.Parameter]]]:
    torch.manual_seed(seed)
    lin = nn.Linear(6, 4)
    return lin, [list(lin.parameters())]


def step_with_zero_grad(opt: torch.optim.Optimizer, lin: nn.Linear) -> None:
    """One step where the loss has zero gradient: whatever moves the weights is weight decay."""
    (0 * sum(p.sum() for p in lin.parameters())).backward()
    apply_decoupled_wd(opt)
    opt.step()
    opt.zero_grad()


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_decoupled_decay_shrinks_by_lr_times_wd(name):
    lin, groups = tiny_params()
    w0, b0 = lin.weight.detach().clone(), lin.bias.detach().clone()
    lr, wd = 0.1, 0.5
    opt = make_optimizer(name, groups, lr, wd, wd_mode="decoupled")
    step_with_zero_grad(opt, lin)
    torch.testing.assert_close(lin.weight.detach(), w0 * (1 - lr * wd))
    assert torch.equal(lin.bias.detach(), b0)  # 1-d params are never decayed
    # torch's own rule sees no decay except AdamW's built-in decoupled one
    assert all(g["weight_decay"] == 0 for g in opt.param_groups) or isinstance(opt, torch.optim.AdamW)


def test_l2_through_adam_is_normalised_unlike_decoupled():
    lr, wd = 0.01, 0.1
    lin, groups = tiny_params()
    w0 = lin.weight.detach().clone()
    step_with_zero_grad(make_optimizer("adam", groups, lr, wd, wd_mode="l2"), lin)
    # L2 makes the gradient g = wd * w, which Adam's first step divides by its own size: lr * g / (|g| + eps),
    # about lr * sign(w) whatever the weight's size
    g = wd * w0
    torch.testing.assert_close(lin.weight.detach(), w0 - lr * g / (g.abs() + 1e-6))
    lin2, groups2 = tiny_params()
    step_with_zero_grad(make_optimizer("adam", groups2, lr, wd, wd_mode="decoupled"), lin2)
    torch.testing.assert_close(lin2.weight.detach(), w0 * (1 - lr * wd))
    assert not torch.allclose(lin.weight, lin2.weight)


def test_default_wd_mode_is_the_optimizers_convention():
    _, groups = tiny_params()
    assert type(make_optimizer("adamw", groups)) is torch.optim.AdamW
    assert type(make_optimizer("adam", groups)) is torch.optim.Adam
    assert type(make_optimizer("adamw", groups, wd_mode="l2")) is torch.optim.Adam
    assert type(make_optimizer("adam", groups, wd_mode="decoupled")) is torch.optim.AdamW
    for name in ("adam", "sgd", "rmsprop", "adagrad"):
        opt = make_optimizer(name, groups, wd=0.1)
        assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0], name
        assert all("decoupled_wd" not in g for g in opt.param_groups)
    sgd = make_optimizer("sgd", groups, wd=0.1, wd_mode="decoupled")
    assert [(g["weight_decay"], g["decoupled_wd"]) for g in sgd.param_groups] == [(0.0, 0.1), (0.0, 0.0)]
    with pytest.raises(UserError, match="--wd-mode"):
        make_optimizer("sgd", groups, wd_mode="coupled")


def test_learner_applies_decoupled_decay_every_step():
    """A loss with zero gradient: only decay moves the weights, (1 - lr * wd) per step at a constant rate."""
    lr, wd = 0.05, 0.2
    learn = synth_learner(opt="sgd", wd=wd, wd_mode="decoupled", loss_func=lambda pred, y: 0 * pred.sum())
    lin = learn.model[0][0]
    w0, b0 = lin.weight.detach().clone(), lin.bias.detach().clone()
    learn.fit(1, lr)
    n = len(learn.train_dl)
    torch.testing.assert_close(lin.weight.detach(), w0 * (1 - lr * wd) ** n)
    assert torch.equal(lin.bias.detach(), b0)


# ------------------------------------------------------------------ dropout
def tiny_xresnet(num_classes: int, drop_rate: float) -> XResNet:
    """xresnet18's class at a few channels: the same head, built in milliseconds."""
    return XResNet([1, 1, 1, 1], num_classes=num_classes, drop_rate=drop_rate, stem=(8, 8, 8), widths=(8, 8, 8, 8))


@pytest.mark.parametrize("make", [simple_cnn, tiny_xresnet])
def test_drop_rate_acts_in_training_only(make):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    model = make(num_classes=3, drop_rate=0.5)
    assert model.drop_rate == 0.5 and model.drop.p == 0.5
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    still = make(num_classes=3, drop_rate=0.0).train()
    assert torch.equal(still(x), still(x))
    assert simple_cnn(num_classes=3).drop_rate == 0.25  # the homework baseline keeps its dropout
