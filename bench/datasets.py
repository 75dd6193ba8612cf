"""Benchmark: what the safe path of `imgclf datasets get` costs beside a plain download and `extractall`.

Packs a real image folder (default: ../shared/datasets/hymenoptera, 397 JPEGs) as a .tgz and a .zip, serves
them from a local HTTP server on 127.0.0.1, and times, per format:
  - `get_dataset`: download through `.part` + sha256 + member-by-member checked extraction + rename;
  - a plain peer: `urllib` to a file, then `tarfile.extractall(filter="data")` / `zipfile.extractall`;
  - a resumed download: the first request cut at half the file, the second one a Range request.
Loopback hides the network, so the figures are the local overhead: hashing and the per-member checks.

Usage: python bench/datasets.py [DATA] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import shutil
import statistics
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from imgclf.data import datasets as D  # noqa: E402
from imgclf.errors import UserError  # noqa: E402

DEFAULT_DATA = HERE.parents[1] / "shared/datasets/hymenoptera"
FILES: dict[str, bytes] = {}
CUT: dict[str, int] = {}  # name -> bytes to send before hanging up (once)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        name = self.path.rsplit("/", 1)[-1]
        body = FILES[name]
        rng = self.headers["Range"]
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        stop = start + CUT.pop(name) if name in CUT else len(body)
        self.wfile.write(body[start:stop])

    def log_message(self, *args):
        pass


def pack(root: Path, kind: str) -> bytes:
    buf = io.BytesIO()
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if kind == "tgz":
        with tarfile.open(fileobj=buf, mode="w:gz") as tf:
            for p in files:
                tf.add(p, arcname=f"{root.name}/{p.relative_to(root)}")
    else:
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for p in files:
                zf.write(p, f"{root.name}/{p.relative_to(root)}")
    return buf.getvalue()


def plain(url: str, kind: str, tmp: Path) -> None:
    archive = tmp / f"plain.{kind}"
    with urllib.request.urlopen(url) as r, open(archive, "wb") as f:
        shutil.copyfileobj(r, f, 2**20)
    if kind == "tgz":
        with tarfile.open(archive) as tf:
            tf.extractall(tmp / "plain", filter="data")
    else:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp / "plain")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", nargs="?", default=str(DEFAULT_DATA))
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    root = Path(a.data)
    n_files = sum(1 for p in root.rglob("*") if p.is_file())
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    print(f"data: {root} ({n_files} files); python {sys.version.split()[0]}; {os.cpu_count()} CPUs; "
          f"best of {a.repeat}")
    for kind in ("tgz", "zip"):
        body = pack(root, kind)
        FILES[f"bench.{kind}"] = body
        url = f"{base}/bench.{kind}"
        D.register_dataset(D.Dataset(f"bench-{kind}", "bench", (D.Remote(url, "sha256:" + hashlib.sha256(body)
                                     .hexdigest()),), len(body), n_files, 2, "-", folder=root.name), overwrite=True)
        times: dict[str, list[float]] = {"get_dataset": [], "plain": [], "resumed": []}
        with contextlib.redirect_stdout(io.StringIO()):  # get's own lines would interleave with the table
            for _ in range(a.repeat):
                with tempfile.TemporaryDirectory() as tmp:
                    os.environ["IMGCLF_DATA"] = str(Path(tmp) / "cache")
                    t = time.perf_counter()
                    D.get_dataset(f"bench-{kind}", progress=False)
                    times["get_dataset"].append(time.perf_counter() - t)
                    t = time.perf_counter()
                    plain(url, kind, Path(tmp))
                    times["plain"].append(time.perf_counter() - t)
                    shutil.rmtree(Path(tmp) / "cache")
                    CUT[f"bench.{kind}"] = len(body) // 2
                    t = time.perf_counter()
                    try:
                        D.get_dataset(f"bench-{kind}", progress=False)
                    except UserError:
                        D.get_dataset(f"bench-{kind}", progress=False)
                    times["resumed"].append(time.perf_counter() - t)
        best = {k: min(v) for k, v in times.items()}
        print(f"{kind}: {len(body) / 2**20:.1f} MiB  get_dataset {best['get_dataset']:.2f}s  "
              f"plain download+extractall {best['plain']:.2f}s  (x{best['get_dataset'] / best['plain']:.2f})  "
              f"cut at half + resumed {best['resumed']:.2f}s  "
              f"[median get {statistics.median(times['get_dataset']):.2f}s]")
    httpd.shutdown()


if __name__ == "__main__":
    main()
