"""Shared test fixtures: tiny image folders made with PIL in `tmp_path`, and the real data set.

Every image is a solid class colour plus Gaussian noise, so a model can learn the classes in a few
steps (class 0 red-ish, class 1 blue-ish, class 2 green-ish, ... by sorted class name) while no two
images are identical. Typical use:

    def test_something(tiny_split_folder):            # train/{cats,dogs} (6 each) + val/ (3 each)
        data = ImageData.from_folder(tiny_split_folder, size=32, progress=False)

    def test_other(image_folder):                      # a factory bound to this test's tmp_path
        root = image_folder({"cats": 10, "dogs": 10}, split=True, valid_name="valid", ext=".png")

    def test_decode(tmp_path, write_image):            # one file in any PIL mode
        write_image(tmp_path / "a.png", mode="LA", size=(20, 10))

`write_image` and `make_folder` are plain functions here too; the fixtures of the same role hand them
to tests so that no test module has to import from conftest.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image


def pytest_configure(config) -> None:
    """The suite keeps its exported engines, recorded rates and weights in a cache of its own (subprocesses too),
    removed at the end: it never evicts or rewrites what the user's ~/.cache/imgclf holds."""
    if "IMGCLF_CACHE" not in os.environ:
        os.environ["IMGCLF_CACHE"] = config._imgclf_cache = tempfile.mkdtemp(prefix="imgclf-test-cache-")


def pytest_unconfigure(config) -> None:
    if getattr(config, "_imgclf_cache", None):
        shutil.rmtree(config._imgclf_cache, ignore_errors=True)


# class colours by sorted class index: red-ish, blue-ish, green-ish, yellow-ish, purple-ish, teal-ish
PALETTE = [(200, 50, 50), (50, 50, 200), (50, 180, 60), (210, 190, 40), (150, 60, 170), (40, 170, 180)]

# the real data set, beside the repository: /work/shared when the repo is /work/main
HYMENOPTERA = Path(__file__).resolve().parents[2] / "shared/datasets/hymenoptera"


def class_colour(index: int) -> tuple[int, int, int]:
    """The base RGB colour of the class at `index` in sorted class order."""
    return PALETTE[index % len(PALETTE)]


def write_image(
    path: str | Path,
    mode: str = "RGB",
    size: tuple[int, int] = (40, 30),
    colour: tuple[int, int, int] = (128, 128, 128),
    noise: float = 20.0,
    seed: int = 0,
    **save_kwargs,
) -> Path:
    """Write a noisy solid-`colour` image of `size` (width, height) in PIL `mode` to `path`.

    The format follows the extension (.jpg, .png, .gif, .tif, .webp, .bmp). Modes that PIL converts to
    from RGB ("L", "LA", "RGBA", "P", "CMYK", "1", ...) are converted; the high bit-depth modes are built
    from the grey values: "I;16" scales 0..255 to 0..65535, "I" likewise as int32, "F" to 0..1 floats.
    Extra keyword arguments go to `Image.save` (e.g. `quality=`, `exif=`, `transparency=`).
    Returns the path.
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    w, h = size
    a = np.asarray(colour, dtype=np.float64) + rng.normal(0.0, noise, (h, w, 3))
    img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")
    if mode in ("I;16", "I", "F"):
        grey = np.asarray(img.convert("L"), dtype=np.float64)
        if mode == "I;16":
            img = Image.fromarray((grey * 257).astype(np.uint16))
        elif mode == "I":
            img = Image.fromarray((grey * 257).astype(np.int32), "I")
        else:
            img = Image.fromarray((grey / 255).astype(np.float32), "F")
    elif mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **save_kwargs)
    return path


def make_folder(
    root: str | Path,
    classes: Mapping[str, int],
    size: tuple[int, int] = (40, 30),
    split: bool = False,
    valid_name: str = "val",
    n_valid: int | None = None,
    ext: str = ".jpg",
    seed: int = 0,
) -> Path:
    """Write a labelled image folder under `root` and return `root`.

    `classes` maps class name to image count. Without `split` the layout is `root/<class>/` with that
    many images per class. With `split` it is `root/train/<class>/` with that many images plus
    `root/<valid_name>/<class>/` with `n_valid` more (default: half the count, at least 1).
    Files are named `<class>_<n><ext>` with `n` unique across splits, so the fastai pets regex
    `^(.+)_\\d+\\.jpg$` recovers the class from the name alone.
    """
    root = Path(root)
    for ci, name in enumerate(sorted(classes)):
        n = classes[name]
        parts = [(root / name, n)] if not split else [
            (root / "train" / name, n),
            (root / valid_name / name, n_valid if n_valid is not None else max(1, n // 2)),
        ]
        number = 0
        for folder, count in parts:
            folder.mkdir(parents=True, exist_ok=True)
            for _ in range(count):
                write_image(folder / f"{name}_{number}{ext}", size=size, colour=class_colour(ci),
                            seed=seed * 100_003 + ci * 1_009 + number)
                number += 1
    return root


@pytest.fixture(autouse=True)
def _torch_threads():
    """Every test starts with the process's torch thread count: a test that pins it (bitwise resume checks) would
    otherwise change what later ones measure (the probe's fork workers follow it)."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(name="write_image")
def write_image_fixture() -> Callable[..., Path]:
    """The `write_image(path, mode=..., size=..., colour=...)` helper."""
    return write_image


@pytest.fixture
def image_folder(tmp_path: Path) -> Callable[..., Path]:
    """A factory: `image_folder(classes, name=None, **make_folder_kwargs)` -> root under tmp_path.

    Each call writes a fresh folder (`data0`, `data1`, ... unless `name` is given); see `make_folder`.
    """
    counter = itertools.count()

    def make(classes: Mapping[str, int], name: str | None = None, **kwargs) -> Path:
        return make_folder(tmp_path / (name or f"data{next(counter)}"), classes, **kwargs)

    return make


@pytest.fixture
def tiny_split_folder(image_folder) -> Path:
    """`train/{cats,dogs}` with 6 images each and `val/{cats,dogs}` with 3 each, 40x30 JPEGs.

    cats are red-ish, dogs blue-ish.
    """
    return image_folder({"cats": 6, "dogs": 6}, name="tiny_split", split=True)


@pytest.fixture
def tiny_folder(image_folder) -> Path:
    """`{cats,dogs}/` with 10 images each and no split folders (a random split applies), 40x30 JPEGs."""
    return image_folder({"cats": 10, "dogs": 10}, name="tiny")


@pytest.fixture
def hymenoptera() -> Path:
    """The real ants-vs-bees data set in `../shared/datasets/`; FAILS (never skips) when it is missing."""
    if not (HYMENOPTERA / "train").is_dir():
        pytest.fail(f"real data set missing: {HYMENOPTERA} (expected train/ and val/ with ants/ and bees/)")
    return HYMENOPTERA


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A finished run directory, trained once per test session and shared read-only by the tests that need a
    model (export, serve, predict, distill): three colour classes, 12 train + 6 valid 48x40 JPEGs each, the
    default pretrained backbone probed at 64 px (seconds). Its data folder sits beside it as `data/`.
    Tests must not write into it: copy it first (`shutil.copytree`) when they do."""
    from imgclf.config import DataConfig, RunConfig, TrainConfig
    from imgclf.train.job import train

    root = tmp_path_factory.mktemp("trained_run")
    data = make_folder(root / "data", {"cats": 12, "dogs": 12, "frogs": 12}, size=(48, 40), split=True, n_valid=6)
    cfg = RunConfig(data=DataConfig(path=str(data), size=64, bs=16),
                    train=TrainConfig(recipe="probe"), out=str(root / "run"))
    return train(cfg, progress=False).run_dir


CHROMIUM = Path("/usr/bin/chromium")
# as the machine's probe starts it: without the background-networking flags Chromium keeps dialling out
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@dataclass
class BrowserPage:
    """A Playwright page in headless Chromium and what it saw: console lines (`type: text`, page errors as
    `pageerror: ...`), the URLs of failed requests and of every request."""

    page: Any
    console: list[str]
    failed: list[str]
    requests: list[str]

    def problems(self) -> list[str]:
        """Console errors and warnings, and uncaught page errors: a page a user opens should have none."""
        return [m for m in self.console if m.startswith(("error", "warning", "pageerror"))]


@pytest.fixture
def browser_page():
    """A `BrowserPage` (1280x900) in Debian's Chromium driven by Playwright (never Playwright's own download).
    FAILS (never skips), naming what is missing, where Chromium or the playwright package is not installed:
    `.ci/run` installs Chromium and the dev extra brings Playwright, so a page test always runs."""
    missing = [what for what, ok in (("/usr/bin/chromium (apt-get install chromium)", CHROMIUM.exists()),
                                     ("the playwright package (pip install playwright)",
                                      importlib.util.find_spec("playwright") is not None)) if not ok]
    if missing:
        pytest.fail("no browser for the page tests: missing " + " and ".join(missing))
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            seen = BrowserPage(page, [], [], [])
            page.on("console", lambda m: seen.console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: seen.console.append(f"pageerror: {e}"))
            page.on("requestfailed", lambda r: seen.failed.append(r.url))
            page.on("request", lambda r: seen.requests.append(r.url))
            yield seen
        finally:
            browser.close()
