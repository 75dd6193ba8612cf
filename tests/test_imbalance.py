"""`--balance auto` chooses from the data and the recipe: class weights on a pretrained body (the probe, a
fine-tune), the even sampler from scratch (bench/imbalance.py measured both), none when classes are even."""

from __future__ import annotations

import json

import pytest

from imgclf.cli import main
from imgclf.data.samplers import choose_balance


@pytest.mark.parametrize("recipe, streaming, want", [
    ("scratch", False, "sampler"), ("probe", False, "weights"), ("auto", False, "weights"),
    ("fine_tune", False, "weights"), (None, False, "weights"), ("scratch", True, "weights")])
def test_auto_by_ratio_and_recipe(recipe, streaming, want):
    method, why = choose_balance("auto", [120, 12], recipe=recipe, streaming=streaming)
    assert method == want and "10.00" in why
    assert ("from scratch" in why) == (recipe == "scratch")
    # classes close to even: nothing, whatever the recipe; what is asked for is done, whatever the recipe
    assert choose_balance("auto", [124, 121], recipe=recipe, streaming=streaming)[0] == "none"
    assert choose_balance("weights", [120, 12], recipe=recipe)[0] == "weights"


def test_cli_scratch_auto_takes_the_sampler(image_folder, tmp_path, capsys):
    data = image_folder({"cats": 15, "dogs": 3}, split=True, n_valid=3, size=(40, 30))
    out = tmp_path / "run"
    assert main(["train", str(data), "--size", "32", "--bs", "8", "--quiet", "--recipe", "scratch", "--arch",
                 "simple_cnn", "--epochs", "1", "--calibrate", "off", "--out", str(out)]) in (0, None)
    printed = capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    resolved = json.loads((out / "config.json").read_text())["resolved"]["balance"]
    assert m["balance"] == resolved["method"] == "sampler" and resolved["recipe"] == "scratch"
    assert "from scratch" in resolved["why"] and resolved["ratio"] == pytest.approx(5.0)
    assert "balance sampler — imbalance ratio 5.00 >= 3, trained from scratch" in printed
