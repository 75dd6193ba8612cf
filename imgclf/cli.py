"""The `imgclf` command: thin over the Python API. User mistakes print one line and exit 2."""

from __future__ import annotations

import argparse
import csv
import glob
import sys
import warnings
from dataclasses import fields
from pathlib import Path

from .config import DataConfig, ModelConfig, RunConfig, TrainConfig
from .errors import UserError

D, M, T = DataConfig(), ModelConfig(), TrainConfig()


def _lr(value: str) -> float | str:
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {value!r}") from None


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default only when it has one worth showing (not None, not an off switch)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action)


def _add_data_flags(g) -> None:
    """The flags that say how DATA is read: the same for every command that loads a data set."""
    g.add_argument("--csv", help="CSV of file,label[,is_valid] with files relative to DATA")
    g.add_argument("--task", default=D.task, choices=["classify", "multi_label", "regression"],
                   help="what to predict: one class; several tags (space-separated in the CSV's label, or the same "
                        "image in several class folders); or a number (a CSV column, see --label-col)")
    g.add_argument("--label-col", help="the CSV column holding the labels or the regression target")
    g.add_argument("--label-re", help=r"regex on the file name; group 1 is the label, e.g. '^(.+)_\d+\.jpg$'")
    g.add_argument("--valid", help="name of the validation folder (default: valid or val, if present)")
    g.add_argument("--valid-pct", type=float, default=D.valid_pct, help="held-out fraction when no split exists")
    g.add_argument("--seed", type=int, default=D.seed, help="seed for the split, init and augmentation")
    g.add_argument("--size", type=int, default=D.size,
                   help="image size in pixels (default: the backbone's recommended size, 256 for the default; from "
                        "scratch, small images' own size)")
    g.add_argument("--crop-pct", type=float, default=D.crop_pct,
                   help="validation view: the center fraction of the presized image (default 0.875, ImageNet's; "
                        "1, the whole image, when a from-scratch model trains at small images' own size)")
    g.add_argument("--bs", type=int, default=D.bs, help="batch size")
    g.add_argument("--augment", default=D.augment,
                   help="training augmentation: a preset (none, light, default, strong) and/or name=strength "
                        "overrides, e.g. 'strong', 'default,noise=0.05,erase=0.25', 'flip=0,rotate=20'; names: "
                        "flip rotate zoom warp translate shear pad lighting saturation hue noise salt_pepper erase")
    g.add_argument("--workers", type=int, default=D.workers, help="decoding threads (0: one per core)")


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train", help="train a classifier on a folder of images",
        description="Train a classifier on DATA from a pretrained backbone: class folders (with train/ + "
                    "valid|val/ or a random split), a regex on file names (--label-re), or a CSV (--csv). By "
                    "default the recipe is chosen from the data (a probe on cached features, a fine-tune where "
                    "it pays) and explained; random weights (--no-pretrained, our own archs) train from "
                    "scratch. Writes a run directory with the model, its config, history, "
                    "metrics and plots.",
        formatter_class=_Help,
    )
    p.add_argument("data", help="image folder (or a CSV of file,label[,is_valid])")
    p.add_argument("--out", help="run directory (default runs/<data-name>; never overwritten: -2, -3...)")
    _add_data_flags(p.add_argument_group("data"))
    g = p.add_argument_group("model")
    g.add_argument("--arch", default=M.arch, help="architecture: the embedded default, ours (simple_cnn, "
                   "xresnet18/34/50: from scratch) or any timm name")
    g.add_argument("--weights", help="weights file (.safetensors/.pth) or URL to start from")
    g.add_argument("--no-pretrained", action="store_true", help="start from random weights")
    g.add_argument("--drop-rate", type=float, default=M.drop_rate,
                   help="dropout before the classifier (default: the arch's own)")
    g = p.add_argument_group("training")
    g.add_argument("--recipe", default=T.recipe, choices=["auto", "probe", "fine_tune", "scratch"],
                   help="auto: probe on cached features, fine-tune only where it pays; probe: the probe only; "
                        "fine_tune: head then whole model, fixed epochs; scratch: the whole model from random weights "
                        "for --epochs (the default for --no-pretrained and our own archs)")
    g.add_argument("--budget", type=float, default=T.budget, help="seconds for the auto recipe (default: sized "
                   "for the data, 60 s + 0.25 s per training image)")
    g.add_argument("--max-epochs", type=int, default=T.max_epochs, help="auto recipe: most fine-tune epochs")
    g.add_argument("--epochs", type=int, default=T.epochs,
                   help="epochs of whole-model training (default: fine_tune 1 after the head, scratch 16)")
    g.add_argument("--freeze-epochs", type=int, default=T.freeze_epochs,
                   help="fine_tune recipe: head-only epochs first (on cached features: well under a second each)")
    g.add_argument("--lr", type=_lr, default=T.lr,
                   help="peak learning rate, or 'auto' (lr_find's valley); default 2e-3 fine-tuning, 8e-3 from scratch")
    g.add_argument("--schedule", default=T.schedule, choices=["one_cycle", "cosine", "step", "constant"],
                   help="learning-rate schedule of whole-model training: one-cycle, warmup + cosine decay, step "
                        "decay (x0.1 at 50%% and 75%%), or flat")
    g.add_argument("--opt", default=T.opt, choices=["adamw", "adam", "sgd", "rmsprop", "adagrad"])
    g.add_argument("--wd", type=float, default=T.wd, help="weight decay")
    g.add_argument("--wd-mode", default=T.wd_mode, choices=["decoupled", "l2"],
                   help="decoupled (AdamW's: weights shrink apart from the gradient step) or l2 (added to the "
                        "gradient, so Adam rescales it); default: adamw decoupled, the other optimizers l2")
    g.add_argument("--mixup", type=float, default=T.mixup, help="MixUp alpha (0: off; 0.2-0.4 typical)")
    g.add_argument("--cutmix", type=float, default=T.cutmix, help="CutMix alpha (0: off; 1.0 typical)")
    g.add_argument("--label-smoothing", type=float, default=T.label_smoothing, help="classification only")
    g.add_argument("--loss", default=T.loss, choices=["auto", "mse", "l1"],
                   help="regression loss (auto: mse); classes and tags use (binary) cross-entropy")
    g.add_argument("--clip", type=float, default=T.clip, help="gradient-norm clipping (0: off)")
    g.add_argument("--patience", type=int, default=T.patience, help="early-stopping patience on valid_loss")
    g.add_argument("--device", default=T.device, help="auto, cpu, cuda, cuda:1, mps")
    g.add_argument("--precision", default=T.precision, choices=["auto", "fp32", "bf16", "fp16"])
    g.add_argument("--init", default=T.init, choices=["default", "lsuv"],
                   help="weight init of a from-scratch model: the arch's own, or LSUV on the first batch "
                        "(unit output std per layer; skipped with a warning on pretrained weights)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="predict labels of new images with a trained run",
                       description="Predict IMAGES (files, folders or globs) with the model in RUN.")
    p.add_argument("run", help="run directory written by `imgclf train`")
    p.add_argument("images", nargs="+", help="image files, folders (searched recursively) or globs")
    p.add_argument("--csv", help="write path,label,confidence rows to this CSV")
    p.add_argument("--probs", action="store_true", help="add one probability column per class")
    p.add_argument("--submission", help="write the homework's Id,Category CSV here (Id: the file name without "
                                        "extension; rows sorted by Id, numerically when all Ids are numbers)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average the center view and its mirror")
    p.add_argument("--force", action="store_true", help="overwrite an existing --csv or --submission file")
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="score a trained run on labelled images",
                       description="The figures of RUN's task on DATA: class folders, a data set root whose "
                                   "valid/val split is used, or a CSV as the run trained from (every row is "
                                   "scored). Classes: accuracy, loss, per-class accuracy; tags: accuracy_multi "
                                   "and f1_multi at the run's threshold, per-tag F1; numbers: mae, rmse.")
    p.add_argument("run")
    p.add_argument("data")
    p.add_argument("--label-re", help="regex on file names for the labels (default: folder names)")
    p.add_argument("--label-col", help="a CSV DATA's label column (as the run trained from)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--tta", action="store_true", help="also score test-time augmentation (center view + mirror), "
                                                      "beside the plain figures")
    p.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")


def _add_interpret(sub) -> None:
    p = sub.add_parser(
        "interpret", help="why does a trained run err? confusion matrix, top losses, features",
        description="Interpret RUN on its validation images (rebuilt from its config.json, the same seeded "
                    "split): confusion matrices, most confused pairs, per-class precision/recall/F1, top "
                    "losses, misclassified images, PCA and t-SNE of the pooled features, a model summary. "
                    "Prints the figures and writes them to RUN/interpret/ (replacing an earlier interpret).",
        formatter_class=_Help,
    )
    p.add_argument("run", help="run directory written by `imgclf train`")
    p.add_argument("--data", help="other labelled images (class folders or a CSV, labelled as the run was); "
                                  "their validation split is used (default: the run's own data)")
    p.add_argument("--out", help="output folder (default RUN/interpret)")
    p.add_argument("--k", type=int, default=9, help="images in the top-losses grid")
    p.add_argument("--min-val", type=int, default=1, help="least count of a most-confused pair")
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_inspect(sub) -> None:
    p = sub.add_parser(
        "inspect", help="audit the data before training",
        description="Audit DATA as `imgclf train` would load it: images per class and split, imbalance, image "
                    "sizes and modes, skipped files, a trace of a few items through the pipeline, the training "
                    "batch, exact and near duplicates and train/valid leaks. Prints the summary and writes "
                    "inspect.json, show_batch.png and counts.png.",
        formatter_class=_Help,
    )
    p.add_argument("data", help="image folder (or a CSV of file,label[,is_valid])")
    p.add_argument("--out", help="output folder (default runs/<data-name>-inspect; never overwritten: -2, -3...)")
    _add_data_flags(p.add_argument_group("data (as for train)"))
    p.add_argument("--show", type=int, default=16, help="images in show_batch.png")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_report(sub) -> None:
    p = sub.add_parser(
        "report", help="one self-contained HTML page of a trained run",
        description="Write RUN/report.html: config, recipe, history, loss and lr_find curves, data counts, "
                    "confusion matrix, per-class scores, most confused pairs, top losses, features and model "
                    "summary, images embedded (no network needed). Runs `interpret` first when RUN/interpret/ "
                    "has no interpret.json. Prints the report's path.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run", help="run directory written by `imgclf train`")
    p.add_argument("--out", help="HTML file (default RUN/report.html)")
    p.add_argument("--force", action="store_true", help="replace an existing report")
    p.add_argument("--data", help="labelled images for the interpret step, when it has to run and the run's "
                                  "own data is not there (as for `imgclf interpret --data`)")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="imgclf", description="Turn a folder of images into an accurate image classifier.",
        epilog="examples:\n  imgclf train photos/\n  imgclf predict runs/photos new/ --csv preds.csv\n"
               "  imgclf evaluate runs/photos photos/val",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from . import __version__

    p.add_argument("--version", action="version", version=f"imgclf {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_predict(sub)
    _add_evaluate(sub)
    _add_interpret(sub)
    _add_inspect(sub)
    _add_report(sub)
    m = sub.add_parser("models", help="list architecture names", description="List names --arch accepts.")
    m.add_argument("pattern", nargs="?", default="*", help="wildcard filter, e.g. '*resnet*'")
    return p


def _config(a: argparse.Namespace) -> RunConfig:
    def pick(kind, **over):
        vals = {f.name: getattr(a, f.name) for f in fields(kind) if hasattr(a, f.name)}
        return kind(**{**vals, **over})

    return RunConfig(
        data=pick(DataConfig, path=a.data),
        model=pick(ModelConfig, pretrained=not a.no_pretrained),
        train=pick(TrainConfig, clip=a.clip or None),
        out=a.out,
    )


def expand_images(args: list[str]) -> list[Path]:
    """Files, folders (recursively) and globs to a sorted list of image paths."""
    from .data.sources import find_images

    out: list[Path] = []
    for a in args:
        if Path(a).exists():
            out += find_images(a)
        elif any(ch in a for ch in "*?["):
            matches = sorted(glob.glob(a, recursive=True))
            out += [p for m in matches for p in find_images(m)]
        else:
            raise UserError(f"{a}: no such file or directory")
    if not out:
        raise UserError(f"{' '.join(args)}: no images found")
    return list(dict.fromkeys(out))


def _check_writable(path: str, force: bool) -> None:
    if Path(path).exists() and not force:
        raise UserError(f"{path}: already exists (pass --force to overwrite)")


def cmd_train(a: argparse.Namespace) -> None:
    from .train.job import train

    res = train(_config(a), progress=not a.quiet)
    m = res.metrics
    kept = f"  (kept {m['kept']})" if m.get("kept") else ""
    print(f"{_figures(m, res.learner.metrics)}  valid_loss {m['valid_loss']:.4f}  "
          f"fit {m['fit_seconds']:.1f}s  total {m['total_seconds']:.1f}s{kept}  -> {res.run_dir}")


def _figures(m: dict, metrics) -> str:
    """The task's metrics of a result, in order: accuracy, or accuracy_multi/f1_multi (threshold), or mae/rmse."""
    names = [n for n, _ in metrics] + (["threshold"] if "threshold" in m else [])
    return "  ".join(f"{n} {m[n]:.4f}" for n in names if n in m)


def cmd_predict(a: argparse.Namespace) -> None:
    from .infer import load_model
    from .infer.predictor import check_submission_ids, submission_rows

    for out in (a.csv, a.submission):
        if out:
            _check_writable(out, a.force)
    paths = expand_images(a.images)
    if a.submission:
        check_submission_ids(paths)
    model = load_model(a.run, device=a.device)
    preds, skipped = model.predict_files(paths, bs=a.bs, progress=not a.quiet, tta=a.tta)
    if a.submission:
        with open(a.submission, "w", newline="") as f:
            csv.writer(f).writerows([("Id", "Category"), *submission_rows(preds)])
        print(f"{len(preds)} predictions -> {a.submission}" + (f" ({len(skipped)} file(s) skipped)" if skipped else ""))
    if model.task == "regression":
        header = ["path", model.classes[0]]
        rows = [[p.path, f"{p.value:.6g}"] for p in preds]
    else:
        header = ["path", "tags" if model.task == "multi_label" else "label", "confidence"]
        header += model.classes if a.probs else []
        rows = [[p.path, p.label, f"{p.confidence:.6f}"] + ([f"{p.probs[c]:.6f}" for c in model.classes]
                                                             if a.probs else []) for p in preds]
    if a.csv:
        with open(a.csv, "w", newline="") as f:
            csv.writer(f).writerows([header, *rows])
        print(f"{len(rows)} predictions -> {a.csv}" + (f" ({len(skipped)} file(s) skipped)" if skipped else ""))
    elif not a.submission:
        w = csv.writer(sys.stdout)
        w.writerows([header, *rows])


def cmd_evaluate(a: argparse.Namespace) -> None:
    from .infer import evaluate, load_model
    from .rundir import write_json

    if a.json:
        _check_writable(a.json, a.force)
    res = evaluate(load_model(a.run, device=a.device), a.data, label_re=a.label_re, bs=a.bs, progress=not a.quiet,
                   tta=a.tta, label_col=a.label_col)
    plain = [k for k, v in res.items() if isinstance(v, float) and not k.startswith("tta_")]
    print("  ".join(f"{k} {res[k]:.4f}" for k in plain) + f"  n {res['n']}")
    if a.tta:
        print("  ".join(f"tta {k} {res['tta_' + k]:.4f}" for k in plain if "tta_" + k in res)
              + f"  ({' + '.join(res['tta_views'])})")
    per_class = next((k for k in res if k.startswith("per_class_")), None)
    if per_class:
        print(f"{per_class.removeprefix('per_class_')} per {'tag' if 'f1' in per_class else 'class'}:")
        for c, v in res[per_class].items():
            print(f"  {c}: {v:.4f}")
    if a.json:
        write_json(a.json, res)


def cmd_interpret(a: argparse.Namespace) -> None:
    from .evaluate.interpret import FILES, format_summary, interpret_dir, interpret_run
    from .rundir import read_json

    replacing = (interpret_dir(a.run, a.out) / "interpret.json").exists()
    out = interpret_run(a.run, data=a.data, out=a.out, k=a.k, min_val=a.min_val, bs=a.bs, device=a.device,
                        progress=not a.quiet)
    print(format_summary(read_json(out / "interpret.json")))
    print(f"\n{len(FILES)} files -> {out}" + (" (replacing the earlier interpret)" if replacing else ""))


def cmd_inspect(a: argparse.Namespace) -> None:
    from .data.show import plot_counts
    from .models.registry import default_norm
    from .rundir import new_run_dir, write_json
    from .train.job import default_out, load_data

    if a.show < 1:
        raise UserError(f"--show {a.show}: give at least 1 image")
    cfg = RunConfig(data=DataConfig(path=a.data, **{f.name: getattr(a, f.name) for f in fields(DataConfig)
                                                    if hasattr(a, f.name)}), out=a.out)
    data = load_data(cfg, progress=not a.quiet)  # the one way `train` loads data
    mean, std = default_norm(cfg.model.arch)
    summary = data.summary(mean, std, progress=not a.quiet)
    out = new_run_dir(a.out or f"{default_out(cfg)}-inspect")
    write_json(out / "inspect.json", summary.to_dict())
    data.show_batch(a.show, mean, std, seed=cfg.data.seed).savefig(out / "show_batch.png", dpi=110)
    plot_counts(summary.counts).savefig(out / "counts.png", dpi=110)
    print(summary)
    print(f"-> {out}")


def cmd_report(a: argparse.Namespace) -> None:
    from .evaluate.report import report_path, write_report

    path = report_path(a.run, a.out)
    _check_writable(str(path), a.force)
    print(write_report(a.run, path, force=True, data=a.data, device=a.device, progress=not a.quiet))


def cmd_models(a: argparse.Namespace) -> None:
    from .models import list_models

    print("\n".join(list_models(a.pattern)))


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"imgclf: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    warnings.formatwarning = _one_line_warning  # the documented hook for how warnings print
    commands = {"train": cmd_train, "predict": cmd_predict, "evaluate": cmd_evaluate, "models": cmd_models,
                "inspect": cmd_inspect, "interpret": cmd_interpret, "report": cmd_report}
    try:
        commands[args.command](args)
    except UserError as e:
        print(f"imgclf: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imgclf: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `imgclf predict ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
