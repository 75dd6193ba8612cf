"""Optimizers by name over parameter groups, with weight decay (L2 or decoupled) kept off biases and norm weights."""

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


WD_MODES = ("decoupled", "l2")


def make_optimizer(name: str, groups: Sequence[Sequence[nn.Parameter]], lr: float = 1e-3, wd: float = 0.01,
                   wd_mode: str | None = None) -> torch.optim.Optimizer:
    """An optimizer by name; `wd_mode` says how weight decay `wd` acts, on weights of 2+ dims only.

    - `"l2"`: coupled, the classic: `wd * p` is added to the gradient (torch's `weight_decay`), so it goes
      through momentum and, for Adam-like rules, is divided by the gradient's running RMS: weights with
      large gradients are barely decayed.
    - `"decoupled"` (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization"): `p <- p - lr*wd*p`
      apart from the gradient step, the same shrink for every weight whatever its gradient. For adam this
      is torch's AdamW; for sgd, rmsprop and adagrad torch's `weight_decay` is set to 0, the rate is kept
      in the group as `decoupled_wd`, and `apply_decoupled_wd(opt)` must run before each `opt.step()`
      (the Learner does this).
    - `None`: the optimizer's own convention: `adamw` decoupled, every other name L2.

    So `adamw` and `adam` name the same update rule (Adam) and differ only in their default `wd_mode`;
    an explicit `wd_mode` wins over the name.
    """
    name = name.lower()
    if name not in OPTIMIZERS:
        raise UserError(f"--opt {name}: unknown optimizer (choose from {', '.join(OPTIMIZERS)})")
    if wd_mode is None:
        wd_mode = "decoupled" if name == "adamw" else "l2"
    if wd_mode not in WD_MODES:
        raise UserError(f"--wd-mode {wd_mode}: choose decoupled or l2")
    pg = param_groups(groups, wd)
    if name in ("adamw", "adam"):
        cls = torch.optim.AdamW if wd_mode == "decoupled" else torch.optim.Adam
        # on a GPU, one fused kernel for all parameters instead of a few per tensor list: a small net's step is
        # launch-bound there (same update rule; the CPU keeps torch's default, the foreach loop)
        fused = all(p.is_cuda for g in pg for p in g["params"]) and any(g["params"] for g in pg)
        return cls(pg, lr=lr, betas=(0.9, 0.99), eps=1e-6, **({"fused": True} if fused else {}))
    if wd_mode == "decoupled":  # torch's rule sees no decay; apply_decoupled_wd does it
        for g in pg:
            g["decoupled_wd"], g["weight_decay"] = g["weight_decay"], 0.0
    if name == "sgd":
        return torch.optim.SGD(pg, lr=lr, momentum=0.9, nesterov=True)
    if name == "rmsprop":
        return torch.optim.RMSprop(pg, lr=lr, alpha=0.99, eps=1e-6, momentum=0.0)
    return torch.optim.Adagrad(pg, lr=lr)


@torch.no_grad()
def apply_decoupled_wd(opt: torch.optim.Optimizer) -> None:
    """`p <- p * (1 - lr * decoupled_wd)` for each parameter with a gradient, in groups that carry `decoupled_wd`.

    Call it right before `opt.step()`, as AdamW orders it (decay, then the gradient step), with the
    group's current (scheduled) rate. Groups without `decoupled_wd` (AdamW's, L2's) are skipped, so it
    is safe to call for any optimizer. With fp16 loss scaling a step the scaler skips still decays.
    """
    for g in opt.param_groups:
        wd = g.get("decoupled_wd", 0.0)
        if wd:
            params = [p for p in g["params"] if p.grad is not None]
            if params:
                torch._foreach_mul_(params, 1.0 - g["lr"] * wd)


def set_momentum(opt: torch.optim.Optimizer, mom: float) -> None:
    """Set SGD's momentum or Adam's beta1, whichever the optimizer has."""
    for g in opt.param_groups:
        if "betas" in g:
            g["betas"] = (mom, g["betas"][1])
        elif "momentum" in g and g["momentum"] > 0:
            g["momentum"] = mom
