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

import pytest
from llama_index.core import Document
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

from gemkr_llamaindex import DecodingConfig, GeMKRIndex
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
    generate = retriever.generator.generate

    def record(queries, *args, **kwargs):
        asked.extend(queries)
        return generate(queries, *args, **kwargs)

    retriever.generator.generate = record
    yield retriever, asked
    del retriever.generator.generate  # the shared generator's own method again


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
