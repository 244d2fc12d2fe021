"""The picture through LlamaIndex's tool-calling paths: agents, tools, query engines used as tools.

LlamaIndex's ``QueryEngineTool`` (and so every ``FunctionAgent``, ``ReActAgent`` or ``AgentWorkflow``
that uses one) hands its query engine a plain string: the retriever gets a bundle whose ``image_path``
is None, although the user's message carried an ``ImageBlock``. Two ways keep the picture:

* :func:`vqa_tool` - a ``FunctionTool`` whose schema has the picture beside the question: ``image`` is
  ``"image_N"`` (the N-th picture the user attached to the conversation, read from the agent's memory),
  empty (the latest one), or a file path. Workflow agents inject their ``Context``; the tool finds the
  user's ``ImageBlock`` s there, so the agent LLM only names a picture, it never copies one.
* :class:`ImageBoundQueryEngine` - any query engine with a picture bound to it: every query that comes
  without one (a ``QueryEngineTool``'s string) gets the bound picture. Set ``engine.image`` when the
  conversation's picture changes; one bound engine per conversation.

Both hand the engine a :class:`~gemkr_llamaindex.query.VQAQueryBundle`; a
``VQAQueryEngine`` (package ``reader``), a ``RetrieverQueryEngine`` over a ``GeMKRRetriever`` and the
retriever itself all read its picture.
"""

# No ``from __future__ import annotations`` here: FunctionTool finds the ``ctx: Context`` parameter that
# agents fill in by comparing the annotation object itself, and a postponed annotation is only a string.
import os
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, MessageRole
from llama_index.core.base.response.schema import RESPONSE_TYPE
from llama_index.core.bridge.pydantic import BaseModel, Field
from llama_index.core.callbacks import CallbackManager
from llama_index.core.prompts.mixin import PromptDictType, PromptMixinType
from llama_index.core.schema import NodeWithScore, QueryBundle
from llama_index.core.tools import FunctionTool
from llama_index.core.workflow import Context

from gemkr_llamaindex.query import VQAQueryBundle

IMAGE_ID_PREFIX = "image_"

DEFAULT_TOOL_DESCRIPTION = (
    "Answers a question about a picture from an encyclopedic knowledge base (knowledge-based visual question "
    "answering). Pictures the user attached are image_1, image_2, ... in the order they were attached."
)


class VQAToolInput(BaseModel):
    """The VQA tool's arguments: what the agent LLM fills in."""

    question: str = Field(description="The question about the picture, as a full sentence.")
    image: str = Field(
        default="",
        description="Which picture: 'image_1' for the first picture the user attached, 'image_2' for the "
        "second, ...; leave empty for the latest one; or the path of an image file.",
    )


def chat_images(messages: Sequence[ChatMessage]) -> list[ImageBlock]:
    """The pictures the user attached, in order: ``image_1`` is ``chat_images(...)[0]``."""
    return [b for m in messages if m.role == MessageRole.USER for b in m.blocks if isinstance(b, ImageBlock)]


def bundle_from_block(question: str, block: ImageBlock, name: str = "the picture") -> VQAQueryBundle:
    """The question with an ``ImageBlock``'s picture: its file (``path``) or its inline bytes. A URL is
    refused: the tool never downloads."""
    if block.image:
        return VQAQueryBundle(query_str=question, image=block.resolve_image().read())  # base64 -> raw bytes
    if block.path is not None:
        return VQAQueryBundle(query_str=question, image_path=str(block.path))
    raise ValueError(f"{name} is given by URL ({block.url}); the VQA tool reads image files and inline bytes and "
                     "never downloads: attach the picture as ImageBlock(path=...) or ImageBlock(image=bytes)")


def resolve_image(question: str, image: str, pictures: Sequence[ImageBlock], allow_paths: bool = True) -> VQAQueryBundle:
    """The tool's ``image`` argument resolved against the conversation's ``pictures`` (see :class:`VQAToolInput`)."""
    ref = (image or "").strip()
    if not ref:
        if not pictures:
            return VQAQueryBundle(query_str=question)  # a text question; the engine decides whether that is enough
        return bundle_from_block(question, pictures[-1], f"image_{len(pictures)}")
    number = ref[len(IMAGE_ID_PREFIX):] if ref.lower().startswith(IMAGE_ID_PREFIX) else None
    if number is not None and number.isdigit():
        n = int(number)
        if not 1 <= n <= len(pictures):
            have = f"image_1 ... image_{len(pictures)}" if pictures else "no pictures"
            raise ValueError(f"{ref} does not exist: the conversation has {have}")
        return bundle_from_block(question, pictures[n - 1], ref)
    if not allow_paths:
        raise ValueError(f"image={ref!r}: this tool takes image_N ids of the conversation's pictures, not paths")
    if not os.path.isfile(ref):
        raise FileNotFoundError(f"image={ref!r} is neither image_N (N-th attached picture) nor an existing image file")
    return VQAQueryBundle(query_str=question, image_path=ref)


def _format_nodes(nodes: list[NodeWithScore]) -> str:
    return "\n\n".join(f"[{i}] {n.node.node_id}: {n.node.get_content()}" for i, n in enumerate(nodes, 1))


def vqa_tool(
    engine: BaseQueryEngine | BaseRetriever,
    name: str = "visual_knowledge",
    description: str = DEFAULT_TOOL_DESCRIPTION,
    allow_paths: bool = True,
    return_direct: bool = False,
) -> FunctionTool:
    """A ``FunctionTool`` (question, image) over a query engine or a retriever that reads the picture.

    In a workflow agent the tool reads the user's pictures from the agent's memory (``image="image_2"``,
    or empty for the latest); called directly (``tool.call(question=..., image="photo.jpg")``) it takes
    file paths. ``allow_paths=False`` limits the agent to the conversation's pictures. A query engine's
    ``Response`` is the tool's output; a retriever's nodes are listed as numbered passages (the
    ``NodeWithScore`` objects stay in ``ToolOutput.raw_output``).
    """
    if not isinstance(engine, (BaseQueryEngine, BaseRetriever)):
        raise TypeError(f"vqa_tool takes a LlamaIndex query engine or retriever, got {type(engine).__name__}")

    async def ask(ctx: Context, question: str, image: str = "") -> Any:
        pictures: list[ImageBlock] = []
        if ctx is not None:
            memory = await ctx.store.get("memory", default=None)
            if memory is not None:
                pictures = chat_images(await memory.aget_all())
        bundle = resolve_image(question, image, pictures, allow_paths)
        if isinstance(engine, BaseRetriever):
            return await engine.aretrieve(bundle)
        return await engine.aquery(bundle)

    def as_text(output: Any) -> str | None:
        return _format_nodes(output) if isinstance(output, list) else None

    return FunctionTool.from_defaults(async_fn=ask, name=name, description=description, fn_schema=VQAToolInput,
                                      return_direct=return_direct, partial_params={"ctx": None}, callback=as_text)


class ImageBoundQueryEngine(BaseQueryEngine):
    """``query_engine`` with a picture bound to it, for paths that pass only text (``QueryEngineTool``).

    A query that brings no picture of its own gets ``image`` (a path, bytes, a PIL image ...: anything
    :func:`gemkr_llamaindex.images.load_image` reads) and ``tags``; a query with a picture keeps it.
    Rebind with ``engine.image = ...`` when the conversation's picture changes.
    """

    def __init__(self, query_engine: BaseQueryEngine, image: Any = None, tags: str | None = None,
                 callback_manager: CallbackManager | None = None) -> None:
        if not isinstance(query_engine, BaseQueryEngine):
            raise TypeError(f"query_engine must be a LlamaIndex query engine, got {type(query_engine).__name__}")
        self.query_engine, self.image, self.tags = query_engine, image, tags
        super().__init__(callback_manager=callback_manager or query_engine.callback_manager)

    def bind(self, query: QueryBundle | str) -> VQAQueryBundle:
        """``query`` with the bound picture and tags when it has no picture of its own."""
        bundle = VQAQueryBundle.of(query)
        if bundle.has_image or self.image is None:
            return bundle
        if isinstance(self.image, (str, os.PathLike)):
            return VQAQueryBundle(query_str=bundle.query_str, image_path=str(self.image), tags=bundle.tags or self.tags)
        return VQAQueryBundle(query_str=bundle.query_str, image=self.image, tags=bundle.tags or self.tags)

    def _query(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        return self.query_engine.query(self.bind(query_bundle))

    async def _aquery(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        return await self.query_engine.aquery(self.bind(query_bundle))

    def _get_prompts(self) -> PromptDictType:
        return {}

    def _update_prompts(self, prompts: PromptDictType) -> None:
        pass

    def _get_prompt_modules(self) -> PromptMixinType:
        return {"query_engine": self.query_engine}
