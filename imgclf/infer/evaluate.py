"""Score a trained run on labelled images it has not seen, with the figures of its task."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..data.dedup import array_keys, check_seen
from ..data.idx import is_idx_folder, load_idx, presize_arrays
from ..data.shards import is_shard_dir, read_manifest
from ..data.sources import (
    TRAIN_NAMES,
    VALID_NAMES,
    Items,
    Unused,
    content_keys,
    folder_labels,
    is_image_file,
    items_from_csv,
    merge_by_content,
    require_folder,
    scan_images,
)
from ..data.targets import encode_targets
from ..errors import UserError
from ..rundir import CONFIG_FILE, read_json
from ..train.calibrate import BINS, reliability
from ..train.metrics import (
    accuracy_multi,
    add_intervals,
    class_figures,
    fbeta_multi,
    mae,
    multi_label_intervals,
    rmse,
    wilson_interval,
)
from .predictor import Predictor, load_model
from .tta import TTA_VIEWS, combine


def scored_folder(path: str | Path) -> tuple[Path, list[str]]:
    """The folder of `path` that `evaluate` scores, and the split folders beside it that it does not: a data set
    root with train/ + valid/ (or val/, validation/) is scored on its validation folder (not train/, nor a test*/
    folder: those are named, train/ first); any other folder is scored whole (nothing beside)."""
    root = require_folder(path)
    valid = next((root / n for n in VALID_NAMES if (root / n).is_dir()), None)
    if valid is None or not (root / "train").is_dir():
        return root, []
    beside = [p.name for p in root.iterdir() if p.is_dir() and _split_name(p.name)]
    return valid, sorted(beside, key=lambda n: (n.lower() not in TRAIN_NAMES, n))


def _split_name(name: str) -> bool:
    return name.lower() in TRAIN_NAMES or name.lower().startswith("test")


def labelled_items(path: str | Path, label_re: str | None = None, label_col: str | None = None,
                   multi_label: bool = False) -> Items:
    """Images with labels from `path`: a CSV's test rows (all its rows when none is marked test), a folder's
    validation split when it has train/ + valid/, else all of it (`scored_folder`). `multi_label`: an image
    copied into several tag folders is one image with each tag, as training reads it (`merge_by_content`)."""
    root = Path(path)
    if root.suffix.lower() == ".csv":
        items = items_from_csv(root, label_col=label_col, split="random", test_rows=True)  # test rows, or all
        return Items(items.paths, items.labels, [True] * len(items.paths), items.tags)
    folder, beside = scored_folder(root)  # only the validation folder of a split root is read
    paths, unused = scan_images(folder)
    if folder != root:  # other folders and images beside the split folders: warned as training warns them
        for p in sorted(root.iterdir()):
            if p != folder and p.name not in beside and not p.name.startswith(".") and (p.is_dir() or is_image_file(p)):
                unused.add("outside_split", p)
    if not paths:
        raise UserError(f"{folder}: no images found")
    items = Items(paths, folder_labels(paths, folder, label_re), [True] * len(paths), unused=unused)
    if multi_label:
        items = merge_by_content(items)
        items.unused = unused
    return items


def run_labelling(run_dir: str | Path | None, data: str | Path, label_re: str | None = None,
                  label_col: str | None = None) -> tuple[str | None, str | None, str | None]:
    """How `data` is labelled: the `label_re` / `label_col` given, else the run's own from its config.json (as
    `imgclf interpret --data` reads other images), and a line saying which of the run's was taken (None when
    none was). The run's label column is taken for a CSV `data`, its regex for a folder (IDX files have their
    own labels); `label_re=""` reads class folders even for a run labelled by file names."""
    conf = None if run_dir is None else Path(run_dir) / CONFIG_FILE
    if label_re is not None or label_col is not None or conf is None or not conf.is_file():
        return label_re, label_col, None
    saved = read_json(conf).get("data") or {}
    if Path(data).suffix.lower() == ".csv":
        if saved.get("label_col"):
            col = saved["label_col"]
            return None, col, f"labels from column {col!r}: the run's --label-col ({conf})"
    elif saved.get("label_re") and not is_idx_folder(Path(data)):
        rx = saved["label_re"]
        return rx, None, (f"labels from file names by the run's --label-re '{rx}' ({conf}); "
                          "--label-re '' reads class folders instead")
    return None, None, None


def evaluate(run: str | Path | Predictor, data: str | Path, label_re: str | None = None, bs: int = 64,
             progress: bool = True, tta: bool = False, label_col: str | None = None,
             run_dir: str | Path | None = None) -> dict[str, Any]:
    """The run's figures on labelled images it has not seen (class folders, or a CSV as it trained from).

    Classes: accuracy, loss (plain cross-entropy) and per-class accuracy; tags: accuracy_multi, f1_multi at
    the run's threshold, loss (binary cross-entropy) and per-tag F1; numbers: mae, rmse in the targets'
    units. With `tta` the same figures prefixed `tta_` (center + flip views averaged), from the same pass.
    Proportions carry 95% bounds, `<name>_low`/`<name>_high`: Wilson for accuracy and for each class's accuracy
    (`per_class_accuracy_interval`), a 1000-resample bootstrap over images for accuracy_multi and f1_multi.
    Classes also get balanced_accuracy and macro_f1 (bootstrap bounds) and `ece`, the expected calibration
    error of the confidences as `predict` gives them (the run's temperature applied; 15 bins, as `interpret`
    and the report compute it), with `ece_before` (T = 1) and `temperature` when the run fitted one.

    A data set root (train/ + valid/) is scored on its validation folder: `scored` names it and `not_scored` the
    folders beside it (train, test, ...), which `scored_line` words for the user.

    Images the run trained on (the same bytes: `RUN/train_content.json`, not names) are counted,
    `n_seen_in_training`, and the figures are given again on the unseen ones alone (`accuracy_unseen` with
    `accuracy_unseen_low`/`_high`; other tasks: `<figure>_unseen`), with one warning when any were seen.
    `run_dir`: the run directory when `run` is a `Predictor` (else the check is unavailable, said once).

    With neither `label_re` nor `label_col` given, `data` is labelled as the run was (its config.json: a run
    trained with `--label-re '^(\\d+)_'` reads the same file names; `run_labelling`), and `labels_from_run`
    records which was taken."""
    predictor = run if isinstance(run, Predictor) else load_model(run)
    run_dir = run_dir if run_dir is not None else (None if isinstance(run, Predictor) else run)
    label_re, label_col, took = run_labelling(run_dir, data, label_re, label_col)
    names = TTA_VIEWS if tta else ("center",)
    unused = Unused()  # entries under `data` not used as images: one warning, and listed in the result
    scored: dict[str, Any] = {}  # a data set root: the folder scored and those beside it that were not
    if Path(data).suffix.lower() != ".csv" and is_shard_dir(data):
        source = read_manifest(data).get("source")
        raise UserError(f"{data}: tar shards (written by `imgclf shard`) are streamed for training, not scored; "
                        "evaluate the labelled images they were written from"
                        + (f": `imgclf evaluate {run_dir or 'RUN'} {source}`" if source else ""))
    if is_idx_folder(Path(data)):  # IDX files (Fashion-MNIST): the t10k test set, as arrays
        view_probs, targets, skipped, keys = _idx_outputs(predictor, data, bs, names, progress)
    else:
        if predictor.task == "regression" and Path(data).suffix.lower() != ".csv":
            raise UserError(f"{data}: a regression run is scored on numbers from a CSV column: give the CSV "
                            f"(`imgclf evaluate RUN labels.csv [--label-col {predictor.classes[0]}]`)")
        if Path(data).suffix.lower() != ".csv":
            folder, beside = scored_folder(data)
            if beside:
                scored = {"scored": str(folder), "not_scored": beside}
        items = labelled_items(data, label_re, label_col, multi_label=predictor.task == "multi_label")
        unused = items.unused
        unused.warn(data)
        targets_all = encode_targets(items, predictor.task, str(data), names=predictor.classes, stats=(0.0, 1.0),
                                     require_split=False, whose="run's").values
        view_probs, kept, skipped = predictor.probs_files(items.paths, bs=bs, progress=progress, names=names)
        row = {str(p): i for i, p in enumerate(items.paths)}
        targets = targets_all[[row[str(p)] for p in kept]]
        keys = content_keys(kept)
    if len(targets) == 0:  # every file was skipped (and named): there is nothing to score
        raise UserError(f"{data}: none of the {len(skipped)} image file(s) could be decoded")
    task = predictor.task
    before = _uncalibrated(view_probs, predictor)  # T = 1: what the temperature changed (None when it is 1)
    res = {**_scores(view_probs[0], targets, predictor, _view(before, 0)), "n": len(targets), **scored}
    if task == "classify":
        res["temperature"] = predictor.temperature
    if task != "regression":
        res[f"per_class_{_PER_CLASS[task]}"] = _per_class(view_probs[0], targets, predictor)
    if task == "classify":  # a class's accuracy is its recall: k right of its n images, Wilson's bounds
        res["per_class_accuracy_interval"] = _per_class_intervals(view_probs[0], targets, predictor)
    res["skipped_files"] = [{"path": str(p), "reason": r} for p, r in skipped]
    res["unused_entries"] = unused.to_dict()
    if tta:
        res.update({f"tta_{k}": v for k, v in _scores(combine(view_probs), targets, predictor,
                                                       None if before is None else combine(before)).items()})
        res["tta_views"] = list(TTA_VIEWS)
    res.update(seen_figures(run_dir, keys, view_probs[0], targets, predictor, _view(before, 0)))
    if took:  # which of the run's own was read: {"label_re": ...} or {"label_col": ...}
        res["labels_from_run"] = {k: v for k, v in (("label_re", label_re), ("label_col", label_col)) if v}
    return res


def scored_line(res: dict[str, Any], run: str | Path, data: str | Path) -> str | None:
    """`scored DATA/valid (48 images; train/ and test/ not scored; score test/ with `imgclf evaluate RUN
    DATA/test`)` for a data set root, None when DATA was scored whole."""
    if "scored" not in res:
        return None
    others = [f"{n}/" for n in res["not_scored"]]
    text = f"scored {res['scored']} ({res['n']} images; {_and(others)} not scored"
    held = sorted((n for n in res["not_scored"] if n.lower() not in ("train", "training")),
                  key=lambda n: not n.lower().startswith("test"))
    if held:  # a test/ beside: scored alone it is class folders like any other
        text += f"; score {held[0]}/ with `imgclf evaluate {run} {Path(data) / held[0]}`"
    return text + ")"


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _uncalibrated(view_probs: torch.Tensor, predictor: Predictor) -> torch.Tensor | None:
    """Class probabilities at T = 1 from those at the run's T: softmax(T x log p) = softmax(logits), since
    log p = logits / T less a constant per row (a class whose probability underflowed to 0 stays at 0). None
    for tags and numbers, or when the run is uncalibrated (T = 1): there is no "before" to show."""
    if predictor.task != "classify" or predictor.temperature == 1.0:
        return None
    return (view_probs.log() * predictor.temperature).softmax(-1)


def _view(probs: torch.Tensor | None, i: int) -> torch.Tensor | None:
    return None if probs is None else probs[i]


def _unseen_name(k: str) -> str:
    """accuracy -> accuracy_unseen; accuracy_low -> accuracy_unseen_low (the bounds stay last)."""
    for end in ("_low", "_high"):
        if k.endswith(end):
            return k.removesuffix(end) + "_unseen" + end
    return k + "_unseen"


def seen_figures(run_dir: str | Path | None, keys: list[str], probs: torch.Tensor, targets: torch.Tensor,
                 predictor: Predictor, before: torch.Tensor | None = None) -> dict[str, Any]:
    """`n_seen_in_training` (None when the run has no record) and the figures on the images not trained on,
    with one warning naming the counts when some were trained on. `before`: the probabilities at T = 1."""
    check = check_seen(run_dir, keys)
    if not check.available:
        return {"n_seen_in_training": None}
    unseen = torch.tensor([not s for s in check.seen], dtype=torch.bool)
    n, n_unseen = len(keys), int(unseen.sum())
    out: dict[str, Any] = {"n_seen_in_training": check.n_seen, "n_unseen": n_unseen}
    if n_unseen:
        out.update({_unseen_name(k): v for k, v in _scores(probs[unseen], targets[unseen], predictor,
                                                           None if before is None else before[unseen]).items()
                    if k != "threshold"})
    if check.n_seen:
        main = {"classify": "accuracy", "multi_label": "f1_multi", "regression": "mae"}[predictor.task]
        if n_unseen:
            lo, hi = out.get(f"{main}_unseen_low"), out.get(f"{main}_unseen_high")
            figure = f"{out[main + '_unseen']:.2f}" + (f" ({lo:.2f}-{hi:.2f})" if lo is not None else "")
        else:
            figure = "none (every image was)"
        warnings.warn(f"{check.n_seen} of {n} images scored were in this run's training set (same bytes); "
                      f"{main} on the {n_unseen} unseen: {figure}", stacklevel=3)
    return out


def _idx_outputs(predictor: Predictor, folder: str | Path, bs: int, names: tuple[str, ...], progress: bool):
    """Outputs (V, N, C), targets, skipped files (none) and content keys of an IDX folder's test split,
    presized as training presized it."""
    if predictor.task != "classify":
        raise UserError(f"{folder}: IDX files hold one class per image; this run's task is {predictor.task}")
    s = load_idx(folder, classes=predictor.classes)
    images = presize_arrays(s.valid_images, predictor.presize, progress=progress, desc="presize test")
    out = torch.cat([predictor.view_probs(images[b : b + bs], names) for b in range(0, len(images), bs)], 1)
    return out, s.valid_labels, [], array_keys(s.valid_images)


_PER_CLASS = {"classify": "accuracy", "multi_label": "f1"}


def _scores(out: torch.Tensor, targets: torch.Tensor, predictor: Predictor, before: torch.Tensor | None = None
            ) -> dict[str, float]:
    """The task's figures from activated outputs (probabilities or numbers). Classes: accuracy and loss, balanced
    accuracy and macro F1, and `ece` of these probabilities (`ece_before` of `before`, the same at T = 1)."""
    if predictor.task == "regression":
        return {"mae": mae(out, targets), "rmse": rmse(out, targets)}
    logits = out.clamp(1e-7, 1 - 1e-7)
    if predictor.task == "multi_label":
        logits = logits.logit()  # the metrics take logits: the sigmoid gives the probabilities back
        t = predictor.threshold
        return {"accuracy_multi": accuracy_multi(logits, targets, t), "f1_multi": fbeta_multi(logits, targets, 1, t),
                **multi_label_intervals(logits, targets, t),  # bootstrap over images, fixed seed
                "loss": float(F.binary_cross_entropy(out.clamp(1e-7, 1 - 1e-7), targets)), "threshold": t}
    res = {"accuracy": float((out.argmax(-1) == targets).float().mean()),
           "loss": float(F.nll_loss(out.clamp_min(1e-12).log(), targets))}
    add_intervals(res, len(targets))  # accuracy_low / accuracy_high: 95% Wilson
    figs = class_figures(out, targets)  # the arg-max is all they read: probabilities do as well as logits
    res.update({k: v for k, v in figs.items() if k.startswith(("balanced_accuracy", "macro_f1"))})
    res["ece"] = float(reliability(out, targets, BINS)["ece"])
    if before is not None:
        res["ece_before"] = float(reliability(before, targets, BINS)["ece"])
    return res


def _per_class_intervals(out: torch.Tensor, targets: torch.Tensor, predictor: Predictor) -> dict[str, dict]:
    """95% Wilson bounds of each present class's accuracy (recall), with its number of images."""
    hits, res = out.argmax(-1) == targets, {}
    for i, c in enumerate(predictor.classes):
        n = int((targets == i).sum())
        if n:
            lo, hi = wilson_interval(int(hits[targets == i].sum()), n)
            res[c] = {"low": lo, "high": hi, "n": n}
    return res


def _per_class(out: torch.Tensor, targets: torch.Tensor, predictor: Predictor) -> dict[str, float]:
    """Accuracy of each class present, or F1 of each tag present (the tag's own precision/recall balance)."""
    if predictor.task == "multi_label":
        pred, res = out > predictor.threshold, {}
        for i, c in enumerate(predictor.classes):
            t = targets[:, i].bool()
            if t.any():
                tp = float((pred[:, i] & t).sum())
                res[c] = 2 * tp / (float(pred[:, i].sum()) + float(t.sum()))
        return res
    hits = out.argmax(-1) == targets
    return {c: float(hits[targets == i].float().mean()) for i, c in enumerate(predictor.classes)
            if (targets == i).any()}
