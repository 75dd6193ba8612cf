"""Inference: load an exported run, predict on new images, score it on labelled ones."""

from .evaluate import evaluate
from .predictor import Prediction, Predictor, load_model

__all__ = ["Prediction", "Predictor", "evaluate", "load_model"]
