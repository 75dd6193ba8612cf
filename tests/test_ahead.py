"""Decoding ahead (data/ahead.py): `imgclf train` forks a decoder before torch loads and the job takes its images.

Each check runs in a fresh Python process, as the command does: the decoder only forks a process that has not
imported torch, which the test process has."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

from conftest import make_folder, write_image

from imgclf.config import DEFAULT_SIZE, ModelConfig
from imgclf.models import recommended_size

SCRIPT = textwrap.dedent("""
    import json, sys, warnings
    from pathlib import Path
    from PIL import Image
    from imgclf.data import ahead

    Image.MAX_IMAGE_PIXELS = 3000  # PIL's documented knob: the 80x60 file is "huge" (a named warning, decoded)
    paths = [Path(p) for p in sys.argv[1:]]
    a = ahead.start(paths, 73)
    torch_before = "torch" in sys.modules
    a.process.join(120)
    status = {p.name: int(s) for p, s in zip(paths, a.status)}
    from imgclf.data.decode import decode_all
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        got, keep, bad = decode_all(paths, 73, progress=False)
    other = ahead.take(paths, 96)  # another size: nothing
    ahead.stop()
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        ref, keep2, bad2 = decode_all(paths, 73, progress=False)  # nothing ahead now: every file decoded here
    print(json.dumps({"torch_before": torch_before, "status": status, "same": bool((got == ref).all()),
                      "keep": keep, "keep2": keep2, "bad": [(p.name, w) for p, w in bad],
                      "bad2": [(p.name, w) for p, w in bad2], "other": len(other),
                      "said": [str(w.message) for w in said]}))
""")


def test_images_decoded_ahead_are_the_jobs_and_bad_files_are_still_reported_by_the_job(tmp_path):
    good = [write_image(tmp_path / f"g{i}.jpg", size=(50, 40), seed=i) for i in range(5)]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    grey = write_image(tmp_path / "grey16.png", mode="I;16", size=(40, 40))
    big = write_image(tmp_path / "big.png", size=(80, 60))
    paths = [*good[:3], broken, grey, big, *good[3:]]
    p = subprocess.run([sys.executable, "-c", SCRIPT, *map(str, paths)], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert not r["torch_before"]  # the decoder ran before torch was imported, as under `imgclf train`
    # decoded there: the good files and the 16-bit grey one; left to the job: the broken one and the one that warns
    assert r["status"] == {**{f"g{i}.jpg": 1 for i in range(5)}, "grey16.png": 1, "broken.jpg": 2, "big.png": 2}
    assert r["same"] and r["keep"] == r["keep2"] == [0, 1, 2, 4, 5, 6, 7]  # pixel for pixel the job's own decode
    assert r["bad"] == r["bad2"] and r["bad"][0][0] == "broken.jpg"
    assert r["other"] == 0
    # the job's own words, once each: the huge image named, the broken file in the skipped list
    assert sum("big.png: 80x60 px" in s for s in r["said"]) == 1, r["said"]
    assert sum("broken.jpg" in s and "skipped 1 file" in s for s in r["said"]) == 1, r["said"]


def test_train_decodes_ahead_while_it_starts(tmp_path):
    data = make_folder(tmp_path / "data", {"red": 6, "blue": 6}, size=(48, 40), split=True, n_valid=3)
    out = tmp_path / "run"
    env = {**os.environ, "IMGCLF_PROGRESS": "lines"}
    p = subprocess.run([sys.executable, "-m", "imgclf", "train", str(data), "--size", "64", "--recipe", "probe",
                        "--out", str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    log = (out / "train.log").read_text()
    # every image was decoded by the time the job asked (12 + 6 small files against ~2 s of imports)
    assert "decode train: 12 img (12 decoded while starting)" in log, log[:1500]
    assert "decode valid: 6 img (6 decoded while starting)" in log
    assert "decode 18 images ~0 s" in log  # the plan priced only what was left to decode: nothing
    assert json.loads((out / "metrics.json").read_text())["n_train"] == 12


def test_the_cli_knows_the_default_backbones_size_without_timm():
    assert DEFAULT_SIZE == recommended_size(ModelConfig.arch)


def test_predict_decodes_ahead_and_predicts_the_same(trained_run, tmp_path):
    """`imgclf predict` lists the images and decodes them at the run's presize while the model's stack loads;
    the CSV is the same, to the last digit, as with decoding ahead turned off."""
    images = shutil.copytree(trained_run.parent / "data" / "val", tmp_path / "val")  # the fixture is read-only
    (images / "cats" / "broken.jpg").write_bytes(b"")  # left to the job, which names it as ever
    out = {}
    for flag in ("0", "1"):
        csv_path = tmp_path / f"preds{flag}.csv"
        p = subprocess.run([sys.executable, "-m", "imgclf", "predict", str(trained_run), str(images), "--csv",
                            str(csv_path), "--probs", "--quiet"], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "IMGCLF_DECODE_AHEAD": flag})
        assert p.returncode == 0, p.stderr[-2000:]
        assert "broken.jpg: empty file" in p.stderr
        out[flag] = csv_path.read_text().replace(str(tmp_path), "")
    assert out["0"] == out["1"] and len(out["1"].splitlines()) == 1 + 18


def test_features_computed_while_starting_are_the_jobs_own(tmp_path):
    """The first job records its exported graph; the next one's decoder runs it on the images it decoded, and the
    job takes those features instead of computing them: the same numbers to the last bit (every CV loss the probe
    tried, the final figures), the log saying how many came from the start."""
    data = make_folder(tmp_path / "data", {"red": 6, "blue": 6}, size=(48, 40), split=True, n_valid=3)
    env = {**os.environ, "IMGCLF_PROGRESS": "lines", "IMGCLF_CACHE": str(tmp_path / "cache")}

    def job(name: str, **extra: str) -> tuple[str, dict, dict]:
        out = tmp_path / name
        p = subprocess.run([sys.executable, "-m", "imgclf", "train", str(data), "--size", "64", "--recipe", "probe",
                            "--out", str(out)], capture_output=True, text=True, timeout=300, env={**env, **extra})
        assert p.returncode == 0, p.stderr[-2000:]
        return ((out / "train.log").read_text(), json.loads((out / "recipe.json").read_text()),
                json.loads((out / "metrics.json").read_text()))

    log1, recipe1, metrics1 = job("first")
    assert "computed while starting" not in log1
    graphs = json.loads((tmp_path / "cache/engines/ahead.json").read_text())
    graph = graphs["efficientnet_lite0|64"]
    assert os.path.isfile(graph["path"]) and graph["dim"] == 1280 and graph["size"] == 64
    log2, recipe2, metrics2 = job("second")
    # 12 training images and their mirrors, 3 validation images: all ready by the time the job asked; the first
    # PARITY_IMAGES the engine's check had just run again start the pass, which reuses those features
    from imgclf.train.features import PARITY_IMAGES

    early = 2 * (12 - PARITY_IMAGES)
    assert f"features train/center+flip [onnxruntime fp32]: 24 img ({early} computed while starting)" in log2, log2
    assert "features valid/center [onnxruntime fp32]: 6 img (6 computed while starting)" in log2, log2
    tried = lambda r: r["candidates"][0]["detail"]["tried"]  # noqa: E731
    assert tried(recipe2) == tried(recipe1)  # every CV loss to the last digit: the features were the same
    assert {k: metrics2[k] for k in ("accuracy", "valid_loss")} == {k: metrics1[k] for k in ("accuracy", "valid_loss")}
    log3, recipe3, _ = job("off", IMGCLF_FEATURES_AHEAD="0")
    assert "computed while starting" not in log3 and tried(recipe3) == tried(recipe1)
