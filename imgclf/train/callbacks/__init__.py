"""Callbacks: one feature that hooks into training per file."""

from .core import Callback, CancelBatchException, CancelEpochException, CancelFitException
from .csv_logger import CSVLogger
from .early_stopping import EarlyStopping
from .mixup import CutMix, MixUp
from .nonfinite import NonFiniteLoss, TerminateOnNaN
from .precision import MixedPrecision
from .progress import ProgressCallback
from .recorder import Recorder
from .save_best import SaveBestModel
from .schedule import ParamScheduler

__all__ = [
    "CSVLogger", "Callback", "CancelBatchException", "CancelEpochException", "CancelFitException", "CutMix",
    "EarlyStopping", "MixUp", "MixedPrecision", "NonFiniteLoss", "ParamScheduler", "ProgressCallback", "Recorder",
    "SaveBestModel", "TerminateOnNaN",
]
