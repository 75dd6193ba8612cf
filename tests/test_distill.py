"""Knowledge distillation: Hinton's loss, cached teacher targets, and `imgclf distill` end to end."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from imgclf.cli import main
from imgclf.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from imgclf.errors import UserError
from imgclf.infer import load_model
from imgclf.rundir import read_json
from imgclf.train.distill import (
    DistillLoss,
    distill,
    distill_loss,
    load_teacher,
    pack_targets,
    teacher_log_probs,
)
from imgclf.train.job import load_data


def _logits(seed: int, n: int = 8, c: int = 5) -> torch.Tensor:
    return torch.randn(n, c, generator=torch.Generator().manual_seed(seed)) * 3


def test_alpha_zero_is_plain_cross_entropy():
    s, t, y = _logits(0), _logits(1), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    assert torch.allclose(distill_loss(s, t, y, alpha=0.0), F.cross_entropy(s, y))
    assert torch.allclose(distill_loss(s, t, y, alpha=0.0, label_smoothing=0.1),
                          F.cross_entropy(s, y, label_smoothing=0.1))


def test_kl_term_is_zero_when_the_student_is_the_teacher():
    s, y = _logits(0), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    for t in (1.0, 4.0, 20.0):
        loss = distill_loss(s, s.log_softmax(-1), y, temperature=t, alpha=0.9)
        assert float(loss) == pytest.approx(0.1 * float(F.cross_entropy(s, y)), abs=1e-5)
        assert float(distill_loss(s, s + 3.0, y, temperature=t, alpha=1.0)) == pytest.approx(0.0, abs=1e-4)


def test_soft_term_is_t_squared_times_the_tempered_kl():
    s, t, y = _logits(0), _logits(1), torch.zeros(8, dtype=torch.long)
    temp = 4.0
    p_t, p_s = (t / temp).softmax(-1), (s / temp).softmax(-1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(-1).mean()
    assert torch.allclose(distill_loss(s, t, y, temperature=temp, alpha=1.0), temp**2 * kl, atol=1e-5)
    blend = distill_loss(s, t, y, temperature=temp, alpha=0.75)
    assert torch.allclose(blend, 0.75 * temp**2 * kl + 0.25 * F.cross_entropy(s, y), atol=1e-5)


def test_t_squared_keeps_the_gradient_size_at_high_temperature():
    """Hinton's argument for T^2: at high T the soft term's gradient tends to (s - t) / (C N) for zero-mean
    logits, whatever T; without T^2 it would shrink as 1/T^2."""
    s, t = _logits(0, c=4), _logits(1, c=4)
    s, t = s - s.mean(-1, keepdim=True), t - t.mean(-1, keepdim=True)
    y = torch.zeros(len(s), dtype=torch.long)
    for temp in (200.0, 1000.0):
        x = s.clone().requires_grad_()
        distill_loss(x, t, y, temperature=temp, alpha=1.0).backward()
        expected = (s - t) / (s.shape[1] * s.shape[0])
        assert torch.allclose(x.grad, expected, atol=2e-3)


def test_packed_targets_give_the_same_loss_as_labels():
    s, t, y = _logits(0), _logits(1).log_softmax(-1), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    packed = pack_targets(t, y)
    assert packed.shape == (8, 2, 5) and torch.equal(packed[:, 1].argmax(-1), y)
    fn = DistillLoss(temperature=3.0, alpha=0.6, label_smoothing=0.1)
    assert torch.allclose(fn(s, packed), distill_loss(s, t, y, 3.0, 0.6, 0.1), atol=1e-6)
    assert torch.allclose(fn(s, y), F.cross_entropy(s, y, label_smoothing=0.1))  # validation batches
    with pytest.raises(UserError, match="--alpha"):
        DistillLoss(alpha=1.5)


def test_cached_teacher_targets_are_the_predictors_probabilities(trained_run):
    """The soft targets come from the teacher's own view of each image: the same probabilities `predict` gives."""
    teacher = load_teacher(trained_run)
    meta = teacher.meta
    cfg = RunConfig(data=DataConfig(path=str(trained_run.parent / "data"), size=meta["size"],
                                    crop_pct=meta["crop_pct"], augment="none"))
    data = load_data(cfg, progress=False)
    lp = teacher_log_probs(teacher, data, "valid", ("center",), device="cpu", progress=False)
    probs, kept, _ = load_model(trained_run, device="cpu").probs_files(data.valid_paths, progress=False)
    assert [str(p) for p in kept] == [str(p) for p in data.valid_paths]
    assert torch.allclose(lp.exp(), probs[0], atol=2e-2)  # both under the CPU's autocast dtype


def test_distill_cli_writes_a_run_that_predicts(trained_run, tmp_path, capsys):
    data = shutil.copytree(trained_run.parent / "data", tmp_path / "data")
    out = tmp_path / "student"
    code = main(["distill", str(trained_run), str(data), "--arch", "xresnet_tiny", "--size", "32", "--epochs", "2",
                 "--bs", "32", "--out", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "without it" in printed and "teacher accuracy" in printed
    for name in ("model.safetensors", "model.json", "config.json", "metrics.json", "history.csv",
                 "train_content.json"):  # evaluate warns when it scores the student's training images
        assert (out / name).is_file(), name
    m, conf = read_json(out / "metrics.json"), read_json(out / "config.json")
    assert m["teacher"]["run"] == str(trained_run.resolve()) and m["teacher"]["valid_accuracy"] == 1.0
    assert m["temperature"] == 4.0 and m["alpha"] == 0.9
    assert 0 <= m["accuracy"] <= 1 and 0 <= m["without_teacher"]["accuracy"] <= 1
    assert m["gain"] == pytest.approx(m["accuracy"] - m["without_teacher"]["accuracy"])
    assert conf["distill"]["teacher"]["arch"] == "efficientnet_lite0" and conf["model"]["arch"] == "xresnet_tiny"
    assert len((out / "history.csv").read_text().splitlines()) == 3  # header + 2 epochs (the student's only)
    assert m["kept"] in ("epoch 1/2 (distill)", "epoch 2/2 (distill)")  # as the bar named it, not counted from 0
    student = load_model(out, device="cpu")
    assert student.meta["arch"] == "xresnet_tiny" and student.size == 32
    pred = student.predict(data / "val" / "dogs" / "dogs_12.jpg")
    assert pred.label in ("cats", "dogs", "frogs") and sum(pred.probs.values()) == pytest.approx(1.0, abs=1e-4)


def test_the_comparison_student_is_the_same_training_without_the_teacher(trained_run, tmp_path):
    """alpha=0 with the teacher loaded trains exactly the comparison student: same init, batches, result."""
    data = trained_run.parent / "data"
    cfg = RunConfig(data=DataConfig(path=str(data), size=16, bs=64), model=ModelConfig(arch="xresnet_tiny"),
                    train=TrainConfig(epochs=1, device="cpu", precision="fp32"), out=str(tmp_path / "s"))
    res = distill(cfg, trained_run, alpha=0.0, compare=True, progress=False)
    assert res.metrics["valid_loss"] == pytest.approx(res.metrics["without_teacher"]["valid_loss"], rel=1e-5)
    assert res.metrics["gain"] == 0


def test_teacher_with_other_classes_is_a_user_error(trained_run, image_folder, capsys):
    other = image_folder({"birds": 4, "cats": 4, "dogs": 4}, split=True, n_valid=2)
    assert main(["distill", str(trained_run), str(other), "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("imgclf: error:") and "classes do not match" in err and "birds" in err and "frogs" in err
    assert len(err.splitlines()) == 1
    assert main(["distill", str(other), str(other), "--quiet"]) == 2  # not a run directory
    assert "not a run directory" in capsys.readouterr().err


def test_distill_from_shards_says_to_use_their_folder(trained_run, tmp_path, capsys):
    """Shards stream; distill keeps each image's teacher targets in memory: a one-line error naming the folder the
    shards came from (it was an AttributeError traceback)."""
    shards = tmp_path / "shards"
    assert main(["shard", str(trained_run.parent / "data"), "--out", str(shards), "--quiet"]) == 0
    capsys.readouterr()
    code = main(["distill", str(trained_run), str(shards), "--arch", "xresnet_tiny", "--size", "32", "--epochs", "1",
                 "--out", str(tmp_path / "student"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "not streamed shards" in err and str((trained_run.parent / "data").resolve()) in err
    assert not (tmp_path / "student").exists()
