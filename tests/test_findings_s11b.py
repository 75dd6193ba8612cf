"""Sweep 11b: interpret refuses tags and numbers from Python, export's tag parity per decision and per image, the serve
banner per task, evaluate names the split it scored and refuses shards, short names that stay distinct."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from imgclf import ImageData, Interpretation, UserError, vision_learner
from imgclf.cli import main
from imgclf.data.show import short, short_names
from imgclf.data.targets import describe_targets
from imgclf.evaluate.plots import confusion_matrix_figure
from imgclf.infer.export import _log_line, parity

LONG = [f"very long class name number {w} xxxxxxxxxx" for w in ("one", "two", "three", "four", "five")]


def _csv_data(tmp_path, write_image, task: str) -> ImageData:
    """12 tiny images labelled by a CSV: an age column (regression) or space-separated tags (multi-label)."""
    rows = []
    for i in range(12):
        write_image(tmp_path / "img" / f"i{i}.png", size=(24, 24), colour=(20 * i, 100, 200 - 10 * i), seed=i)
        rows.append([f"img/i{i}.png", str(10 + 5 * i) if task == "regression" else ["red", "blue", "red blue"][i % 3],
                     str(i >= 9)])
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([["file", "age" if task == "regression" else "tags", "is_valid"], *rows])
    return ImageData.from_csv(tmp_path / "labels.csv", task=task, size=32, progress=False)


@pytest.mark.parametrize("task", ["regression", "multi_label"])
def test_interpretation_from_a_learner_of_tags_or_numbers_is_a_user_error(tmp_path, write_image, task):
    learn = vision_learner(_csv_data(tmp_path, write_image, task), "xresnet_tiny", pretrained=False)
    learn.get_preds = lambda *a, **k: pytest.fail("predicted before refusing")  # refused up front
    words = task.replace("_", "-")
    with pytest.raises(UserError, match=f"this learner's task is {words}; interpret covers single-label"):
        Interpretation.from_learner(learn)


def test_from_run_of_a_python_export_asks_for_data_in_python_and_cli_words(tmp_path, image_folder):
    data = ImageData.from_folder(image_folder({"cats": 4, "dogs": 4}), size=32, progress=False)
    run = vision_learner(data, "xresnet_tiny", pretrained=False).export(tmp_path / "run")
    assert not (run / "config.json").exists()
    with pytest.raises(UserError, match=r"pass the labelled images: data=DIR or an ImageData \(--data DIR on the "
                                        r"command line\)"):
        Interpretation.from_run(run, progress=False)
    interp = Interpretation.from_run(run, data=data, progress=False)  # given the data it interprets
    assert interp.n == len(data.valid_paths) and interp.classes == ["cats", "dogs"]


class _Fixed:
    """A stand-in predictor whose outputs are fixed tag probabilities (1 view)."""

    threshold = 0.5

    def __init__(self, probs):
        self.probs = torch.tensor(probs)

    def view_probs(self, images):
        return self.probs[: len(images)][None]


def test_tag_parity_counts_decisions_and_whole_images():
    ref = [[0.9, 0.1, 0.8, 0.2, 0.7]] * 4
    out = [[0.9, 0.1, 0.8, 0.2, 0.7], [0.4, 0.1, 0.8, 0.2, 0.7], [0.9, 0.1, 0.8, 0.6, 0.7], ref[0]]  # 2 flips
    targets = torch.tensor([[1, 0, 1, 0, 1]] * 4).float()
    p = parity(_Fixed(ref), _Fixed(out), torch.zeros(4, 3, 8, 8, dtype=torch.uint8), targets, "multi_label")
    assert p["decision_agreement"] == pytest.approx(18 / 20) and p["image_agreement"] == pytest.approx(2 / 4)
    assert p["accuracy_eager"] == 1.0 and p["accuracy"] == pytest.approx(18 / 20)  # accuracy_multi: per decision
    line = _log_line("eager fp32 vs int8", p)
    assert "tag decisions agree 90.00% (images whose every tag decision agrees: 50.00%)" in line
    assert "accuracy_multi 1.0000 eager -> 0.9000" in line


def test_serve_banner_words_each_task():
    assert describe_targets("regression", ["age"]) == "a number (age)"
    assert describe_targets("multi_label", ["red"]) == "1 tag"
    assert describe_targets("multi_label", ["red", "blue", "round"]) == "3 tags"
    assert describe_targets("classify", ["ants", "bees"]) == "2 classes"


def test_serve_prints_a_regression_run_as_one(tmp_path, write_image, monkeypatch, capsys):
    """The real banner of `serve` (uvicorn's loop stubbed out) for a regression model saved from Python."""
    import uvicorn

    from imgclf.serve.app import serve

    run = vision_learner(_csv_data(tmp_path, write_image, "regression"), "xresnet_tiny",
                         pretrained=False).export(tmp_path / "run")
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)
    serve(run, port=0)
    banner = capsys.readouterr().out.splitlines()[0]
    assert banner == f"imgclf serve: {run} (xresnet_tiny, a number (age)) on cpu"


def test_evaluate_names_the_split_it_scored_and_how_to_score_test(trained_run, tmp_path, image_folder, capsys):
    classes = {"cats": 2, "dogs": 2, "frogs": 2}
    root = image_folder(classes, name="set", split=True, valid_name="valid", n_valid=1, size=(48, 40), seed=3)
    image_folder(classes, name="set/test", size=(48, 40), seed=7)
    assert main(["evaluate", str(trained_run), str(root), "--json", str(tmp_path / "e.json")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("accuracy ")  # the figures first, as for any DATA; the folder they are of last
    assert out[-1] == (f"scored {root / 'valid'} (3 images; train/ and test/ not scored; score test/ with "
                       f"`imgclf evaluate {trained_run} {root / 'test'}`)")
    res = json.loads((tmp_path / "e.json").read_text())
    assert res["n"] == 3 and res["scored"] == str(root / "valid") and res["not_scored"] == ["train", "test"]
    assert not res["unused_entries"]["total"]  # test/ is said in the line above, not warned as unused
    # another folder beside is not a split: warned as unused (as training does), not offered to be scored
    image_folder({"cats": 1}, name="set/extra")
    with pytest.warns(UserWarning, match=r"1 outside_split \(e.g. extra\)"):
        assert main(["evaluate", str(trained_run), str(root)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"scored {root / 'valid'} (3 images; train/ and test/")
    # the command it gives works: test/ scored whole, its 6 images, and no split line
    assert main(["evaluate", str(trained_run), str(root / "test")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("accuracy ") and out[0].endswith("n 6")


def test_evaluate_of_shards_points_to_their_source(trained_run, tmp_path, image_folder, capsys):
    data = image_folder({"cats": 4, "dogs": 4}, name="src")
    shards = tmp_path / "shards"
    assert main(["shard", str(data), "--out", str(shards), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(trained_run), str(shards)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tar shards" in err[0] and "no images found" not in err[0]
    assert err[0].endswith(f"`imgclf evaluate {trained_run} {data.resolve()}`")


def test_short_names_stay_distinct_where_they_share_a_prefix_and_suffix():
    assert len({short(x) for x in LONG}) == 1  # what `short` alone made of them
    for n in (20, 24):
        names = short_names(LONG, n)
        assert len(set(names)) == 5 and all(len(x) <= n for x in names)
        assert all(w in x for w, x in zip(("one", "two", "thr", "four", "five"), names, strict=True)), names
    assert short_names(LONG)[0] == "very…one xxxxxxxxxx"
    assert short_names(["ants", "a_rather_long_class_name_07"]) == ["ants", short("a_rather_long_class_name_07")]
    # where a re-cut name still reads as another class's name, every name is numbered
    assert short_names(["a" * 40, "a" * 41, "aaaa…"]) == ["1 aaaaaaaa…aaaaaaaaa", "2 aaaaaaaa…aaaaaaaaa", "3 aaaa…"]
    ticks = [t.get_text() for t in confusion_matrix_figure(torch.eye(5).numpy(), LONG).axes[0].get_xticklabels()]
    assert len(set(ticks)) == 5 and ticks == short_names(LONG)
