"""Which accuracy to trust when the validation split is small: the validation figure or the cross-validated one.

A validation split of a few dozen images gives an interval tens of points wide (12 images, 10 right:
0.55-0.95), too wide to tell candidates or runs apart. The auto/probe recipe already holds a second estimate
that rests on many more images: the chosen probe's k-fold cross-validated accuracy on the training split
(`recipe.json`, the chosen candidate's `selection`), each training image scored once by a head that did not
fit it. It is not free of bias (each fold's head saw 4/5 of the training split: a little pessimistic; its
weight decay was picked among a few on these folds: a little optimistic), and it cannot see a difference
between the training images and those the model will meet, which the untouched validation split can.

So `train` shows both, each with its 95% Wilson interval and image count, and says which to quote: the one
with the narrower interval while the two agree (the other inside the validation interval), neither alone when
they disagree by more than the validation split's own noise explains. bench/trust.py counts how often the
figure named lies inside the interval of images held out entirely. The validation figures of metrics.json
are not changed: the validation split is still scored once, at the end.
"""

from __future__ import annotations

from typing import Any

from .metrics import format_figure, wilson_interval

SMALL_VALID = 100  # below this many validation images, train sets the cross-validated figure beside it


def cv_figure(report: dict[str, Any]) -> dict[str, Any] | None:
    """The kept model's cross-validated accuracy on the training split, with its Wilson bounds and image count
    (`recipe.json`'s chosen candidate's `selection`); None when the model kept was not chosen by CV (a fixed
    recipe, `--selection valid`, or a fine-tune kept on the inner holdout: the CV figure was the probe's)."""
    chosen = next((c for c in report.get("candidates", []) if c.get("name") == report.get("chosen")), None)
    sel = (chosen or {}).get("selection") or {}
    if sel.get("accuracy") is None or not sel.get("n"):
        return None
    n, acc = int(sel["n"]), float(sel["accuracy"])
    lo, hi = wilson_interval(acc * n, n)  # mirror views share their image's fold: n images, not 2n rows
    return {"accuracy": acc, "low": lo, "high": hi, "n": n, "method": sel.get("method", "cross-validation")}


def validation_advice(metrics: dict[str, Any], report: dict[str, Any] | None = None,
                      small: int = SMALL_VALID) -> dict[str, Any] | None:
    """For a single-label run with fewer than `small` validation images: `trust` ("cv", "valid" or "neither";
    None when no CV figure exists), the CV figure (`cv_figure`) and `lines` for `train` to print. None when the
    validation split is large enough to stand alone, or the run has no accuracy."""
    n_valid = int(metrics.get("n_valid") or 0)
    if "accuracy" not in metrics or "accuracy_low" not in metrics or not 0 < n_valid < small:
        return None
    acc, lo, hi = metrics["accuracy"], metrics["accuracy_low"], metrics["accuracy_high"]
    valid_text = format_figure("accuracy", acc, lo, hi, n_valid)
    cv = cv_figure(report or {})
    if cv is None:
        return {"trust": None, "cv": None, "lines": [
            f"small validation split: {valid_text}; the interval is {hi - lo:.2f} wide, so runs or settings whose "
            f"accuracies differ by less cannot be told apart on it (no cross-validated figure: this recipe did "
            "not choose by cross-validation; more validation images narrow it)"]}
    cv_text = format_figure("accuracy", cv["accuracy"], cv["low"], cv["high"], cv["n"])
    lines = [f"small validation split ({n_valid} < {small} images): {valid_text} on validation; {cv_text} "
             f"cross-validated on the training split ({cv['method']})"]
    agree = lo <= cv["accuracy"] <= hi
    if not agree:
        trust = "neither"
        origin = (metrics.get("near_duplicates_moved") or {}).get("split_origin")
        why = ("a gap the validation split's noise does not explain; its images may differ from the training ones "
               "(a given valid/ folder?)" if origin in (None, "given") else
               "the split was drawn at random from the same images, so the gap is chance or a few hard images "
               "landing in validation")
        lines.append("trust neither alone: the cross-validated figure lies outside the validation interval, "
                     f"{why}: score more images the run has not seen (`imgclf evaluate`)")
    elif cv["high"] - cv["low"] < hi - lo:
        trust = "cv"
        lines.append(f"trust the cross-validated figure: it rests on {cv['n']} images (interval "
                     f"{cv['high'] - cv['low']:.2f} wide vs {hi - lo:.2f}) and lies inside the validation interval, "
                     "so the untouched validation split confirms it")
    else:
        trust = "valid"
        lines.append(f"trust the validation figure: its interval ({hi - lo:.2f} wide) is narrower than the "
                     f"cross-validated one's ({cv['high'] - cv['low']:.2f}), and the two agree")
    return {"trust": trust, "cv": cv, "lines": lines}
