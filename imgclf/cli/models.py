"""List architecture names: `imgclf models [PATTERN]`."""

from __future__ import annotations

import argparse

STACK = ("imgclf.models",)


def add(sub) -> None:
    m = sub.add_parser("models", help="list architecture names", description="List names --arch accepts.")
    m.add_argument("pattern", nargs="?", default="*", help="wildcard filter, e.g. '*resnet*'")


def run(a: argparse.Namespace) -> None:
    from ..models import list_models

    print("\n".join(list_models(a.pattern)))
