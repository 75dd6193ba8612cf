"""Progressive resizing (train/callbacks/resize.py): smaller training batches early, full size from half-way."""

from __future__ import annotations

import pytest
import torch

from imgclf.cli import config as _config
from imgclf.cli import parser
from imgclf.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from imgclf.train import job
from imgclf.train.callbacks.resize import ProgressiveResize, progressive_size, resize_batch
from imgclf.train.scratch import SCRATCH_PROGRESSIVE, progressive_start, scratch_recipe


def test_size_grows_from_the_start_fraction_to_full_by_half_way():
    sizes = [progressive_size(p / 100, 28, 0.72) for p in range(101)]
    assert sizes[0] == 20 and sizes[30] == 24 and all(s == 28 for s in sizes[50:])
    assert sizes == sorted(sizes) and {s % 4 for s in sizes} == {0}  # grows, in steps of 4 px
    assert progressive_size(0.0, 28, 0.0) == 28 and progressive_size(0.0, 28, 1.0) == 28  # off
    assert progressive_size(0.0, 64, 0.5) == 32 and progressive_size(0.0, 10, 0.1) == 8  # never below 8 px


def test_resize_batch_keeps_channels_last_and_the_mean():
    x = torch.rand(4, 3, 28, 28).contiguous(memory_format=torch.channels_last)
    y = resize_batch(x, 20)
    assert y.shape == (4, 3, 20, 20) and y.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(y.mean((2, 3)), x.mean((2, 3)), atol=0.02)  # antialiased: a resize, not a subsample
    assert resize_batch(x, 28) is x


def test_recipe_default_and_flag():
    assert progressive_start(None, scratch=True) == SCRATCH_PROGRESSIVE == scratch_recipe(60000, 28)["progressive"]
    assert progressive_start(None, scratch=False) == 0.0 and progressive_start(0.5, scratch=False) == 0.5
    assert _config(parser().parse_args(["train", "DATA", "--progressive", "0.6"])).train.progressive == 0.6
    assert _config(parser().parse_args(["train", "DATA"])).train.progressive is None


@pytest.mark.parametrize("progressive", [0.5])
def test_training_batches_grow_and_validation_sees_full_size(image_folder, tmp_path, progressive):
    """Through the job: early training batches reach the model at half size, the last ones and every validation
    batch at full size, and the run still learns three colour classes."""
    root = image_folder({"red": 10, "blue": 10, "green": 10}, split=True, n_valid=5)
    cfg = RunConfig(data=DataConfig(path=str(root), size=16, bs=8), model=ModelConfig(arch="airnet_tiny"),
                    train=TrainConfig(recipe="scratch", epochs=4, lr=1e-2, device="cpu", progressive=progressive),
                    out=str(tmp_path / "run"))
    seen: list[tuple[bool, int]] = []
    hook = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda m, args: seen.append((m.training, args[0].shape[-1])) if type(m).__name__ == "AirNet" else None)
    try:
        res = job.train(cfg, progress=False)
    finally:
        hook.remove()
    train_sizes = [s for t, s in seen if t]
    assert train_sizes[0] == 8 and train_sizes[-1] == 16 and train_sizes == sorted(train_sizes), train_sizes
    assert {s for t, s in seen if not t} == {16}
    assert res.metrics["accuracy"] >= 0.8, res.metrics
    assert any(isinstance(cb, ProgressiveResize) for cb in job._fit_cbs(cfg, res.learner)[1])
