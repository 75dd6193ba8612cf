"""Data: sources of labelled files, decoding and presizing, batch augmentation, loaders."""

from .augment import Augment
from .core import ImageData
from .decode import BadImage, open_image
from .sources import IMAGE_EXTS, find_images

__all__ = ["Augment", "BadImage", "IMAGE_EXTS", "ImageData", "find_images", "open_image"]
