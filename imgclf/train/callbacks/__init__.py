"""Callbacks: one feature that hooks into training per file."""

from .core import Callback, CancelBatchException, CancelEpochException, CancelFitException
from .csv_logger import CSVLogger
from .early_stopping import EarlyStopping
from .precision import MixedPrecision
from .progress import ProgressCallback
from .recorder import Recorder
from .save_best import SaveBestModel
from .schedule import ParamScheduler

__all__ = [
    "CSVLogger", "Callback", "CancelBatchException", "CancelEpochException", "CancelFitException",
    "EarlyStopping", "MixedPrecision", "ParamScheduler", "ProgressCallback", "Recorder", "SaveBestModel",
]
