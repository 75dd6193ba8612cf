"""The learner's loop, callbacks, schedules, optimizers and rate finder, on tiny synthetic problems."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from torch import nn

from imgclf.data.loaders import TensorLoader
from imgclf.errors import UserError
from imgclf.train import Learner
from imgclf.train.callbacks import (
    Callback,
    CancelFitException,
    CSVLogger,
    EarlyStopping,
    SaveBestModel,
)
from imgclf.train.optim import OPTIMIZERS, make_optimizer
from imgclf.train.schedule import one_cycle_lr, one_cycle_mom


def synth_learner(n: int = 256, seed: int = 0, **kwargs) -> Learner:
    """Two Gaussian blobs in 8-d, a two-layer net with a BN: learnable in a few epochs (fastai's synth_learner)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 8, generator=g) + y[:, None].float() * 2.0
    body = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU())
    head = nn.Linear(16, 2)
    model = nn.Sequential(body, head)
    kwargs.setdefault("progress", False)
    kwargs.setdefault("precision", "fp32")
    return Learner(model, TensorLoader(x[: n * 3 // 4], y[: n * 3 // 4], 32, shuffle=True, seed=seed),
                   TensorLoader(x[n * 3 // 4 :], y[n * 3 // 4 :], 64), groups=[list(body.parameters()),
                   list(head.parameters())], device="cpu", channels_last=False, **kwargs)


def test_one_cycle_schedule_shape():
    assert one_cycle_lr(0.0) == pytest.approx(1 / 25)
    assert one_cycle_lr(0.25) == pytest.approx(1.0)
    assert one_cycle_lr(1.0) == pytest.approx(1e-5)
    assert one_cycle_mom(0.25) == pytest.approx(0.85) and one_cycle_mom(1.0) == pytest.approx(0.95)
    xs = [one_cycle_lr(i / 100) for i in range(101)]
    assert xs.index(max(xs)) == 25


def test_fit_one_cycle_learns_and_records_history():
    learn = synth_learner()
    before = learn.validate()["accuracy"]
    learn.fit_one_cycle(4, 1e-2)
    h = learn.recorder.history
    assert [r["epoch"] for r in h] == [0, 1, 2, 3]
    assert set(h[0]) >= {"epoch", "phase", "train_loss", "valid_loss", "accuracy", "seconds"}
    assert h[-1]["accuracy"] > 0.9 > before or h[-1]["accuracy"] > before + 0.2
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    # the scheduler ran: the last batch's rate is near the end of the cycle
    assert learn.recorder.lrs[-1] < 1e-4 and max(learn.recorder.lrs) == pytest.approx(1e-2, rel=0.05)


def test_discriminative_rates_and_freezing():
    learn = synth_learner()
    lo, hi = learn.group_lrs(slice(1e-4, 1e-2))
    assert (lo, hi) == (pytest.approx(1e-4), pytest.approx(1e-2))
    assert learn.group_lrs(slice(None, 1e-2)) == [pytest.approx(1e-3), pytest.approx(1e-2)]
    learn.freeze()
    body, head = learn.groups
    bn = learn.model[0][1]
    assert all(p.requires_grad for p in head) and all(p.requires_grad for p in bn.parameters())
    assert not learn.model[0][0].weight.requires_grad
    w0 = learn.model[0][0].weight.clone()
    learn.fit(1, 1e-2)
    assert torch.equal(w0, learn.model[0][0].weight)  # frozen layer untouched
    learn.freeze(train_bn=False)
    assert not any(p.requires_grad for p in bn.parameters())
    learn.unfreeze()
    assert all(p.requires_grad for p in learn.model.parameters())


def test_events_run_in_order_and_cancel_fit_stops():
    seen = []

    class Spy(Callback):
        def before_fit(self, learn): seen.append("before_fit")
        def before_epoch(self, learn): seen.append("before_epoch")
        def before_step(self, learn): seen.append("before_step")
        def after_validate(self, learn): seen.append("after_validate")
        def after_fit(self, learn): seen.append("after_fit")
        def after_batch(self, learn):
            if learn.training and learn.iter == 2:
                raise CancelFitException()

    learn = synth_learner()
    learn.fit(3, 1e-3, cbs=[Spy()])
    assert seen == ["before_fit", "before_epoch", "before_step", "before_step", "before_step", "after_fit"]


def test_early_stopping_and_save_best_restore():
    learn = synth_learner()
    stop = EarlyStopping("valid_loss", patience=1)
    best = SaveBestModel("valid_loss")
    learn.fit(30, 3.0, cbs=[stop, best])  # a rate this high makes valid_loss bounce: stopping must trigger
    assert stop.stopped_epoch is not None and stop.stopped_epoch < 29
    assert learn.validate()["valid_loss"] == pytest.approx(best.best, rel=1e-5)


def test_csv_logger_appends_each_epoch(tmp_path):
    path = tmp_path / "history.csv"
    learn = synth_learner(cbs=[CSVLogger(path)])
    learn.fit(2, 1e-2)
    learn.fit(1, 1e-3)
    rows = list(csv.DictReader(open(path)))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert float(rows[0]["valid_loss"]) == pytest.approx(learn.recorder.history[0]["valid_loss"], rel=1e-4)


def test_lr_find_restores_weights_and_suggests_sane_rates():
    learn = synth_learner(n=512)
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    res = learn.lr_find(num_it=60)
    after = learn.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert learn.recorder.history == []
    assert 10 < len(res.lrs) <= 60 and res.lrs == sorted(res.lrs)
    for name, lr in res.suggestions.items():
        assert 1e-6 < lr < 10, (name, lr)
    fig = res.plot()
    assert fig.axes[0].get_xscale() == "log"


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_trains(name):
    learn = synth_learner(opt=name)
    lr = {"sgd": 0.1, "adagrad": 0.05}.get(name, 1e-2)
    learn.fit_one_cycle(3, lr)
    assert learn.recorder.history[-1]["accuracy"] > 0.8, name


def test_weight_decay_skips_biases_and_norms():
    learn = synth_learner()
    opt = make_optimizer("adamw", learn.groups, 1e-3, 0.1)
    for g in opt.param_groups:
        assert g["weight_decay"] == (0.1 if all(p.ndim > 1 for p in g["params"]) else 0.0)
    with pytest.raises(UserError):
        make_optimizer("lion", learn.groups)


def test_same_seed_same_result():
    def run():
        torch.manual_seed(0)
        learn = synth_learner(seed=3)
        learn.fit_one_cycle(2, 1e-2)
        return learn.recorder.history[-1]["valid_loss"]

    a, b = run(), run()
    assert a == b and math.isfinite(a)


def test_valid_every_validates_every_nth_epoch_and_the_last(tmp_path, capsys):
    """Keras's validation_freq: epochs 2 and 4 and the last (5) are validated, the others show no figure (NaN in
    the history, '-' in the table, empty in history.csv); keeping the best epoch compares the validated ones."""
    learn = synth_learner(valid_every=2, progress=True, cbs=[CSVLogger(tmp_path / "h.csv")])
    learn.fit_one_cycle(5, 1e-2)
    seen = [not math.isnan(r["valid_loss"]) for r in learn.recorder.history]
    assert seen == [False, True, False, True, True]
    assert learn.recorder.history[-1]["accuracy"] > 0.8 and learn.last_validation == {
        k: learn.recorder.history[-1][k] for k in learn.last_validation}
    table = [line.split() for line in capsys.readouterr().out.splitlines() if line.split()[:1] == ["train"]]
    assert [row[3] == "-" for row in table] == [not s for s in seen]
    csv_rows = (tmp_path / "h.csv").read_text().splitlines()
    assert csv_rows[0].startswith("epoch,phase,train_loss,valid_loss") and len(csv_rows) == 6
    best = synth_learner(valid_every=2)
    keep = SaveBestModel("valid_loss", model=best.model)
    best.fit_one_cycle(5, 1e-2, cbs=[keep])
    validated = [r for r in best.recorder.history if not math.isnan(r["valid_loss"])]
    assert [r["epoch"] for r in validated] == [1, 3, 4]
    assert keep.best == min(r["valid_loss"] for r in validated) and keep.best_epoch in (1, 3, 4)


def test_fine_tuning_a_pretrained_body_keeps_batch_norm_statistics(tiny_split_folder):
    """Keras's rule: a pretrained body's batch-norm layers stay in inference mode when it is unfrozen (their scale and
    shift still learn), so the head fitted on eval-mode features still fits them; a random body's learn its own."""
    from imgclf.data.core import ImageData
    from imgclf.train.vision import vision_learner

    data = ImageData.from_folder(tiny_split_folder, size=32, bs=4, progress=False)
    for pretrained in (True, False):
        learn = vision_learner(data, pretrained=pretrained, progress=False)
        assert learn.bn_eval is pretrained
        bn = next(m for m in learn.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        stats, weight = bn.running_mean.clone(), bn.weight.detach().clone()
        learn.unfreeze()
        learn.fit_one_cycle(1, 1e-3)
        assert torch.equal(bn.running_mean, stats) is pretrained
        assert not torch.equal(bn.weight.detach(), weight)  # the affine part trains either way
