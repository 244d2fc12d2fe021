"""Decode any supported image input to RGB and give it a content hash (the cache key).

The hash is taken over what identifies the content most cheaply: the encoded bytes for a file or a
bytes object (so a cache hit costs one read, no decode), the decoded pixels for an in-memory image.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from PIL import Image

ImageInput = Union[str, "os.PathLike[str]", bytes, "Image.Image", "np.ndarray", "LoadedImage"]


class ImageLoadError(ValueError):
    """An image could not be read or decoded; ``source`` names the file (or the in-memory input)."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"cannot read image {source}: {reason}")
        self.source = source
        self.reason = reason


class ImageNotFoundError(ImageLoadError, FileNotFoundError):
    """The image path does not exist or is not a file."""


@dataclass(frozen=True)
class LoadedImage:
    """A decoded RGB image, the sha256 that identifies its content, and where it came from."""

    image: Image.Image
    digest: str
    source: str


def _decode(data: bytes, source: str) -> Image.Image:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # force the full decode here so truncated files fail now, not inside a model
            img = ImageOps.exif_transpose(img)
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(
            source, f"not a decodable image ({type(exc).__name__}: {exc}); pass a JPEG/PNG/... file"
        ) from exc


def _pixels_digest(img: Image.Image) -> str:
    h = hashlib.sha256(b"rgb-pixels:")
    h.update(f"{img.width}x{img.height}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def load_image(src: ImageInput) -> LoadedImage:
    """Decode ``src`` (path, encoded bytes, PIL image or uint8 array) to RGB, with its content hash.

    A :class:`LoadedImage` passes through unchanged, so a decoded image can be handed on.

    Raises:
        ImageNotFoundError: the path does not exist or is a folder.
        ImageLoadError: the bytes are not an image, or the object is of an unsupported type.
    """
    from PIL import Image

    if isinstance(src, LoadedImage):  # already decoded (e.g. by CompositeTagger): keep its hash
        return src
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            raise ImageNotFoundError(str(path), f"the path {what}; give the path of an image file")
        data = path.read_bytes()
        return LoadedImage(_decode(data, str(path)), hashlib.sha256(data).hexdigest(), str(path))
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        source = f"<{len(data)} bytes>"
        return LoadedImage(_decode(data, source), hashlib.sha256(data).hexdigest(), source)
    if isinstance(src, Image.Image):
        img = src if src.mode == "RGB" else src.convert("RGB")
        return LoadedImage(img, _pixels_digest(img), f"<PIL image {img.width}x{img.height}>")
    if type(src).__module__ == "numpy" and hasattr(src, "ndim"):
        return LoadedImage(*_from_array(src))
    raise ImageLoadError(
        f"<{type(src).__name__}>", "unsupported input type; pass a path, bytes, a PIL image or a uint8 array"
    )


def _from_array(arr: np.ndarray) -> tuple[Image.Image, str, str]:
    import numpy as np
    from PIL import Image

    source = f"<array {'x'.join(map(str, arr.shape))} {arr.dtype}>"
    if arr.dtype == np.bool_:  # binary masks (e.g. skimage.data.horse()) become black and white
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise ImageLoadError(
            source, "arrays must be uint8 (or bool) of shape HxW, HxWx1, HxWx3 (RGB) or HxWx4 (RGBA)"
        )
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    img = Image.fromarray(np.ascontiguousarray(arr)).convert("RGB")
    return img, _pixels_digest(img), source
