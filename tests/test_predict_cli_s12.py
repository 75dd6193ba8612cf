"""`imgclf predict` outputs a user can trust, and CLI wording: non-UTF-8 file names, outputs written whole or not at
all, --probs with --submission, the skipped-files total, `export --out FOLDER/`, the hymenoptera count.

Real runs: `python -m imgclf` in a subprocess on the session's `trained_run` (only read, never written) and images
written with `write_image`."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imgclf.cli import main
from imgclf.cli import predict as predict_cli
from imgclf.data.datasets import find

LATIN1 = os.fsdecode(b"lat\xe9.jpg")  # what an old Windows zip's latin-1 name becomes on a UTF-8 system
SHOWN = "lat\\xe9.jpg"  # how the CSV writes it: the stray byte backslash-escaped, the file still valid UTF-8


def run_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    """The real `python -m imgclf ...`; its output decoded as strict UTF-8, so a byte that is not fails the test."""
    return subprocess.run([sys.executable, "-m", "imgclf", *map(str, args)], capture_output=True, text=True,
                          encoding="utf-8", errors="strict", cwd=cwd, timeout=300)


def read_rows(path: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_bytes().decode("utf-8"))))  # strict: the whole file is UTF-8


def weird_folder(root: Path, write_image) -> Path:
    """Three ordinary JPEGs, one named in latin-1 bytes, and one zero-byte file the decoder skips."""
    folder = root / "weird"
    for i, colour in enumerate([(200, 50, 50), (50, 50, 200), (50, 180, 60)]):
        write_image(folder / f"img_{i}.jpg", size=(48, 40), colour=colour, seed=i)
    write_image(folder / LATIN1, size=(48, 40), colour=(200, 50, 50), seed=9)
    (folder / "broken.jpg").write_bytes(b"")
    return folder


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_non_utf8_name_gets_its_row_and_skipped_files_are_counted(trained_run, tmp_path, write_image):
    folder = weird_folder(tmp_path, write_image)
    out = tmp_path / "weird.csv"
    p = run_cli("predict", trained_run, folder, "--csv", out, "--probs", "--quiet")
    assert p.returncode == 0, p.stderr
    rows = read_rows(out)
    assert rows[0] == ["path", "label", "confidence", "cats", "dogs", "frogs"]
    names = sorted(Path(r[0]).name for r in rows[1:])
    assert names == sorted(["img_0.jpg", "img_1.jpg", "img_2.jpg", SHOWN]), rows  # every decodable file, whole
    assert all(len(r) == 6 and r[1] in ("cats", "dogs", "frogs") for r in rows[1:])
    assert leftovers(tmp_path) == []
    # the decoder names broken.jpg as it goes; the total at the end says what the CSV lacks
    assert "broken.jpg" in p.stderr
    assert f"1 of 5 image file(s) could not be decoded and are not in {out}" in p.stderr, p.stderr
    assert "4 predictions -> " in p.stdout

    # the CSV printed instead (stdout is as strict as a file), and a submission's Id: the same escaped name
    p = run_cli("predict", trained_run, folder, "--quiet")
    assert p.returncode == 0, p.stderr
    printed = list(csv.reader(io.StringIO(p.stdout)))
    assert len(printed) == 5 and any(r[0].endswith(SHOWN) for r in printed)
    assert "1 of 5 image file(s) could not be decoded and are not in the CSV printed above" in p.stderr
    sub = tmp_path / "sub.csv"
    p = run_cli("predict", trained_run, folder, "--submission", sub, "--quiet")
    assert p.returncode == 0, p.stderr
    assert sorted(r[0] for r in read_rows(sub)[1:]) == ["img_0", "img_1", "img_2", "lat\\xe9"]


def test_force_replaces_an_output_whole_and_a_failed_write_keeps_the_old_file(trained_run, tmp_path, write_image,
                                                                                 monkeypatch, capsys):
    folder = weird_folder(tmp_path, write_image)
    out = tmp_path / "preds.csv"
    out.write_text("the user's earlier file\n")
    p = run_cli("predict", trained_run, folder, "--csv", out, "--quiet")
    assert p.returncode == 2 and "already exists (pass --force" in p.stderr
    assert out.read_text() == "the user's earlier file\n"
    p = run_cli("predict", trained_run, folder, "--csv", out, "--force", "--quiet")
    assert p.returncode == 0, p.stderr
    assert len(read_rows(out)) == 5 and leftovers(tmp_path) == []

    # a write that dies after two rows (as the encoding error did): the file before stays, whole; no temp file
    before = out.read_bytes()
    real_writer = csv.writer

    class DiesMidway:
        def __init__(self, f):
            self.w = real_writer(f)

        def writerows(self, rows):
            rows = list(rows)
            self.w.writerows(rows[:2])
            raise UnicodeEncodeError("utf-8", "x", 0, 1, "surrogates not allowed")

    monkeypatch.setattr(predict_cli.csv, "writer", DiesMidway)
    with pytest.raises(UnicodeEncodeError):
        main(["predict", str(trained_run), str(folder), "--csv", str(out), "--force", "--quiet"])
    assert out.read_bytes() == before and leftovers(tmp_path) == []


def test_probs_or_topk_with_submission_alone_is_refused_before_any_work(trained_run, tmp_path, write_image):
    folder = tmp_path / "test"
    write_image(folder / "0001.jpg", size=(48, 40))
    sub = tmp_path / "sub.csv"
    for flag in (["--probs"], ["--topk", "2"]):
        p = run_cli("predict", trained_run, folder, "--submission", sub, *flag, "--quiet")
        assert p.returncode == 2, p.stderr
        assert p.stderr.strip().splitlines() == [
            f"imgclf: error: {flag[0]} adds columns to --csv's rows, and --submission writes only Id,Category: "
            f"add --csv FILE for them, or drop {flag[0]}"]
        assert not sub.exists()


def test_export_out_folder_names_the_file_it_wants(trained_run, tmp_path, capsys):
    for out, want in ((f"{tmp_path / 'deploy'}/", tmp_path / "deploy" / "model.onnx"),
                      (str(tmp_path), tmp_path / "model.onnx")):
        assert main(["export", str(trained_run), "--out", out, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.strip() == f"imgclf: error: --out {out}: is a folder; give a file name, e.g. {want}", err
    assert not (tmp_path / "deploy").exists()


def test_hymenoptera_catalog_count_is_the_files_it_holds(hymenoptera, capsys):
    files = [p for p in hymenoptera.rglob("*") if p.is_file()]
    assert find("hymenoptera").images == len(files) == 398
    assert main(["datasets"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("hymenoptera "))
    assert row.split()[1] == "398"


def test_plot_is_written_through_a_temporary_file_in_its_own_format(trained_run, tmp_path, write_image):
    folder = tmp_path / "new"
    for i in range(2):
        write_image(folder / f"img_{i}.jpg", size=(48, 40), seed=i)
    plot = tmp_path / "topk.jpg"
    plot.write_bytes(b"an earlier plot")
    assert main(["predict", str(trained_run), str(folder), "--plot", str(plot), "--force", "--quiet"]) == 0
    assert plot.read_bytes()[:3] == b"\xff\xd8\xff" and leftovers(tmp_path) == []  # a JPEG, as its name says


def test_plot_titles_a_non_utf8_name_escaped(trained_run, tmp_path, write_image):
    """--plot drew each image's file name as its title: matplotlib refused the latin-1 one (after the CSV was
    written)."""
    folder = weird_folder(tmp_path, write_image)
    plot = tmp_path / "topk.png"
    p = run_cli("predict", trained_run, folder, "--plot", plot, "--csv", tmp_path / "p.csv", "--quiet")
    assert p.returncode == 0, p.stderr
    assert plot.read_bytes()[:4] == b"\x89PNG" and "Traceback" not in p.stderr
