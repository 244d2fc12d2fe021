"""The one image path: decode any image input to RGB once, with the content digest every cache keys on.

Model, training, tags, reader and evaluation all call :func:`load_image`; a :class:`LoadedImage`
passes through unchanged, so a query image decoded once (EXIF rotation applied, fully read) is handed
on instead of being decoded again. The digest is one rule for every input: the decoded RGB pixels (the
picture the models see, EXIF rotation applied), so a photo read from a file, from bytes, as a PIL image
or as an array keys every cache (tags, object features) the same way.

Besides paths, bytes, PIL images and arrays, an input may name an image that ships inside an installed
package, ``{"package": "skimage", "name": "chelsea"}`` (scikit-image's ``skimage.data`` functions,
scikit-learn's sample JPEGs, ultralytics' two test photos, matplotlib's sample photo): the shipped mini
benchmark and the training files refer to images that way instead of shipping copies.

This module imports nothing heavy (Pillow and numpy load on first use).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from PIL import Image

ImageInput = Union[str, "os.PathLike[str]", bytes, "Image.Image", "np.ndarray", "LoadedImage", Mapping]

#: The one tagger contract (retriever, query engine, evaluation): any image input -> a hint string such
#: as ``"tiger cat, Egyptian cat, EMT"``, or None. ``gemkr_llamaindex.tags.hint_tagger()`` makes one.
HintTagger = Callable[[ImageInput], str | None]


#: The widest (or tallest) picture accepted: models resize the short side to their input size, so a 300000x1
#: strip would ask for gigabytes. No photograph comes near this; a wide banner (10:1) passes.
MAX_ASPECT_RATIO = 50


class ImageLoadError(ValueError):
    """An image could not be read or decoded; ``source`` names the file (or the in-memory input)."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"cannot read image {source}: {reason}")
        self.source = source
        self.reason = reason


class ImageNotFoundError(ImageLoadError, FileNotFoundError):
    """The image path does not exist or is not a file."""


class PackagedImageError(ImageLoadError):
    """An image named by (package, name) is unknown, its package is missing, or it fails to load."""

    def __init__(self, message: str) -> None:
        ValueError.__init__(self, message)
        self.source = "packaged image"
        self.reason = message


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
            _check_shape(img.width, img.height, source)  # from the header: before any pixel is decoded
            img.load()  # force the full decode here so truncated files fail now, not inside a model
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as exc:  # not an OSError: would escape as PIL's own error
        raise ImageLoadError(
            source, f"the image is too large to decode safely ({exc}); downscale it below "
            f"{Image.MAX_IMAGE_PIXELS:,} pixels"
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(
            source, f"not a decodable image ({type(exc).__name__}: {exc}); pass a JPEG/PNG/... file"
        ) from exc


def _check_shape(width: int, height: int, source: str) -> None:
    """Refuse empty pictures and aspect ratios beyond :data:`MAX_ASPECT_RATIO`, before any resize."""
    if min(width, height) < 1:
        raise ImageLoadError(source, f"the image is {width}x{height} pixels: it has no pixels")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageLoadError(
            source, f"the image is {width}x{height} pixels, an aspect ratio beyond {MAX_ASPECT_RATIO}:1; "
            "models resize its short side to their input size, which would need an enormous picture: crop it"
        )


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB, with 16- and 32-bit greyscale scaled to 8 bits (Pillow's own conversion clips them at 255)."""
    if img.mode.startswith("I"):  # "I;16", "I;16B", ... and "I" (32-bit; what some 16-bit files open as)
        import numpy as np
        from PIL import Image

        values = np.asarray(img).astype(np.int64)
        low, high = int(values.min()), int(values.max())
        if img.mode.startswith("I;16") or (low >= 0 and 255 < high <= 65535):
            values = values >> 8
        elif low < 0 or high > 255:
            values = (values - low) * 255 // max(high - low, 1)
        img = Image.fromarray(values.astype(np.uint8), mode="L")
    return img if img.mode == "RGB" else img.convert("RGB")


def _pixels_digest(img: Image.Image) -> str:
    h = hashlib.sha256(b"rgb-pixels:")
    h.update(f"{img.width}x{img.height}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def load_image(src: ImageInput) -> LoadedImage:
    """Decode ``src`` (path, encoded bytes, PIL image, uint8 array or packaged-image reference) to RGB.

    A :class:`LoadedImage` passes through unchanged, so a decoded image can be handed on.

    Raises:
        ImageNotFoundError: the path does not exist or is a folder.
        PackagedImageError: a packaged-image reference names an unknown image or a missing package.
        ImageLoadError: the bytes are not an image, or the object is of an unsupported type.
    """
    from PIL import Image

    if isinstance(src, LoadedImage):  # already decoded: keep its digest
        return src
    if isinstance(src, (str, os.PathLike)):
        path = Path(src).expanduser()
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            raise ImageNotFoundError(str(path), f"the path {what}; give the path of an image file")
        img = _decode(path.read_bytes(), str(path))
        return LoadedImage(img, _pixels_digest(img), str(path))
    if isinstance(src, (bytes, bytearray, memoryview)):
        source = f"<{len(src)} bytes>"
        img = _decode(bytes(src), source)
        return LoadedImage(img, _pixels_digest(img), source)
    if isinstance(src, Image.Image):
        source = f"<PIL image {src.width}x{src.height}>"
        _check_shape(src.width, src.height, source)
        img = _to_rgb(src)
        return LoadedImage(img, _pixels_digest(img), source)
    if isinstance(src, Mapping):
        if not {"package", "name"} <= set(src):
            raise ImageLoadError(f"<{dict(src)!r}>", 'a packaged image is {"package": ..., "name": ...}')
        return _load_packaged(str(src["package"]), str(src["name"]))
    if type(src).__module__ == "numpy" and hasattr(src, "ndim"):
        return LoadedImage(*_from_array(src))
    raise ImageLoadError(
        f"<{type(src).__name__}>",
        "unsupported input type; pass a path, bytes, a PIL image, a uint8 array or {'package', 'name'}",
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
    _check_shape(arr.shape[1], arr.shape[0], source)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    img = Image.fromarray(np.ascontiguousarray(arr)).convert("RGB")
    return img, _pixels_digest(img), source


# ---------------------------------------------------------------------------------------------------
# Images that ship inside installed packages
# ---------------------------------------------------------------------------------------------------

#: Images from ``skimage.data`` known to load without a download (eagle, lily, brain, cells3d ... do not).
SKIMAGE_NAMES: frozenset[str] = frozenset(
    {
        "astronaut", "brick", "camera", "cat", "checkerboard", "chelsea", "clock", "coffee", "coins",
        "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo",
        "microaneurysms", "moon", "page", "retina", "rocket", "shepp_logan_phantom", "stereo_motorcycle",
        "text",
    }
)

# package -> (folder inside the package, file names we know are there)
_FILE_IMAGES: dict[str, tuple[str, frozenset[str]]] = {
    "sklearn": ("datasets/images", frozenset({"china.jpg", "flower.jpg"})),
    "ultralytics": ("assets", frozenset({"bus.jpg", "zidane.jpg"})),
    "matplotlib": ("mpl-data/sample_data", frozenset({"grace_hopper.jpg"})),
}

PACKAGES: tuple[str, ...] = ("skimage", *_FILE_IMAGES)


def _package_dir(package: str) -> Path:
    # find_spec locates the package without importing it (importing ultralytics writes a settings file)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PackagedImageError(
            f"package {package!r} is not installed; install it (e.g. `pip install gemkr-llamaindex[eval]`)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def packaged_image_file(package: str, name: str) -> Path | None:
    """The image's file inside its package, or None for images built in code (``skimage.data``).

    Raises:
        PackagedImageError: unknown package or name, or the package lacks the file.
    """
    if package == "skimage":
        if name not in SKIMAGE_NAMES:
            raise PackagedImageError(
                f"unknown skimage image {name!r}; known offline images: {', '.join(sorted(SKIMAGE_NAMES))}"
            )
        return None
    if package not in _FILE_IMAGES:
        raise PackagedImageError(f"unknown image package {package!r}; expected one of {', '.join(PACKAGES)}")
    folder, names = _FILE_IMAGES[package]
    if name not in names:
        raise PackagedImageError(f"unknown {package} image {name!r}; expected one of {', '.join(sorted(names))}")
    path = _package_dir(package) / folder / name
    if not path.is_file():
        raise PackagedImageError(f"{path} is missing from the installed {package!r} package")
    return path


def _skimage_array(name: str):
    import numpy as np

    try:
        import skimage.data
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise PackagedImageError("scikit-image is not installed; `pip install scikit-image`") from exc
    try:
        array = getattr(skimage.data, name)()
    except Exception as exc:  # skimage raises various errors (pooch, ValueError) when data is absent
        raise PackagedImageError(f"skimage.data.{name}() failed: {exc}") from exc
    if name == "stereo_motorcycle":
        array = array[0]  # the left view of the stereo pair
    array = np.asarray(array)
    if array.dtype not in (np.uint8, np.bool_):
        lo, hi = float(array.min()), float(array.max())
        array = ((array - lo) / (hi - lo or 1.0) * 255).astype(np.uint8)
    return array[..., :4] if array.ndim == 3 else array


def _load_packaged(package: str, name: str) -> LoadedImage:
    path = packaged_image_file(package, name)
    if path is not None:
        return load_image(path)
    img, digest, _ = _from_array(_skimage_array(name))
    return LoadedImage(img, digest, f"skimage.data.{name}")


def load_packaged_image(package: str, name: str) -> Image.Image:
    """A packaged image as an RGB PIL image (grey, boolean and RGBA images are converted)."""
    return _load_packaged(package, name).image


def packaged_image_path(package: str, name: str, cache_dir: str | Path | None = None) -> Path:
    """A file path for a packaged image, for APIs that take paths (``QueryBundle.image_path``).

    File-backed images return their path inside the package; skimage images are written once as PNG
    under ``cache_dir`` (default: the project cache, ``<cache>/packaged_images``).
    """
    path = packaged_image_file(package, name)
    if path is not None:
        return path
    if cache_dir is None:
        from gemkr_llamaindex.assets import cache_dir as _cache_dir

        cache_dir = _cache_dir() / "packaged_images"
    out = Path(cache_dir) / package / f"{name}.png"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp.png")
        load_packaged_image(package, name).save(tmp)
        tmp.replace(out)
    return out
