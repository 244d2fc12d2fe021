"""The vision-language backend on a tiny, randomly initialised LLaVA built in-process.

No VLM weights exist offline, so the answers are noise; what is tested is the real path a user's
model takes: ``save_pretrained`` folder -> ``AutoProcessor`` + ``AutoModelForImageTextToText`` ->
chat template with the image placeholder first -> image tokens expanded -> greedy ``generate``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("llama_index.retrievers.bm25")
pytest.importorskip("skimage")

from llama_index.core.base.llms.types import ChatMessage, ImageBlock, TextBlock
from llama_index.core.schema import QueryBundle, TextNode
from llama_index.retrievers.bm25 import BM25Retriever

from reader import VQAQueryEngine, VQAReader

IMAGE_TOKEN = "<image>"
IMAGE_SIZE, PATCH = 32, 8
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH) ** 2  # "default" feature strategy drops CLS
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}" + IMAGE_TOKEN + "\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: on a small shared CPU, a 135M model runs several times faster than with
    threads competing for cores (measured 2.7 s vs 10-34 s per answer under load)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory) -> Path:
    """A 2-layer CLIP tower + 2-layer Llama LLaVA with the packaged SmolLM2 tokenizer, saved to disk."""
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from gemkr_llamaindex import assets

    tok = AutoTokenizer.from_pretrained(str(assets.smollm2_path()))
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
        ),
        tokenizer=tok,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token=IMAGE_TOKEN,
        chat_template=CHAT_TEMPLATE,
    )
    out = tmp_path_factory.mktemp("tiny-llava")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def vlm_reader(tiny_llava) -> VQAReader:
    return VQAReader(str(tiny_llava), max_new_tokens=6).load()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    from PIL import Image
    from skimage import data

    folder = tmp_path_factory.mktemp("vlm-img")
    paths = {}
    for name in ("chelsea", "coffee"):
        paths[name] = folder / f"{name}.png"
        Image.fromarray(getattr(data, name)()).save(paths[name])
    return paths


def test_auto_backend_detects_the_vision_tower(vlm_reader) -> None:
    assert vlm_reader.sees_images
    backend = vlm_reader._backend
    assert type(backend.model).__name__ == "LlavaForConditionalGeneration"
    assert backend.dtype == (torch.bfloat16 if torch.cuda.is_available() else torch.float32)


def test_image_reaches_the_model_before_the_text(vlm_reader, images) -> None:
    from PIL import Image

    backend = vlm_reader._backend
    prompt = backend.render("Be brief.", "Passages:\n[1] Cat: a small mammal.\n\nQuestion: What is it?", 1)
    assert prompt.index(IMAGE_TOKEN) < prompt.index("Passages:") < prompt.index("Question:")
    assert prompt.index("Be brief.") < prompt.index(IMAGE_TOKEN)
    inputs = backend.processor_inputs(prompt, [Image.open(images["chelsea"]).convert("RGB")])
    image_id = backend.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert int((inputs["input_ids"] == image_id).sum()) == NUM_IMAGE_TOKENS
    assert tuple(inputs["pixel_values"].shape) == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    # The pixels flow into the logits: another image changes them.
    other = backend.processor_inputs(prompt, [Image.open(images["coffee"]).convert("RGB")])
    with torch.inference_mode():
        a = backend.model(**inputs).logits[0, -1]
        b = backend.model(**other).logits[0, -1]
    assert not torch.allclose(a, b)


def test_chat_and_query_engine_with_a_vlm(vlm_reader, images) -> None:
    message = ChatMessage(blocks=[ImageBlock(path=images["coffee"]), TextBlock(text="What drink is this?")])
    response = vlm_reader.chat([message])
    assert response.raw["backend"] == "vlm"
    assert response.raw["num_new_tokens"] >= 1
    assert response.raw["num_input_tokens"] > NUM_IMAGE_TOKENS
    assert response.raw["prompt"].index(IMAGE_TOKEN) < response.raw["prompt"].index("What drink is this?")

    image_only = vlm_reader.chat([ChatMessage(blocks=[ImageBlock(path=images["chelsea"])])])
    assert image_only.raw["prompt"].count(IMAGE_TOKEN) == 1
    text_only = vlm_reader.complete("Name a colour.")  # no image: the processor gets text alone
    assert IMAGE_TOKEN not in text_only.raw["prompt"] and text_only.raw["num_new_tokens"] >= 1

    nodes = [
        TextNode(text="Coffee is a beverage brewed from roasted coffee beans.", id_="Coffee"),
        TextNode(text="The cat is a small domesticated carnivorous mammal.", id_="Cat"),
    ]
    engine = VQAQueryEngine(BM25Retriever.from_defaults(nodes=nodes, similarity_top_k=2), vlm_reader, top_k=1)
    result = engine.query(QueryBundle(query_str="What beverage is this?", image_path=str(images["coffee"])))
    assert [n.node_id for n in result.source_nodes] == ["Coffee"]
    reader_prompt = result.metadata["reader_prompt"]
    assert reader_prompt.index(IMAGE_TOKEN) < reader_prompt.index("[1] Coffee is a beverage")
    assert len(result.response.split()) <= 3
