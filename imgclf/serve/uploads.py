"""Uploaded bytes -> the presized uint8 tensor `predict` would make of the same file, or a 4xx that says why.

The steps are `imgclf.data.decode.open_image`'s (reduced JPEG decode with `draft`, EXIF orientation, every
PIL mode to RGB) and then its `presize`, run on bytes in memory instead of a path, so a served prediction
equals `imgclf predict` on the same file. A bad upload is an `UploadError` carrying its HTTP status: the
request is refused in one line and the server goes on.
"""

from __future__ import annotations

import torch
from PIL import Image

from ..data.decode import BadImage, TooLarge, open_image, presize


class UploadError(Exception):
    """A request the server refuses: `status` (400 malformed, 411, 413 too large) and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def megabytes(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def check_size(name: str, size: int | None, max_bytes: int) -> None:
    """Refuse an empty file (400) or one over the size limit (413) before anything decodes it."""
    if not size:
        raise UploadError(400, f"{name}: empty file (0 bytes)")
    if size > max_bytes:
        raise UploadError(413, f"{name}: {megabytes(size)} is over the limit of {megabytes(max_bytes)} (--max-mb)")


def decode_upload(data: bytes, size: int, name: str = "upload") -> torch.Tensor:
    """A (3, size, size) uint8 tensor of an uploaded image file, made by `predict`'s own decoding
    (`open_image` on the bytes, then `presize`), so a served prediction equals `imgclf predict` on the file.

    PIL's decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`, 89 megapixels) is enforced from the header, before
    decoding: PIL only warns between 1x and 2x of it, and a 20 MB PNG can hold gigapixels of zeros that would
    take gigabytes to decode. Too many pixels is a 413, anything else that fails a 400.
    """
    try:
        img = open_image(data, size, max_pixels=Image.MAX_IMAGE_PIXELS)
    except TooLarge as e:
        raise UploadError(413, f"{name}: {e}") from None
    except BadImage as e:
        raise UploadError(400, f"{name}: {e}") from None
    return presize(img, size)
