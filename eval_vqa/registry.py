"""Pluggable registries: retriever and answerer factories by name.

Built in: retrievers ``bm25``, ``dense``, ``clip``, ``li``; answerer ``top-title``. Others plug in
without touching this package::

    from eval_vqa.registry import register_retriever
    register_retriever("gemkr", lambda docs, opts: GeMKRRetriever(...), uses_tags=True)

A retriever factory takes ``(docs, options)``: ``docs`` a list of ``(doc_id, text)``, ``options`` a
dict with at least ``top_k`` and ``use_tags`` plus any ``--option key=value`` from the CLI, and
returns a LlamaIndex ``BaseRetriever`` whose nodes' ``id_`` are the corpus doc ids. An answerer
factory takes ``options`` and returns a callable ``answer(AnswerRequest) -> str``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

RetrieverFactory = Callable[[list, dict], Any]


@dataclass
class AnswerRequest:
    """What an answerer gets: the question, the query image path, retrieved passages (best first)."""

    question: str
    image_path: str | None
    passages: list[str]
    passage_ids: list[str]
    tags: str | None = None
    meta: dict = field(default_factory=dict)


Answerer = Callable[[AnswerRequest], str]
AnswererFactory = Callable[[dict], Answerer]


@dataclass
class RetrieverEntry:
    factory: RetrieverFactory
    uses_tags: bool
    uses_image: bool
    description: str


RETRIEVERS: dict[str, RetrieverEntry] = {}
ANSWERERS: dict[str, tuple[AnswererFactory, str]] = {}


def register_retriever(name: str, factory: RetrieverFactory, *, uses_tags: bool = False, uses_image: bool = True,
                       description: str = "", overwrite: bool = False) -> None:
    """Add a retriever factory under ``name``.

    ``uses_tags``: the retriever reads visual tags (its label gets ``+tags`` in tagged runs);
    ``uses_image``: it reads ``QueryBundle.image_path`` (text-only retrievers skip writing image files).
    """
    if name in RETRIEVERS and not overwrite:
        raise ValueError(f"retriever {name!r} is already registered (pass overwrite=True to replace it)")
    RETRIEVERS[name] = RetrieverEntry(factory, uses_tags, uses_image, description)


def register_answerer(name: str, factory: AnswererFactory, *, description: str = "", overwrite: bool = False) -> None:
    """Add an answerer factory under ``name``."""
    if name in ANSWERERS and not overwrite:
        raise ValueError(f"answerer {name!r} is already registered (pass overwrite=True to replace it)")
    ANSWERERS[name] = (factory, description)


def build_retriever(name: str, docs: list, options: dict) -> Any:
    if name not in RETRIEVERS:
        raise ValueError(f"unknown retriever {name!r}; registered: {', '.join(RETRIEVERS) or 'none'}")
    return RETRIEVERS[name].factory(docs, options)


def build_answerer(name: str, options: dict) -> Answerer:
    if name not in ANSWERERS:
        raise ValueError(f"unknown answerer {name!r}; registered: {', '.join(ANSWERERS) or 'none'}")
    return ANSWERERS[name][0](options)


# --- built-ins ----------------------------------------------------------------------------------------


def _bm25(docs: list, o: dict):
    from .baselines.bm25 import BM25Baseline

    return BM25Baseline(docs, similarity_top_k=o["top_k"], use_tags=o.get("use_tags", False))


def _dense(docs: list, o: dict):
    from .baselines.dense import DenseTextRetriever

    return DenseTextRetriever(docs, model=o.get("text_model"), similarity_top_k=o["top_k"],
                              use_tags=o.get("use_tags", False), device=o.get("device", "cpu"),
                              show_progress=o.get("progress", False))


def _clip(docs: list, o: dict):
    from .baselines.clip import CLIPImageTextRetriever

    return CLIPImageTextRetriever(docs, model_name=o.get("clip_model", "ViT-B-32"),
                                  pretrained=o.get("clip_pretrained"), similarity_top_k=o["top_k"],
                                  question_weight=float(o.get("clip_question_weight", 0.0)),
                                  device=o.get("device", "cpu"))


def _li(docs: list, o: dict):
    from .baselines.late_interaction import LateInteractionRetriever

    return LateInteractionRetriever(docs, text_model=o.get("text_model"), clip_model=o.get("li_clip_model"),
                                    clip_pretrained=o.get("clip_pretrained"), mapping_path=o.get("li_mapping"),
                                    similarity_top_k=o["top_k"], use_tags=o.get("use_tags", False),
                                    device=o.get("device", "cpu"), show_progress=o.get("progress", False))


def _top_title(options: dict) -> Answerer:
    """Floor baseline: answer with the top passage's doc id (a Wikipedia title in the mini benchmark)."""

    def answer(req: AnswerRequest) -> str:
        return req.passage_ids[0] if req.passage_ids else ""

    return answer


def _gemkr_factory(docs: list, o: dict):
    from .gemkr import gemkr_retriever

    return gemkr_retriever(docs, o)


def _reader(options: dict) -> Answerer:
    """The VQA reader (packaged SmolLM2-135M-Instruct unless ``--option reader_model=DIR``)."""
    from reader import VQAReader

    vqa = VQAReader(model=options.get("reader_model", "smollm2"))

    def answer(req: AnswerRequest) -> str:
        return vqa.answer(req.question, image_path=req.image_path, passages=req.passages, tags=req.tags)

    return answer


register_retriever("gemkr", _gemkr_factory, uses_tags=True, description="GeMKR clues by constrained decoding (zero-shot "
                   "SmolLM2 unless --option checkpoint=DIR)")
register_answerer("reader", _reader, description="VQA reader (SmolLM2-135M-Instruct by default)")
register_retriever("bm25", _bm25, uses_tags=True, uses_image=False, description="BM25 (bm25s) over passage text")
register_retriever("dense", _dense, uses_tags=True, uses_image=False, description="all-MiniLM-L6-v2 cosine")
register_retriever("clip", _clip, description="open_clip image -> passage text")
register_retriever("li", _li, uses_tags=True, description="late interaction MaxSim (PreFLMR-style, small)")
register_answerer("top-title", _top_title, description="top passage's doc id (floor baseline)")
