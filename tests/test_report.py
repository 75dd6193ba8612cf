"""`imgclf report`: one self-contained HTML file of a real tiny run, parsed here and loaded in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf.cli import main
from imgclf.config import DataConfig, RunConfig, TrainConfig
from imgclf.evaluate.report import MAX_IMAGE_BYTES, data_uri, report_context
from imgclf.train.job import train

# class folders whose names are HTML: escaped, they show as written; unescaped, "<x>" would become a tag
CLASSES = {"a&b": 6, "<x>": 6, "plain": 6}
SECTIONS = ("config", "history", "curves", "data", "confusion-matrix", "per-class", "most-confused", "top-losses")


def tiny_run(image_folder, tmp_path, **settings) -> Path:
    """A run trained at 32 px on 3 classes of 6 training and 3 validation images each, named as HTML."""
    root = image_folder(CLASSES, split=True, n_valid=3, size=(40, 40))
    cfg = RunConfig(data=DataConfig(path=str(root), size=32, bs=8), train=TrainConfig(**settings),
                    out=str(tmp_path / "run"))
    return train(cfg, progress=False).run_dir


class Page(HTMLParser):
    """What the report's HTML holds: tags, ids, attributes, headings and the visible text."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.ids: set[str] = set()
        self.attrs: list[tuple[str, str, str]] = []  # (tag, name, value)
        self.h2: list[str] = []
        self.text: list[str] = []
        self._h2 = False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            self.attrs.append((tag, name, value or ""))
            if name == "id":
                self.ids.add(value)
        self._h2 = tag == "h2"

    def handle_endtag(self, tag):
        self._h2 = False if tag == "h2" else self._h2

    def handle_data(self, data):
        self.text.append(data)
        if self._h2:
            self.h2.append(data.strip())


def decode(uri: str) -> Image.Image:
    head, b64 = uri.split(",", 1)
    assert head.startswith("data:image/") and head.endswith(";base64"), head
    im = Image.open(io.BytesIO(base64.b64decode(b64)))
    im.load()
    return im


def test_report_is_self_contained_escaped_and_never_replaced_silently(image_folder, tmp_path, capsys):
    run = tiny_run(image_folder, tmp_path)  # the auto recipe: recipe.json, and no interpret/ yet
    assert (run / "recipe.json").is_file() and not (run / "interpret").exists()
    capsys.readouterr()  # training's own printout

    assert main(["report", str(run), "--quiet"]) == 0
    report = run / "report.html"
    assert capsys.readouterr().out.strip() == str(report)
    interp = json.loads((run / "interpret" / "interpret.json").read_text())  # interpret ran first
    html = report.read_text()
    page = Page(html)

    assert set(SECTIONS) | {"recipe"} <= page.ids
    assert {"Config", "Recipe", "History", "Curves", "Data", "Confusion matrix", "Per class", "Most confused",
            "Top losses"} <= set(page.h2)
    # self-contained: nothing fetched, nothing run
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    assert "http://" not in html and "https://" not in html
    srcs = [v for tag, name, v in page.attrs if name == "src"]
    assert len(srcs) == len([t for t in page.tags if t == "img"]) >= 5  # loss, 2 confusion matrices, top losses...
    for src in srcs:
        assert src.startswith("data:image/")
        assert min(decode(src).size) > 100
    assert all(v.startswith("#") for tag, name, v in page.attrs if name == "href")  # only in-page links

    # class names are escaped in the source and read as written
    text = " ".join(page.text)
    assert "a&amp;b" in html and "&lt;x&gt;" in html and "<x>" not in html and "x" not in page.tags
    assert "a&b" in text and "<x>" in text

    # the figures are the run's
    metrics = json.loads((run / "metrics.json").read_text())
    assert f"{100 * metrics['accuracy']:.2f}%" in text
    ctx = report_context(run)
    assert [r["class"] for r in ctx["per_class"]] == interp["classes"] == sorted(CLASSES)
    assert {r["class"]: (r["train"], r["valid"]) for r in ctx["data"]["rows"]} == {c: (6, 3) for c in CLASSES}
    assert ctx["data"]["totals"] == {"train": metrics["n_train"], "valid": metrics["n_valid"]} == \
        {"train": 18, "valid": 9}
    recipe = json.loads((run / "recipe.json").read_text())
    assert ctx["recipe"]["chosen"] == recipe["chosen"] and [c for c in ctx["recipe"]["candidates"] if c["chosen"]]
    assert all(reason in text for reason in recipe["why"])
    history = (run / "history.csv").read_text().splitlines()
    assert len(ctx["history"]["rows"]) == len(history) - 1
    root = json.loads((run / "config.json").read_text())["data"]["path"]
    shown = [str(Path(t["path"]).relative_to(root)) for t in interp["top_losses"]]  # relative to the data
    assert len(shown) > 0 and all(p in text for p in shown) and f"relative to {root}" in text

    assert "Data audit" not in text  # no inspect.json in the run

    # an existing report is replaced only with --force; the interpret figures are reused, not recomputed
    before, stamp = html, (run / "interpret" / "interpret.json").stat().st_mtime_ns
    assert main(["report", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == f"imgclf: error: {report}: already exists (pass --force to overwrite)"
    assert report.read_text() == before
    # an inspect audit in the run (as `imgclf inspect` writes it): its figures join the data section
    audit = {"imbalance_ratio": 1.0, "largest_class": "a&b", "smallest_class": "<x>", "notes": ["leak <i>1</i>"],
             "image_sizes": {"width": {"min": 40, "median": 40, "max": 40}},
             "duplicates": {"n_exact_groups": 0, "n_near_groups": 2, "n_leaks": 1}}
    (run / "inspect.json").write_text(json.dumps(audit))
    Image.new("RGB", (300, 200), (30, 90, 200)).save(run / "counts.png")
    assert main(["report", str(run), "--quiet", "--force"]) == 0
    assert (run / "interpret" / "interpret.json").stat().st_mtime_ns == stamp
    page = Page(report.read_text())
    text = " ".join(page.text)
    assert "Data audit" in text and "leak <i>1</i>" in text and "i" not in page.tags
    assert "near duplicate groups 2" in " ".join(text.split()) and "40 / 40 / 40" in text
    assert [v for tag, name, v in page.attrs if name == "alt"].count("images per class") == 1
    other = tmp_path / "elsewhere" / "r.html"
    assert main(["report", str(run), "--out", str(other), "--quiet"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(other) and other.stat().st_size > 10_000

    # the data moved away: the counts were recorded at training time, so nothing is lost
    shutil.move(json.loads((run / "config.json").read_text())["data"]["path"], tmp_path / "moved")
    data = report_context(run)["data"]
    assert {r["class"]: r["valid"] for r in data["rows"]} == {c: 3 for c in CLASSES}
    assert data["totals"]["train"] == 18 and "as trained" in data["note"]

    # user mistakes: one line, exit 2
    for args, expect in (([str(tmp_path / "nope")], "no such run"), ([str(tmp_path)], "not a run directory")):
        assert main(["report", *args, "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expect in err[0], err


def test_big_images_are_shrunk_before_embedding_and_small_ones_kept_as_they_are(tmp_path):
    rng = np.random.default_rng(0)
    big = tmp_path / "big.png"
    Image.fromarray(rng.integers(0, 256, (1800, 2000, 4), dtype=np.uint8), "RGBA").save(big)
    assert big.stat().st_size > 4 * MAX_IMAGE_BYTES
    uri = data_uri(big)  # noise: the worst case, it fits only smaller than 1600 px
    im = decode(uri)
    assert len(base64.b64decode(uri.split(",", 1)[1])) <= MAX_IMAGE_BYTES and im.mode == "RGB"
    assert max(im.size) < 1600 and im.size[0] / im.size[1] == pytest.approx(2000 / 1800, rel=0.01)
    plot = tmp_path / "plot.png"  # flat colours: shrunk to 1600 px, still a PNG
    Image.fromarray(np.kron(rng.integers(0, 256, (18, 20, 3), dtype=np.uint8), np.ones((200, 200, 1), np.uint8)))\
        .save(plot, compress_level=0)
    assert plot.stat().st_size > MAX_IMAGE_BYTES
    uri = data_uri(plot)
    assert uri.startswith("data:image/png;") and decode(uri).size == (1600, 1440)
    small = tmp_path / "small.png"
    Image.new("RGB", (50, 40), (10, 200, 30)).save(small)
    assert data_uri(small) == "data:image/png;base64," + base64.b64encode(small.read_bytes()).decode()


def test_report_in_headless_chromium(image_folder, tmp_path, browser_page):
    # the fixed recipe with --lr auto: history by epoch and an lr_find plot (the auto recipe is checked above)
    run = tiny_run(image_folder, tmp_path, recipe="fine_tune", epochs=0, freeze_epochs=4, lr="auto")
    assert (run / "lr_find.png").is_file()
    assert main(["report", str(run), "--quiet"]) == 0
    report = run / "report.html"

    page = browser_page.page
    page.goto(report.as_uri(), wait_until="load")
    assert browser_page.problems() == []
    assert browser_page.failed == [] and all(u.startswith(("file:", "data:")) for u in browser_page.requests)
    for section in SECTIONS:
        assert page.locator(f"section#{section} h2").is_visible(), section
    assert page.locator("section#recipe").count() == 0  # no recipe.json in a fine_tune run
    images = page.evaluate("Array.from(document.images, i => [i.alt, i.complete, i.naturalWidth])")
    assert len(images) >= 6 and all(done and width > 0 for _, done, width in images), images
    assert "learning-rate finder" in [alt for alt, _, _ in images]
    text = page.inner_text("body")
    assert "a&b" in text and "<x>" in text
    assert page.locator("#per-class tbody tr").count() == len(CLASSES)
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280  # no sideways scrolling
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    with Image.open(shot) as im:
        assert im.format == "PNG" and im.size[0] == 1280 and im.size[1] > 2000




def test_an_interpretation_of_other_images_is_labelled_as_such(trained_run, tmp_path, capsys):
    """`interpret --data` scores other images than the run's validation split: the report says whose they are
    instead of titling them "the validation images" under the run's own headline."""
    run = shutil.copytree(trained_run, tmp_path / "run")
    assert main(["interpret", str(run), "--quiet"]) == 0
    ctx = report_context(run)
    assert (ctx["scored"], ctx["scored_other"]) == ("validation images", None)
    other = tmp_path / "other"
    for cls in ("cats", "dogs"):
        shutil.copytree(trained_run.parent / "data" / "val" / cls, other / cls)
    assert main(["interpret", str(run), "--data", str(other), "--quiet"]) == 0
    ctx = report_context(run)
    n = json.loads((run / "interpret" / "interpret.json").read_text())["n_valid"]
    assert ctx["scored_other"] == {"source": str(other), "n": n} and ctx["scored"] == f"images of {other}"
    assert main(["report", str(run), "--out", str(tmp_path / "r.html"), "--quiet"]) == 0
    html = (tmp_path / "r.html").read_text()
    assert f"score {n} images of {other}" in html and "The validation images the model got most wrong" not in html
