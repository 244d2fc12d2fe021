"""The VQA reader end to end: packaged SmolLM2-135M-Instruct + BM25 over real Wikipedia summaries.

What reaches the model is checked on the message actually passed to ``chat`` (recorded by a small
real subclass of ``VQAReader``) and on the prompt string the backend rendered.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("llama_index.retrievers.bm25")
pytest.importorskip("skimage")

from llama_index.core.base.llms.types import ChatMessage, ImageBlock, TextBlock
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.schema import QueryBundle, TextNode
from llama_index.retrievers.bm25 import BM25Retriever

from reader import VQAQueryEngine, VQAReader
from reader.prompt import HINTS_PREFIX

WANTED = ("Paris", "Eiffel Tower", "Cat", "Tiger", "Coffee", "Moon", "China", "Bus")
COLOURS = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "grey": (128, 128, 128),
    "red": (200, 30, 30),
    "orange": (230, 140, 40),
    "yellow": (230, 220, 50),
    "green": (40, 160, 60),
    "blue": (40, 80, 200),
    "brown": (120, 80, 40),
}


def dominant_colour(image: Any) -> str:
    """A real, tiny tagger: the basic colour name nearest to the image's mean RGB."""
    mean = np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(axis=0)
    name = min(COLOURS, key=lambda c: float(((mean - np.array(COLOURS[c])) ** 2).sum()))
    return f"{name} image"


class RecordingReader(VQAReader):
    """``VQAReader`` that keeps every message list it was asked to answer."""

    _seen: list = PrivateAttr(default_factory=list)

    def _chat(self, messages):  # type: ignore[override]
        self._seen.append(list(messages))
        return super()._chat(messages)

    @property
    def seen(self) -> list[list[ChatMessage]]:
        return self._seen


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
def wiki_nodes() -> list[TextNode]:
    from gemkr_llamaindex import assets

    nodes = []
    for i, (title, text) in enumerate(assets.wiki_summaries()):
        if i < 42 or title in WANTED:
            nodes.append(TextNode(text=text, id_=title, metadata={"title": title}))
        if i >= 42 and len(nodes) == 42 + len(WANTED):
            break
    assert {n.node_id for n in nodes} >= set(WANTED), "packaged summaries changed: update WANTED"
    return nodes


@pytest.fixture(scope="module")
def retriever(wiki_nodes) -> BM25Retriever:
    return BM25Retriever.from_defaults(nodes=wiki_nodes, similarity_top_k=3)


@pytest.fixture(scope="module")
def reader() -> RecordingReader:
    return RecordingReader(max_new_tokens=20).load()


@pytest.fixture(scope="module")
def engine(retriever, reader) -> VQAQueryEngine:
    return VQAQueryEngine(retriever, reader, top_k=3)


@pytest.fixture(scope="module")
def cat_image(tmp_path_factory) -> Path:
    from PIL import Image
    from skimage import data

    path = tmp_path_factory.mktemp("img") / "chelsea.png"
    Image.fromarray(data.chelsea()).save(path)
    return path


def test_answers_a_real_question_from_retrieved_summaries(engine, retriever) -> None:
    response = engine.query("What is the capital of France?")
    assert [n.node_id for n in response.source_nodes] == [
        n.node_id for n in retriever.retrieve("What is the capital of France?")
    ]
    assert response.source_nodes[0].node_id == "Paris"
    assert response.response == "Paris"
    assert response.metadata["raw_answer"].strip()
    assert "Paris" in response.metadata["reader_prompt"]


def test_query_image_goes_first_with_passages_and_hints(engine, reader, retriever, cat_image) -> None:
    engine_with_tagger = VQAQueryEngine(retriever, reader, top_k=2, tagger=dominant_colour)
    question = "What family does this cat belong to?"
    before = len(reader.seen)
    response = engine_with_tagger.query(QueryBundle(query_str=question, image_path=str(cat_image)))

    assert len(reader.seen) == before + 1
    (message,) = reader.seen[-1]
    assert isinstance(message.blocks[0], ImageBlock)
    assert Path(message.blocks[0].path) == cat_image
    assert [type(b) for b in message.blocks] == [ImageBlock, TextBlock]
    text = message.blocks[1].text
    assert len(response.source_nodes) == 2
    for i, node in enumerate(response.source_nodes, start=1):
        assert f"[{i}] {node.node_id}: {node.node.get_content()[:80]}" in text
    hints = dominant_colour(Image.open(cat_image))
    assert f"{HINTS_PREFIX}{hints}" in text
    assert text.rstrip().endswith(f"Question: {question}")
    # The text-only model got the hints once (engine's), not a second time from the reader.
    assert response.metadata["reader_prompt"].count(HINTS_PREFIX) == 1
    answer = response.response
    assert answer and len(answer.split()) <= 3


def test_hints_can_steer_a_text_retriever(retriever, reader, cat_image) -> None:
    question = "What animal is this?"
    engine = VQAQueryEngine(retriever, reader, top_k=2, retrieve_with_hints=True)
    assert retriever.retrieve(question)[0].node_id != "Cat"
    response = engine.ask(question, image_path=cat_image, tags=["cat", "domestic cat"])
    assert response.source_nodes[0].node_id == "Cat"
    assert response.metadata["hints"] == "cat, domestic cat"
    assert f"{HINTS_PREFIX}cat, domestic cat" in response.metadata["prompt"]
    assert response.response and len(response.response.split()) <= 3


def test_text_only_reader_turns_the_image_into_hints(reader, cat_image) -> None:
    message = ChatMessage(blocks=[ImageBlock(path=cat_image), TextBlock(text="What colour is this animal?")])
    reader.tagger = dominant_colour
    try:
        response = reader.chat([message])
    finally:
        reader.tagger = None
    hints = response.raw["hints"]
    assert hints and hints.endswith("image")
    assert f"{HINTS_PREFIX}{hints}" in response.raw["prompt"]
    assert response.raw["backend"] == "text"
    assert response.message.content.strip()


def test_aquery_leaves_the_event_loop_free(engine) -> None:
    async def main() -> tuple[int, str]:
        ticks = 0
        task = asyncio.create_task(engine.aquery("What is the only natural satellite of Earth?"))
        while not task.done():
            await asyncio.sleep(0.01)
            ticks += 1
        return ticks, (await task).response

    start = time.perf_counter()
    ticks, answer = asyncio.run(main())
    elapsed = time.perf_counter() - start
    # Generation takes far longer than one tick; a blocked loop would tick once or twice.
    assert elapsed > 0.1 and ticks >= 5
    assert answer and len(answer.split()) <= 3


def test_bad_queries_fail_clearly_before_retrieval(engine, tmp_path) -> None:
    with pytest.raises(ValueError, match="empty question and no image"):
        engine.query("   ")
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        engine.query(QueryBundle(query_str="What is this?", image_path=str(tmp_path / "missing.jpg")))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG but not really")
    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
    with pytest.raises(ValueError, match="cannot decode query image .*broken.png"):
        engine.query(QueryBundle(query_str="What is this?", image_path=str(broken)))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VQAReader(str(tmp_path / "no-model-here"))
    with pytest.raises(ValueError, match="text-only and got an image without any text"):
        engine.reader.chat([ChatMessage(blocks=[ImageBlock(path=broken.with_name("ok.png"))])])
    with pytest.raises(TypeError, match="BaseRetriever"):
        VQAQueryEngine(retriever=object(), reader=engine.reader)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\{hints\}"):
        VQAQueryEngine(engine.retriever, engine.reader, template="{passages} {question}")


def test_reader_answer_and_metadata(reader, wiki_nodes) -> None:
    eiffel = next(n for n in wiki_nodes if n.node_id == "Eiffel Tower")
    answer = reader.answer("Who designed the Eiffel Tower?", passages=[eiffel])
    assert "Eiffel" in answer and len(answer.split()) <= 3
    meta = reader.metadata
    assert meta.is_chat_model and meta.context_window >= 2048 and meta.num_output == 20
