"""Class imbalance: the ratio, balanced accuracy / macro F1, class weights in the probe, the even sampler, --balance."""

from __future__ import annotations

import json

import pytest
import torch

from imgclf.cli import main
from imgclf.data.loaders import BatchLoader
from imgclf.data.samplers import BalancedSampler, choose_balance, class_weights, imbalance_ratio
from imgclf.train.metrics import balanced_accuracy, class_figures, confusion, macro_f1
from imgclf.train.probe import fit_linear_probe


def logits_for(preds: list[int], k: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(preds), k).float()


def test_balanced_accuracy_and_macro_f1_by_hand():
    # actual 0 x6 (predicted 0,0,0,0,1,2), 1 x3 (1,1,0), 2 x1 (2)
    y = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 2])
    p = [0, 0, 0, 0, 1, 2, 1, 1, 0, 2]
    lg = logits_for(p, 3)
    assert confusion(torch.tensor(p), y, 3).tolist() == [[4, 1, 1], [1, 2, 0], [0, 0, 1]]
    assert balanced_accuracy(lg, y) == pytest.approx((4 / 6 + 2 / 3 + 1) / 3)
    # F1 = 2TP / (support + predicted): 8/11, 4/6, 2/3
    assert macro_f1(lg, y) == pytest.approx((8 / 11 + 4 / 6 + 2 / 3) / 3)
    figs = class_figures(lg, y)
    assert figs["class_recall"] == pytest.approx([4 / 6, 2 / 3, 1.0])
    for k in ("balanced_accuracy", "macro_f1"):
        assert figs[f"{k}_low"] <= figs[k] <= figs[f"{k}_high"]
    # always the majority: accuracy 0.9 but balanced accuracy 0.5
    y2 = torch.tensor([0] * 90 + [1] * 10)
    assert balanced_accuracy(logits_for([0] * 100, 2), y2) == 0.5


def test_ratio_weights_and_auto_rule():
    assert imbalance_ratio([120, 12]) == 10.0 and imbalance_ratio([5, 0]) == float("inf")
    w = class_weights([120, 12])
    assert torch.allclose(w * torch.tensor([120.0, 12.0]), torch.tensor([66.0, 66.0]))  # equal total weight
    assert choose_balance("auto", [120, 12])[0] == "weights"
    assert choose_balance("auto", [124, 121])[0] == "none"
    assert choose_balance("sampler", [124, 121])[0] == "sampler"


def test_class_weights_change_the_probe():
    g = torch.Generator().manual_seed(0)
    # two overlapping Gaussian classes, 200 vs 10 training rows; balanced held-out set
    def draw(n0, n1):
        x = torch.cat([torch.randn(n0, 8, generator=g), torch.randn(n1, 8, generator=g) + 1.0])
        return x, torch.cat([torch.zeros(n0), torch.ones(n1)]).long()

    x, y = draw(200, 10)
    xv, yv = draw(300, 300)
    plain = fit_linear_probe(x, y, xv, yv, 2, wds=(1e-2,))[0]
    weighted = fit_linear_probe(x, y, xv, yv, 2, wds=(1e-2,), class_weights=class_weights([200, 10]))[0]
    recall = [float(((xv[yv == 1] @ f.weight.T + f.bias).argmax(1) == 1).float().mean()) for f in (plain, weighted)]
    assert recall[1] > recall[0] + 0.2  # the minority class is found far more often
    assert not torch.allclose(plain.weight, weighted.weight)


def test_sampler_draws_classes_evenly():
    y = torch.tensor([0] * 90 + [1] * 9 + [2] * 1)
    s = BalancedSampler(y)
    gen = torch.Generator().manual_seed(0)
    order = s(gen)
    assert len(order) == 100
    counts = torch.bincount(y[order], minlength=3).tolist()
    assert max(counts) - min(counts) <= 1  # 34/33/33 whatever the skew
    # within a class no image repeats before all have been drawn: the 9 bees appear 3 or 4 times each
    bees = torch.bincount(order[y[order] == 1] - 90, minlength=9)
    assert bees.min() >= 3 and bees.max() <= 4
    # through a BatchLoader: an epoch's batches hold the classes evenly
    images = torch.zeros(100, 3, 8, 8, dtype=torch.uint8)
    dl = BatchLoader(images, y, 8, (0.5,) * 3, (0.25,) * 3, bs=10, view="center", shuffle=True)
    dl.sampler = s
    seen = torch.cat([yb for _, yb in dl])
    counts = torch.bincount(seen, minlength=3).tolist()
    assert len(seen) == 100 and max(counts) - min(counts) <= 1


@pytest.mark.parametrize("balance", ["auto", "sampler", "auto-random"])
def test_cli_balance(image_folder, tmp_path, balance):
    """auto on a 5:1 split picks weights, kept only if they raise the CV balanced accuracy (probe recipe,
    --calibrate off: T stays 1); the sampler acts where
    batches are drawn (scratch recipe; its temperature cross-fitted on validation halves); auto with
    `--recipe fine_tune --no-pretrained` trains from random weights, so it picks the sampler as from scratch."""
    data = image_folder({"cats": 15, "dogs": 3}, split=True, n_valid=3, size=(40, 30))
    out = tmp_path / f"run_{balance}"
    asked = balance.split("-")[0]
    args = ["train", str(data), "--size", "32", "--bs", "8", "--quiet", "--balance", asked, "--out", str(out)]
    args += {"auto": ["--recipe", "probe", "--calibrate", "off"],
             "sampler": ["--recipe", "scratch", "--arch", "simple_cnn", "--epochs", "1"],
             "auto-random": ["--recipe", "fine_tune", "--no-pretrained", "--arch", "simple_cnn", "--epochs", "1",
                             "--freeze-epochs", "0"]}[balance]
    assert main(args) in (0, None)
    m = json.loads((out / "metrics.json").read_text())
    assert m["imbalance_ratio"] == pytest.approx(5.0)
    # ratio 5 >= 3: auto picks weights, then drops them here: on colours this easy they raise no balanced accuracy
    assert m["balance"] == ("none" if balance == "auto" else "sampler")
    for k in ("balanced_accuracy", "macro_f1"):
        assert m[f"{k}_low"] <= m[k] <= m[f"{k}_high"]
    resolved = json.loads((out / "config.json").read_text())["resolved"]
    assert resolved["balance"]["method"] == m["balance"] and resolved["balance"]["why"]
    cal, meta = m["calibration"], json.loads((out / "model.json").read_text())
    if balance == "auto":
        assert cal["mode"] == "off" and meta["temperature"] == 1.0 and m["ece"] == cal["ece_before"]
        why = resolved["balance"]["why"]
        assert "class-weighted loss" in why and "class weights dropped" in why
    elif balance == "auto-random":
        assert "from scratch" in resolved["balance"]["why"]
    else:
        assert "cross-fitted" in cal["method"] or "too few" in cal["method"]
        assert meta["temperature"] == cal["temperature"]


def test_class_weights_stay_only_where_they_raise_the_balanced_accuracy():
    """--balance auto's weights are for the small classes' recall: kept when the out-of-fold balanced accuracy
    rises with them, dropped when it does not (a 100/20/5 set lost 24 points of accuracy to them)."""
    import torch

    from imgclf.train.probe import ProbeSelection
    from imgclf.train.recipes import keep_class_weights

    y = torch.tensor([0] * 8 + [1] * 2)

    def sel(preds):
        logits = torch.nn.functional.one_hot(torch.tensor(preds), 2).float() * 3
        return ProbeSelection(0.1, 0.5, 0.1, 0.8, [], None, logits)

    all_big = sel([0] * 10)  # never the small class: balanced accuracy 0.5
    finds_small = sel([0] * 7 + [1] + [1] * 2)  # one big-class error, both small right: 0.9375
    keep, why = keep_class_weights(finds_small, all_big, y)
    assert keep and why.startswith("class weights kept: CV balanced accuracy 0.9375 with, 0.5000 without")
    keep, why = keep_class_weights(all_big, finds_small, y)
    assert not keep and "dropped" in why
    assert not keep_class_weights(all_big, all_big, y)[0]  # no gain: the plain loss


def test_set_balance_changes_loss_weights_and_sampler_together(tmp_path):
    """One call switches every part of the balance: the training loss's class weights (validation's stays plain),
    the learner's record and the training loader's sampler; back to "none" removes them all."""
    from conftest import make_folder

    from imgclf.data.core import ImageData
    from imgclf.train.vision import vision_learner

    root = make_folder(tmp_path / "d", {"many": 12, "few": 3}, size=(24, 24), split=True, n_valid=2)
    data = ImageData.from_folder(root, size=32, bs=4, progress=False)
    learn = vision_learner(data, "simple_cnn", pretrained="none", progress=False, balance="weights")
    w = learn.loss_func.weight
    assert w is not None and w[data.classes.index("few")] > w[data.classes.index("many")]
    assert learn.valid_loss_func.weight is None and learn.train_dl.sampler is None
    learn.set_balance("sampler")
    assert learn.balance == "sampler" and learn.loss_func.weight is None
    assert isinstance(learn.train_dl.sampler, BalancedSampler) and learn.class_weights is not None
    learn.set_balance("none")
    assert (learn.balance, learn.class_weights, learn.loss_func.weight, learn.train_dl.sampler) == ("none", None,
                                                                                                     None, None)


def test_a_balance_the_task_cannot_take_is_refused_before_the_data_loads(tmp_path, write_image, capsys):
    """It failed after 'training RUN: checkpoints...' had been printed (the data decoded, the plan made)."""
    from imgclf.cli import main

    rows = []
    for i in range(8):
        write_image(tmp_path / "d" / f"{i}.png", size=(20, 20), seed=i)
        rows.append(f"{i}.png,{'red blue' if i % 2 else 'red'}")
    (tmp_path / "d" / "tags.csv").write_text("file,tags\n" + "\n".join(rows) + "\n")
    assert main(["train", str(tmp_path / "d"), "--csv", str(tmp_path / "d" / "tags.csv"), "--task", "multi_label",
                 "--balance", "weights", "--out", str(tmp_path / "run")]) == 2
    cap = capsys.readouterr()
    assert "--balance weights: for single-label classes only (this is --task multi_label)" in cap.err
    assert "training" not in cap.out and "decode" not in cap.err and not (tmp_path / "run").exists()
