"""Load query images with errors that say which file is wrong and what to do."""

from __future__ import annotations

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
    """The image at ``path`` decoded to RGB (by the package's one image decoder), fully read."""
    from gemkr_llamaindex.images import ImageLoadError
    from gemkr_llamaindex.images import load_image as decode

    resolved = check_image_path(path)
    try:
        return decode(resolved).image
    except ImageLoadError as exc:
        raise ValueError(
            f"cannot decode query image {str(resolved)!r} ({exc.reason}); "
            "it must be an image file Pillow can read (JPEG, PNG, WebP, ...)"
        ) from exc


def image_from_block(block: Any) -> Image.Image:
    """Decode a LlamaIndex ``ImageBlock`` (path, raw bytes, or URL) to an RGB PIL image."""
    from gemkr_llamaindex.images import ImageLoadError
    from gemkr_llamaindex.images import load_image as decode

    if block.path is not None and not block.image:
        return load_image(block.path)
    where = "inline image bytes" if block.image else f"image URL {block.url}"
    try:
        data = block.resolve_image().read()
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the ImageBlock's {where} ({type(exc).__name__}: {exc})") from exc
    try:
        return decode(data).image
    except ImageLoadError as exc:
        raise ValueError(f"cannot decode the ImageBlock's {where} ({exc.reason})") from exc
