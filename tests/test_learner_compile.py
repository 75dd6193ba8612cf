"""`Learner(compile=True)` / `imgclf train --compile`: the training forward runs torch.compile'd."""

from __future__ import annotations

import pytest
import torch
from test_learner import synth_learner

from imgclf.cli import config as _config
from imgclf.cli import parser


def test_compiled_training_learns_like_eager():
    torch.manual_seed(0)
    eager = synth_learner()
    eager.fit_one_cycle(2, 1e-2)
    torch.manual_seed(0)
    compiled = synth_learner(compile=True)
    compiled.fit_one_cycle(2, 1e-2)
    model, wrapper = compiled._compiled  # the training forward went through a compiled wrapper of the model
    assert model is compiled.model and wrapper is compiled._forward_module()
    assert type(wrapper).__name__ == "OptimizedModule" and eager._forward_module() is eager.model
    # same data, same seed, same steps: the same weights up to float reassociation in the fused kernels
    for p, q in zip(eager.model.parameters(), compiled.model.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-3), (p - q).abs().max()
    assert compiled.recorder.history[-1]["accuracy"] == pytest.approx(eager.recorder.history[-1]["accuracy"], abs=0.02)
    assert compiled.recorder.history[-1]["train_loss"] < compiled.recorder.history[0]["train_loss"]
    assert _config(parser().parse_args(["train", "DATA", "--compile"])).train.compile is True
    assert _config(parser().parse_args(["train", "DATA"])).train.compile is False
