"""Peer benchmark: fastai fine-tuning on hymenoptera (ants vs bees), written as a fastai user would.

Reproduces the canonical fastai recipe: ``ImageDataLoaders.from_folder`` with ``Resize(256)`` item
transforms and ``aug_transforms(size=224)`` batch transforms, a ``Learner`` over an
ImageNet-pretrained timm ``tf_efficientnet_lite0`` split into body/head, and
``learn.fine_tune(2)`` (1 frozen epoch + 2 unfrozen epochs, fastai's default base lr 2e-3).

Usage: python bench/peers/fastai_hymenoptera.py [DATASET_DIR] [--num-workers N]
Progress output goes to stderr; the last stdout line is one JSON object with the results.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch
from fastai.vision.all import (
    ImageDataLoaders,
    Learner,
    Normalize,
    Resize,
    accuracy,
    aug_transforms,
    set_seed,
)
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _backbone import MEAN, STD, pretrained_lite0  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared/datasets/hymenoptera"


def body_head_splitter(model: nn.Module) -> list[list[nn.Parameter]]:
    """Two parameter groups for fastai: pretrained body, then the fresh classifier head."""
    head = list(model.get_classifier().parameters())
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    return [body, head]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=224, help="aug_transforms size; items Resize(size * 8/7)")
    args = parser.parse_args()

    t_total = time.perf_counter()
    set_seed(42)
    with contextlib.redirect_stdout(sys.stderr):  # keep fastai's tables/progress off stdout
        dls = ImageDataLoaders.from_folder(
            args.data,
            train="train",
            valid="val",
            item_tfms=Resize(round(args.size * 8 / 7)),
            batch_tfms=[*aug_transforms(size=args.size), Normalize.from_stats(list(MEAN), list(STD))],
            bs=64,
            num_workers=args.num_workers,
            device=torch.device("cpu"),
        )
        learn = Learner(dls, pretrained_lite0(dls.c), metrics=accuracy, splitter=body_head_splitter)
        t_fit = time.perf_counter()
        learn.fine_tune(2)
        fit_seconds = time.perf_counter() - t_fit
    total_seconds = time.perf_counter() - t_total

    # Recorder.values rows are [train_loss, valid_loss, accuracy] per epoch.
    acc = float(learn.recorder.values[-1][-1])
    print(
        json.dumps(
            {
                "peer": "fastai",
                "accuracy": round(acc, 4),
                "fit_seconds": round(fit_seconds, 2),
                "total_seconds": round(total_seconds, 2),
                "epochs": "1 frozen + 2 unfrozen",
            }
        )
    )


if __name__ == "__main__":
    main()
