"""Evaluation beyond one number: why a model errs (`Interpretation`), its figures, its size, an HTML report."""

from .interpret import Interpretation, interpret_run, project_features
from .model_summary import ModelSummary, model_summary
from .report import write_report

__all__ = ["Interpretation", "ModelSummary", "interpret_run", "model_summary", "project_features",
           "write_report"]
