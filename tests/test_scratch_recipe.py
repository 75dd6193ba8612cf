"""The from-scratch recipe (train/scratch.py) and the airbench-style AirNet (models/airnet.py)."""

from __future__ import annotations

import json

import pytest
import torch

from imgclf.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from imgclf.data.augment import Augment
from imgclf.models import create_model, layer_groups, list_models, recommended_size
from imgclf.train import job
from imgclf.train.schedule import SCHEDULES
from imgclf.train.scratch import (
    GPU_BS,
    MAX_EPOCHS,
    MAX_SIZE,
    SCRATCH_ARCH,
    SCRATCH_EPOCHS,
    SCRATCH_LR,
    SCRATCH_PROGRESSIVE,
    scratch_recipe,
)


@pytest.mark.parametrize("arch", ["airnet", "airnet_tiny"])
def test_airnet_builds_and_trains_a_step(arch):
    torch.manual_seed(0)
    assert arch in list_models("air*") and recommended_size(arch) == 32
    model, meta = create_model(arch, num_classes=10)
    assert meta.pretrained == "none" and model.get_classifier().out_features == 10
    for size in (8, 28, 32):  # Fashion-MNIST's 28 px pools 28 -> 14 -> 7 -> 3; 8 px still runs
        assert model(torch.randn(2, 3, size, size)).shape == (2, 10)
    x, y = torch.randn(8, 3, 28, 28), torch.arange(8) % 10
    opt = torch.optim.AdamW(model.parameters(), 1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert loss.isfinite() and all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    # timm's interface: pre-logit features, the head last in the layer groups, a fresh head
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (8, model.num_features)
    assert {id(p) for p in layer_groups(model)[-1]} == {id(p) for p in model.get_classifier().parameters()}
    model.reset_classifier(3)
    assert model(x).shape == (8, 3)


def test_recipe_for_fashion_mnist_is_the_documented_one():
    r = scratch_recipe(60000, 28)
    assert r["arch"] == SCRATCH_ARCH and SCRATCH_ARCH in list_models()
    assert (r["size"], r["crop_pct"], r["bs"], r["epochs"], r["lr"]) == (28, 1.0, 256, SCRATCH_EPOCHS, SCRATCH_LR)
    assert r["schedule"] in SCHEDULES and 0 <= r["label_smoothing"] < 0.5
    assert r["progressive"] == SCRATCH_PROGRESSIVE and 0 < SCRATCH_PROGRESSIVE < 1  # issue 14: from 20 px up
    aug = Augment.parse(r["augment"])
    assert aug.pad == 2 and aug.flip and aug.max_rotate == 0  # CIFAR's pad-and-crop and a mirror, no rotation
    # the job's defaults for --recipe scratch are this recipe's
    assert job.EPOCHS["scratch"] == SCRATCH_EPOCHS and job.LRS["scratch"] == SCRATCH_LR


def test_recipe_for_64px_and_for_large_images_and_few_of_them():
    r64 = scratch_recipe(20000, 64)
    assert (r64["size"], r64["crop_pct"]) == (64, 1.0)  # small images train at their own size, whole
    big = scratch_recipe(500, 375)  # photos: resized to MAX_SIZE, ImageNet's center crop, zoom augmentation
    assert (big["size"], big["crop_pct"]) == (MAX_SIZE, 0.875) and Augment.parse(big["augment"]).max_zoom > 1
    # few images: smaller batches (>= 16 steps an epoch down to 32) and more epochs, capped
    assert big["bs"] < 256 and big["epochs"] > SCRATCH_EPOCHS and big["epochs"] <= MAX_EPOCHS
    assert scratch_recipe(1, 0)["epochs"] == MAX_EPOCHS and scratch_recipe(1, 0)["bs"] >= 1
    for r in (r64, big):
        assert set(r) == set(scratch_recipe(60000, 28))


def test_gpu_recipe_grows_the_batch_keeps_the_epochs_and_drops_progressive_resizing():
    """On CUDA a small net's step is launch-bound: Fashion-MNIST takes bs 1024 at twice the rate (sqrt of 4x) and
    no progressive resizing, the same epochs (94.1-94.2% in 11.7-13.9 s of fit on one H200, bench/gpu.py); sets
    too small for 32 steps of a larger batch keep the CPU's batch and rate."""
    cpu, gpu = scratch_recipe(60000, 28), scratch_recipe(60000, 28, "cuda")
    assert (gpu["bs"], gpu["epochs"], gpu["progressive"]) == (GPU_BS, cpu["epochs"], 0.0)
    assert gpu["lr"] == pytest.approx(cpu["lr"] * 2)
    assert {k: v for k, v in gpu.items() if k not in ("bs", "lr", "progressive")} == \
        {k: v for k, v in cpu.items() if k not in ("bs", "lr", "progressive")}
    mid = scratch_recipe(20000, 64, "cuda")  # 20000 / 1024 < 32 steps: 512
    assert mid["bs"] == 512 and mid["lr"] == pytest.approx(SCRATCH_LR * 2**0.5)
    few, few_cpu = scratch_recipe(2000, 32, "cuda"), scratch_recipe(2000, 32)
    assert (few["bs"], few["lr"], few["epochs"]) == (few_cpu["bs"], few_cpu["lr"], few_cpu["epochs"])
    assert scratch_recipe(60000, 28, "mps") == cpu


def test_airnet_from_scratch_through_the_job(image_folder, tmp_path):
    """`imgclf train --arch airnet_tiny` on three colour classes: a scratch run that learns and exports."""
    root = image_folder({"red": 10, "blue": 10, "green": 10}, split=True, n_valid=5)
    cfg = RunConfig(data=DataConfig(path=str(root), size=16, bs=8), model=ModelConfig(arch="airnet_tiny"),
                    train=TrainConfig(recipe="scratch", epochs=6, lr=1e-2, device="cpu", valid_every=4),
                    out=str(tmp_path / "run"))
    res = job.train(cfg, progress=False)
    assert res.metrics["accuracy"] >= 0.8, res.metrics  # 15 valid images, chance 1/3
    # --valid-every 4: epochs 4 and 6 (the last) validated, the others' validation cells empty in history.csv
    rows = (res.run_dir / "history.csv").read_text().splitlines()[1:]
    assert [r.split(",")[3] not in ("", "nan") for r in rows] == [False, False, False, True, False, True]
    assert json.loads((res.run_dir / "model.json").read_text())["arch"] == "airnet_tiny"
