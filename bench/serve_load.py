"""Benchmark: `imgclf serve` under load on loopback: one client at a time, then N concurrent clients.

Starts `python -m imgclf serve RUN --port 0` itself (127.0.0.1 only), sends the same fixed number of
one-image requests (hymenoptera val photos, in turn) first from one client, one request at a time,
then from N client threads at once, and prints for each: requests/s, p50 / p99 latency, errors (must
be 0), the mean batch the server ran (from /health), and the server's memory (VmRSS from
/proc/PID/status) before and after, with its peak (VmHWM). The target (serving issue): with 8
concurrent clients, >= 2x the requests/s of one at a time, 0 errors. Bounded: each phase stops after
--requests requests or --seconds seconds, whichever comes first.

Without RUN it first trains one: `imgclf train DATA --recipe probe` (the default backbone at its default
256 px, a head on pooled features: the model `imgclf train` keeps on this data, in ~20-40 s).

Usage: python bench/serve_load.py [RUN] [--data DIR] [--requests 200] [--clients 8] [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared/datasets/hymenoptera"


def start_server(run: Path, log: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "imgclf", "serve", str(run), "--host", "127.0.0.1", "--port", "0", *extra]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    end = time.monotonic() + 180
    while time.monotonic() < end:
        m = re.search(r"http://127\.0\.0\.1:\d+", log.read_text())
        if m:
            url = m.group(0)
            with httpx.Client(trust_env=False) as c:
                for _ in range(300):
                    try:
                        if c.get(url + "/health").status_code == 200:
                            return proc, url
                    except httpx.TransportError:
                        time.sleep(0.1)
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    sys.exit(f"the server did not start:\n{log.read_text()[-3000:]}")


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak) of a process, in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}


def load(url: str, bodies: list[tuple[str, bytes]], n_requests: int, clients: int, seconds: float) -> dict:
    """`n_requests` one-image POSTs spread over `clients` threads, each with its own connection."""
    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(n_requests))
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(base_url=url, timeout=60, trust_env=False) as c:
            while time.monotonic() < deadline:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                name, data = bodies[i % len(bodies)]
                t = time.perf_counter()
                try:
                    r = c.post("/predict", files=[("files", (name, data, "image/jpeg"))])
                    ok = r.status_code == 200 and r.json()["predictions"][0]["label"]
                    if not ok:
                        errors.append(f"{r.status_code} {r.text[:200]}")
                except httpx.HTTPError as e:
                    errors.append(repr(e))
                with lock:
                    latencies.append(time.perf_counter() - t)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = sorted(latencies)
    return {"clients": clients, "requests": len(lat), "seconds": wall, "req_per_s": len(lat) / wall,
            "p50_ms": 1000 * statistics.median(lat), "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
            "errors": len(errors), "first_errors": errors[:3]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", help="a run directory (default: train a probe run on DATA first)")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="hymenoptera: its val/ photos are the requests")
    ap.add_argument("--requests", type=int, default=200, help="requests per phase")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60, help="at most this long per phase")
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()

    data = Path(a.data)
    photos = sorted((data / "val").rglob("*.jpg"))
    if not photos:
        sys.exit(f"{data}/val: no .jpg photos")
    bodies = [(p.name, p.read_bytes()) for p in photos]
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(a.run) if a.run else Path(tmp) / "run"
        if not a.run:
            t = time.perf_counter()
            print(f"training a probe run on {data} ...", flush=True)
            subprocess.run([sys.executable, "-m", "imgclf", "train", str(data), "--recipe", "probe", "--out", str(run),
                            "--quiet"], check=True, capture_output=True)
            print(f"  done in {time.perf_counter() - t:.0f} s", flush=True)
        proc, url = start_server(run, Path(tmp) / "server.log", ["--device", a.device])
        try:
            with httpx.Client(base_url=url, timeout=60, trust_env=False) as c:
                info = c.get("/model").json()
                for name, body in bodies[:8]:  # warm-up: first-call costs out of the figures
                    c.post("/predict", files=[("files", (name, body, "image/jpeg"))]).raise_for_status()
                mem_before = memory_mb(proc.pid)
                results = []
                for clients in (1, a.clients):
                    before = c.get("/health").json()
                    res = load(url, bodies, a.requests, clients, a.seconds)
                    after = c.get("/health").json()
                    batches = max(1, after["batches"] - before["batches"])
                    res["mean_batch"] = (after["images"] - before["images"]) / batches
                    results.append(res)
                mem_after = memory_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    print(f"\nimgclf serve on {url}: {info['arch']} at {info['size']} px on {info['device']}, "
          f"{len(photos)} hymenoptera val photos (one per request, in turn)")
    print(f"{'clients':>7} {'requests':>8} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'mean batch':>10}")
    for r in results:
        print(f"{r['clients']:>7} {r['requests']:>8} {r['req_per_s']:>7.1f} {r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} "
              f"{r['errors']:>6} {r['mean_batch']:>10.2f}")
        for e in r["first_errors"]:
            print(f"        error: {e}")
    ratio = results[1]["req_per_s"] / results[0]["req_per_s"]
    print(f"{a.clients} clients vs 1: {ratio:.2f}x the requests/s (target >= 2x), "
          f"errors {sum(r['errors'] for r in results)} (target 0)")
    print(f"server memory: VmRSS {mem_before['VmRSS']:.0f} MB before, {mem_after['VmRSS']:.0f} MB after "
          f"(peak {mem_after['VmHWM']:.0f} MB)")
    print(json.dumps({"ratio": ratio, "results": results, "rss_mb_before": mem_before["VmRSS"],
                      "rss_mb_after": mem_after["VmRSS"], "hwm_mb": mem_after["VmHWM"]}))


if __name__ == "__main__":
    main()
