"""Images that ship inside installed Python packages, loadable offline.

The mini benchmark refers to images by ``(package, name)`` instead of shipping copies: scikit-image's
``skimage.data`` functions, scikit-learn's sample JPEGs, ultralytics' two test photos and matplotlib's
sample photo. Packages are located with ``importlib.util.find_spec`` where a file is all we need, so
that looking up ``bus.jpg`` does not import ultralytics (whose import writes a settings file).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from PIL import Image

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


class PackagedImageError(ValueError):
    """An image named by (package, name) is unknown or cannot be loaded."""


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PackagedImageError(
            f"package {package!r} is not installed; install it (e.g. `pip install gemkr-llamaindex[eval]`)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def packaged_image_file(package: str, name: str) -> Path | None:
    """The image's file path inside its package, or None for images that are built in code (skimage).

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
        raise PackagedImageError(
            f"unknown {package} image {name!r}; expected one of {', '.join(sorted(names))}"
        )
    path = _package_dir(package) / folder / name
    if not path.is_file():
        raise PackagedImageError(f"{path} is missing from the installed {package!r} package")
    return path


def load_packaged_image(package: str, name: str) -> Image.Image:
    """Load a packaged image as an RGB PIL image (grey, boolean and RGBA images are converted).

    ``("skimage", "stereo_motorcycle")`` is the left view of the stereo pair.

    Raises:
        PackagedImageError: unknown package/name, package not installed, or the image fails to load.
    """
    path = packaged_image_file(package, name)
    if path is not None:
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except OSError as exc:
            raise PackagedImageError(f"cannot decode {path}: {exc}") from exc

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
        array = array[0]
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        lo, hi = float(array.min()), float(array.max())
        array = ((array - lo) / (hi - lo or 1.0) * 255).astype(np.uint8)
    if array.ndim == 2:
        return Image.fromarray(array, mode="L").convert("RGB")
    return Image.fromarray(array[..., :4]).convert("RGB")


def packaged_image_path(package: str, name: str, cache_dir: str | Path | None = None) -> Path:
    """A file path for the image, for APIs that take paths (``QueryBundle.image_path``).

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
        tmp = out.with_suffix(".tmp.png")
        load_packaged_image(package, name).save(tmp)
        tmp.replace(out)
    return out
