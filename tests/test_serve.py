"""`imgclf serve`: the real server as a subprocess on 127.0.0.1, its JSON API, its refusals and its page in Chromium."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from imgclf.cli import main
from imgclf.data.decode import open_image, presize
from imgclf.infer import load_model
from imgclf.rundir import read_json
from imgclf.serve.app import create_app
from imgclf.serve.batcher import Batcher
from imgclf.serve.uploads import decode_upload

MAX_MB, MAX_FILES = 1, 4  # small limits, so refusing a large request costs the test nothing


@dataclass
class Server:
    url: str
    log: Path
    client: httpx.Client


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    """`python -m imgclf serve RUN --port 0` on 127.0.0.1, its output in a log file; stopped at the end."""
    log = tmp_path_factory.mktemp("serve") / "server.log"
    cmd = [sys.executable, "-m", "imgclf", "serve", str(trained_run), "--host", "127.0.0.1", "--port", "0",
           "--device", "cpu", "--max-mb", str(MAX_MB), "--max-files", str(MAX_FILES)]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = _wait_for_address(log, proc)
        with httpx.Client(base_url=url, timeout=60, trust_env=False) as client:
            while client.get("/health").status_code != 200:  # the address prints just before it listens
                time.sleep(0.1)
            yield Server(url, log, client)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_for_address(log: Path, proc: subprocess.Popen, timeout: float = 180) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        m = re.search(r"http://127\.0\.0\.1:\d+", log.read_text())
        if m:
            return m.group(0)
        if proc.poll() is not None:
            pytest.fail(f"imgclf serve exited with {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.2)
    pytest.fail(f"imgclf serve printed no address in {timeout} s:\n{log.read_text()}")


def val_images(run: Path) -> list[Path]:
    return sorted((run.parent / "data" / "val").rglob("*.jpg"))


def files(*paths: Path) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG claiming width x height 8-bit grey pixels in a few dozen bytes: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1)))
            + chunk(b"IEND", b""))


def test_health_model_and_one_log_line_per_request(server, trained_run):
    assert server.url.startswith("http://127.0.0.1:")
    health = server.client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    info = server.client.get("/model").json()
    meta, metrics = read_json(trained_run / "model.json"), read_json(trained_run / "metrics.json")
    assert info["classes"] == meta["classes"] == ["cats", "dogs", "frogs"]
    assert (info["task"], info["size"], info["presize"], info["arch"]) == (
        "classify", meta["size"], meta["presize"], meta["arch"])
    assert info["metrics"]["accuracy"] == metrics["accuracy"] and info["metrics"]["n_valid"] == 18
    assert info["limits"]["max_mb"] == MAX_MB and info["limits"]["max_files"] == MAX_FILES

    text = server.log.read_text()
    assert "imgclf serve: " in text and f"{server.url}/ (Ctrl+C to stop)" in text
    assert re.search(r"^\d\d:\d\d:\d\d 127\.0\.0\.1 GET /model 200 [\d.]+ ms$", text, re.M), text


def test_predict_answers_what_imgclf_predict_does(server, trained_run, hymenoptera):
    predictor = load_model(trained_run, device="cpu")
    paths = [p for p in val_images(trained_run) if p.stem.endswith("_12")]  # one per class
    paths.append(next((hymenoptera / "val" / "bees").glob("*.jpg")))  # a real photo: a large JPEG, reduced decode
    r = server.client.post("/predict", files=files(*paths))
    assert r.status_code == 200, r.text
    answers = r.json()["predictions"]
    assert [a["file"] for a in answers] == [p.name for p in paths]
    assert [a["label"] for a in answers[:3]] == ["cats", "dogs", "frogs"]
    for a, path in zip(answers, paths, strict=True):
        expected = predictor.predict(path)
        assert a["label"] == expected.label and a["confidence"] == pytest.approx(expected.confidence, abs=1e-5)
        assert [t["label"] for t in a["topk"]] == [c for c, _ in expected.topk(3)]  # 3 classes: all of them
        assert [t["prob"] for t in a["topk"]] == pytest.approx([q for _, q in expected.topk(3)], abs=1e-5)
    one = server.client.post("/predict?topk=1", files=files(paths[0])).json()["predictions"][0]
    assert one["topk"] == [{"label": "cats", "prob": pytest.approx(answers[0]["confidence"], abs=1e-5)}]


def test_uploads_decode_like_files_exif_orientation_included(server, trained_run, tmp_path):
    """A wide image, red left and blue right, stored sideways with EXIF orientation 6 (rotate 90 degrees)."""
    a = np.zeros((32, 64, 3), np.uint8)
    a[:, :32, 0], a[:, 32:, 2] = 220, 220
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "sideways.jpg"
    Image.fromarray(a).save(path, quality=95, exif=exif.tobytes())
    size = read_json(trained_run / "model.json")["presize"]

    served = decode_upload(path.read_bytes(), size, path.name)
    assert torch.equal(served, presize(open_image(path, size), size))  # the same pixels as `imgclf predict`
    with Image.open(path) as raw:  # read without turning it upright: red left, blue right
        as_stored = presize(raw.convert("RGB"), size)
    assert (served.float() - as_stored.float()).abs().mean() > 50  # upright: red on top, blue below
    top, bottom = served[:, : size // 3].float().mean((1, 2)), served[:, -size // 3:].float().mean((1, 2))
    assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0]

    answer = server.client.post("/predict", files=files(path)).json()["predictions"][0]
    expected = load_model(trained_run, device="cpu").predict(path)
    assert answer["confidence"] == pytest.approx(expected.confidence, abs=1e-5) and answer["label"] == expected.label


def _bad_requests(hymenoptera: Path, good: Path) -> dict[str, tuple[dict, int, str]]:
    """name -> (httpx request kwargs, status, what the error says)."""
    photo = next((hymenoptera / "val" / "ants").glob("*.jpg")).read_bytes()
    one_good = ("files", (good.name, good.read_bytes(), "image/jpeg"))
    return {
        "not an image": ({"files": [("files", ("notes.jpg", b"hello, not an image\n", "image/jpeg"))]}, 400,
                         "notes.jpg: not an image PIL can read"),
        "truncated": ({"files": [("files", ("cut.jpg", photo[: len(photo) // 3], "image/jpeg"))]}, 400,
                      "cut.jpg: cannot decode"),
        "zero bytes": ({"files": [("files", ("empty.jpg", b"", "image/jpeg"))]}, 400, "empty.jpg: empty file"),
        "bomb": ({"files": [("files", ("bomb.png", png_header_only(30_000, 30_000), "image/png"))]}, 413,
                 "bomb.png: too large (900 Mpx"),
        "over pixel limit": ({"files": [("files", ("big.png", png_header_only(10_000, 10_000), "image/png"))]}, 413,
                             "big.png: 10000x10000 pixels is over the limit"),
        "over size limit": ({"files": [("files", ("huge.jpg", b"\xff" * int(1.5 * 2**20), "image/jpeg"))]}, 413,
                            "huge.jpg: 1.5 MB is over the limit of 1.0 MB (--max-mb)"),
        "too many files": ({"files": [one_good] * (MAX_FILES + 1)}, 413, f"too many files: at most {MAX_FILES}"),
        "no files": ({"data": {"note": "no file here"}, "files": [("other", ("", b"", "text/plain"))]}, 400,
                     "no image files in the request"),
        "not multipart": ({"json": {"image": "x"}}, 400, "send the images as multipart/form-data"),
        "empty request": ({}, 400, "send the images as multipart/form-data"),
        "bad topk": ({"files": [one_good], "params": {"topk": "zero"}}, 400, "topk=zero: must be a whole number"),
        "superscript topk": ({"files": [one_good], "params": {"topk": "\u00b2"}}, 400,
                             "topk=\u00b2: must be a whole number"),  # a digit to str.isdigit, not to int()
    }


@pytest.mark.parametrize("case", ["not an image", "truncated", "zero bytes", "bomb", "over pixel limit",
                                  "over size limit", "too many files", "no files",
                                  "not multipart", "empty request", "bad topk", "superscript topk"])
def test_bad_input_is_a_4xx_in_one_line_and_the_server_goes_on(server, trained_run, hymenoptera, case):
    good = val_images(trained_run)[0]
    kwargs, status, message = _bad_requests(hymenoptera, good)[case]
    r = server.client.post("/predict", **kwargs)
    assert r.status_code == status, r.text
    assert list(r.json()) == ["error"] and r.json()["error"].startswith(message), r.text
    assert "\n" not in r.text
    after = server.client.post("/predict", files=files(good))
    assert after.status_code == 200 and after.json()["predictions"][0]["label"] == "cats"


def _good_jpeg(folder: Path) -> Path:
    """A JPEG made with PIL here, not one of the training files: red, 48x40."""
    path = folder / "good.jpg"
    Image.new("RGB", (48, 40), (210, 30, 30)).save(path, quality=95)
    return path


def _log_after(server: Server, start: int, pattern: str) -> str:
    """The server's output since byte `start`, once a line matching `pattern` is in it (it prints as it answers)."""
    end = time.monotonic() + 10
    while not re.search(pattern, new := server.log.read_text()[start:], re.M) and time.monotonic() < end:
        time.sleep(0.05)
    return new


def test_one_bad_file_is_that_files_answer_and_the_good_ones_are_predicted(server, trained_run, tmp_path):
    """`imgclf predict` skips a bad file and predicts the rest; so does a request: 200, the uploads' order kept."""
    good, other = _good_jpeg(tmp_path), val_images(trained_run)[0]
    alone = [server.client.post("/predict", files=files(p)).json()["predictions"][0] for p in (good, other)]
    start = len(server.log.read_text())
    r = server.client.post("/predict", files=[*files(good), ("files", ("zero.jpg", b"", "image/jpeg")),
                                              ("files", ("notes.jpg", b"hello, not an image\n", "image/jpeg")),
                                              *files(other)])
    assert r.status_code == 200, r.text
    answers = r.json()["predictions"]
    assert [a["file"] for a in answers] == ["good.jpg", "zero.jpg", "notes.jpg", other.name]
    assert answers[1] == {"file": "zero.jpg", "error": "zero.jpg: empty file (0 bytes)", "status": 400}
    assert set(answers[2]) == {"file", "error", "status"} and answers[2]["status"] == 400
    assert answers[2]["error"].startswith("notes.jpg: not an image PIL can read")
    for a, b in zip([answers[0], answers[3]], alone, strict=True):  # the good files' answers, as if sent alone
        assert "error" not in a and (a["label"], [t["label"] for t in a["topk"]]) == (
            b["label"], [t["label"] for t in b["topk"]])
        assert a["confidence"] == pytest.approx(b["confidence"], abs=1e-4)
    assert answers[3]["label"] == "cats"
    log = _log_after(server, start, r"POST /predict 200 ")
    assert re.search(r"^\d\d:\d\d:\d\d 127\.0\.0\.1 POST /predict 200 2 image\(s\) 2 refused [\d.]+ ms: "
                     r"zero\.jpg: empty file \(0 bytes\); notes\.jpg: not an image", log, re.M), log

    huge = ("files", ("huge.jpg", b"\xff" * int(1.5 * 2**20), "image/jpeg"))  # over --max-mb: refused unread
    r = server.client.post("/predict", files=[huge, *files(good)])
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0] == {"file": "huge.jpg", "status": 413,
                                          "error": "huge.jpg: 1.5 MB is over the limit of 1.0 MB (--max-mb)"}
    assert r.json()["predictions"][1]["label"] == alone[0]["label"]
    after = server.client.post("/predict", files=files(other))
    assert after.status_code == 200 and after.json()["predictions"][0]["label"] == "cats"


@pytest.mark.parametrize("case", ["both undecodable", "empty and too large", "too large and a bomb"])
def test_every_file_bad_is_a_4xx_naming_each(server, trained_run, case):
    zero = ("files", ("zero.jpg", b"", "image/jpeg"))
    text = ("files", ("notes.jpg", b"hello, not an image\n", "image/jpeg"))
    huge = ("files", ("huge.jpg", b"\xff" * int(1.5 * 2**20), "image/jpeg"))
    bomb = ("files", ("bomb.png", png_header_only(30_000, 30_000), "image/png"))
    sent, status = {"both undecodable": ([zero, text], 400), "empty and too large": ([zero, huge], 400),
                    "too large and a bomb": ([huge, bomb], 413)}[case]  # one status for all: it; else 400
    r = server.client.post("/predict", files=sent)
    assert r.status_code == status, r.text
    body = r.json()
    assert list(body) == ["error", "predictions"] and "\n" not in r.text
    assert [a["file"] for a in body["predictions"]] == [name for _, (name, _, _) in sent]
    assert all(set(a) == {"file", "error", "status"} for a in body["predictions"])
    assert body["error"] == "all 2 files refused: " + "; ".join(a["error"] for a in body["predictions"])
    assert [a["error"].split(":")[0] for a in body["predictions"]] == [name for _, (name, _, _) in sent]
    after = server.client.post("/predict", files=files(val_images(trained_run)[0]))
    assert after.status_code == 200 and after.json()["predictions"][0]["label"] == "cats"


def test_malformed_multipart_is_a_400_and_the_log_keeps_its_format(server, trained_run):
    """python_multipart logged its parse error as a warning, which Python's last resort printed bare to stderr
    (`Expected boundary character 45, got 103 at index 2`); now its words are in the 400 and the request's line."""
    start = len(server.log.read_text())
    r = server.client.post("/predict", content=b"garbage, not a multipart body\r\n",
                           headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 400, r.text
    assert r.json() == {"error": "cannot read the multipart/form-data body: "
                                 "Expected boundary character 45, got 103 at index 2"}
    r = server.client.post("/predict", content=b"--xyz\r\n", headers={"content-type": "multipart/form-data"})
    assert r.status_code == 400 and r.json() == {
        "error": "cannot read the multipart/form-data body: Missing boundary in multipart."}
    after = server.client.post("/predict", files=files(val_images(trained_run)[0]))
    assert after.status_code == 200 and after.json()["predictions"][0]["label"] == "cats"
    log = _log_after(server, start, r"POST /predict 200 1 image")
    lines = log.splitlines()
    assert len(lines) == 3 and all(re.match(r"\d\d:\d\d:\d\d 127\.0\.0\.1 POST /predict ", line) for line in lines), log
    assert lines[0].endswith(" ms: cannot read the multipart/form-data body: Expected boundary character 45, got 103 "
                             "at index 2"), log
    assert re.search(r" POST /predict 400 [\d.]+ ms: cannot read the multipart/form-data body: Missing", lines[1])


def test_page_shows_each_refused_file_its_own_error(server, trained_run, tmp_path, browser_page):
    good = _good_jpeg(tmp_path)
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("hello, not an image\n")
    page = browser_page.page
    page.goto(server.url + "/", wait_until="load")
    page.wait_for_function("document.getElementById('model').textContent.includes('classes:')")
    page.set_input_files("#files", [str(good), str(tmp_path / "zero.jpg"), str(tmp_path / "notes.jpg")])
    page.wait_for_function("document.getElementById('status').textContent.includes('predicted')")
    assert page.inner_text("#status") == "1 image(s) predicted, 2 refused"
    assert page.locator(".card .name").all_inner_texts() == ["good.jpg", "zero.jpg", "notes.jpg"]
    labels = page.locator(".card .label").all_inner_texts()
    assert labels[0].split(" (")[0] in ("cats", "dogs", "frogs") and labels[0].endswith("%)")
    assert labels[1] == "zero.jpg: empty file (0 bytes)"
    assert labels[2].startswith("notes.jpg: not an image PIL can read")
    assert page.locator(".card.failed").count() == 2 and page.locator(".card.failed .label.error").count() == 2
    assert page.locator(".card .bar").count() == 3  # the good image's bars only
    page.wait_for_function("document.querySelectorAll('.card .noimg').length === 2")  # no broken-image icons
    assert browser_page.problems() == [] and browser_page.failed == []


def test_unknown_path_is_a_json_404(server):
    r = server.client.get("/nothing-here")
    assert r.status_code == 404 and r.json() == {"error": "Not Found"}


def test_concurrent_requests_each_get_their_own_answer(server, trained_run):
    paths = val_images(trained_run)[:12]
    alone = [server.client.post("/predict", files=files(p)).json()["predictions"][0] for p in paths]
    before = server.client.get("/health").json()["images"]
    with ThreadPoolExecutor(8) as pool, httpx.Client(base_url=server.url, timeout=60, trust_env=False) as c:
        together = list(pool.map(lambda p: c.post("/predict", files=files(p)), paths))
    assert all(r.status_code == 200 for r in together)
    for r, a in zip(together, alone, strict=True):
        b = r.json()["predictions"][0]
        assert (b["file"], b["label"]) == (a["file"], a["label"]) and b["confidence"] == pytest.approx(
            a["confidence"], abs=1e-4)
    assert server.client.get("/health").json()["images"] == before + len(paths)


def test_batcher_puts_queued_images_in_one_forward_pass(trained_run):
    predictor = load_model(trained_run, device="cpu")
    x = torch.stack([presize(open_image(p, predictor.presize), predictor.presize) for p in val_images(trained_run)])
    expected = predictor.predict_batch(x[:12])

    async def three_requests():
        batcher = Batcher(predictor, max_batch=8, max_wait_ms=0)
        batcher.start()
        try:  # all three queue their images before the worker wakes: 12 images -> batches of 8 and 4
            return await asyncio.gather(batcher.predict(x[:3]), batcher.predict(x[3:5]), batcher.predict(x[5:12])), \
                batcher.stats
        finally:
            await batcher.stop()

    answers, stats = asyncio.run(three_requests())
    assert [len(a) for a in answers] == [3, 2, 7]
    assert stats == {"batches": 2, "images": 12, "largest_batch": 8}
    for got, want in zip([p for a in answers for p in a], expected, strict=True):
        assert got.label == want.label and got.confidence == pytest.approx(want.confidence, abs=1e-5)


def test_serve_runs_an_exported_backend(trained_run, tmp_path):
    """`serve --backend torchscript` serves `imgclf export`'s file; here the same app in process (Starlette's
    TestClient), its answers those of the eager model."""
    from starlette.testclient import TestClient

    from imgclf.infer.export import default_path, export_torchscript, file_meta, load_deployable

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    module, meta = load_deployable(run)  # `imgclf export --format torchscript` without its parity and speed checks
    export_torchscript(module, default_path(run, "torchscript", False), file_meta(meta, "torchscript"))
    path = val_images(trained_run)[-1]
    traced = load_model(run, backend="torchscript", device="cpu")
    with TestClient(create_app(run, traced)) as client:
        assert client.get("/model").json()["backend"] == "torchscript"
        answer = client.post("/predict", files=files(path)).json()["predictions"][0]
    assert answer["confidence"] == pytest.approx(traced.predict(path).confidence, abs=1e-5)
    eager = load_model(run, device="cpu").predict(path)  # bf16 on a CPU that has it, the traced file fp32
    assert answer["label"] == eager.label == "frogs"
    assert answer["confidence"] == pytest.approx(eager.confidence, abs=1e-2)


def test_serve_cli_refuses_a_taken_port_and_a_missing_run(trained_run, tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(trained_run), "--port", str(port)]) == 2
    assert capsys.readouterr().err.startswith(f"imgclf: error: cannot listen on 127.0.0.1:{port}: ")
    assert main(["serve", str(tmp_path / "nope"), "--port", "0"]) == 2
    assert "no such run directory" in capsys.readouterr().err
    assert main(["serve", str(trained_run), "--port", "0", "--max-files", "0"]) == 2
    assert "--max-files must be positive" in capsys.readouterr().err


def test_page_in_headless_chromium_shows_the_label_of_a_dropped_image(server, trained_run, hymenoptera, browser_page):
    photo = next((hymenoptera / "val" / "bees").glob("*.jpg"))
    classes = read_json(trained_run / "model.json")["classes"]
    page = browser_page.page
    page.goto(server.url + "/", wait_until="load")
    page.wait_for_function("document.getElementById('model').textContent.includes('classes:')")
    assert "classes: cats, dogs, frogs" in page.inner_text("#model")
    page.set_input_files("#files", str(photo))
    label = page.locator(".card .label")
    page.wait_for_function("document.querySelector('.card .label')?.textContent.includes('%')")
    assert label.inner_text().split(" (")[0] in classes
    assert page.locator(".card .bar").count() == len(classes)  # top-5 of 3 classes: all 3 bars
    assert "1 image(s) predicted" in page.inner_text("#status")
    assert page.evaluate("document.querySelector('.card img').naturalWidth") > 0
    # drag-and-drop: a drop event carrying an ant photo, as a browser makes it from a dragged file
    ant = next((hymenoptera / "val" / "ants").glob("*.jpg"))
    dropped = page.evaluate_handle(
        """([b64, name]) => { const dt = new DataTransfer();
           const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
           dt.items.add(new File([bytes], name, {type: "image/jpeg"})); return dt; }""",
        [base64.b64encode(ant.read_bytes()).decode(), ant.name])
    page.dispatch_event("#drop", "drop", {"dataTransfer": dropped})
    page.wait_for_function(f"document.querySelectorAll('.card .bar').length === {2 * len(classes)}")
    assert page.locator(".card .name").all_inner_texts() == [ant.name, photo.name]  # newest on top
    assert page.locator(".card .label").first.inner_text().split(" (")[0] in classes
    shot = page.screenshot(full_page=True)
    assert browser_page.problems() == []
    assert browser_page.failed == []
    assert all(u.startswith((server.url, "blob:", "data:")) for u in browser_page.requests), browser_page.requests
    with Image.open(io.BytesIO(shot)) as im:
        assert im.size[0] == 1280
