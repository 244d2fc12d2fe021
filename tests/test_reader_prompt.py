"""Prompt and message building, image loading, model-path checks: no model weights involved."""

from __future__ import annotations

import io
from pathlib import Path

import pytest


def test_prompt_text_numbers_passages_clips_and_places_hints() -> None:
    from llama_index.core.schema import NodeWithScore, TextNode

    from reader.prompt import DEFAULT_QUESTION, HINTS_PREFIX, build_vqa_text, check_question

    nodes = [
        NodeWithScore(node=TextNode(text="The capital of France. " * 40, id_="Paris"), score=2.0),
        NodeWithScore(node=TextNode(text="A bus is a motor vehicle.", metadata={"title": "Bus"}), score=1.0),
        NodeWithScore(node=TextNode(text="Untitled text."), score=0.5),  # uuid id: no title shown
        NodeWithScore(node=TextNode(text="Moon: the only natural satellite.", id_="Moon"), score=0.1),
    ]
    text = build_vqa_text("What city is this?", nodes, hints=["tower", " EMT "], max_passage_chars=100)
    lines = text.splitlines()
    first = next(line for line in lines if line.startswith("[1] "))
    assert first.startswith("[1] Paris: The capital of France.") and first.endswith(" ...")
    assert len(first) <= len("[1] Paris: ") + 100 + 4
    assert "[2] Bus: A bus is a motor vehicle." in lines
    assert "[3] Untitled text." in lines
    assert "[4] Moon: the only natural satellite." in lines  # title already opens the text
    assert f"{HINTS_PREFIX}tower, EMT" in lines
    assert text.index(HINTS_PREFIX) < text.index("Question: What city is this?")
    assert "Passages:\n(none)" in build_vqa_text("Q?", [])
    assert HINTS_PREFIX not in build_vqa_text("Q?", [], hints="  ")

    assert check_question("  Who?  ", has_image=False) == "Who?"
    assert check_question("", has_image=True) == DEFAULT_QUESTION
    with pytest.raises(ValueError, match="empty question and no image"):
        check_question("   ", has_image=False)


def test_message_puts_the_query_image_first(tmp_path) -> None:
    from llama_index.core.base.llms.types import ImageBlock, TextBlock
    from PIL import Image

    from reader.prompt import HINTS_KWARG, build_vqa_message

    image = tmp_path / "red.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(image)
    message = build_vqa_message("What colour?", image, [], hints="red")
    assert [type(b) for b in message.blocks] == [ImageBlock, TextBlock]
    assert str(message.blocks[0].path) == str(image)
    assert message.additional_kwargs[HINTS_KWARG].endswith("red")
    text_only = build_vqa_message("What colour?")
    assert [type(b) for b in text_only.blocks] == [TextBlock]
    assert HINTS_KWARG not in text_only.additional_kwargs
    with pytest.raises(FileNotFoundError, match="missing.png"):
        build_vqa_message("What colour?", tmp_path / "missing.png")


def test_image_errors_name_the_file(tmp_path) -> None:
    from reader.images import load_image

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a JPEG")
    with pytest.raises(ValueError, match="cannot decode query image .*broken.jpg"):
        load_image(broken)
    with pytest.raises(FileNotFoundError, match="nope.png.* does not exist"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(FileNotFoundError, match="is a directory"):
        load_image(tmp_path)


def test_image_blocks_with_inline_bytes_decode_or_fail_clearly() -> None:
    from llama_index.core.base.llms.types import ImageBlock
    from PIL import Image

    from reader.images import image_from_block

    buffer = io.BytesIO()
    Image.new("L", (5, 7), 128).save(buffer, format="PNG")
    image = image_from_block(ImageBlock(image=buffer.getvalue()))
    assert image.size == (5, 7) and image.mode == "RGB"
    with pytest.raises(ValueError, match="inline image bytes"):
        image_from_block(ImageBlock(image=b"not an image at all"))


def test_model_paths_are_checked_before_loading(tmp_path) -> None:
    from reader.backends import load_backend, resolve_model

    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model(str(tmp_path / "no-such-model"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model("./models/missing")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="is a file"):
        resolve_model(str(weights))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "no-such-architecture"}')
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    with pytest.raises(OSError, match="cannot load the model in folder"):
        load_backend(str(tmp_path), device="cpu")
    with pytest.raises(ValueError, match="backend must be"):
        load_backend(str(tmp_path), backend="audio")
    # A bare org/name is a hub id: checked by transformers at load time, not here.
    assert resolve_model("HuggingFaceTB/SmolVLM-256M-Instruct") == "HuggingFaceTB/SmolVLM-256M-Instruct"


def test_import_reader_is_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, reader; "
        "heavy = [m for m in ('torch', 'transformers', 'llama_index.core') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == ""
