"""Write a data set as tar shards for streaming: `imgclf shard DATA --out SHARDS/`."""

from __future__ import annotations

import argparse

from ..config import DataConfig
from .common import Help, fraction, workers

D = DataConfig()


STACK = ("imgclf.data.shards",)


def add(sub) -> None:
    p = sub.add_parser(
        "shard", help="write DATA as tar shards, to train on data larger than memory",
        description="Write DATA as tar shards in the WebDataset layout (train-000000.tar..., valid-000000.tar..., "
                    "manifest.json with classes, counts and checksums), split exactly as `imgclf train DATA` splits "
                    "it. `imgclf train SHARDS` then streams them, shuffled across shards, without holding the data "
                    "set in memory. Undecodable files are named, skipped and listed in the manifest.",
        epilog="example:\n  imgclf shard photos/ --out photos-shards/\n  imgclf train photos-shards/",
        formatter_class=Help,
    )
    p.add_argument("data", help="image folder (or a CSV of file,label[,is_valid])")
    p.add_argument("--out", required=True, help="folder to write the shards into (refused if it exists)")
    p.add_argument("--shard-size", type=int, default=1000, help="images per shard")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--presize", type=int, default=0,
                   help="store images larger than this (short side) presized to it, JPEG q=95 (default: the "
                        "default backbone's presize, 293 px)")
    g.add_argument("--original", action="store_true", help="store every file's original bytes")
    p.add_argument("--pixels", action="store_true", help="store every image presized to --presize as uint8 pixels "
                   "(.npy): nothing to decode while training, so streaming keeps up with small images (a 32 px "
                   "image: 3 KB); photos are better kept as JPEG")
    g = p.add_argument_group("data (split as for train)")
    g.add_argument("--csv", help="CSV of file,label[,is_valid] with files relative to DATA")
    g.add_argument("--label-col", help="the CSV column holding the labels")
    g.add_argument("--label-re", help=r"regex on the file name; group 1 is the label, e.g. '^(.+)_\d+\.jpg$'")
    g.add_argument("--valid", help="name of the validation folder (default: valid or val, if present)")
    g.add_argument("--valid-pct", type=fraction, default=D.valid_pct,
                   help="held-out fraction when no split exists (between 0 and 1)")
    g.add_argument("--split", default=D.split, choices=["stratified", "random"], help="that held-out split")
    g.add_argument("--seed", type=int, default=D.seed, help="seed for the split")
    g.add_argument("--workers", type=workers, default=D.workers, help="decoding threads (0: one per core)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(a: argparse.Namespace) -> None:
    from ..data.shards import write_shards

    m = write_shards(a.data, a.out, shard_size=a.shard_size, presize=None if a.original else a.presize, csv=a.csv,
                     valid=a.valid, valid_pct=a.valid_pct, seed=a.seed, label_re=a.label_re, label_col=a.label_col,
                     split=a.split, workers=a.workers, force=a.force, progress=not a.quiet,
                     pixels=a.pixels)
    s = m["splits"]
    print(f"{len(m['shards'])} shards: {s['train']['count']} train, {s['valid']['count']} valid images of "
          f"{len(m['classes'])} classes" + (f", {len(m['skipped'])} skipped" if m["skipped"] else "")
          + f" (presize {m['presize'] or 'original'}) -> {a.out}\n"
          f"train on them: imgclf train {a.out}")
