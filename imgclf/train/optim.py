"""Optimizers by name over parameter groups, with weight decay kept off biases and norm weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import UserError

OPTIMIZERS = ("adamw", "adam", "sgd", "rmsprop", "adagrad")


def param_groups(groups: Sequence[Sequence[nn.Parameter]], wd: float) -> list[dict]:
    """Two torch param groups per layer group (decayed, not decayed); `layer` says which layer group.

    1-d tensors (biases, batch-norm scales) get no weight decay: decaying them only hurts (timm, fastai).
    """
    out = []
    for i, params in enumerate(groups):
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        for ps, d in ((decay, wd), (no_decay, 0.0)):
            if ps:
                out.append({"params": ps, "weight_decay": d, "layer": i})
    return out


def make_optimizer(name: str, groups: Sequence[Sequence[nn.Parameter]], lr: float = 1e-3, wd: float = 0.01,
                   ) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay) by default; `adam` applies the decay as L2 in the gradient."""
    pg = param_groups(groups, wd)
    name = name.lower()
    if name == "adamw":
        return torch.optim.AdamW(pg, lr=lr, betas=(0.9, 0.99), eps=1e-6)
    if name == "adam":
        return torch.optim.Adam(pg, lr=lr, betas=(0.9, 0.99), eps=1e-6)
    if name == "sgd":
        return torch.optim.SGD(pg, lr=lr, momentum=0.9, nesterov=True)
    if name == "rmsprop":
        return torch.optim.RMSprop(pg, lr=lr, alpha=0.99, eps=1e-6, momentum=0.0)
    if name == "adagrad":
        return torch.optim.Adagrad(pg, lr=lr)
    raise UserError(f"--opt {name}: unknown optimizer (choose from {', '.join(OPTIMIZERS)})")


def set_momentum(opt: torch.optim.Optimizer, mom: float) -> None:
    """Set SGD's momentum or Adam's beta1, whichever the optimizer has."""
    for g in opt.param_groups:
        if "betas" in g:
            g["betas"] = (mom, g["betas"][1])
        elif "momentum" in g and g["momentum"] > 0:
            g["momentum"] = mom
