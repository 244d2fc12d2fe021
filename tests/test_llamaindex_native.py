"""GeMKR on LlamaIndex's stock paths: agents and tools, query engines, reload, scores.

Every test runs real llama-index-core classes (FunctionAgent, ReActAgent, QueryEngineTool,
RetrieverQueryEngine, load_index_from_storage, SimilarityPostprocessor) over a real GeMKR retriever: a
tiny random LLaMA with the SmolLM2 tokenizer, zero-shot, over 40 packaged Wikipedia summaries. Agent
LLMs are scripted (llama-index-core's ``MockFunctionCallingLLM``, a ``CustomLLM`` writing ReAct text):
the agent loop, tool calling and memory are LlamaIndex's own.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import shutil
import subprocess
import sys
import textwrap

import pytest
from llama_index.core import Document, StorageContext, load_index_from_storage
from llama_index.core.agent.workflow import FunctionAgent, ReActAgent
from llama_index.core.base.llms.types import (
    ChatMessage,
    CompletionResponse,
    ImageBlock,
    LLMMetadata,
    MessageRole,
    TextBlock,
    ToolCallBlock,
)
from llama_index.core.llms import CustomLLM, MockFunctionCallingLLM, MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.tools import QueryEngineTool
from PIL import Image

from gemkr_llamaindex import DecodingConfig, GeMKRIndex, GeMKRRetriever
from gemkr_llamaindex.images import load_image
from gemkr_llamaindex.llamaindex import ClueGenerator
from gemkr_llamaindex.llamaindex.tools import ImageBoundQueryEngine, vqa_tool

CFG = DecodingConfig(num_beams=4, num_groups=2, min_length=2, max_length=6)


@pytest.fixture(scope="module")
def tiny_llm_dir(tmp_path_factory):
    from gemkr_llamaindex.model.tiny import build_tiny_llm

    return build_tiny_llm(tmp_path_factory.mktemp("llm") / "tiny")


@pytest.fixture(scope="module")
def generator(tiny_llm_dir):
    """Built by name (a folder), so the index can persist how to rebuild it."""
    return ClueGenerator.zero_shot_llm(str(tiny_llm_dir), config=CFG)


@pytest.fixture(scope="module")
def documents(wiki_docs):
    return [Document(text=text, id_=title, metadata={"n": i % 2}) for i, (title, text) in enumerate(wiki_docs[:40])]


@pytest.fixture(scope="module")
def index(documents, generator, tmp_path_factory):
    return GeMKRIndex.from_documents(documents, generator=generator, kb_dir=tmp_path_factory.mktemp("idx") / "kb")


def size_tagger(image) -> str:
    """A real tagger (the tagger contract: any image input -> hint string): the picture's size."""
    width, height = load_image(image).image.size
    return f"{width}x{height} picture"


@pytest.fixture()
def watched(index):
    """A GeMKR retriever with a tagger, and the list of queries its generator decoded."""
    retriever = index.as_retriever(similarity_top_k=2, tagger=size_tagger)
    asked: list = []
    generate = retriever.bound.generate  # the retriever's own binding of the shared generator to its KB

    def record(queries, *args, **kwargs):
        asked.extend(queries)
        return generate(queries, *args, **kwargs)

    retriever.bound.generate = record
    return retriever, asked


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.new("RGB", (48, 32), (200, 120, 40)).save(path)
    return path


def png_bytes(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 90, 200)).save(buf, format="PNG")
    return buf.getvalue()


def tool_then_answer(tool_name: str, kwargs: dict):
    """A scripted function-calling LLM: call ``tool_name`` once, then answer with the tool's output."""

    def script(messages, **_):
        done = [m for m in messages if m.role == MessageRole.TOOL]
        if done:
            return ChatMessage(role=MessageRole.ASSISTANT, content=f"answer: {done[-1].content[:40]}")
        return ChatMessage(role=MessageRole.ASSISTANT,
                           blocks=[ToolCallBlock(tool_call_id="call-1", tool_name=tool_name, tool_kwargs=kwargs)])

    return MockFunctionCallingLLM(response_generator=script)


def user_message(text: str, *pictures: ImageBlock) -> ChatMessage:
    return ChatMessage(role=MessageRole.USER, blocks=[TextBlock(text=text), *pictures])


def run_agent(agent, message: ChatMessage):
    """The agent's final output and the ToolCallResult events of its run."""

    async def go():
        handler = agent.run(user_msg=message)
        calls = [ev async for ev in handler.stream_events() if type(ev).__name__ == "ToolCallResult"]
        return await handler, calls

    return asyncio.run(go())


# ------------------------------------------------------------------------------------------------ 1. agents and tools
def test_a_stock_query_engine_tool_drops_the_picture_and_a_bound_engine_keeps_it(watched, photo):
    retriever, asked = watched
    engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM(max_tokens=4))
    stock = QueryEngineTool.from_defaults(engine, name="kb", description="knowledge about the picture")
    agent = FunctionAgent(tools=[stock], llm=tool_then_answer("kb", {"input": "Which family is this?"}))
    run_agent(agent, user_message("Which family?", ImageBlock(path=photo)))
    assert [q.image_path for q in asked] == [None] and asked[0].tags is None  # the ImageBlock never reached GeMKR

    asked.clear()
    bound = ImageBoundQueryEngine(engine, image=photo)
    tool = QueryEngineTool.from_defaults(bound, name="kb", description="knowledge about the picture")
    agent = FunctionAgent(tools=[tool], llm=tool_then_answer("kb", {"input": "Which family is this?"}))
    run_agent(agent, user_message("Which family?", ImageBlock(path=photo)))
    (query,) = asked
    assert query.query_str == "Which family is this?" and query.image_path == str(photo)
    assert query.tags == "48x32 picture"  # the retriever's tagger read the bound picture
    bound.image = png_bytes(20, 10)  # the next turn's picture
    bound.query("And this one?")
    assert asked[-1].tags == "20x10 picture"


def test_vqa_tool_in_a_function_agent_reads_the_chat_pictures(watched, photo):
    retriever, asked = watched
    engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM(max_tokens=4))
    tool = vqa_tool(engine)
    schema = tool.metadata.fn_schema.model_json_schema()
    assert set(schema["properties"]) == {"question", "image"} and schema["required"] == ["question"]
    pictures = (ImageBlock(path=photo), ImageBlock(image=png_bytes(20, 10)))
    for ref, tags in (("image_1", "48x32 picture"), ("image_2", "20x10 picture"), ("", "20x10 picture")):
        asked.clear()
        agent = FunctionAgent(tools=[tool], llm=tool_then_answer(tool.metadata.name, {"question": "Which family?",
                                                                                       "image": ref}))
        result, calls = run_agent(agent, user_message("Which family are these?", *pictures))
        assert not calls[0].tool_output.is_error, calls[0].tool_output.content
        assert str(result).startswith("answer:")
        (query,) = asked
        assert query.query_str == "Which family?" and query.tags == tags, ref
    assert asked[0].loaded_image().digest == load_image(png_bytes(20, 10)).digest  # inline bytes, decoded


class ReActScript(CustomLLM):
    """A scripted ReAct LLM: one ``Action`` with the given input, then an ``Answer``."""

    action: str
    action_input: str
    turns: int = 0

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(is_chat_model=False)

    def complete(self, prompt: str, formatted: bool = False, **kwargs) -> CompletionResponse:
        self.turns += 1
        if self.turns > 1:
            return CompletionResponse(text="Thought: I can answer without using any more tools.\nAnswer: done")
        return CompletionResponse(text=f"Thought: I need the picture's knowledge.\nAction: {self.action}\n"
                                       f"Action Input: {self.action_input}")

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs):
        response = self.complete(prompt)
        yield CompletionResponse(text=response.text, delta=response.text)


def test_vqa_tool_in_a_react_agent_over_the_retriever(watched, photo):
    retriever, asked = watched
    tool = vqa_tool(retriever, name="kb")
    llm = ReActScript(action="kb", action_input='{"question": "What animal family is this?", "image": "image_1"}')
    agent = ReActAgent(tools=[tool], llm=llm)
    result, calls = run_agent(agent, user_message("What is it?", ImageBlock(path=photo)))
    assert str(result) == "done"
    (call,) = calls
    assert not call.tool_output.is_error, call.tool_output.content
    (query,) = asked
    assert query.image_path == str(photo) and query.tags == "48x32 picture"
    nodes = call.tool_output.raw_output
    assert nodes and call.tool_output.content.startswith(f"[1] {nodes[0].node.node_id}: ")  # numbered passages


def test_vqa_tool_called_directly_and_its_errors(watched, photo):
    retriever, asked = watched
    tool = vqa_tool(retriever)
    out = tool.call(question="What is it?", image=str(photo))  # no agent: a file path
    assert out.raw_output and asked[-1].image_path == str(photo)
    with pytest.raises(ValueError, match="image_1 does not exist: the conversation has no pictures"):
        tool.call(question="What is it?", image="image_1")
    with pytest.raises(FileNotFoundError, match="neither image_N"):
        tool.call(question="What is it?", image="no/such/file.png")
    with pytest.raises(ValueError, match="not paths"):
        vqa_tool(retriever, allow_paths=False).call(question="What is it?", image=str(photo))
    from gemkr_llamaindex.llamaindex.tools import resolve_image

    with pytest.raises(ValueError, match="never downloads"):
        resolve_image("q", "image_1", [ImageBlock(url="https://example.org/cat.jpg")])
    with pytest.raises(TypeError, match="query engine or retriever"):
        vqa_tool("not an engine")


def test_the_stock_retriever_evaluator_drops_the_picture_and_the_vqa_evaluator_sends_it(watched, photo):
    from llama_index.core.evaluation import RetrieverEvaluator

    from eval_vqa.evaluator import VQARetrieverEvaluator

    retriever, asked = watched
    stock = RetrieverEvaluator.from_metric_names(["hit_rate"], retriever=retriever)
    stock.evaluate("Which family?", expected_ids=["Cat"])  # aretrieve(query_str): nowhere to put a picture
    assert asked[-1].image_path is None and asked[-1].tags is None
    result = VQARetrieverEvaluator(retriever=retriever, ks=[1]).evaluate(
        "Which family?", expected_ids=["Cat"], expected_texts=["felidae"], image_path=str(photo))
    assert asked[-1].image_path == str(photo) and asked[-1].tags == "48x32 picture"
    assert "Hit@1 (gold)" in result.metric_dict


# ------------------------------------------------------------------------------------------------ 2. offline defaults
def test_as_query_engine_is_the_vqa_engine_with_the_packaged_reader_offline(index):
    from reader import VQAQueryEngine, VQAReader

    engine = index.as_query_engine(similarity_top_k=2, top_k=2)  # was RetrieverQueryEngine over Settings.llm (OpenAI)
    assert isinstance(engine, VQAQueryEngine) and isinstance(engine.reader, VQAReader)
    response = engine.query("Which city is the capital of France?")
    assert str(response).strip() and 1 <= len(response.source_nodes) <= 2
    assert all("clues" in n.node.metadata for n in response.source_nodes)
    with pytest.raises(TypeError, match=r"RetrieverQueryEngine.from_args\(index.as_retriever"):
        index.as_query_engine(response_mode="compact")


# ------------------------------------------------------------------------------------------------ 3. reload
QUESTION = "Which city is the capital of France?"


def ranking(retriever, question: str = QUESTION) -> list[tuple[str, float]]:
    return [(h.node.node_id, h.score) for h in retriever.retrieve(question)]


def edit_struct(persist_dir, **changes) -> None:
    """Change fields of the persisted index struct in ``index_store.json`` (as a hand edit would)."""
    path = persist_dir / "index_store.json"
    store = json.loads(path.read_text())
    for entry in store["index_store/data"].values():
        data = json.loads(entry["__data__"])
        entry.update({k: v for k, v in changes.items() if k == "__type__"})
        data.update({k: v for k, v in changes.items() if k != "__type__"})
        entry["__data__"] = json.dumps(data)
    path.write_text(json.dumps(store))


def test_a_reloaded_index_retrieves_with_its_own_generator(index, tiny_llm_dir, tmp_path):
    before = ranking(index.as_retriever(similarity_top_k=3))
    index.persist(tmp_path / "store")
    storage = StorageContext.from_defaults(persist_dir=str(tmp_path / "store"))
    loaded = load_index_from_storage(storage, persist_dir=tmp_path / "store")  # no generator=
    spec = loaded.index_struct.generator
    assert spec["llm"] == str(tiny_llm_dir) and spec["decoding"] == CFG.to_dict() and spec["fingerprint"]
    retriever = loaded.as_retriever(similarity_top_k=3)
    assert retriever.generator is not index.as_retriever().generator  # rebuilt from the spec
    assert ranking(retriever) == before
    assert ranking(GeMKRIndex.from_persist_dir(tmp_path / "store").as_retriever(similarity_top_k=3)) == before


def test_a_changed_or_missing_generator_model_is_a_clear_error(documents, tiny_llm_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_llm_dir, model)
    gen = ClueGenerator.zero_shot_llm(str(model), config=CFG)
    GeMKRIndex.from_documents(documents[:8], generator=gen, kb_dir=tmp_path / "kb").persist(tmp_path / "store")
    (model / "generation_config.json").write_text("{}")  # the model folder changed
    with pytest.raises(ValueError, match=r"index_store.json: the generator's LLM .*model changed since it was persisted"):
        GeMKRIndex.from_persist_dir(tmp_path / "store").as_retriever()
    assert GeMKRIndex.from_persist_dir(tmp_path / "store", generator=gen).as_retriever()  # generator= overrides
    shutil.rmtree(model)
    with pytest.raises(FileNotFoundError, match=r"the generator's LLM .*model is missing"):
        GeMKRIndex.from_persist_dir(tmp_path / "store").as_retriever()


def test_an_index_of_an_in_memory_generator_says_to_pass_one(index, tiny_llm_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gen = ClueGenerator(llm=AutoModelForCausalLM.from_pretrained(tiny_llm_dir), tokenizer=AutoTokenizer.from_pretrained(tiny_llm_dir))
    GeMKRIndex(index_struct=index.index_struct, storage_context=index.storage_context, kb=index.kb,
               generator=gen).persist(tmp_path / "store")
    with pytest.raises(ValueError, match="persisted without one"):
        GeMKRIndex.from_persist_dir(tmp_path / "store").as_retriever()


def test_load_index_from_storage_without_the_import_names_the_import(index, tmp_path):
    index.persist(tmp_path / "store")
    script = textwrap.dedent(f"""
        from llama_index.core import StorageContext, load_index_from_storage
        storage = StorageContext.from_defaults(persist_dir={str(tmp_path / "store")!r})
        try:
            load_index_from_storage(storage, persist_dir={str(tmp_path / "store")!r})
        except KeyError as exc:
            print("KeyError:", exc)
        from gemkr_llamaindex import GeMKRIndex
        print(type(load_index_from_storage(storage, persist_dir={str(tmp_path / "store")!r})).__name__)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "KeyError: 'gemkr (run `from gemkr_llamaindex import GeMKRIndex` before load_index_from_storage)'" in run.stdout
    assert run.stdout.strip().endswith("GeMKRIndex")
    edit_struct(tmp_path / "store", __type__="gemkr")  # what earlier versions wrote still loads
    storage = StorageContext.from_defaults(persist_dir=str(tmp_path / "store"))
    assert isinstance(load_index_from_storage(storage, persist_dir=tmp_path / "store"), GeMKRIndex)


@pytest.mark.parametrize("kb_dir", ["../../kb", "gemkr_kb/../../kb", "../store-other/gemkr_kb"])
def test_a_persisted_kb_path_outside_the_persist_dir_is_refused(index, tmp_path, kb_dir):
    index.persist(tmp_path / "store")
    index.persist(tmp_path / "store-other")
    edit_struct(tmp_path / "store", kb_dir=kb_dir)
    with pytest.raises(ValueError, match=r"resolves outside the persist dir"):
        GeMKRIndex.from_persist_dir(tmp_path / "store")


def test_filters_are_refused_with_the_reason(index):
    from llama_index.core.vector_stores import MetadataFilters

    with pytest.raises(NotImplementedError, match="does not apply metadata filters"):
        index.as_retriever(filters=MetadataFilters.from_dicts([{"key": "n", "value": 1}]))
    with pytest.raises(NotImplementedError, match="does not apply metadata filters"):
        index.as_query_engine(filters=MetadataFilters.from_dicts([{"key": "n", "value": 1}]))


def test_retriever_from_defaults_persist_and_from_persist_dir(documents, generator, tmp_path):
    with pytest.raises(ValueError, match="exactly one of nodes= .* or kb="):
        GeMKRRetriever.from_defaults(generator=generator)
    retriever = GeMKRRetriever.from_defaults(nodes=documents[:12], generator=generator, similarity_top_k=3,
                                             kb_dir=tmp_path / "kb")
    before = ranking(retriever)
    assert before and {d for d, _ in before} <= {d.id_ for d in documents[:12]}
    retriever.persist(tmp_path / "r")
    loaded = GeMKRRetriever.from_persist_dir(tmp_path / "r")
    assert loaded.similarity_top_k == 3 and loaded.generator is not generator
    assert ranking(loaded) == before
    assert loaded.retrieve(QUESTION)[0].node.metadata["n"] in (0, 1)  # the docstore's node came back
    again = GeMKRRetriever.from_persist_dir(tmp_path / "r", generator=generator, similarity_top_k=2, tagger=size_tagger)
    assert again.tagger is size_tagger and len(again.retrieve(QUESTION)) <= 2
    on_kb = GeMKRRetriever.from_defaults(kb=retriever.kb, generator=generator)  # a bare KB: nodes from its text
    assert on_kb.retrieve(QUESTION)[0].node.get_content() == retriever.kb.text(on_kb.retrieve(QUESTION)[0].node.node_id)


def test_an_interrupted_or_edited_retriever_persist_never_loads(documents, generator, tmp_path):
    retriever = GeMKRRetriever.from_defaults(nodes=documents[:6], generator=generator, kb_dir=tmp_path / "kb")
    retriever.persist(tmp_path / "r")
    docstore = tmp_path / "r" / "docstore.json"
    docstore.write_text(docstore.read_text()[:-20])  # a write cut short
    with pytest.raises(ValueError, match=r"docstore.json is missing or differs from what .*retriever.json recorded"):
        GeMKRRetriever.from_persist_dir(tmp_path / "r")
    retriever.persist(tmp_path / "r")
    record = tmp_path / "r" / "retriever.json"
    data = json.loads(record.read_text())
    record.write_text(json.dumps({**data, "kb_dir": "../kb"}))
    with pytest.raises(ValueError, match="resolves outside the persist dir"):
        GeMKRRetriever.from_persist_dir(tmp_path / "r")
    record.unlink()
    with pytest.raises(FileNotFoundError, match="not a persisted GeMKR retriever"):
        GeMKRRetriever.from_persist_dir(tmp_path / "r")


# ------------------------------------------------------------------------------------------------ 5. scores
def test_softmax_shares_for_any_real_scores():
    from gemkr_llamaindex.llamaindex.retriever import softmax

    assert softmax([]) == []
    assert softmax([0.0, 0.0]) == [0.5, 0.5]
    assert softmax([1.24, 0.17, -0.3]) == pytest.approx([math.exp(s) / sum(math.exp(t) for t in (1.24, 0.17, -0.3))
                                                         for s in (1.24, 0.17, -0.3)])
    assert softmax([1e4, 1e4 - 1]) == pytest.approx([1 / (1 + math.exp(-1)), math.exp(-1) / (1 + math.exp(-1))])
    assert softmax([-math.inf, -2.0]) == [0.0, 1.0] and softmax([math.inf, 3.0, math.inf]) == [0.5, 0.0, 0.5]


def test_normalised_scores_make_similarity_cutoffs_meaningful(index, generator):
    from llama_index.core.postprocessor import SimilarityPostprocessor

    raw = index.as_retriever(similarity_top_k=5)
    docs = raw.results([QUESTION])[0].docs  # every document the search reached
    want = dict(zip([d.doc_id for d in docs], softmax_by_hand([d.score for d in docs])))
    hits = raw.retrieve(QUESTION)
    assert [h.score for h in hits] == [pytest.approx(d.score) for d in docs[:5]]  # the score stays the raw one
    for h in hits:
        assert h.node.metadata["score_softmax"] == pytest.approx(want[h.node.node_id])
        assert "score_softmax" in h.node.excluded_llm_metadata_keys
    normalised = index.as_retriever(similarity_top_k=5, normalize_scores=True)
    cutoff = sorted(want.values(), reverse=True)[1]  # keeps the two best documents, whatever the raw scale
    engine = RetrieverQueryEngine.from_args(normalised, llm=MockLLM(max_tokens=4),
                                            node_postprocessors=[SimilarityPostprocessor(similarity_cutoff=cutoff)])
    kept = engine.query(QUESTION).source_nodes
    assert [n.node.node_id for n in kept] == [d.doc_id for d in docs[:2]]
    assert all(0 <= n.score <= 1 for n in kept)


def softmax_by_hand(scores):
    exps = [math.exp(s) for s in scores]
    return [e / sum(exps) for e in exps]
