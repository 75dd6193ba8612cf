"""Peer benchmark: plain PyTorch fine-tuning loop on hymenoptera (ants vs bees).

Reproduces the style of the PyTorch "Transfer Learning for Computer Vision" tutorial: torchvision
``ImageFolder`` + ``transforms.v2`` (train: RandomResizedCrop(224) + RandomHorizontalFlip;
val: Resize(256) + CenterCrop(224)), a hand-written train/eval loop, and full fine-tuning of an
ImageNet-pretrained timm ``tf_efficientnet_lite0`` with AdamW (lr 1e-3), fp32 by default.
Differences from the tutorial: batch size 32 (tutorial: 4) and AdamW instead of SGD+StepLR.

Usage: python bench/peers/torch_hymenoptera.py [DATASET_DIR] [--epochs N] [--batch-size N]
                                               [--num-workers N] [--channels-last] [--bf16]
The last stdout line is one JSON object with the results.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _backbone import MEAN, STD, pretrained_lite0  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared/datasets/hymenoptera"
# ImageFolder skips .gif by default; keep it so both peers see the same 245 training images.
EXTENSIONS = (*IMG_EXTENSIONS, ".gif")


def is_image(path: str) -> bool:
    return has_file_allowed_extension(path, EXTENSIONS)


def loaders(root: Path, batch_size: int, num_workers: int) -> tuple[DataLoader, DataLoader]:
    """Train/val loaders with the tutorial's augmentation; ImageFolder's loader converts to RGB."""
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    train_tf = v2.Compose([v2.RandomResizedCrop(224), v2.RandomHorizontalFlip(), *tail])
    val_tf = v2.Compose([v2.Resize(256), v2.CenterCrop(224), *tail])
    train_ds = datasets.ImageFolder(str(root / "train"), train_tf, is_valid_file=is_image)
    val_ds = datasets.ImageFolder(str(root / "val"), val_tf, is_valid_file=is_image)
    return (
        DataLoader(train_ds, batch_size, shuffle=True, num_workers=num_workers),
        DataLoader(val_ds, batch_size, shuffle=False, num_workers=num_workers),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--channels-last", action="store_true", help="use channels_last memory format")
    parser.add_argument("--bf16", action="store_true", help="torch.autocast('cpu', dtype=torch.bfloat16)")
    args = parser.parse_args()

    torch.manual_seed(42)
    train_dl, val_dl = loaders(args.data, args.batch_size, args.num_workers)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = pretrained_lite0(len(train_dl.dataset.classes)).to(memory_format=memory_format)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast("cpu", dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()

    epoch_seconds: list[float] = []
    epoch_seconds_with_valid: list[float] = []
    epoch_accuracy: list[float] = []
    t_fit = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        t_epoch = time.perf_counter()
        for images, labels in train_dl:
            images = images.to(memory_format=memory_format)
            optimizer.zero_grad()
            with autocast():
                loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
        epoch_seconds.append(time.perf_counter() - t_epoch)

        model.eval()
        correct = 0
        with torch.inference_mode(), autocast():
            for images, labels in val_dl:
                preds = model(images.to(memory_format=memory_format)).argmax(1)
                correct += int((preds == labels).sum())
        epoch_accuracy.append(correct / len(val_dl.dataset))
        epoch_seconds_with_valid.append(time.perf_counter() - t_epoch)
        print(
            f"epoch {epoch}: loss {loss.item():.4f} train {epoch_seconds[-1]:.1f}s "
            f"val_acc {epoch_accuracy[-1]:.4f}",
            file=sys.stderr,
        )
    fit_seconds = time.perf_counter() - t_fit

    print(
        json.dumps(
            {
                "peer": "torch",
                "accuracy": round(epoch_accuracy[-1], 4),
                "fit_seconds": round(fit_seconds, 2),
                "epoch_seconds": [round(s, 2) for s in epoch_seconds],
                "epoch_seconds_with_valid": [round(s, 2) for s in epoch_seconds_with_valid],
                "epoch_accuracy": [round(a, 4) for a in epoch_accuracy],
                "channels_last": args.channels_last,
                "bf16": args.bf16,
            }
        )
    )


if __name__ == "__main__":
    main()
