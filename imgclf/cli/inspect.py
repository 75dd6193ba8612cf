"""Audit data before training: `imgclf inspect DATA`."""

from __future__ import annotations

import argparse
from dataclasses import fields

from ..config import DataConfig, RunConfig
from ..errors import UserError
from .common import Help, add_data_flags

STACK = ("imgclf.train.job", "imgclf.data.show")


def add(sub) -> None:
    p = sub.add_parser(
        "inspect", help="audit the data before training",
        description="Audit DATA as `imgclf train` would load it: images per class and split, imbalance, image "
                    "sizes and modes, skipped files, a trace of a few items through the pipeline, the training "
                    "batch, exact and near duplicates and train/valid leaks. Prints the summary and writes "
                    "inspect.json, show_batch.png and counts.png.",
        formatter_class=Help,
    )
    p.add_argument("data", help="image folder (or a CSV of file,label[,is_valid])")
    p.add_argument("--out", help="output folder (default runs/<data-name>-inspect; never overwritten: -2, -3...)")
    add_data_flags(p.add_argument_group("data (as for train)"))
    p.add_argument("--show", type=int, default=16, help="images in show_batch.png")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(a: argparse.Namespace) -> None:
    from ..data.datasets import resolve_config
    from ..data.shards import is_shard_dir
    from ..data.show import plot_counts
    from ..models.registry import default_norm
    from ..rundir import check_run_dir, new_run_dir, write_json
    from ..train.job import default_out, load_data, warn_unused_valid_pct

    if a.show < 1:
        raise UserError(f"--show {a.show}: give at least 1 image")
    notice = check_run_dir(a.out, "--out") if a.out else None  # before any download or decoding, as train does
    cfg = RunConfig(data=DataConfig(path=a.data, **{f.name: getattr(a, f.name) for f in fields(DataConfig)
                                                    if hasattr(a, f.name)}), out=a.out)
    cfg = resolve_config(cfg, progress=not a.quiet)  # a known data set's name -> its cached folder, as train does
    if is_shard_dir(cfg.data.path):
        raise UserError(f"{cfg.data.path}: tar shards (`imgclf shard`); inspect the image folder they were written "
                        "from (their manifest.json holds the counts)")
    if not a.out:
        check_run_dir(f"{cfg.out or default_out(cfg)}-inspect")
    if notice:
        print(notice, flush=True)
    data = load_data(cfg, progress=not a.quiet, audit=True)  # the one way `train` loads data (empty classes noted)
    warn_unused_valid_pct(cfg, data)
    mean, std = default_norm(cfg.model.arch)
    summary = data.summary(mean, std, progress=not a.quiet)
    out = new_run_dir(a.out or f"{cfg.out or default_out(cfg)}-inspect")
    write_json(out / "inspect.json", summary.to_dict())
    data.show_batch(a.show, mean, std, seed=cfg.data.seed).savefig(out / "show_batch.png", dpi=110)
    plot_counts(summary.counts).savefig(out / "counts.png", dpi=110)
    print(summary)
    print(f"-> {out}")
