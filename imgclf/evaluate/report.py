"""`write_report(run)`: one self-contained HTML page of a run, to open in a browser or send by mail.

Everything a run directory holds, in reading order: the header (run, accuracy, date), the resolved
config, the auto recipe's decision (`recipe.json`), the history table, the loss and lr_find curves, the
data (class counts per split, and an `inspect` audit when one lies in the run), the confusion matrices,
per-class scores, most confused pairs, top losses, the feature map and the model summary.

Self-contained: the figures are embedded as base64 data URIs and the CSS is inline, so the file needs
no network, no JavaScript and no folder beside it. PNGs over `MAX_IMAGE_BYTES` are re-encoded smaller
(see `data_uri`). Every string
from the run (class names, paths, settings) goes through jinja2's autoescape.

    write_report("runs/hymenoptera")          # -> runs/hymenoptera/report.html
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..rundir import META_FILE, MODEL_FILE, read_json, require_model
from .interpret import interpret_dir, interpret_run

TEMPLATES = Path(__file__).parent / "templates"
TEMPLATE = "report.html.j2"
MAX_IMAGE_BYTES = 300_000  # larger PNGs are downscaled / re-encoded before embedding
MAX_IMAGE_SIDE = 1600  # px: wider than any report column, so nothing readable is lost
MAX_ROWS = 200  # rows of the per-class and most-confused tables (the CSVs in RUN/interpret/ have all)


def report_path(run: str | Path, out: str | Path | None = None) -> Path:
    """Where `write_report` writes: `out`, else `RUN/report.html`."""
    return Path(out) if out else Path(run) / "report.html"


def write_report(run: str | Path, out: str | Path | None = None, force: bool = False,
                 data: str | Path | None = None, device: str = "auto", progress: bool = True) -> Path:
    """Write the run's HTML report to `out` (default `RUN/report.html`); returns its path.

    Runs `interpret_run(run, data)` first when `RUN/interpret/interpret.json` is missing (the figures of
    an earlier `imgclf interpret` are reused as they are). An existing report is replaced only with
    `force`.
    """
    run = Path(run)
    path = report_path(run, out)
    if path.exists() and not force:
        raise UserError(f"{path}: already exists (force=True replaces it)")
    _check_run(run)
    single_label = (_json(run / META_FILE) or {}).get("task", "classify") == "classify"
    if single_label and not (interpret_dir(run) / "interpret.json").is_file():
        # tags and numbers have no confusion matrix: their report shows the run's own figures and curves
        interpret_run(run, data=data, device=device, progress=progress)
    html = render_report(report_context(run))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, path)  # a reader never sees half a report
    return path


def render_report(context: dict[str, Any]) -> str:
    """The HTML of `context` (see `report_context`) through `templates/report.html.j2`, autoescaped."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = fmt
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * float(v):.1f}%"
    return env.get_template(TEMPLATE).render(**context)


def _check_run(run: Path) -> None:
    if not run.is_dir():
        raise UserError(f"{run}: no such run directory")
    require_model(run)


# ------------------------------------------------------------------------------------------- gathering
def report_context(run: str | Path) -> dict[str, Any]:
    """Everything the template shows, read from the run directory (and its `interpret/`)."""
    run = Path(run)
    folder = interpret_dir(run)
    config = _json(run / "config.json") or {}
    metrics = _json(run / "metrics.json") or {}
    meta = _json(run / META_FILE) or {}
    interp = _json(folder / "interpret.json") or {}
    recipe = _json(run / "recipe.json")
    inspect_file = next((p for p in (run / "inspect.json", folder / "inspect.json") if p.is_file()), None)
    inspect = _json(inspect_file) if inspect_file else None
    accuracy = metrics.get("accuracy", interp.get("accuracy"))
    return {
        "title": run.resolve().name,
        "run": str(run.resolve()),
        "trained": _date(run / MODEL_FILE),
        "generated": datetime.now().strftime("%Y-%m-%d %H:%M"),
        "headline": _headline(metrics, meta, config, accuracy),
        "config": _config_rows(config, skip=("why",) if recipe else (), meta=meta),  # the recipe section shows why
        "recipe": _recipe(recipe) if recipe else None,
        "history": _csv(run / "history.csv"),
        "curves": [img for img in (_image(run / "loss.png", "loss and metric curves by epoch"),
                                   _image(run / "lr_find.png", "learning-rate finder")) if img],
        "data": _data(config, metrics, interp, meta),
        "task": meta.get("task", "classify"),
        "interpreted": bool(interp),
        "inspect": _inspect(inspect, inspect_file) if inspect else None,
        "confusion": [img for img in (_image(folder / "confusion_matrix.png", "confusion matrix (counts)"),
                                      _image(folder / "confusion_matrix_normalized.png",
                                             "confusion matrix (row-normalised)")) if img],
        # tags: the per-tag table of the run's own figures (interpret covers single-label classes)
        "per_class": (interp.get("per_class") or metrics.get("per_tag") or [])[:MAX_ROWS],
        "n_classes": len(interp.get("per_class") or metrics.get("per_tag") or []),
        "most_confused": [{"actual": a, "predicted": p, "count": n} for a, p, n in interp.get("most_confused", [])],
        **_top_losses(interp.get("top_losses", []), config.get("data", {}).get("path")),
        "top_losses_image": _image(folder / "top_losses.png", "top losses"),
        "n_misclassified": _count_rows(folder / "misclassified.csv"),
        "features_image": _image(folder / "features.png", "pooled features in 2-D"),
        "calibration": _calibration(metrics, interp, folder),
        "model_line": _model_line(interp.get("model")),
        "model_summary": _text(folder / "model_summary.txt"),
        "interpret_folder": str(folder),
        "max_rows": MAX_ROWS,
        **_scored(config, interp),
    }


def _scored(config: dict, interp: dict) -> dict[str, Any]:
    """What the interpretation sections scored: the run's validation images, or the folder `imgclf interpret
    --data` was given (`scored_other`), said in their captions so that the two are never read as one."""
    d = config.get("data", {})
    own = d.get("csv") or d.get("path")
    other = interp.get("data")
    if not other or not own or other == own or Path(other).resolve() == Path(own).resolve():
        return {"scored": "validation images", "scored_other": None}
    return {"scored": f"images of {other}", "scored_other": {"source": other, "n": interp.get("n_valid")}}


def _top_losses(rows: list[dict[str, Any]], root: str | None) -> dict[str, Any]:
    """The top-losses rows with paths relative to the data folder when all lie under it (easier to read)."""
    try:
        rel = [str(Path(r["path"]).relative_to(root)) for r in rows] if root else None
    except ValueError:
        rel = None
    if rel is None:
        return {"top_losses": rows, "top_losses_root": None}
    return {"top_losses": [{**r, "path": p} for r, p in zip(rows, rel, strict=True)], "top_losses_root": root}


def _json(path: Path) -> Any:
    try:
        return read_json(path) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None  # a damaged file leaves its section empty rather than the whole report unwritten


def _text(path: Path) -> str | None:
    return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else None


def _date(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M") if path.exists() else "?"


def fmt(value: Any) -> str:
    """A value as a table cell: floats to 4 significant digits, lists joined, dicts as compact JSON."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e-3 or abs(value) >= 1e5 else f"{value:.4f}".rstrip("0").rstrip(".")
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value) if all(not isinstance(v, (dict, list)) for v in value) else \
            json.dumps(value)
    if isinstance(value, dict):
        return ", ".join(f"{k} {fmt(v)}" for k, v in value.items())
    return str(value)


def _bounds(metrics: dict, name: str, pct: bool = False) -> str:
    """` (95% CI 93.0–99.0%, 153 images)`: the 95% interval metrics.json holds for `name`, or "" for older runs."""
    lo, hi, n = metrics.get(f"{name}_low"), metrics.get(f"{name}_high"), metrics.get("n_valid")
    if lo is None or hi is None:
        return ""
    span = f"{100 * lo:.1f}–{100 * hi:.1f}%" if pct else f"{lo:.2f}–{hi:.2f}"
    return f" (95% CI {span}" + (f", {n} images)" if n else ")")


def _headline(metrics: dict, meta: dict, config: dict, accuracy: float | None) -> list[tuple[str, str]]:
    """The figures under the title: accuracy, loss, recipe, architecture, size, images, time."""
    resolved = config.get("resolved", {})
    task = meta.get("task", "classify")
    if task == "multi_label":  # tags: F1 and per-decision accuracy at the saved threshold
        figures = [("F1 (tags)", fmt(metrics.get("f1_multi")) + _bounds(metrics, "f1_multi")),
                   ("accuracy (tags)", fmt(metrics.get("accuracy_multi")) + _bounds(metrics, "accuracy_multi")),
                   ("threshold", fmt(metrics.get("threshold")))]
    elif task == "regression":  # numbers: errors in the target's own units
        figures = [(f"MAE ({meta['classes'][0]})", fmt(metrics.get("mae"))), ("RMSE", fmt(metrics.get("rmse")))]
    else:
        figures = [("accuracy", "–" if accuracy is None else f"{100 * accuracy:.2f}%" + _bounds(metrics, "accuracy",
                                                                                                   pct=True))]
        for name, key in (("balanced accuracy", "balanced_accuracy"), ("macro F1", "macro_f1")):
            if metrics.get(key) is not None:  # runs from before these figures have none
                figures.append((name, fmt(metrics[key]) + _bounds(metrics, key)))
        if metrics.get("ece") is not None:
            figures.append(("ECE", fmt(metrics["ece"]) + f" (T={metrics.get('temperature', 1.0):.2f})"))
    items = [
        *figures,
        ("valid loss", fmt(metrics.get("valid_loss"))),
        ("recipe", fmt(resolved.get("recipe") or metrics.get("kept"))),
        ("architecture", fmt(meta.get("arch") or config.get("model", {}).get("arch"))),
        ("size", f"{meta.get('size') or resolved.get('size') or '?'} px"),
        ("images", f"{metrics.get('n_train', '?')} train / {metrics.get('n_valid', '?')} valid"),
        *([] if task == "regression" else [("tags" if task == "multi_label" else "classes",
                                             fmt(metrics.get("n_classes") or len(meta.get("classes", []))))]),
        ("time", f"{metrics['total_seconds']:.0f} s" + (f" (+{metrics['earlier_sessions_seconds']:.0f} s in "
                 "earlier sessions)" if metrics.get("earlier_sessions_seconds") else "")
         if "total_seconds" in metrics else "–"),
    ]
    return [(k, v) for k, v in items if v not in ("–", "? px")]


def _calibration(metrics: dict, interp: dict, folder: Path) -> dict[str, Any] | None:
    """The calibration section: the run's own figures (metrics.json: T fitted on selection data or cross-fitted
    on validation halves, so honest) and interpret's reliability diagram; None when neither has any."""
    run_cal, interp_cal = metrics.get("calibration"), interp.get("calibration")
    image = _image(folder / "reliability.png", "reliability diagram")
    if not run_cal and not interp_cal and not image:
        return None
    rows = []
    if run_cal:
        rows += [("temperature shipped", fmt(run_cal.get("temperature"))), ("temperature fitted", fmt(
                     run_cal.get("fitted"))), ("ECE before → after", f"{fmt(run_cal.get('ece_before'))} → "
                                                                   f"{fmt(run_cal.get('ece_after'))}"),
                 ("NLL before → after", f"{fmt(run_cal.get('nll_before'))} → {fmt(run_cal.get('nll_after'))}"),
                 ("how", fmt(run_cal.get("method"))), ("decision", fmt(run_cal.get("why")))]
    if interp_cal:
        rows.append(("ECE of the shipped probabilities (interpret, these images)", fmt(interp_cal.get("ece"))))
    return {"rows": rows, "image": image}


def _model_line(m: dict[str, Any] | None) -> str | None:
    if not m or "params" not in m:
        return None
    size = "×".join(str(v) for v in m.get("input_size", []))
    return (f"{m['params']:,} parameters ({m.get('trainable', 0):,} trainable), "
            f"{m.get('macs', 0):,} multiply-adds" + (f" at {size}" if size else ""))


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for k, v in d.items():
        if isinstance(v, dict) and v and k not in ("lr_find",):
            rows += _flatten(v, f"{prefix}{k}.")
        else:
            rows.append((f"{prefix}{k}", v))
    return rows


def _config_rows(config: dict[str, Any], skip: tuple[str, ...] = (), meta: dict[str, Any] | None = None
                 ) -> list[dict[str, Any]]:
    """config.json as groups of (setting, value) rows: data, model, train, then what training resolved.
    model.pretrained shows the weights the model started from (model.json's record), not the flag: the flag
    stays on for an arch that has no pretrained weights (`--arch simple_cnn` trains from random ones)."""
    groups = []
    for name in ("data", "model", "train", "resolved"):
        if isinstance(config.get(name), dict):
            rows = []
            for key, value in _flatten(config[name]):
                if key in skip:
                    continue
                if key == "why" and isinstance(value, list):
                    value = "; ".join(map(str, value))
                if name == "model" and key == "pretrained" and (meta or {}).get("pretrained"):
                    rows.append({"key": key, "value": _weights_used(str(meta["pretrained"]))})
                    continue
                if key.endswith("lr_find") and isinstance(value, dict):
                    value = _lr_find(value)
                rows.append({"key": key, "value": fmt(value)})
            groups.append({"name": name, "rows": rows})
    other = [{"key": k, "value": fmt(v)} for k, v in config.items() if not isinstance(v, dict)]
    if other:
        groups.append({"name": "run", "rows": other})
    return groups


def _weights_used(pretrained: str) -> str:
    """model.json's `pretrained` ("embedded", "timm", a weights file, or "none") in words."""
    return {"none": "no (random initial weights)", "embedded": "yes (ImageNet weights embedded in imgclf)",
            "timm": "yes (timm's ImageNet weights)"}.get(pretrained, f"yes (from {pretrained})")


def _lr_find(suggestions: dict[str, Any]) -> dict[str, Any]:
    """The lr_find suggestions named as the console and lr_find.png name them ("minimum/10": a tenth of the rate at
    the lowest loss)."""
    from ..train.lr_finder import LABELS

    return {LABELS.get(k, k): v for k, v in suggestions.items()}


def _recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    """recipe.json as a candidates table (the chosen one marked), the reasons, and the probes' head grids."""
    chosen = recipe.get("chosen")
    candidates = []
    for c in recipe.get("candidates", []):
        detail = c.get("detail") or {}
        candidates.append({
            "name": c.get("name", "?"), "kind": c.get("kind", ""), "size": c.get("size", ""),
            "valid_loss": c.get("valid_loss"), "accuracy": c.get("accuracy"), "seconds": c.get("seconds"),
            "head": detail.get("head", ""), "wd": detail.get("wd"), "epochs": detail.get("epochs"),
            "skipped": c.get("skipped", ""), "chosen": c.get("name") == chosen,
            "tried": [_tried(t) for t in detail.get("tried", [])],
        })
    facts = [(k, fmt(_lr_find(recipe[k]) if k == "lr_find" and isinstance(recipe[k], dict) else recipe[k]))
             for k in ("recipe", "budget_seconds", "seconds", "median_short_side", "recommended_size", "sizes", "lr",
                       "lr_find") if recipe.get(k) is not None]
    return {"chosen": chosen, "why": recipe.get("why", []), "candidates": candidates, "facts": facts}


def _tried(t: dict[str, Any]) -> dict[str, Any]:
    """One head of a probe's grid: its validation figures, or (heads chosen by cross-validation on the training
    split, train/probe.py's `select_probe`) its out-of-fold ones, marked as such."""
    cv = "cv_loss" in t and "valid_loss" not in t
    return {"head": t.get("head", "lbfgs"), "wd": t.get("wd"), "basis": "CV" if cv else "valid",
            "valid_loss": t.get("cv_loss") if cv else t.get("valid_loss"),
            "accuracy": t.get("cv_accuracy") if cv else t.get("accuracy")}


def _csv(path: Path) -> dict[str, Any] | None:
    """A CSV as {"header": [...], "rows": [[cell...]...]}, numbers formatted; None when absent."""
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        return None
    header = rows[0]
    body = [(r + [""] * len(header))[: len(header)] for r in rows[1:]]  # ragged rows padded to the header
    best = None
    if "valid_loss" in header and body:
        col = header.index("valid_loss")
        losses = [_float(r[col]) for r in body]
        finite = [(v, i) for i, v in enumerate(losses) if v is not None]
        best = min(finite)[1] if finite else None
    numeric = [all(_float(r[i]) is not None for r in body) for i in range(len(header))]
    return {"header": header, "rows": [[_cell(v) for v in r] for r in body], "best": best, "numeric": numeric}


def _float(s: str) -> float | None:
    try:
        v = float(s)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _cell(s: str) -> str:
    try:
        int(s)
        return s
    except ValueError:
        pass
    v = _float(s)
    return fmt(v) if v is not None else s


def _count_rows(path: Path) -> int | None:
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as f:
        return max(0, sum(1 for _ in csv.reader(f)) - 1)


def _data(config: dict, metrics: dict, interp: dict, meta: dict) -> dict[str, Any]:
    """Images per class and split: counted from the run's data (its file list, nothing decoded), or,
    when the data is not there any more, the validation counts of interpret.json and the totals."""
    d = config.get("data", {})
    classes = interp.get("classes") or meta.get("classes") or config.get("resolved", {}).get("classes") or []
    counts, note = metrics.get("counts"), "as trained (metrics.json)"
    if not counts:
        valid = {r["class"]: r["support"] for r in interp.get("per_class", [])}
        counts = {"train": {}, "valid": valid}
        note = (f"metrics.json has no counts; validation counts from interpret.json, training images "
                f"{metrics.get('n_train', '?')} in all")
    task = meta.get("task", "classify")
    names = list(dict.fromkeys([*classes, *counts["train"], *counts["valid"]])) if task != "regression" else []
    rows = [{"class": c, "train": counts["train"].get(c), "valid": counts["valid"].get(c)} for c in names]
    train = [r["train"] for r in rows if r["train"]]
    # images, not the rows' sum: an image carries several tags (multi-label), and numbers have no classes
    totals = {s: metrics.get(f"n_{s}") if metrics.get(f"n_{s}") is not None
              else sum(v or 0 for v in counts[s].values()) for s in ("train", "valid")}
    return {
        "unit": "tag" if task == "multi_label" else "class",
        "source": d.get("csv") or d.get("path") or interp.get("data") or "?",
        "labeller": ("CSV " + d["csv"]) if d.get("csv") else (f"regex {d['label_re']!r} on file names"
                                                             if d.get("label_re") else "class folder names"),
        "rows": rows,
        "totals": totals,
        "imbalance": max(train) / min(train) if train and task == "classify" else None,
        "note": note,
        "skipped": metrics.get("skipped_files", []),
    }


def _inspect(s: dict[str, Any], path: Path) -> dict[str, Any]:
    """The figures of an `imgclf inspect` audit found in the run (read defensively: any key may be absent)."""
    dup = s.get("duplicates") or {}
    sizes = s.get("image_sizes") or {}
    facts = [
        ("imbalance (largest / smallest training class)", fmt(s.get("imbalance_ratio"))),
        ("largest / smallest class", f"{s.get('largest_class', '?')} / {s.get('smallest_class', '?')}"),
        *[(f"image {k} (min / median / max)", " / ".join(fmt(v.get(x)) for x in ("min", "median", "max")))
          for k, v in sizes.items() if isinstance(v, dict)],
        ("modes", fmt(s.get("modes"))), ("formats", fmt(s.get("formats"))),
        ("exact duplicate groups", fmt(dup.get("n_exact_groups"))),
        ("near duplicate groups", fmt(dup.get("n_near_groups"))),
        ("train/valid leaks", fmt(dup.get("n_leaks"))),
        ("files skipped", fmt(len(s.get("skipped_files") or []))),
    ]
    return {
        "file": str(path),
        "facts": [(k, v) for k, v in facts if v not in ("–", "? / ?")],
        "notes": s.get("notes") or [],
        "images": [img for img in (_image(path.parent / "counts.png", "images per class"),
                                   _image(path.parent / "show_batch.png", "a training batch")) if img],
    }


# ------------------------------------------------------------------------------------------- images
def _image(path: Path, alt: str) -> dict[str, str] | None:
    """{"src": data URI, "alt": ..., "name": file name} of an image file, or None when it is absent."""
    if not path.is_file():
        return None
    return {"src": data_uri(path), "alt": alt, "name": path.name}


def data_uri(path: str | Path, max_bytes: int = MAX_IMAGE_BYTES, max_side: int = MAX_IMAGE_SIDE) -> str:
    """The image as a base64 data URI. Over `max_bytes` it is shrunk to `max_side` px and re-encoded: as
    PNG when that fits (plots stay crisp), else as JPEG (the hymenoptera top-losses grid: 1.4 MB as PNG,
    0.2 MB as JPEG at the same size), shrinking further until it fits."""
    from PIL import Image

    raw = Path(path).read_bytes()
    if len(raw) <= max_bytes:
        with Image.open(io.BytesIO(raw)) as im:
            kind = {"MPO": "jpeg"}.get(im.format or "PNG", (im.format or "PNG").lower())
        return f"data:image/{kind};base64,{base64.b64encode(raw).decode('ascii')}"
    with Image.open(io.BytesIO(raw)) as im:
        rgba = im.convert("RGBA")
    rgb = Image.new("RGB", rgba.size, "white")
    rgb.paste(rgba, mask=rgba.getchannel("A"))  # transparent plot backgrounds on white, as shown
    rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    kind, data = "png", _encode(rgb, "PNG")
    if len(data) > max_bytes:
        kind, data = "jpeg", _encode(rgb, "JPEG")
    while len(data) > max_bytes and min(rgb.size) > 64:
        scale = 0.95 * math.sqrt(max_bytes / len(data))  # bytes go roughly with the pixel count
        rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))),
                         Image.Resampling.LANCZOS)
        data = _encode(rgb, "JPEG")
    return f"data:image/{kind};base64,{base64.b64encode(data).decode('ascii')}"


def _encode(img, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, optimize=True, **({"quality": 85} if fmt == "JPEG" else {}))
    return buf.getvalue()
