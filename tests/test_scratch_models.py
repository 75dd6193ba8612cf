"""Our own from-scratch architectures (simple_cnn, xresnet18/34/50) and LSUV initialisation."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from imgclf.cli import config as _config
from imgclf.cli import parser
from imgclf.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from imgclf.data.core import ImageData
from imgclf.errors import UserError
from imgclf.infer import load_model
from imgclf.models import create_model, layer_groups, list_models, lsuv_init, recommended_size
from imgclf.models.init import lsuv_layers
from imgclf.models.registry import IMAGENET_MEAN, IMAGENET_STD, default_norm
from imgclf.models.xresnet import ResBlock
from imgclf.train import vision_learner
from imgclf.train.job import is_scratch, resolve_size, train

OWN = ["simple_cnn", "xresnet18", "xresnet34", "xresnet50", "xresnet_tiny", "xresnet_small"]


def test_own_archs_are_registered_with_imagenet_norm():
    names = list_models()
    assert names[: 1 + len(OWN)] == ["efficientnet_lite0", *OWN]  # ours right after the embedded default
    assert list_models("xresnet*") == ["xresnet18", "xresnet34", "xresnet50", "xresnet_tiny", "xresnet_small"]
    for arch in OWN:
        _, meta = create_model(arch, num_classes=3)
        assert meta.pretrained == "none" and (meta.mean, meta.std) == (IMAGENET_MEAN, IMAGENET_STD)
        assert default_norm(arch) == (meta.mean, meta.std)
        assert recommended_size(arch) == (32 if arch.endswith(("_tiny", "_small")) else 224)


@pytest.mark.parametrize("arch", OWN)
def test_forward_backward_and_timm_interface(arch):
    torch.manual_seed(0)
    model, _ = create_model(arch, num_classes=5)
    assert model.num_classes == 5 and model.get_classifier().out_features == 5 and model.drop_rate >= 0
    for size in (32, 64):
        x = torch.randn(2, 3, size, size)
        model.zero_grad()
        out = model(x)
        assert out.shape == (2, 5)
        out.logsumexp(-1).sum().backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert len(grads) == len(list(model.parameters())) and all(g.isfinite().all() for g in grads)
        assert model.get_classifier().weight.grad.abs().sum() > 0
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
        assert feats.shape == (2, model.num_features)
    # the head is the classifier alone, last; every parameter in exactly one layer group
    groups = layer_groups(model)
    assert {id(p) for p in groups[-1]} == {id(p) for p in model.get_classifier().parameters()}
    assert sum(len(g) for g in groups) == len(list(model.parameters()))
    model.reset_classifier(7)
    assert model.num_classes == 7 and model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_simple_cnn_blocks_and_small_inputs():
    model, _ = create_model("simple_cnn", num_classes=10)
    convs = [m for m in model.features.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 512]
    assert model.num_features == 256  # the MLP's hidden layer: what the classifier and probes see
    model.eval()
    with torch.no_grad():  # 28 px (Fashion-MNIST) pools 28 -> 14 -> 7 -> 4 -> 2 -> 1 (rounding up)
        assert model.forward_features(torch.randn(2, 3, 28, 28)).shape == (2, 512, 1, 1)
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_xresnet_bag_of_tricks():
    torch.manual_seed(0)
    model, _ = create_model("xresnet18", num_classes=3)
    stem_convs = [m for m in model.stem.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride[0]) for c in stem_convs] == [(3, 32, 2), (32, 32, 1), (32, 64, 1)]
    blocks = [b for b in model.modules() if isinstance(b, ResBlock)]
    assert len(blocks) == 8
    for b in blocks:
        assert torch.count_nonzero(b.convs[-1][1].weight) == 0  # the last BN starts at zero
        downsamples = b.convs[0][0].stride[0] == 2
        kinds = [type(m) for m in b.shortcut]
        if downsamples:  # ResNet-D: average-pool first, then the 1x1 conv + BN
            assert kinds[0] is nn.AvgPool2d and isinstance(b.shortcut[1][0], nn.Conv2d)
        else:
            assert kinds == []  # the identity
    # so at init every block is its shortcut path (the identity where shapes match), in both modes
    x = torch.randn(4, 3, 64, 64)
    for train_mode in (True, False):
        model.train(train_mode)
        with torch.no_grad():
            h = model.stem(x)
            for b in blocks:
                h_in, h = h, b(h)
                torch.testing.assert_close(h, torch.relu(b.shortcut(h_in)))
                if len(b.shortcut) == 0:
                    torch.testing.assert_close(h, h_in)  # the identity: its input came out of a ReLU
    bottleneck = [b for b in create_model("xresnet50", num_classes=3)[0].modules() if isinstance(b, ResBlock)][0]
    assert [m[0].kernel_size[0] for m in bottleneck.convs] == [1, 3, 1]
    assert torch.count_nonzero(bottleneck.convs[-1][1].weight) == 0


def _stats_with_hooks(model: nn.Module, xb: torch.Tensor) -> dict[str, float]:
    """Each conv/linear output's std on `xb`, measured independently of lsuv_init (BN on batch stats)."""
    found: dict[str, float] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, n=n: found.__setitem__(n, out.std().item()))
             for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    model.train()
    with torch.no_grad():
        model(xb)
    for h in hooks:
        h.remove()
    return found


@pytest.mark.parametrize("arch", ["simple_cnn", "xresnet18"])
def test_lsuv_gives_unit_std_per_layer_and_keeps_bn_stats(arch):
    torch.manual_seed(0)
    model, _ = create_model(arch, num_classes=3)
    model.train()
    xb = torch.randn(8, 3, 32, 32) * 2 + 0.5
    bn_before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    stats = lsuv_init(model, xb, tol=0.1)
    names = [s["name"] for s in stats]
    assert names == [n for n, _ in lsuv_layers(model)] and "fc" not in names  # all but the classifier
    assert len(names) == (6 if arch == "simple_cnn" else 22)
    for s in stats:
        assert abs(s["std_after"] - 1) <= 0.1, s
        assert s["iterations"] <= 10 and s["std_before"] > 0
    assert any(abs(s["std_before"] - 1) > 0.1 for s in stats)  # it had something to fix
    assert model.training  # modes restored
    for k, v in model.state_dict().items():
        if k in bn_before:
            assert torch.equal(v, bn_before[k]), k
    measured = _stats_with_hooks(model, xb)
    for s in stats:
        assert measured[s["name"]] == pytest.approx(s["std_after"], abs=1e-3)
        assert abs(measured[s["name"]] - 1) <= 0.1


def test_init_flag_and_lsuv_skipped_on_pretrained_weights(tiny_split_folder):
    cfg = _config(parser().parse_args(["train", "DATA", "--init", "lsuv", "--arch", "xresnet34"]))
    assert cfg.train.init == "lsuv" and cfg.model.arch == "xresnet34"
    assert _config(parser().parse_args(["train", "DATA"])).train.init == "default"
    data = ImageData.from_folder(tiny_split_folder, size=32, progress=False)
    with pytest.warns(UserWarning, match="lsuv: skipped"):
        learn = vision_learner(data, "efficientnet_lite0", init="lsuv", device="cpu", progress=False)
    assert learn.init_report["method"] == "default" and "pretrained" in learn.init_report["skipped"]


def test_simple_cnn_from_scratch_with_lsuv_learns(image_folder, tmp_path, capsys):
    """Two epochs from scratch at 32 px on three colour classes: LSUV recorded, accuracy well above 1/3."""
    root = image_folder({"red": 12, "blue": 12, "green": 12}, split=True, n_valid=6)
    cfg = RunConfig(
        data=DataConfig(path=str(root), size=32, bs=8),
        model=ModelConfig(arch="simple_cnn", pretrained=False),
        train=TrainConfig(recipe="fine_tune", freeze_epochs=0, epochs=2, init="lsuv", device="cpu"),
        out=str(tmp_path / "run"),
    )
    res = train(cfg, progress=False)
    assert res.metrics["accuracy"] >= 0.8, res.metrics  # 18 valid images, chance 1/3
    assert "init: LSUV on 6 layers" in capsys.readouterr().out
    conf = json.loads((res.run_dir / "config.json").read_text())
    assert conf["train"]["init"] == "lsuv"
    init = conf["resolved"]["init"]
    assert init["method"] == "lsuv" and [s["name"] for s in init["layers"]][-1] == "pre_logits.1"
    assert all(abs(s["std_after"] - 1) <= 0.1 for s in init["layers"])


def test_xresnet18_export_load_predict(image_folder, tmp_path):
    root = image_folder({"red": 8, "blue": 8}, split=True, n_valid=4)
    data = ImageData.from_folder(root, size=32, bs=8, progress=False)
    learn = vision_learner(data, "xresnet18", pretrained=False, init="lsuv", device="cpu", precision="fp32",
                           progress=False)
    assert learn.init_report["method"] == "lsuv" and len(learn.init_report["layers"]) == 22
    learn.fit_one_cycle(1, 1e-2)
    learn.export(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "model.json").read_text())["arch"] == "xresnet18"
    # the training images' content is recorded beside the model: evaluate can warn when it scores them
    assert json.loads((tmp_path / "run" / "train_content.json").read_text())["n"] == len(data.train_paths)
    # a folder that already holds a model is refused, untouched, unless force=True
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    with pytest.raises(UserError, match="already holds a model .*force=True"):
        learn.export(tmp_path / "run")
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before
    assert learn.export(tmp_path / "run", force=True) == tmp_path / "run"
    # no config.json (a model saved from Python): the CLI's --data labels the images as train would
    from imgclf.cli import main

    assert main(["interpret", str(tmp_path / "run"), "--data", str(root), "--quiet"]) == 0
    assert (tmp_path / "run" / "interpret" / "per_class.csv").is_file()
    logits, _ = learn.get_preds()
    model = load_model(tmp_path / "run", device="cpu", precision="fp32")
    preds, skipped = model.predict_files(data.valid_paths, progress=False)
    assert not skipped and len(preds) == 8
    probs = torch.tensor([[p.probs[c] for c in model.classes] for p in preds])
    torch.testing.assert_close(probs, logits.softmax(-1), atol=1e-4, rtol=0)
    assert model.predict(data.valid_paths[0]).label in ("blue", "red")


def test_training_flags_reach_the_run(image_folder, tmp_path):
    """--mixup/--cutmix/--schedule/--wd-mode/--drop-rate/--augment from the command line into the training and
    config.json; a random-init arch takes the scratch recipe (no frozen phase)."""
    root = image_folder({"red": 10, "blue": 10}, split=True, n_valid=4)
    args = ["train", str(root), "--arch", "xresnet_tiny", "--size", "32", "--bs", "8", "--epochs", "2",
            "--mixup", "0.4", "--cutmix", "1.0", "--schedule", "cosine", "--wd-mode", "l2", "--drop-rate", "0.3",
            "--augment", "strong,erase=0.5", "--opt", "sgd", "--lr", "0.05", "--device", "cpu",
            "--out", str(tmp_path / "run")]
    cfg = _config(parser().parse_args(args))
    assert (cfg.train.mixup, cfg.train.cutmix, cfg.train.schedule, cfg.train.wd_mode) == (0.4, 1.0, "cosine", "l2")
    assert cfg.model.drop_rate == 0.3 and cfg.data.augment == "strong,erase=0.5"
    res = train(cfg, progress=False)
    learn = res.learner
    assert learn.model.drop.p == 0.3 and isinstance(learn.opt, torch.optim.SGD)
    assert all(g["weight_decay"] in (0.0, 0.01) for g in learn.opt.param_groups)  # l2: in torch's own update
    conf = json.loads((res.run_dir / "config.json").read_text())
    assert conf["resolved"]["recipe"] == "scratch" and "random weights" in conf["resolved"]["why"][0]
    assert "erase(0.5)" in conf["resolved"]["augment"] and "hue(0.05)" in conf["resolved"]["augment"]
    rows = (res.run_dir / "history.csv").read_text().splitlines()
    assert len(rows) == 3 and all(",scratch," in r for r in rows[1:])
    assert all(math.isfinite(float(v)) for v in rows[1].split(",")[2:])


def test_sizes_from_scratch_follow_the_images(image_folder):
    """Pretrained: the backbone's size and ImageNet's crop. From scratch: small images at their own size,
    whole; images larger than the arch's size keep its size and the crop. Given values are kept."""
    small = image_folder({"a": 3, "b": 3}, size=(40, 30))
    big = image_folder({"a": 3, "b": 3}, size=(300, 260))

    def resolved(path, arch, pretrained=True, **data):
        cfg = RunConfig(data=DataConfig(path=str(path), **data), model=ModelConfig(arch=arch, pretrained=pretrained))
        return resolve_size(cfg, is_scratch(cfg))

    assert resolved(small, "efficientnet_lite0") == (256, 0.875)
    assert resolved(small, "simple_cnn") == (30, 1.0)  # our archs have no weights: from scratch
    assert resolved(small, "efficientnet_lite0", pretrained=False) == (30, 1.0)
    assert resolved(big, "xresnet18") == (224, 0.875)
    assert resolved(small, "simple_cnn", size=64) == (64, 1.0)  # asked to upsample: still the whole image
    assert resolved(small, "simple_cnn", crop_pct=0.9) == (30, 0.9)
