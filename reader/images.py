"""Load query images with errors that say which file is wrong and what to do."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image


def check_image_path(path: str | Path) -> Path:
    """``path`` as a ``Path`` if it names an existing file; raise ``FileNotFoundError`` otherwise."""
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        what = "is a directory, not an image file" if resolved.is_dir() else "does not exist"
        raise FileNotFoundError(
            f"query image {str(path)!r} {what}; pass the path of a JPEG/PNG file "
            "(QueryBundle(query_str=..., image_path=...))"
        )
    return resolved


def load_image(path: str | Path) -> Image.Image:
    """The image at ``path`` decoded to RGB, fully read so the file can be closed or deleted."""
    from PIL import Image, UnidentifiedImageError

    resolved = check_image_path(path)
    try:
        with Image.open(resolved) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(
            f"cannot decode query image {str(resolved)!r} ({type(exc).__name__}: {exc}); "
            "it must be an image file Pillow can read (JPEG, PNG, WebP, ...)"
        ) from exc


def image_from_block(block: Any) -> Image.Image:
    """Decode a LlamaIndex ``ImageBlock`` (path, raw bytes, or URL) to an RGB PIL image."""
    from PIL import Image, UnidentifiedImageError

    if block.path is not None and not block.image:
        return load_image(block.path)
    where = "inline image bytes" if block.image else f"image URL {block.url}"
    try:
        buffer = block.resolve_image()
        data = buffer.read()
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"cannot decode the ImageBlock's {where} ({type(exc).__name__}: {exc})") from exc
