"""The one image path: every consumer decodes through gemkr_llamaindex.images, once, the same way."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from PIL import Image

from gemkr_llamaindex.images import ImageLoadError, LoadedImage, PackagedImageError, load_image


def _exif_rotated_jpeg() -> bytes:
    """A 40x20 JPEG whose EXIF orientation (6 = rotate 90 CW) makes it display as 20x40."""
    img = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    return buf.getvalue()


def test_exif_orientation_is_applied_for_every_consumer(tmp_path):
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_exif_rotated_jpeg())
    loaded = load_image(path)
    assert loaded.image.size == (20, 40)
    assert load_image(path.read_bytes()).image.size == (20, 40)
    assert load_image(loaded) is loaded  # a decoded image passes through: no second decode


def test_training_rows_decode_like_inference(tmp_path):
    """Training once skipped EXIF rotation while inference applied it: the model saw other pixels."""
    from gemkr_llamaindex.training.data import read_training_jsonl

    path = tmp_path / "rotated.jpg"
    path.write_bytes(_exif_rotated_jpeg())
    (tmp_path / "train.jsonl").write_text('{"image": "rotated.jpg", "question": "q?", "positive_doc_ids": ["d"]}\n')
    rec = read_training_jsonl(tmp_path / "train.jsonl")[0]
    assert load_image(rec.image).image.size == (20, 40)


def test_a_decompression_bomb_is_an_image_error(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # so a 100x100 picture counts as a bomb
    buf = io.BytesIO()
    Image.new("RGB", (100, 100)).save(buf, format="PNG")
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(buf.getvalue())


def test_packaged_references_decode_through_the_same_path():
    a = load_image({"package": "skimage", "name": "chelsea"})
    assert isinstance(a, LoadedImage) and a.image.mode == "RGB" and a.image.size == (451, 300)
    assert load_image({"package": "skimage", "name": "chelsea"}).digest == a.digest
    with pytest.raises(PackagedImageError, match="unknown skimage image"):
        load_image({"package": "skimage", "name": "eagle"})
    with pytest.raises(ImageLoadError, match="package"):
        load_image({"name": "chelsea"})


def test_training_and_model_do_not_import_evaluation():
    """One direction of imports: the library's training and model never import eval_vqa."""
    code = ("import sys; import gemkr_llamaindex.training.trainer, gemkr_llamaindex.training.data, "
            "gemkr_llamaindex.model.gemkr, gemkr_llamaindex.llamaindex; "
            "print([m for m in sys.modules if m.split('.')[0] in ('eval_vqa', 'reader')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_an_extreme_aspect_ratio_is_refused_before_any_resize(tmp_path):
    """A few hundred bytes of 300000x1 PNG once made the CLIP preprocessing upscale the short side to 224
    pixels and ask for ~15 GB; it is refused at decode time, for files, bytes and in-memory images alike."""
    import numpy as np

    path = tmp_path / "strip.png"
    path.write_bytes(_png(np.zeros((1, 300_000), dtype=np.uint8)))
    assert path.stat().st_size < 2000
    with pytest.raises(ImageLoadError, match=r"strip\.png.*300000x1.*aspect ratio"):
        load_image(path)
    with pytest.raises(ImageLoadError, match="aspect ratio"):
        load_image(path.read_bytes())
    with pytest.raises(ImageLoadError, match="aspect ratio"):
        load_image(Image.new("RGB", (1, 5000)))
    with pytest.raises(ImageLoadError, match="aspect ratio"):
        load_image(np.zeros((2, 400, 3), dtype=np.uint8))
    assert load_image(Image.new("RGB", (400, 40))).image.size == (400, 40)  # a wide banner is fine


def test_16_bit_greyscale_is_scaled_not_clipped():
    """A 16-bit greyscale PNG (mode I;16) was clipped to 255: 99.6% of this gradient's pixels came out white."""
    import numpy as np

    grey = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    data = _png(grey)
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    rgb = np.asarray(load_image(data).image)
    assert rgb.shape == (64, 64, 3) and (rgb[..., 0] == rgb[..., 2]).all()
    np.testing.assert_array_equal(rgb[..., 0], (grey >> 8).astype(np.uint8))
    assert (rgb == 255).mean() < 0.01
