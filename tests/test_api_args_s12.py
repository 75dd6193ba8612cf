"""The Python API's arguments as a new user first writes them: a path for the data, a number for the arch, one
metric's name, a size from a config string, a batch size of 0. Each is one clear UserError saying what to pass
instead, or (one metric's name) accepted as fastai users expect."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from imgclf.config import DataConfig, RunConfig
from imgclf.data.core import ImageData
from imgclf.errors import UserError
from imgclf.train import Learner, vision_learner
from imgclf.train.job import load_data
from imgclf.train.metrics import accuracy

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def load(root, **kw) -> ImageData:
    kw = {"size": 32, "workers": 1, **kw}
    return ImageData.from_folder(root, progress=False, **kw)


@pytest.fixture
def data(image_folder) -> ImageData:
    """Two colour classes, 6 train + 3 valid 40x30 JPEGs each, at 32 px."""
    return load(image_folder({"cats": 6, "dogs": 6}, split=True))


def small_learner(data: ImageData, **kw):
    return vision_learner(data, "simple_cnn", pretrained=False, progress=False, device="cpu", precision="fp32", **kw)


# --- 1. the data: built, not a path ---
@pytest.mark.parametrize("as_path", [str, lambda p: p], ids=["str", "Path"])
def test_a_path_for_data_says_to_build_the_data_first(image_folder, as_path):
    root = image_folder({"cats": 2, "dogs": 2})
    with pytest.raises(UserError, match=r"data is a path .*build the data first: data = ImageData\.from_folder\("):
        vision_learner(as_path(root), "simple_cnn")


def test_something_else_for_data_names_what_it_takes():
    with pytest.raises(UserError, match=r"data must be an ImageData \(ImageData\.from_folder\(path\)\).* not dict"):
        vision_learner({"train": []}, "simple_cnn")


# --- 2. the arch: a name ---
@pytest.mark.parametrize("arch", [18, None, ("resnet18",)])
def test_an_arch_that_is_not_a_name_says_what_arch_takes(data, arch):
    with pytest.raises(UserError, match=r"arch=.*: arch takes an architecture name \(a str\), e\.g\. "
                                        r"'efficientnet_lite0'.*list_models\(\)"):
        vision_learner(data, arch, pretrained=False)


def test_a_model_for_arch_points_to_learner_and_that_advice_trains(data):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(UserError, match=r"arch takes an architecture name, not a model; .*Learner\(model, "):
        vision_learner(data, model)
    # the advice as given works: the model trains on the same data's loaders
    learn = Learner(model, data.loader("train", MEAN, STD), data.loader("valid", MEAN, STD), metrics="accuracy",
                    progress=False, device="cpu", precision="fp32", channels_last=False)
    learn.fit_one_cycle(1, 1e-2)
    assert [r["epoch"] for r in learn.recorder.history] == [0]
    assert 0.0 <= learn.recorder.history[0]["accuracy"] <= 1.0


# --- 3. metrics: one name is one metric ---
def test_one_metric_name_trains_and_records_it(data):
    learn = small_learner(data, metrics="accuracy")
    assert [name for name, _ in learn.metrics] == ["accuracy"]
    learn.fit_one_cycle(1, 1e-2)
    (row,) = learn.recorder.history
    assert set(row) >= {"train_loss", "valid_loss", "accuracy"}
    # 6 validation images: accuracy is a count of them over 6, not a string's letters
    assert row["accuracy"] * data.n_valid == pytest.approx(round(row["accuracy"] * data.n_valid))


def test_one_metric_function_and_a_list_are_taken_alike(data):
    assert [n for n, _ in small_learner(data, metrics=accuracy).metrics] == ["accuracy"]
    assert [n for n, _ in small_learner(data, metrics=["accuracy", "error_rate"]).metrics] == ["accuracy",
                                                                                               "error_rate"]


def test_one_metric_name_of_another_task_is_still_refused(data):
    with pytest.raises(UserError, match="metric mae scores regression data"):
        small_learner(data, metrics="mae")


def test_learner_takes_one_metric_name_and_refuses_a_number():
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    model = nn.Linear(4, 2)
    learn = Learner(model, [(x, y)], [(x, y)], metrics="error_rate", progress=False, device="cpu", precision="fp32",
                    channels_last=False)
    assert [n for n, _ in learn.metrics] == ["error_rate"]
    assert set(learn.validate()) == {"valid_loss", "error_rate"}
    with pytest.raises(UserError, match=r"metrics=5: give a metric name, a function or a list of them"):
        Learner(model, [(x, y)], metrics=5, device="cpu")


# --- 4. size, bs, workers, valid_pct: numbers of the right kind ---
@pytest.mark.parametrize("size", ["128", 128.0, True, None])
def test_size_that_is_not_an_integer_is_refused(image_folder, size):
    root = image_folder({"cats": 2, "dogs": 2})
    with pytest.raises(UserError, match=r"size=.*: size must be an integer >= 8 \(pixels a side\), e\.g\. size=224"):
        load(root, size=size)


@pytest.mark.parametrize(("kw", "message"), [
    ({"bs": "64"}, r"bs='64': bs must be an integer >= 1 \(images per batch\)"),
    ({"bs": True}, r"bs=True: bs must be an integer >= 1"),
    ({"bs": -2}, r"bs=-2: too small; bs must be an integer >= 1"),
    ({"workers": -1}, r"workers=-1: too small; workers must be an integer >= 0 \(decoding threads"),
    ({"workers": 1.5}, r"workers=1\.5: workers must be an integer >= 0"),
    ({"valid_pct": "0.2"}, r"valid_pct='0\.2': valid_pct must be a number between 0 and 1, e\.g\. valid_pct=0\.2"),
    ({"valid_pct": True}, r"valid_pct=True: valid_pct must be a number between 0 and 1"),
])
def test_counts_and_fractions_of_the_wrong_kind_are_refused(image_folder, kw, message):
    root = image_folder({"cats": 2, "dogs": 2})
    with pytest.raises(UserError, match=message):
        load(root, **kw)


def test_valid_pct_out_of_range_is_refused_where_a_split_is_drawn(image_folder):
    root = image_folder({"cats": 4, "dogs": 4})
    with pytest.raises(UserError, match=r"--valid-pct must be between 0 and 1, got 1\.5"):
        load(root, valid_pct=1.5)


def test_from_csv_and_from_files_check_the_same_numbers(image_folder):
    root = image_folder({"cats": 3, "dogs": 3})
    files = sorted(root.glob("*/*.jpg"))
    (root / "labels.csv").write_text("file,label\n" + "".join(f"{p.relative_to(root)},{p.parent.name}\n"
                                                               for p in files))
    with pytest.raises(UserError, match=r"size='128': size must be an integer"):
        ImageData.from_csv(root / "labels.csv", size="128", progress=False)
    with pytest.raises(UserError, match=r"bs=0: too small; bs must be an integer >= 1"):
        ImageData.from_files(files, [p.parent.name for p in files], bs=0, progress=False)
    with pytest.raises(UserError, match=r"valid_pct='0\.5'"):
        ImageData.from_csv(root / "labels.csv", valid_pct="0.5", progress=False)


def test_whole_numbers_of_any_integer_type_are_taken(image_folder):
    """A numpy integer (a size from an array, a sweep) is a whole number: taken, and used as one."""
    data = load(image_folder({"cats": 4, "dogs": 4}), size=np.int64(32), bs=np.int32(4))
    assert (data.size, data.bs) == (32, 4)
    assert next(iter(data.loader("train", MEAN, STD)))[0].shape == (4, 3, 32, 32)


# --- 5. bs=0: refused when the data is built, not at the first epoch ---
def test_batch_size_zero_is_refused_by_from_folder_before_any_file_is_read(image_folder, tmp_path):
    with pytest.raises(UserError, match=r"bs=0: too small; bs must be an integer >= 1 \(images per batch\), "
                                        r"e\.g\. bs=64"):
        load(image_folder({"cats": 2, "dogs": 2}), bs=0)
    # checked first: a folder that does not exist is not even looked at
    with pytest.raises(UserError, match=r"bs=0: too small"):
        load(tmp_path / "missing", bs=0)


def test_the_cli_path_goes_through_the_same_check(image_folder):
    """`imgclf train` builds its data with `job.load_data` from the config: a bs of 0 there (a config.json, a
    resumed run) meets the same check as the API."""
    root = image_folder({"cats": 2, "dogs": 2})
    with pytest.raises(UserError, match=r"bs=0: too small; bs must be an integer >= 1"):
        load_data(RunConfig(data=DataConfig(path=str(root), size=32, bs=0)), progress=False)
