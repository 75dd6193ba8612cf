"""Inference: load an exported run, predict on new images, score it on labelled ones."""

from .evaluate import evaluate
from .export import export_model
from .plot import plot_topk
from .predictor import Prediction, Predictor, load_model

__all__ = ["Prediction", "Predictor", "evaluate", "export_model", "load_model", "plot_topk"]
