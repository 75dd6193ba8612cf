"""`imgclf export`: ONNX / TorchScript files with the preprocessing inside, checked against the eager model,
usable without this package, and behind `load_model(run, backend=...)` / `imgclf predict --backend`."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest

from imgclf import UserError, export_model, load_model
from imgclf.cli import main
from imgclf.rundir import read_json
from imgclf.train.features import ort_chunk


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> Path:
    """A copy of the trained run with model.onnx and model.ts exported into it (once for this module)."""
    run = tmp_path_factory.mktemp("export") / "run"
    shutil.copytree(trained_run, run)
    export_model(run, progress=False)
    export_model(run, format="torchscript", progress=False)
    return run


def _val_images(trained_run: Path) -> list[Path]:
    return sorted((trained_run.parent / "data" / "val").rglob("*.jpg"))


def test_parity_and_log(exported):
    log = read_json(exported / "export.json")
    assert set(log) == {"model.onnx", "model.ts"}  # one entry per exported file
    for name, fmt in (("model.onnx", "onnx"), ("model.ts", "torchscript")):
        e = log[name]
        assert e["format"] == fmt and e["bytes"] == (exported / name).stat().st_size
        p = e["parity"]
        assert p["n"] == 18  # the run's 3 x 6 validation images, rebuilt from its config.json
        assert p["top1_agreement"] >= 0.999 and p["max_abs_diff"] <= 1e-3
        assert p["accuracy"] == p["accuracy_eager"]
        assert e["images_per_s"] > 0


def test_onnx_metadata_and_graph(exported):
    model = onnx.load(str(exported / "model.onnx"))
    onnx.checker.check_model(model)
    props = {p.key: p.value for p in model.metadata_props}
    meta = read_json(exported / "model.json")
    assert json.loads(props["classes"]) == meta["classes"] == ["cats", "dogs", "frogs"]
    assert props["task"] == "classify"
    assert int(props["size"]) == meta["size"] == 64 and int(props["presize"]) == meta["presize"]
    assert json.loads(props["mean"]) == meta["mean"] and json.loads(props["std"]) == meta["std"]
    assert props["imgclf_version"] and props["format"] == "onnx"
    (inp,), (out,) = model.graph.input, model.graph.output
    assert out.name == "outputs"
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [meta["presize"], meta["presize"], 3]  # dynamic batch, NHWC
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert max(i.version for i in model.opset_import if i.domain in ("", "ai.onnx")) >= 17


@pytest.mark.parametrize("backend", ["onnx", "torchscript"])
def test_backend_predictions_equal_eager(exported, trained_run, backend):
    paths = _val_images(trained_run)
    eager, other = load_model(exported, precision="fp32"), load_model(exported, backend=backend)
    assert other.classes == eager.classes and other.presize == eager.presize
    assert (other.presize - other.size) % 2 == 1  # 73 - 64: the mirrored view needs its one-column shift
    a, _ = eager.predict_files(paths, bs=8, progress=False, tta=True)
    b, _ = other.predict_files(paths, bs=8, progress=False, tta=True)
    assert [p.label for p in a] == [p.label for p in b]
    assert max(abs(p.probs[c] - q.probs[c]) for p, q in zip(a, b, strict=True) for c in p.probs) < 1e-3
    single = other.predict(paths[0])
    assert single.label == a[0].label and abs(sum(single.probs.values()) - 1) < 1e-4
    if backend == "onnx":  # a batch over several onnxruntime calls (ort_chunk) comes back whole and in order
        one, _ = other.predict_files(paths, bs=1, progress=False)
        c, _ = other.predict_files(paths * 6, bs=len(paths) * 6, progress=False)
        assert len(paths) * 6 > ort_chunk(other.size)
        assert max(abs(p.probs[k] - q.probs[k]) for p, q in zip(c, one * 6, strict=True) for k in p.probs) < 1e-5


def test_cli_predict_backend_onnx_csv(exported, trained_run, tmp_path, capsys):
    folder = str(trained_run.parent / "data" / "val")
    rows = {}
    for backend in ("eager", "onnx"):
        out = tmp_path / f"{backend}.csv"
        assert main(["predict", str(exported), folder, "--csv", str(out), "--backend", backend, "--quiet"]) == 0
        rows[backend] = list(csv.reader(out.open()))
    assert rows["onnx"][0] == rows["eager"][0] == ["path", "label", "confidence"]
    assert [r[:2] for r in rows["onnx"]] == [r[:2] for r in rows["eager"]]
    assert len(rows["onnx"]) == 19
    # the exported file by its own path (`export --out deploy/model.onnx`): its backend told by the name
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    for name in ("model.onnx", "model.ts"):
        shutil.copy(exported / name, deploy / name)
        out = tmp_path / f"file-{name}.csv"
        assert main(["predict", str(deploy / name), folder, "--csv", str(out), "--quiet"]) == 0
        assert [r[1] for r in csv.reader(out.open())] == [r[1] for r in rows["eager"]]
    (deploy / "notes.txt").write_text("x")
    assert main(["predict", str(deploy / "notes.txt"), folder]) == 2
    assert "a file, not a run directory or an exported model" in capsys.readouterr().err
    figures = {}
    for backend in ("eager", "onnx"):  # evaluate takes the backend too (README: predict, evaluate and serve)
        out = tmp_path / f"{backend}.json"
        assert main(["evaluate", str(exported), folder, "--backend", backend, "--json", str(out), "--quiet"]) == 0
        figures[backend] = json.loads(out.read_text())
    assert figures["onnx"]["accuracy"] == figures["eager"]["accuracy"] and figures["onnx"]["n"] == 18
    assert figures["onnx"]["valid_loss" if "valid_loss" in figures["onnx"] else "loss"] == pytest.approx(
        figures["eager"]["valid_loss" if "valid_loss" in figures["eager"] else "loss"], abs=1e-4)


ONNX_SCRIPT = """
    import json, sys
    import numpy as np, onnxruntime as ort
    from PIL import Image
    sess = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    p = int(meta["presize"])
    for f in sys.argv[2:]:
        img = Image.open(f).convert("RGB")
        w, h = img.size; s = p / min(w, h)
        img = img.resize((max(p, round(w * s)), max(p, round(h * s))), Image.BILINEAR)
        l, t = (img.width - p) // 2, (img.height - p) // 2
        x = np.asarray(img.crop((l, t, l + p, t + p)), dtype=np.uint8)[None]
        print(json.loads(meta["classes"])[int(sess.run(None, {"images": x})[0].argmax())])
    print("imgclf" in sys.modules)
"""

TORCHSCRIPT_SCRIPT = """
    import json, sys
    import numpy as np, torch
    from PIL import Image
    extra = {"imgclf.json": ""}
    model = torch.jit.load(sys.argv[1], _extra_files=extra)
    meta = json.loads(extra["imgclf.json"]); p = int(meta["presize"])
    for f in sys.argv[2:]:
        img = Image.open(f).convert("RGB")
        w, h = img.size; s = p / min(w, h)
        img = img.resize((max(p, round(w * s)), max(p, round(h * s))), Image.BILINEAR)
        l, t = (img.width - p) // 2, (img.height - p) // 2
        x = torch.from_numpy(np.asarray(img.crop((l, t, l + p, t + p)), dtype=np.uint8).copy())[None]
        print(json.loads(meta["classes"])[int(model(x).argmax())])
    print("imgclf" in sys.modules)
"""


@pytest.mark.parametrize(("name", "script"), [("model.onnx", ONNX_SCRIPT), ("model.ts", TORCHSCRIPT_SCRIPT)],
                         ids=["onnx", "torchscript"])
def test_file_alone_predicts_in_a_fresh_process(exported, trained_run, tmp_path, name, script):
    """The exported file is enough: a short script with onnxruntime (or torch) + numpy + Pillow, run in a new
    isolated interpreter (`-I`: no user site, no cwd on the path), labels images as the Predictor does."""
    path = tmp_path / "predict.py"
    path.write_text(textwrap.dedent(script))
    images = _val_images(trained_run)
    res = subprocess.run([sys.executable, "-I", str(path), str(exported / name), *map(str, images)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    preds, _ = load_model(exported).predict_files(images, progress=False)
    assert res.stdout.split() == [p.label for p in preds] + ["False"]  # and imgclf was never imported


def test_int8(exported, trained_run, tmp_path):
    out = tmp_path / "q.onnx"
    e = export_model(exported, int8=True, out=out, progress=False)
    assert out.is_file() and read_json(tmp_path / "export.json")["q.onnx"] == e
    assert e["format"] == "int8" and e["size_ratio"] >= 3  # int8 weights: ~4x smaller than fp32
    assert e["fp32"]["parity"]["accuracy"] - e["parity"]["accuracy"] <= 0.06  # at most one of 18 images
    assert e["parity"]["top1_agreement"] >= 0.9 and e["images_per_s"] > 0
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["format"] == "int8" and json.loads(props["classes"]) == ["cats", "dogs", "frogs"]
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    paths = _val_images(trained_run)
    preds, _ = load_model(out, backend="int8").predict_files(paths, progress=False)  # a file given directly
    eager, _ = load_model(exported).predict_files(paths, progress=False)
    assert sum(p.label == q.label for p, q in zip(preds, eager, strict=True)) >= len(paths) - 1


def test_export_without_the_data_skips_parity(exported, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(exported, run)
    (run / "model.onnx").unlink()
    conf = read_json(run / "config.json")
    conf["data"]["path"] = str(tmp_path / "gone")
    (run / "config.json").write_text(json.dumps(conf))
    e = export_model(run)
    assert "gone" in e["parity"]["skipped"] and "parity check skipped" in capsys.readouterr().out
    assert load_model(run, backend="onnx").classes == ["cats", "dogs", "frogs"]
    with pytest.raises(UserError, match="--int8 calibrates on the run's training images"):
        export_model(run, int8=True, progress=False)


def test_errors(exported, trained_run, tmp_path, capsys):
    with pytest.raises(UserError, match=r"no model.onnx .*imgclf export"):
        load_model(trained_run, backend="onnx")
    with pytest.raises(UserError, match=r"imgclf export .* --int8"):
        load_model(trained_run, backend="int8")
    assert main(["export", str(exported)]) == 2
    assert "already exists (pass --force" in capsys.readouterr().err
    assert main(["export", str(exported), "--format", "tflite"]) == 2
    assert "--format tflite: choose onnx or torchscript" in capsys.readouterr().err
    assert main(["export", str(exported), "--format", "torchscript", "--int8"]) == 2
    assert "--int8 quantizes the ONNX model" in capsys.readouterr().err
    assert main(["export", str(exported), "--format", "torchscript", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "a TorchScript file is named *.ts or *.pt" in capsys.readouterr().err
    for opset in ("16", "99"):  # 99 was exported as opset 18 while export.json said 99
        assert main(["export", str(exported), "--opset", opset, "--out", str(tmp_path / "o.onnx")]) == 2
        assert f"--opset {opset}: use 17 to 23" in capsys.readouterr().err and not (tmp_path / "o.onnx").exists()
    image = str(_val_images(trained_run)[0])
    assert main(["predict", str(trained_run), image, "--backend", "torchscript"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"imgclf export {trained_run} --format torchscript" in err


def test_an_export_older_than_the_weights_is_refused(exported, tmp_path, capsys):
    """export.json records which weights each file came from; once the run's model.safetensors changes (trained on
    since, as `train --resume` does) its exports are refused with the command that refreshes them, not served."""
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(exported, run)
    assert read_json(run / "export.json")["model.onnx"]["weights_sha1"]
    assert load_model(run, backend="onnx").classes == ["cats", "dogs", "frogs"]  # fresh: used
    state = load_file(str(run / "model.safetensors"))
    head = [k for k in state if k.endswith("classifier.weight")][0]
    state[head] = state[head] * 1.5  # the run's weights move on
    save_file(state, str(run / "model.safetensors"), metadata={"format": "pt"})
    for backend, flags in (("onnx", ""), ("torchscript", " --format torchscript")):
        with pytest.raises(UserError, match=rf"exported from other weights .*imgclf export {run}{flags} --force"):
            load_model(run, backend=backend)
    assert main(["export", str(run), "--force"]) == 0
    assert "weights_sha1" in read_json(run / "export.json")["model.onnx"]
    assert load_model(run, backend="onnx").classes == ["cats", "dogs", "frogs"]  # exported again: used
