"""Evaluation beyond one number: why a model errs (`Interpretation`), its figures and its size."""

from .interpret import Interpretation, interpret_run, project_features
from .model_summary import ModelSummary, model_summary

__all__ = ["Interpretation", "ModelSummary", "interpret_run", "model_summary", "project_features"]
