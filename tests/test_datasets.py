"""Data sets by name against a real HTTP server on 127.0.0.1 (no test touches the internet).

The server (a thread in this process) serves archives the tests build from tiny images; per file it can honour
HTTP Range requests, ignore them, or drop the connection after a number of bytes. Each test registers its
own catalog entry pointing at the server and removes it afterwards; `IMGCLF_DATA` points into `tmp_path`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import subprocess
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from imgclf import UserError
from imgclf.cli import main
from imgclf.config import DataConfig, RunConfig
from imgclf.data import datasets as D


class Server:
    """`files[name] = bytes`; `mode[name]`: "range" (default), "norange", or an int (bytes sent, then hang up)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.mode: dict[str, object] = {}
        self.log: list[tuple[str, str | None, int]] = []  # (name, Range header, status)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the stdlib's name)
                name = self.path.rsplit("/", 1)[-1].split("?")[0]
                body, mode, rng = server.files.get(name), server.mode.get(name, "range"), self.headers["Range"]
                if body is None:
                    server.log.append((name, rng, 404))
                    self.send_error(404)
                    return
                start = int(re.match(r"bytes=(\d+)-", rng).group(1)) if rng and mode != "norange" else 0
                if start >= len(body) and rng:
                    server.log.append((name, rng, 416))
                    self.send_error(416)
                    return
                status = 206 if start else 200
                server.log.append((name, rng, status))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                stop = start + mode if isinstance(mode, int) else len(body)
                self.wfile.write(body[start:stop])  # then the handler returns and the connection closes

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def put(self, name: str, body: bytes, mode: object = "range") -> str:
        self.files[name], self.mode[name] = body, mode
        return f"{self.base}/files/{name}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("IMGCLF_DATA", str(root))
    monkeypatch.delenv("IMGCLF_DATASETS_MIRROR", raising=False)
    return root


@pytest.fixture
def register():
    names = []

    def add(name, url, body, checksum=None, **kw):
        digest = checksum if checksum is not None else "sha256:" + hashlib.sha256(body).hexdigest()
        names.append(name)
        return D.register_dataset(D.Dataset(name, "a test set", (D.Remote(url, digest),), len(body), 0, 2, "test",
                                            **kw), overwrite=True)

    yield add
    for n in names:
        D.CATALOG.pop(n, None)


def pack(root: Path, kind: str, extra=None) -> bytes:
    """`root`'s files as a tgz or zip with paths under `root.name/`; `extra(archive)` adds hostile members."""
    buf = io.BytesIO()
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if kind == "tgz":
        with tarfile.open(fileobj=buf, mode="w:gz") as tf:
            for p in files:
                tf.add(p, arcname=f"{root.name}/{p.relative_to(root).as_posix()}")
            if extra:
                extra(tf)
    else:
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for p in files:
                zf.write(p, f"{root.name}/{p.relative_to(root).as_posix()}")
            if extra:
                extra(zf)
    return buf.getvalue()


@pytest.fixture
def tiny_archive(image_folder):
    """A tiny train/ + val/ set packed as `kind`: (bytes, folder name inside)."""
    root = image_folder({"cats": 4, "dogs": 4}, name="tinyset", split=True, size=(32, 32))
    return lambda kind="tgz", extra=None: pack(root, kind, extra)


def leftovers(home: Path) -> list[str]:
    """Anything in the cache that is not a finished data set folder: temp folders, downloads, parts."""
    hidden = [p.name for p in home.glob(".*")]
    return sorted(hidden + [p.name for p in (home / "downloads").glob("*")])


def test_catalog_has_the_asked_sets_with_published_checksums():
    for name in ("hymenoptera", "pets", "imagenette-160", "imagenette-320", "food-11", "fashion-mnist", "cifar10",
                 "flowers"):
        ds = D.lookup(name)
        assert ds.files and ds.classes >= 2 and ds.images > 0 and ds.licence
        for f in ds.files:
            assert f.url.startswith(("http://", "https://"))
            assert re.fullmatch(r"sha256:[0-9a-f]{64}|md5:[0-9a-f]{32}", f.checksum) or name == "food-11"
    assert D.find("Oxford_IIIT_Pet").name == "pets" and D.find("CIFAR-10").name == "cifar10"
    assert D.lookup("pets").options["label_re"] == r"^(.+)_\d+\.jpg$"
    assert D.lookup("cifar10").options["valid"] == "test"
    assert D.lookup("imagenette-160").class_names["n01440764"] == "tench"
    assert not D.lookup("food-11").verified and len(D.lookup("fashion-mnist").files) == 4
    with pytest.raises(UserError, match="not a known data set"):
        D.lookup("no-such-set")


def test_cli_lists_the_catalog(tmp_path, capsys):
    p = subprocess.run([sys.executable, "-m", "imgclf", "datasets"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "IMGCLF_DATA": str(tmp_path)})
    assert p.returncode == 0, p.stderr
    assert re.search(r"^pets\s+7,390\s+37\s+774 MiB\s+CC BY-SA 4.0\s+-$", p.stdout, re.M)
    assert "sha256:4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c" in p.stdout
    assert f"cache: {tmp_path}" in p.stdout
    assert main(["datasets", "get", "nope"]) == 2
    assert capsys.readouterr().err.startswith("imgclf: error: nope: not a known data set")


@pytest.mark.parametrize("kind", ["tgz", "zip"])
def test_get_downloads_verifies_extracts_and_resolves(kind, server, home, register, tiny_archive, capsys):
    body = tiny_archive(kind)
    register(f"tiny-{kind}", server.put(f"tiny.{kind}", body), body, folder="tinyset")
    (home / f".tiny-{kind}.tmp-killed" / "tinyset").mkdir(parents=True)  # a killed extraction's leftovers
    assert main(["datasets", "get", f"tiny-{kind}", "--quiet"]) == 0
    where = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert where == home / f"tiny-{kind}" / "tinyset"
    assert len(list((where / "train" / "cats").glob("*.jpg"))) == 4 and (where / "val" / "dogs").is_dir()
    assert leftovers(home) == []  # no temp folder, no .part, and the archive is gone once extracted
    cfg = D.resolve_config(RunConfig(data=DataConfig(path=f"tiny-{kind}")), progress=False)
    assert cfg.data.path == str(where) and cfg.out == f"runs/tiny-{kind}"
    assert main(["datasets", "get", f"tiny-{kind}"]) == 0  # cached: no second request
    assert "already in the cache" in capsys.readouterr().out and len(server.log) == 1
    assert main(["datasets", "path", f"tiny-{kind}"]) == 0 and capsys.readouterr().out.strip() == str(where)


def test_checksum_mismatch_keeps_nothing(server, home, register, tiny_archive, capsys):
    body = tiny_archive()
    register("tiny-bad", server.put("bad.tgz", body), body, checksum="sha256:" + "0" * 64, folder="tinyset")
    assert main(["datasets", "get", "tiny-bad", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "failed its checksum" in err and "nothing was extracted" in err and "--no-verify" in err
    assert not (home / "tiny-bad").exists() and leftovers(home) == []
    with pytest.warns(UserWarning, match="used anyway"):  # the user's informed choice
        assert main(["datasets", "get", "tiny-bad", "--quiet", "--no-verify"]) == 0
    assert (home / "tiny-bad" / "tinyset" / "train").is_dir()


def test_corrupt_archive_with_matching_checksum_leaves_no_half_extraction(server, home, register, tiny_archive):
    body = tiny_archive()[:-300]  # a publisher's broken upload: the checksum matches, the gzip stream ends early
    register("tiny-corrupt", server.put("corrupt.tgz", body), body, folder="tinyset")
    with pytest.raises(UserError, match="nothing kept"):
        D.get_dataset("tiny-corrupt", progress=False)
    assert not (home / "tiny-corrupt").exists() and not [p for p in home.iterdir() if p.name.startswith(".")]


def test_truncated_download_resumes_with_range(server, home, register, tiny_archive):
    body = tiny_archive()
    half = len(body) // 2
    register("tiny-cut", server.put("cut.tgz", body, mode=half), body, folder="tinyset")
    with pytest.raises(UserError, match="run the same command again to resume"):
        D.get_dataset("tiny-cut", progress=False)
    part = home / "downloads" / "cut.tgz.part"
    assert part.stat().st_size == half and not (home / "tiny-cut").exists()
    server.mode["cut.tgz"] = "range"
    where = D.get_dataset("tiny-cut", progress=False)
    assert server.log[-1] == ("cut.tgz", f"bytes={half}-", 206)  # only the rest was sent
    assert (where / "train" / "dogs").is_dir() and leftovers(home) == []


def test_server_that_ignores_range_starts_over(server, home, register, tiny_archive, capsys):
    body = tiny_archive()
    register("tiny-norange", server.put("norange.tgz", body, mode=1000), body, folder="tinyset")
    with pytest.raises(UserError, match="resume"):
        D.get_dataset("tiny-norange", progress=False)
    server.mode["norange.tgz"] = "norange"
    where = D.get_dataset("tiny-norange", progress=False)  # the checksum passes: the part was not appended to
    assert "ignores Range requests" in capsys.readouterr().out
    assert server.log[-1] == ("norange.tgz", "bytes=1000-", 200) and (where / "val" / "cats").is_dir()


def _tar_member(name, data=b"x", **kw):
    def add(tf):
        info = tarfile.TarInfo(name)
        for k, v in kw.items():
            setattr(info, k, v)
        info.size = 0 if kw.get("type") == tarfile.SYMTYPE else len(data)
        tf.addfile(info, None if kw.get("type") == tarfile.SYMTYPE else io.BytesIO(data))
    return add


def _zip_member(name, data=b"x", symlink=False):
    def add(zf):
        info = zipfile.ZipInfo(name)
        if symlink:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, data)
    return add


@pytest.mark.parametrize("case", ["tar-dotdot", "tar-absolute", "tar-symlink", "zip-dotdot", "zip-absolute",
                                  "zip-symlink"])
def test_hostile_members_are_refused_and_nothing_is_written(case, tmp_path, server, home, register, tiny_archive):
    outside = tmp_path / "outside"
    outside.mkdir()
    evil = outside / "evil.txt"
    kind, what = case.split("-")
    name = {"dotdot": "tinyset/../../../outside/evil.txt", "absolute": str(evil), "symlink": "tinyset/link"}[what]
    if kind == "tar":
        extra = (_tar_member(name, type=tarfile.SYMTYPE, linkname=str(outside)) if what == "symlink"
                 else _tar_member(name))
    else:
        extra = _zip_member(name, str(outside).encode() if what == "symlink" else b"x", symlink=what == "symlink")
    body = tiny_archive("tgz" if kind == "tar" else "zip", extra)
    register("tiny-evil", server.put(f"evil.{kind}", body), body, folder="tinyset")
    with pytest.raises(UserError, match="refused") as e:
        D.get_dataset("tiny-evil", progress=False)
    assert ("link" in str(e.value)) == (what == "symlink")
    assert list(outside.iterdir()) == [] and not (home / "tiny-evil").exists()
    assert not [p for p in home.iterdir() if p.name.startswith(".")]  # the temp folder went too


def test_zip_bomb_and_member_count_caps(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", b"\0" * (4 * 2**20))  # 4 MiB of zeros: a ~4 KB member
    assert bomb.stat().st_size < 64 * 1024
    with pytest.raises(UserError, match="archive bomb"):
        D.extract(bomb, tmp_path / "out", max_bytes=2**20)
    with pytest.raises(UserError, match="more than 0 members"):
        D.extract(bomb, tmp_path / "out2", max_members=0)
    D.extract(bomb, tmp_path / "out3")  # within the default caps it unpacks
    assert (tmp_path / "out3" / "zeros.bin").stat().st_size == 4 * 2**20


def test_mirror_serves_catalog_files_by_name(server, home, register, tiny_archive, monkeypatch):
    body = tiny_archive()
    server.put("mirrored.tgz", body)
    register("tiny-mirror", "https://example.invalid/sets/mirrored.tgz", body, folder="tinyset")
    monkeypatch.setenv("IMGCLF_DATASETS_MIRROR", f"{server.base}/mirror/")
    assert (D.get_dataset("tiny-mirror", progress=False) / "train").is_dir()
    assert server.log == [("mirrored.tgz", None, 200)]


def test_plain_files_entry_and_force(server, home, register):
    """A multi-file entry (Fashion-MNIST's four IDX files) is kept as files; --force fetches again."""
    bodies = {f"{n}.gz": bytes([i]) * 100 for i, n in enumerate(["a", "b"])}
    D.register_dataset(D.Dataset("tiny-files", "files", tuple(
        D.Remote(server.put(n, b), "md5:" + hashlib.md5(b).hexdigest()) for n, b in bodies.items()),
        200, 0, 2, "test"), overwrite=True)
    try:
        where = D.get_dataset("tiny-files", progress=False)
        assert sorted(p.name for p in where.iterdir()) == ["a.gz", "b.gz"]
        assert (where / "b.gz").read_bytes() == bodies["b.gz"]
        D.get_dataset("tiny-files", force=True, progress=False)
        assert len(server.log) == 4 and leftovers(home) == []
    finally:
        D.CATALOG.pop("tiny-files")


def test_a_path_that_exists_wins_over_a_name(tmp_path, monkeypatch, home, register):
    register("tiny-shadow", "http://127.0.0.1:9/never.tgz", b"", folder="x")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny-shadow").mkdir()
    cfg = RunConfig(data=DataConfig(path="tiny-shadow"))
    assert D.resolve_config(cfg) is cfg
    assert D.resolve_config(RunConfig(data=DataConfig(path="elsewhere"))).data.path == "elsewhere"


def test_train_by_name_downloads_then_trains(tmp_path, server, home, register, write_image, capsys):
    """`imgclf train NAME`: a pets-like flat folder whose labels come from the entry's --label-re."""
    root = tmp_path / "src" / "tinypets"
    for ci, (cls, colour) in enumerate([("cats", (200, 50, 50)), ("dogs", (50, 50, 200))]):
        for i in range(10):
            write_image(root / "images" / f"{cls}_{i}.jpg", size=(32, 32), colour=colour, seed=10 * ci + i)
    body = pack(root, "tgz")
    register("tiny-pets", server.put("tinypets.tgz", body), body, folder="tinypets/images",
             options={"label_re": r"^(.+)_\d+\.jpg$"})
    out = tmp_path / "run"
    assert main(["train", "tiny-pets", "--size", "32", "--recipe", "probe", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "data set tiny-pets: not in" in printed and "downloading it" in printed and "accuracy" in printed
    conf = json.loads((out / "config.json").read_text())
    assert conf["data"]["path"] == str(home / "tiny-pets" / "tinypets" / "images")
    assert conf["data"]["label_re"] == r"^(.+)_\d+\.jpg$" and conf["resolved"]["classes"] == ["cats", "dogs"]
    assert json.loads((out / "metrics.json").read_text())["accuracy"] >= 0.5
    assert main(["inspect", "tiny-pets", "--quiet", "--out", str(tmp_path / "insp")]) == 0  # cached: no download
    printed = capsys.readouterr().out
    assert f"data set tiny-pets: {home}" in printed and len(server.log) == 1
    assert json.loads((tmp_path / "insp" / "inspect.json").read_text())
