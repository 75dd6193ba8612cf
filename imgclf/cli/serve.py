"""Serve a run's model over HTTP: `imgclf serve RUN [--host 127.0.0.1] [--port 8000]`."""

from __future__ import annotations

import argparse

from .common import Help, add_backend, add_device, check_run_arg, port

STACK = ("imgclf.infer",)  # the server's own modules come in run(), which names a missing extra


def add(sub) -> None:
    from ..serve.settings import ServeSettings  # the defaults; FastAPI is imported only by run()

    d = ServeSettings()
    p = sub.add_parser(
        "serve", help="serve a trained run: a JSON API and a page to drop images on", formatter_class=Help,
        description="Serve the model in RUN: POST /predict (multipart image files -> label, confidence, top-k per "
                    "image, as JSON), GET /health, GET /model, and a page at / to drop images on. Requests that "
                    "arrive together are predicted in one batch. Prints its address, then one line per request; "
                    "Ctrl+C stops it. Needs the serve extra: pip install 'imgclf[serve]'.",
    )
    p.add_argument("run", help="run directory written by `imgclf train`")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (0.0.0.0: every interface, reachable from other machines)")
    p.add_argument("--port", type=port, default=8000, help="port (0: any free one; the address printed says which)")
    p.add_argument("--max-mb", type=float, default=d.max_mb, help="largest file accepted, in MB (larger: 413)")
    p.add_argument("--max-files", type=int, default=d.max_files, help="most files in one request (more: 413)")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="most images in one forward pass")
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms,
                   help="how long a batch waits for the images of requests still being read and decoded (a lone "
                        "request never waits)")
    p.add_argument("--topk", type=int, default=d.topk, help="classes per image in the answer (?topk=K overrides)")
    add_device(p)
    add_backend(p)


check = check_run_arg  # before torch is imported: a RUN that holds no model, said at once


def run(a: argparse.Namespace) -> None:
    from ..errors import UserError

    try:
        from ..serve.app import ServeSettings, serve
    except ImportError as e:
        raise UserError(f"serving needs the serve extra ({e.name} is missing): pip install 'imgclf[serve]'") from None
    for flag in ("max_mb", "max_files", "max_batch", "topk"):
        if getattr(a, flag) <= 0:
            raise UserError(f"--{flag.replace('_', '-')} must be positive, not {getattr(a, flag)}")
    settings = ServeSettings(max_mb=a.max_mb, max_files=a.max_files, max_batch=a.max_batch,
                             max_wait_ms=a.max_wait_ms, topk=a.topk)
    serve(a.run, host=a.host, port=a.port, device=a.device, settings=settings, backend=a.backend)
