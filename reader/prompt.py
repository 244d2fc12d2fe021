"""The VQA prompt: instructions, numbered passages, visual hints, question, and the query image first.

LlamaIndex's stock multimodal synthesiser sends retrieved images but never the *query* image, which
is the one thing a VQA reader must see. :func:`build_vqa_message` puts it first, as an ``ImageBlock``,
followed by one ``TextBlock`` with everything else. A text-only backend cannot see the image; the
"hints" line (object labels, OCR text, the idea of TUNA's object-aware tags) is what reaches it.

What the reader reads of each passage (``context``):

* ``"passage"`` (default): the passage from its start, clipped to ``max_passage_chars``.
* ``"clue_window"``: the sentences around the passage's GeMKR clues. A clue is a span the retriever
  generated and found in this very passage (``node.metadata["clues"]``, a list of
  ``{"text", "score", "logprob"}``, best first), so it marks where the evidence is; the reader gets
  the sentence holding each clue plus ``clue_window`` sentences on each side, in passage order, with
  "..." where sentences were skipped. A node without clues (or whose clues cannot be found in its
  text) falls back to the passage head: its first ``2 * clue_window + 1`` sentences.
* ``"evidence_window"``: the same windows around the node's GeMKR clues and its strongest evidence
  n-grams under evidence scoring (``node.metadata["evidence"]``, the ``EVIDENCE_SPANS`` largest
  contributions): the words of the question the document was found by, and what the model generated.
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
SPANS_KWARG = "vqa_answer_spans"
"""``ChatMessage.additional_kwargs`` key holding the passage texts the answer must be a span of
(:mod:`reader.spans`); absent: free generation."""

CONTEXT_MODES = ("passage", "clue_window", "evidence_window")
DEFAULT_CLUE_WINDOW = 1
CLUES_KEY = "clues"
EVIDENCE_KEY = "evidence"
EVIDENCE_SPANS = 3
GAP = "..."

# A sentence ends at . ! ? (and closing quotes/brackets) before whitespace and a capital, digit or opening
# quote/bracket; not after an initial ("J. Smith") or a common abbreviation ("U.S. Navy", "Dr. Who").
_SENTENCE_BREAK = re.compile(r"[.!?][\"')\]\u201d\u2019]*\s+(?=[A-Z0-9\"'(\[\u201c\u2018])")
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "etc", "e.g", "i.e", "ca",
                            "approx", "no", "u.s", "u.k", "u.n", "a.d", "b.c", "mt", "ft", "gen", "col", "lt"})
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


def split_sentences(text: str) -> list[str]:
    """``text`` (whitespace already collapsed) cut into sentences, each stripped; never an empty list."""
    pieces, start = [], 0
    for match in _SENTENCE_BREAK.finditer(text):
        word = text[:match.start()].rsplit(" ", 1)[-1].lower().lstrip("(\"'")
        if len(word) <= 1 or word in _ABBREVIATIONS:
            continue
        pieces.append(text[start:match.end()].strip())
        start = match.end()
    pieces.append(text[start:].strip())
    return [p for p in pieces if p] or [text.strip()]


def _clue_texts(node: Any, evidence: bool = False) -> list[str]:
    """The node's clue texts; with ``evidence``, then its ``EVIDENCE_SPANS`` strongest evidence n-grams."""
    metadata = getattr(node, "metadata", None) or {}
    entries = list(metadata.get(CLUES_KEY) or [])
    if evidence:  # the retriever lists evidence by contribution, largest first
        entries += list(metadata.get(EVIDENCE_KEY) or [])[:EVIDENCE_SPANS]
    texts = []
    for entry in entries:
        text = entry.get("text") if isinstance(entry, dict) else entry
        if isinstance(text, str) and text.strip():
            texts.append(_WS.sub(" ", text).strip())
    return list(dict.fromkeys(texts))


def clue_window(text: str, clues: Sequence[str], window: int = DEFAULT_CLUE_WINDOW) -> str:
    """The sentences of ``text`` around each clue's first occurrence (case-insensitive), ``window`` each side.

    Windows of several clues are merged and kept in passage order; "..." marks skipped sentences.
    Without any clue found in ``text``, the passage head: its first ``2 * window + 1`` sentences.
    """
    if window < 0:
        raise ValueError(f"clue_window must be >= 0 sentences, got {window}")
    text = _WS.sub(" ", text).strip()
    sentences = split_sentences(text)
    starts, pos = [], 0
    for sentence in sentences:  # where each sentence starts in ``text``
        pos = text.index(sentence, pos)
        starts.append(pos)
        pos += len(sentence)
    lower = text.lower()
    keep: set[int] = set()
    for clue in clues:
        at = lower.find(clue.lower())
        if at < 0:
            continue
        first = max(i for i, s in enumerate(starts) if s <= at)
        last = max(i for i, s in enumerate(starts) if s <= at + len(clue) - 1)
        keep.update(range(max(0, first - window), min(len(sentences), last + window + 1)))
    if not keep:
        return " ".join(sentences[: 2 * window + 1])
    out, previous = [], None
    for i in sorted(keep):
        if previous is not None and i != previous + 1:
            out.append(GAP)
        out.append(sentences[i])
        previous = i
    prefix = GAP + " " if min(keep) > 0 else ""
    suffix = " " + GAP if max(keep) < len(sentences) - 1 else ""
    return prefix + " ".join(out) + suffix


def passage_context(node: Any, context: str = "passage", window: int = DEFAULT_CLUE_WINDOW) -> str:
    """What the reader reads of one node: its text (``"passage"``) or the window around its clues
    (``"clue_window"``) or around its clues and strongest evidence (``"evidence_window"``)."""
    check_context(context, window)
    text = node.get_content()
    if context == "passage":
        return text
    return clue_window(text, _clue_texts(node, evidence=context == "evidence_window"), window)


def check_context(context: str, window: int) -> None:
    if context not in CONTEXT_MODES:
        raise ValueError(f"context must be one of {CONTEXT_MODES}, got {context!r}")
    if not isinstance(window, int) or window < 0:
        raise ValueError(f"clue_window must be an int >= 0 (sentences each side of a clue), got {window!r}")


def format_passages(
    nodes: Sequence[NodeWithScore],
    max_chars: int = 600,
    context: str = "passage",
    clue_window: int = DEFAULT_CLUE_WINDOW,
) -> str:
    """Numbered passages, ``[1] Title: text``, each clipped to ``max_chars`` on a word boundary.

    ``nodes`` are LlamaIndex nodes or ``NodeWithScore``s (plain strings are refused: wrap them as
    ``TextNode(text=...)``); ``context`` / ``clue_window`` choose what of each is read (module docstring).
    """
    if max_chars < 20:
        raise ValueError(f"max_chars must be >= 20, got {max_chars}")
    lines = []
    for i, (node, text) in enumerate(zip(_nodes(nodes), read_texts(nodes, max_chars, context, clue_window)), start=1):
        title = passage_title(node)
        if title and not text.lower().startswith(title.lower()):
            lines.append(f"[{i}] {title}: {text}")
        else:
            lines.append(f"[{i}] {text}")
    return "\n".join(lines) if lines else NO_PASSAGES


def _nodes(nodes: Sequence[Any]) -> list[Any]:
    out = []
    for i, scored in enumerate(nodes, start=1):
        node = getattr(scored, "node", scored)
        if not hasattr(node, "get_content"):
            raise TypeError(
                f"passage {i} is a {type(node).__name__}, not a LlamaIndex node; pass the retriever's "
                "NodeWithScore objects (or TextNode(text=...) for plain texts)"
            )
        out.append(node)
    return out


def read_texts(nodes: Sequence[Any], max_chars: int = 600, context: str = "passage",
               clue_window: int = DEFAULT_CLUE_WINDOW) -> list[str]:
    """What the reader reads of each node (``context``), clipped to ``max_chars`` on a word boundary."""
    if max_chars < 20:
        raise ValueError(f"max_chars must be >= 20, got {max_chars}")
    check_context(context, clue_window)
    return [_clip(passage_context(node, context, clue_window), max_chars) for node in _nodes(nodes)]


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
    context: str = "passage",
    clue_window: int = DEFAULT_CLUE_WINDOW,
) -> str:
    """The text part of the VQA prompt (instructions, passages, hints, question)."""
    return template.format(
        passages=format_passages(nodes, max_passage_chars, context, clue_window),
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
    context: str = "passage",
    clue_window: int = DEFAULT_CLUE_WINDOW,
    image: Any = None,
    answer_spans: bool = False,
) -> ChatMessage:
    """A user ``ChatMessage``: ``[ImageBlock(query image), TextBlock(prompt)]`` (no image block if none).

    The query image is ``image_path`` or, for a picture held in memory, ``image`` (a PIL image or a
    ``gemkr_llamaindex.images.LoadedImage``, sent as PNG bytes). When ``hints`` are given (even ""), the
    message is marked (``additional_kwargs[HINTS_KWARG]``) so a reader with its own tagger does not
    describe the same image twice. ``answer_spans``: the message carries the passages as read
    (``additional_kwargs[SPANS_KWARG]``), and the reader answers with a span of them only.
    """
    from llama_index.core.base.llms.types import ChatMessage, ImageBlock, MessageRole, TextBlock

    from .images import check_image_path

    if image_path is not None and image is not None:
        raise ValueError("give the query image once: image_path= or image=, not both")
    blocks: list[Any] = []
    if image_path is not None:
        blocks.append(ImageBlock(path=check_image_path(image_path)))
    elif image is not None:
        import io

        buf = io.BytesIO()
        getattr(image, "image", image).save(buf, format="PNG")
        blocks.append(ImageBlock(image=buf.getvalue(), image_mimetype="image/png"))
    text = build_vqa_text(question, nodes, hints, template, max_passage_chars, context, clue_window)
    blocks.append(TextBlock(text=text))
    extra: dict[str, Any] = {HINTS_KWARG: format_hints(hints).strip()} if hints is not None else {}
    if answer_spans:
        extra[SPANS_KWARG] = read_texts(nodes, max_passage_chars, context, clue_window)
    return ChatMessage(role=MessageRole.USER, blocks=blocks, additional_kwargs=extra)
