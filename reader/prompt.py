"""The VQA prompt: instructions, numbered passages, visual hints, question, and the query image first.

LlamaIndex's stock multimodal synthesiser sends retrieved images but never the *query* image, which
is the one thing a VQA reader must see. :func:`build_vqa_message` puts it first, as an ``ImageBlock``,
followed by one ``TextBlock`` with everything else. A text-only backend cannot see the image; the
"hints" line (object labels, OCR text, the idea of TUNA's object-aware tags) is what reaches it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from llama_index.core.base.llms.types import ChatMessage
    from llama_index.core.schema import NodeWithScore

DEFAULT_QUESTION = "What is shown in the image?"

DEFAULT_VQA_TEMPLATE = (
    "Answer the question about the image. Use the passages if they help. "
    "Reply with a short answer of one to three words.\n\n"
    "Passages:\n{passages}\n\n"
    "{hints}"
    "Question: {question}"
)
"""Template variables: ``passages`` (numbered lines), ``hints`` (a line plus a blank line, or ""),
``question``."""

HINTS_PREFIX = "Objects and text seen in the image: "
NO_PASSAGES = "(none)"
HINTS_KWARG = "vqa_hints"
"""``ChatMessage.additional_kwargs`` key marking that the text already holds the image's hints, so
the reader does not tag the image a second time."""

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
_WS = re.compile(r"\s+")


def _clip(text: str, max_chars: int) -> str:
    text = _WS.sub(" ", text).strip()
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars].rsplit(" ", 1)[0]
    return cut + " ..."


def passage_title(node: Any) -> str:
    """A human title for a retrieved node: its ``title`` metadata, else a non-UUID node id, else ""."""
    metadata = getattr(node, "metadata", None) or {}
    title = metadata.get("title") or metadata.get("doc_id")
    if title:
        return str(title)
    node_id = getattr(node, "node_id", "") or ""
    return "" if _UUID.match(node_id) else node_id


def format_passages(nodes: Sequence[NodeWithScore], max_chars: int = 600) -> str:
    """Numbered passages, ``[1] Title: text``, each clipped to ``max_chars`` on a word boundary."""
    if max_chars < 20:
        raise ValueError(f"max_chars must be >= 20, got {max_chars}")
    lines = []
    for i, scored in enumerate(nodes, start=1):
        node = getattr(scored, "node", scored)
        title = passage_title(node)
        text = _clip(node.get_content(), max_chars)
        if title and not text.lower().startswith(title.lower()):
            lines.append(f"[{i}] {title}: {text}")
        else:
            lines.append(f"[{i}] {text}")
    return "\n".join(lines) if lines else NO_PASSAGES


def format_hints(hints: str | Sequence[str] | None) -> str:
    """The hints section (``HINTS_PREFIX`` + hints + blank line), or "" when there are none."""
    if hints is None:
        return ""
    if not isinstance(hints, str):
        hints = ", ".join(h.strip() for h in hints if h and h.strip())
    hints = _WS.sub(" ", hints).strip()
    return f"{HINTS_PREFIX}{hints}\n\n" if hints else ""


def check_question(question: str | None, has_image: bool) -> str:
    """The question, stripped; the default question when only an image is given; else ``ValueError``."""
    question = (question or "").strip()
    if question:
        return question
    if has_image:
        return DEFAULT_QUESTION
    raise ValueError("empty question and no image: pass a question, an image_path, or both")


def build_vqa_text(
    question: str,
    nodes: Sequence[NodeWithScore] = (),
    hints: str | Sequence[str] | None = None,
    template: str = DEFAULT_VQA_TEMPLATE,
    max_passage_chars: int = 600,
) -> str:
    """The text part of the VQA prompt (instructions, passages, hints, question)."""
    return template.format(
        passages=format_passages(nodes, max_passage_chars),
        hints=format_hints(hints),
        question=question,
    )


def build_vqa_message(
    question: str,
    image_path: str | Path | None = None,
    nodes: Sequence[NodeWithScore] = (),
    hints: str | Sequence[str] | None = None,
    template: str = DEFAULT_VQA_TEMPLATE,
    max_passage_chars: int = 600,
) -> ChatMessage:
    """A user ``ChatMessage``: ``[ImageBlock(query image), TextBlock(prompt)]`` (no image block if none).

    When ``hints`` are given, the message is marked (``additional_kwargs[HINTS_KWARG]``) so a reader
    with its own tagger does not describe the same image twice.
    """
    from llama_index.core.base.llms.types import ChatMessage, ImageBlock, MessageRole, TextBlock

    from .images import check_image_path

    blocks: list[Any] = []
    if image_path is not None:
        blocks.append(ImageBlock(path=check_image_path(image_path)))
    text = build_vqa_text(question, nodes, hints, template, max_passage_chars)
    blocks.append(TextBlock(text=text))
    extra = {HINTS_KWARG: format_hints(hints).strip()} if hints is not None else {}
    return ChatMessage(role=MessageRole.USER, blocks=blocks, additional_kwargs=extra)
