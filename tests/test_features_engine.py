"""The feature engine: onnxruntime's features match eager's on real photos, a wrong engine is never used, the
training split's two views come from one pass, and the probe scores the same on either engine."""

from __future__ import annotations

import warnings

import pytest
import torch

from imgclf.data.augment import center_batch
from imgclf.data.core import ImageData
from imgclf.data.decode import decode_all
from imgclf.models import create_model
from imgclf.train.features import (
    body_key,
    check_parity,
    eager_engine,
    extract_features,
    onnx_engine,
    ort_chunk,
    pick_engine,
    recalled_parity,
)
from imgclf.train.probe import best_fit, fit_linear_probe
from imgclf.train.vision import vision_learner

pytest.importorskip("onnxruntime", reason="the onnx engine needs imgclf[export] (installed by [dev])")

SIZE = 96


@pytest.fixture(autouse=True)
def engine_cache(tmp_path, monkeypatch):
    """Exported graphs go to the test's own folder, not ~/.cache."""
    monkeypatch.setenv("IMGCLF_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "engines"


@pytest.fixture
def photos(hymenoptera) -> torch.Tensor:
    """Six real photos (ants and bees), presized, center-cropped and normalised as the feature pass sees them."""
    paths = sorted((hymenoptera / "val" / "ants").glob("*.jpg"))[:3] + sorted((hymenoptera / "val" / "bees")
                                                                                .glob("*.jpg"))[:3]
    images, _, _ = decode_all(paths, round(SIZE / 0.875), progress=False)
    return center_batch(images, SIZE, torch.tensor([0.5] * 3), torch.tensor([0.5] * 3))


@pytest.fixture(scope="module")
def body():
    model, _ = create_model("efficientnet_lite0", 2, pretrained=True)
    return model.eval()


def test_onnx_engine_matches_eager_fp32_on_real_photos(body, photos, engine_cache):
    engine = pick_engine(body, photos)
    assert engine.name == "onnxruntime fp32" and engine.parity["ok"], engine.note
    ref = eager_engine(body)(photos)
    got = engine(photos)
    assert got.shape == ref.shape == (6, 1280) and got.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(got, ref).min() > 0.9999
    assert (got - ref).abs().max() < 1e-3 * ref.abs().max()
    # and a batch of another size runs through the same session (the batch dimension is free)
    assert torch.allclose(engine(photos[:1]), got[:1], atol=1e-4)
    # more images than one onnxruntime call takes come back whole and in order, the mirrors between
    many = torch.cat([photos, photos.flip(-1), photos])
    assert len(many) > ort_chunk(SIZE) > 1
    out = engine(many)
    assert out.shape == (18, 1280)
    assert torch.allclose(out[:6], got, atol=1e-4) and torch.allclose(out[12:], got, atol=1e-4)
    assert not torch.allclose(out[6:12], got, atol=1e-2)
    # the export was kept under the body's hash: the next engine for this body loads it, same features
    (kept,) = engine_cache.glob("*.onnx")
    assert kept.stem == body_key(body, SIZE) and body_key(body, SIZE + 32) != kept.stem
    again = onnx_engine(body, SIZE)
    assert torch.equal(again(photos), got)
    # its passed parity verdict was kept beside it: the next job skips the eager reference pass for this graph
    assert recalled_parity(again)["cosine"] == engine.parity["cosine"]
    recalled = pick_engine(body, photos)
    assert recalled.parity["recalled"] and torch.equal(recalled(photos), got)
    assert recalled_parity(onnx_engine(body, SIZE, cache=False)) is None  # an uncached graph is always checked


def test_an_engine_off_eager_is_not_used(body, photos):
    """An engine built from another body (a kept engine after the weights changed): parity fails, eager runs."""
    other, _ = create_model("efficientnet_lite0", 2, pretrained=False)
    stale = onnx_engine(other.eval(), SIZE, cache=False)
    assert not check_parity(stale, body, photos)["ok"]
    with pytest.warns(UserWarning, match="features off eager fp32"):
        engine = pick_engine(body, photos, dtype=torch.bfloat16, candidate=stale)
    assert engine.name == "eager bfloat16 autocast" and "off eager fp32" in engine.note
    assert torch.nn.functional.cosine_similarity(engine(photos), eager_engine(body)(photos)).min() > 0.99
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # asking for eager is no fallback: no warning
        assert pick_engine(body, photos, engine="eager").name == "eager fp32"
    with pytest.raises(ValueError, match="choose auto, onnx, eager"):
        pick_engine(body, photos, engine="tensorrt")


def test_train_views_come_from_one_pass_and_match_separate_passes(tiny_split_folder, capsys, monkeypatch):
    """Asked for the mirrors, the center views come from the same pass; asked for the center views alone, no
    mirror is computed. The pass's progress counts images (both views), as the decode's does."""
    monkeypatch.delenv("IMGCLF_PROGRESS", raising=False)  # off a terminal: plain lines
    data = ImageData.from_folder(tiny_split_folder, size=32, bs=4, progress=False)
    alone = vision_learner(data, progress=False)
    xc, _ = alone.cached_features("train", "center")
    assert alone.features.passes == 1 and alone.features.computed == 1
    learn = vision_learner(data, progress=True)
    capsys.readouterr()
    x2, y2 = learn.cached_features("train", "flip")
    n = len(data.train_y)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"features train/center+flip [onnxruntime fp32]: {2 * n} img", lines
    assert lines[-1].startswith(f"features train/center+flip [onnxruntime fp32]: {2 * n} img in "), lines
    x1, y1 = learn.cached_features("train", "center")
    assert learn.features.passes == 1 and learn.features.computed == 2 and torch.allclose(x1, xc, atol=1e-5)
    assert learn.features.engine.name == "onnxruntime fp32"
    assert torch.equal(y1, y2) and torch.equal(y1, data.train_y)
    # the same engine over the old separate "flip" loader gives the same features
    dl = data.loader("train", learn.meta.mean, learn.meta.std, view="flip", channels_last=False)
    xf, yf = extract_features(learn.model, dl, engine=learn.features.engine)
    assert torch.equal(yf, y2) and torch.allclose(xf, x2, atol=1e-4)
    learn.features.engine_name = "eager"
    learn.unfreeze()
    learn.fit_one_cycle(1, 1e-4)  # the body changes: features and engine are rebuilt, here on eager
    xe, _ = learn.cached_features("train", "center")
    assert learn.features.engine.name.startswith("eager") and learn.features.passes == 2
    assert not torch.equal(xe, x1)


def test_probe_scores_the_same_on_onnx_and_eager_features(hymenoptera):
    """The default job's probe on hymenoptera (at 64 px to keep it short): the same accuracy on either engine."""
    data = ImageData.from_folder(hymenoptera, size=64, progress=False)
    scores = {}
    for name in ("auto", "eager"):
        learn = vision_learner(data, progress=False)
        learn.features.engine_name = name
        x1, y1 = learn.cached_features("train", "center")
        x2, y2 = learn.cached_features("train", "flip")
        xv, yv = learn.cached_features("valid", "center")
        fit = best_fit(fit_linear_probe(torch.cat([x1, x2]), torch.cat([y1, y2]), xv, yv, 2))
        scores[learn.features.engine.name] = fit.accuracy
    (onnx, a), (eager, b) = scores.items()
    assert onnx == "onnxruntime fp32" and eager.startswith("eager")
    assert a >= 0.8 and abs(a - b) <= 2 / data.n_valid  # bf16 eager vs fp32 onnx: at most two images apart


def test_the_pass_crops_on_one_torch_thread_in_engine_sized_batches(tiny_split_folder, photos, body):
    """onnxruntime runs on its own threads: the pass crops PASS_PIXELS at a time on one torch thread (features.glue)
    and gives the thread count back, even when the pass fails. In-order batches are slices of the presized images,
    the same as the gathered ones, from any position a resume seeks to."""
    from imgclf.train.features import PASS_PIXELS, glue

    engine = onnx_engine(body, SIZE, cache=False)
    assert engine.own_threads and engine.batch == PASS_PIXELS // SIZE**2
    threads = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="inside"):
        with glue(engine):
            assert torch.get_num_threads() == 1
            raise RuntimeError("inside")
    assert torch.get_num_threads() == threads
    with glue(eager_engine(body)):  # eager computes on torch's threads: all of them
        assert torch.get_num_threads() == threads
    data = ImageData.from_folder(tiny_split_folder, size=32, bs=5, progress=False)
    dl = data.loader("train", (0.5,) * 3, (0.5,) * 3, view="center", channels_last=False)
    gathered = [center_batch(data.train_images[i : i + 5], 32, dl.mean, dl.std) for i in range(0, data.n_train, 5)]
    assert all(torch.equal(a, b) for (a, _), b in zip(dl, gathered, strict=True))
    it = iter(dl)
    next(it)
    state = dl.state_dict()  # stopped after the first batch
    again = data.loader("train", (0.5,) * 3, (0.5,) * 3, view="center", channels_last=False)
    again.load_state_dict(state)
    assert torch.equal(next(iter(again))[0], gathered[1])


def test_the_images_the_engine_was_checked_on_are_not_run_again(tiny_split_folder):
    """Nothing done twice: the parity or sanity check ran the engine on the pass's first images; the pass takes
    those features instead of running them again, and they are the features a fresh run gives."""
    from imgclf.train.features import PARITY_IMAGES

    data = ImageData.from_folder(tiny_split_folder, size=32, bs=4, progress=False)
    learn = vision_learner(data, progress=False)
    x, _ = learn.cached_features("train", "center")
    engine = learn.features.engine
    assert engine.name == "onnxruntime fp32" and engine.primed is None  # used up by the pass
    assert engine.images == len(x) - PARITY_IMAGES  # the pass ran only the others
    fresh = onnx_engine(learn.model, 32, cache=False)
    dl = data.loader("train", learn.meta.mean, learn.meta.std, view="center", channels_last=False)
    again, _ = extract_features(learn.model, dl, engine=fresh)
    torch.testing.assert_close(x, again, atol=1e-5, rtol=0)
    # a primed sample that is not the batch's first images is not used
    fresh.primed = (torch.zeros(2, 3, 32, 32), torch.zeros(2, x.shape[1]))
    other, _ = extract_features(learn.model, dl, engine=fresh)
    torch.testing.assert_close(other, again, atol=1e-5, rtol=0)
