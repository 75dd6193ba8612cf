"""LSUV: layer-sequential unit-variance initialisation (Mishkin & Matas 2015, "All you need is a good init").

For each conv and linear layer in forward order (all but the final classifier): orthogonal weights,
then the weight is divided by the standard deviation of the layer's output on a real data batch (and
the bias shifted so the output mean is 0) until that std is 1 within `tol`. Every layer then starts
by passing on a signal of unit scale, whatever the depth, which the paper shows lets plain deep nets
train from scratch with SGD as well as batch-norm nets do.

Measured on the batch with BatchNorm layers in training mode (batch statistics: how the net will see
data while it trains) and everything else in eval mode (no dropout noise); BN running statistics and
every module's mode are restored afterwards, so the only change to the model is the new weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class _Reached(Exception):
    """Raised by the pre-hook to stop the forward pass once the layer's input is captured."""


def _layer_input(model: nn.Module, layer: nn.Module, xb: torch.Tensor) -> torch.Tensor | None:
    """The input `layer` receives when `model` runs on `xb` (None if the forward never calls it)."""
    got: list[torch.Tensor] = []

    def hook(_module, args):
        got.append(args[0].detach().clone())
        raise _Reached

    handle = layer.register_forward_pre_hook(hook)
    try:
        model(xb)
    except _Reached:
        pass
    finally:
        handle.remove()
    return got[0] if got else None


def lsuv_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Conv2d and Linear that LSUV rescales: all but the final classifier's."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    skip = {id(m) for m in head.modules()} if isinstance(head, nn.Module) else set()
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in skip]


@torch.no_grad()
def lsuv_init(model: nn.Module, xb: torch.Tensor, tol: float = 0.1, max_iter: int = 10) -> list[dict[str, Any]]:
    """LSUV-initialise `model` in place on the batch `xb`; per layer: name, type, output std and mean
    before (the existing init) and after, and the rescaling iterations it took.

    Layers are done in forward order, each measured with the ones before it already done, so the
    statistics hold for the whole net on `xb` at the end. The output is linear in the weight, so one
    rescale usually lands on std 1 exactly; `max_iter` bounds the loop for anything less tidy.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [{k: v.clone() for k, v in bn.state_dict().items()} for bn in norms]
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    for bn in norms:
        bn.train()
    stats: list[dict[str, Any]] = []
    try:
        for name, layer in lsuv_layers(model):
            x = _layer_input(model, layer, xb)
            if x is None:
                continue
            out = layer(x)
            row: dict[str, Any] = {"name": name, "type": type(layer).__name__,
                                   "std_before": out.std().item(), "mean_before": out.mean().item()}
            # orthogonal_ views the weight as 2-D: build it contiguous, then copy (channels_last weights)
            layer.weight.copy_(nn.init.orthogonal_(torch.empty(layer.weight.shape, dtype=layer.weight.dtype,
                                                               device=layer.weight.device)))
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
            iters = 0
            while True:
                out = layer(x)
                std, mean = out.std().item(), out.mean().item()
                done = abs(std - 1) <= tol and (layer.bias is None or abs(mean) <= tol)
                if done or iters == max_iter or std == 0:
                    break
                layer.weight.div_(std)
                if layer.bias is not None:  # (W x + b - mean) / std: zero mean, unit std
                    layer.bias.sub_(mean).div_(std)
                iters += 1
            stats.append({**row, "std_after": std, "mean_after": mean, "iterations": iters})
    finally:
        for bn, state in zip(norms, saved, strict=True):
            bn.load_state_dict(state)
        for m, training in modes:
            m.train(training)
    return stats


def summarize_lsuv(stats: list[dict[str, Any]]) -> str:
    """One console line: how many layers, and the range of output std before and after."""
    if not stats:
        return "init: LSUV found no conv or linear layer to rescale"
    lo_b, hi_b = min(s["std_before"] for s in stats), max(s["std_before"] for s in stats)
    lo_a, hi_a = min(s["std_after"] for s in stats), max(s["std_after"] for s in stats)
    return (f"init: LSUV on {len(stats)} layers; output std {lo_b:.3g}..{hi_b:.3g} -> {lo_a:.3f}..{hi_a:.3f} "
            f"({sum(s['iterations'] for s in stats)} rescales)")
