"""Training: the learner and its loop, callbacks, schedules, optimizers, the rate finder."""

from .learner import Learner, pick_device
from .lr_finder import LRFind
from .vision import VisionLearner, vision_learner

__all__ = ["LRFind", "Learner", "VisionLearner", "pick_device", "vision_learner"]
