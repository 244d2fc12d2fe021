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

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, TextBlock
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from llama_index.retrievers.bm25 import BM25Retriever

from gemkr_llamaindex.images import LoadedImage
from gemkr_llamaindex.query import VQAQueryBundle
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
    """A real, tiny tagger with the tagger contract (any ``load_image`` input -> hint string): the basic
    colour name nearest to the image's mean RGB."""
    from gemkr_llamaindex.images import load_image

    mean = np.asarray(load_image(image).image, dtype=np.float64).reshape(-1, 3).mean(axis=0)
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


class RecordingRetriever(BaseRetriever):
    """Any retriever, keeping every bundle it was asked with (or fixed hits when ``inner`` is a list)."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[QueryBundle] = []

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        self.seen.append(query_bundle)
        return list(self.inner) if isinstance(self.inner, list) else self.inner.retrieve(query_bundle.query_str)


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
        # Packaged passages are titled ("Cat. The cat, ..."): the title is not repeated before them.
        content = node.node.get_content()
        assert content.startswith(f"{node.node_id}. ")
        assert f"[{i}] {content[:80]}" in text
        assert f"[{i}] {node.node_id}: " not in text
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


def test_one_bundle_per_query_decoded_once_and_tagged_once(retriever, reader, cat_image, monkeypatch) -> None:
    import gemkr_llamaindex.query as query_module

    decodes, tagged = [], []
    real_decode = query_module.load_image
    monkeypatch.setattr(query_module, "load_image", lambda image: decodes.append(image) or real_decode(image))

    def tagger(image: Any) -> str:  # the tagger contract: any load_image input -> hint string
        tagged.append(image)
        return dominant_colour(image)

    spy = RecordingRetriever(retriever)
    engine = VQAQueryEngine(spy, reader, top_k=2, tagger=tagger)
    response = engine.query(QueryBundle(query_str="What family does this cat belong to?", image_path=str(cat_image)))
    assert len(decodes) == 1 and len(tagged) == 1 and isinstance(tagged[0], LoadedImage)
    (bundle,) = spy.seen
    assert isinstance(bundle, VQAQueryBundle) and bundle.image_path == str(cat_image)
    assert bundle.tags == dominant_colour(cat_image) == response.metadata["hints"]  # tags travel in the bundle
    assert bundle.loaded_image() is tagged[0]  # the retriever gets the picture already decoded
    assert len(decodes) == 1

    # a bundle that brings its own tags is neither re-tagged nor re-decoded by the engine's tagger
    given = VQAQueryBundle(query_str="What family does this cat belong to?", image_path=str(cat_image), tags="cat")
    engine.query(given)
    assert spy.seen[-1] is given and given.tags == "cat" and len(tagged) == 1
    # a tagger that finds nothing leaves "" (tagged, nothing found), so a retriever with a tagger skips it
    VQAQueryEngine(spy, reader, top_k=1, tagger=lambda image: None).query(
        QueryBundle(query_str="What is this?", image_path=str(cat_image)))
    assert spy.seen[-1].tags == ""


def test_clue_windows_shorten_the_prompt_and_leave_source_nodes_unchanged(reader, wiki_nodes) -> None:
    from reader.prompt import split_sentences

    cat = next(n for n in wiki_nodes if n.node_id == "Cat").model_copy(deep=True)
    sentence = next(s for s in split_sentences(" ".join(cat.text.split())) if "Felidae" in s)
    cat.metadata["clues"] = [{"text": " ".join(sentence.split()[:4]), "score": -0.3, "logprob": -1.2}]
    hits = [NodeWithScore(node=cat, score=-0.3)]
    before = (cat.text, dict(cat.metadata), cat.hash)
    question = "Which family of mammals does the cat belong to?"
    windowed = VQAQueryEngine(RecordingRetriever(hits), reader, top_k=3, context="clue_window", clue_window=0)
    response = windowed.query(question)
    assert response.source_nodes[0] is hits[0] and (cat.text, dict(cat.metadata), cat.hash) == before
    assert response.metadata["context"] == "clue_window" and sentence in response.metadata["prompt"]
    whole = VQAQueryEngine(RecordingRetriever(hits), reader, top_k=3).synthesize(QueryBundle(question), hits)
    assert len(response.metadata["prompt"]) < len(whole.metadata["prompt"])
    assert response.response and len(response.response.split()) <= 3
