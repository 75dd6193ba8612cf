"""Public data sets by name: `imgclf datasets`, `imgclf datasets get NAME`, `imgclf datasets path NAME`."""

from __future__ import annotations

import argparse

from .common import Help

STACK = ("imgclf.data.datasets",)


def add(sub) -> None:
    p = sub.add_parser(
        "datasets", help="list, download and locate public data sets by name",
        description="Known public data sets: list them (the default), download one into the cache ($IMGCLF_DATA, "
                    "default ~/.cache/imgclf/datasets) with a resumable, checksum-verified download and a safe "
                    "extraction, or print where it is. `imgclf train NAME` downloads it when needed.",
        formatter_class=Help,
    )
    acts = p.add_subparsers(dest="action", metavar="ACTION")
    acts.add_parser("list", help="the catalog as a table (the default)")
    g = acts.add_parser("get", help="download, verify and extract a data set; prints where", formatter_class=Help)
    g.add_argument("name", help="a name from `imgclf datasets`, e.g. pets, imagenette-160, cifar10")
    g.add_argument("--force", action="store_true", help="download and extract again over the cached copy")
    g.add_argument("--no-verify", action="store_true",
                   help="accept a file whose checksum differs from the catalog's (the publisher re-uploaded it)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    w = acts.add_parser("path", help="print the folder `imgclf train NAME` reads (cached or not)")
    w.add_argument("name")


def run(a: argparse.Namespace) -> None:
    from ..data import datasets as D

    if a.action == "get":
        ds = D.lookup(a.name)
        if D.is_cached(ds) and not a.force:
            print(f"{ds.name}: already in the cache (--force to download it again)")
        print(D.get_dataset(ds.name, force=a.force, verify=not a.no_verify, progress=not a.quiet))
    elif a.action == "path":
        print(D.train_path(a.name))
    else:
        print(table())


def table() -> str:
    """The catalog: one row per set, then each set's URLs and checksums."""
    from ..data import datasets as D

    head = ("name", "images", "classes", "download", "licence", "cached")
    rows = [(d.name, f"{d.images:,}", str(d.classes), f"{d.size / 2**20:,.0f} MiB", d.licence,
             "yes" if D.is_cached(d) else "-") for d in D.CATALOG.values()]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    right = {1, 2, 3}

    def line(r):
        cells = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        return "  ".join(cells).rstrip()

    out = [line(head), *map(line, rows), "", f"cache: {D.data_home()} (set IMGCLF_DATA to move it)", ""]
    for d in D.CATALOG.values():
        out.append(f"{d.name}: {d.title}" + (f"; {d.note}" if d.note else ""))
        for f in d.files:
            out.append(f"  {f.url}\n    {f.checksum or 'no published checksum: not verified'}")
    return "\n".join(out).rstrip()
