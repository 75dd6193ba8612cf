"""imgclf: turn a folder of images into an accurate image classifier, fast."""

__version__ = "0.1.0"

from .data import Augment, ImageData  # noqa: E402
from .data.datasets import get_dataset, register_dataset  # noqa: E402
from .errors import UserError  # noqa: E402
from .evaluate import Interpretation  # noqa: E402
from .infer import evaluate, export_model, load_model  # noqa: E402
from .models import create_model, list_models, register_model  # noqa: E402
from .train import Learner, vision_learner  # noqa: E402
from .train.distill import distill  # noqa: E402
from .train.prune import prune_model, prune_run  # noqa: E402
from .train.recipes import auto_fit  # noqa: E402

__all__ = [
    "Augment", "ImageData", "Interpretation", "Learner", "UserError", "__version__", "auto_fit", "create_model",
    "distill", "export_model", "prune_model", "prune_run",
    "evaluate", "get_dataset", "list_models", "load_model", "register_dataset", "register_model", "vision_learner",
]
