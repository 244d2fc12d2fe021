"""Pluggable registries: retriever and answerer factories by name.

Built in: retrievers ``bm25``, ``dense``, ``clip``, ``li``, ``gemkr`` (with ``gemkr-paper``,
``gemkr-seal`` and ``gemkr-fast``: the same model ranked other ways), ``gemkr+bm25`` (reciprocal rank
fusion) and the oracle ``gold``; answerers ``reader`` (the VQA reader) and ``top-title``. Others plug
in without touching this package::

    from eval_vqa.registry import register_retriever
    register_retriever("mine", lambda docs, opts: MyRetriever(docs, top_k=opts["top_k"]), uses_tags=True)

A retriever factory takes ``(docs, options)``: ``docs`` a list of ``(doc_id, text)``, ``options`` a
dict with at least ``top_k`` and ``use_tags`` plus any ``--option key=value`` from the CLI (and, for
an oracle, ``gold``: ``{(question, image_path): gold doc ids}``); the names it reads are declared with
``options=`` when it is registered, so that a run refuses a misspelt option instead of ignoring it
(:func:`check_options`; a factory registered without them accepts anything), and returns a LlamaIndex
``BaseRetriever`` whose nodes' ``id_`` are the corpus doc ids. An answerer factory takes ``options``
and returns a callable ``answer(AnswerRequest) -> str``; the request holds the retrieved
``NodeWithScore`` objects, best first, exactly as the retriever returned them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from llama_index.core.schema import NodeWithScore

RetrieverFactory = Callable[[list, dict], Any]
#: The option names a factory reads: a collection, or a callable returning one (evaluated at each check, so
#: names derived from a config class follow it); None: undeclared, any option is accepted.
OptionNames = Iterable[str] | Callable[[], Iterable[str]] | None
#: Options the runner and the CLI set or read themselves, accepted in every run.
RUN_OPTIONS = frozenset({"top_k", "use_tags", "progress", "gold", "device", "text_model", "clip_model",
                         "clip_pretrained", "li_clip_model", "li_mapping", "reader_context"})


@dataclass
class AnswerRequest:
    """What an answerer gets: the question, the query image path, the retrieved nodes (best first).

    ``nodes`` are the retriever's ``NodeWithScore`` objects, cut to ``--reader-k``, with their metadata
    (GeMKR's ``clues``, for instance); a reader takes them as they are (``VQAReader.answer(...,
    passages=req.nodes)``). ``passages`` and ``passage_ids`` are their texts and doc ids, for answerers
    that only need strings.
    """

    question: str
    image_path: str | None
    nodes: list[NodeWithScore]
    tags: str | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = [type(n).__name__ for n in self.nodes if not isinstance(n, NodeWithScore)]
        if bad:
            raise TypeError(f"AnswerRequest.nodes takes the retriever's NodeWithScore objects, got {bad[0]}; "
                            "wrap plain texts as NodeWithScore(node=TextNode(text=...))")

    @property
    def passages(self) -> list[str]:
        return [n.node.get_content() for n in self.nodes]

    @property
    def passage_ids(self) -> list[str]:
        return [n.node.node_id for n in self.nodes]


Answerer = Callable[[AnswerRequest], str]
AnswererFactory = Callable[[dict], Answerer]


@dataclass
class RetrieverEntry:
    factory: RetrieverFactory
    uses_tags: bool
    uses_image: bool
    description: str
    oracle: bool = False
    companions: tuple[str, ...] = ()
    options: OptionNames = None


RETRIEVERS: dict[str, RetrieverEntry] = {}
ANSWERERS: dict[str, tuple[AnswererFactory, str, OptionNames]] = {}


def register_retriever(name: str, factory: RetrieverFactory, *, uses_tags: bool = False, uses_image: bool = True,
                       description: str = "", oracle: bool = False, companions: tuple[str, ...] = (),
                       overwrite: bool = False, options: OptionNames = None) -> None:
    """Add a retriever factory under ``name``.

    ``uses_tags``: the retriever reads visual tags (its label gets ``+tags`` in tagged runs);
    ``uses_image``: it reads ``QueryBundle.image_path`` (text-only retrievers skip writing image files);
    ``oracle``: it reads the gold annotations (``options["gold"]``), so its rows are upper bounds, and
    their labels say ``(oracle)``; ``companions``: retrievers always reported beside this one (a
    hybrid's own parts: ``gemkr+bm25`` brings ``gemkr``), added to a run that names it without them;
    ``options``: the ``--option`` names the factory reads (:data:`OptionNames`).
    """
    if name in RETRIEVERS and not overwrite:
        raise ValueError(f"retriever {name!r} is already registered (pass overwrite=True to replace it)")
    RETRIEVERS[name] = RetrieverEntry(factory, uses_tags, uses_image, description, oracle, tuple(companions), options)


def with_companions(names: list[str]) -> list[str]:
    """``names`` with every retriever's companions added just before it (once, order kept otherwise)."""
    out: list[str] = []
    for name in names:
        entry = RETRIEVERS.get(name)
        for companion in entry.companions if entry is not None else ():
            if companion not in out and companion not in names:
                out.append(companion)
        if name not in out:
            out.append(name)
    return out


def register_answerer(name: str, factory: AnswererFactory, *, description: str = "", overwrite: bool = False,
                      options: OptionNames = None) -> None:
    """Add an answerer factory under ``name``; ``options``: the ``--option`` names it reads."""
    if name in ANSWERERS and not overwrite:
        raise ValueError(f"answerer {name!r} is already registered (pass overwrite=True to replace it)")
    ANSWERERS[name] = (factory, description, options)


def _names(declared: OptionNames) -> frozenset[str] | None:
    return None if declared is None else frozenset(declared() if callable(declared) else declared)


def check_options(options: dict, retrievers: Iterable[str], answerer: str | None = None) -> None:
    """Raise ``ValueError`` naming every option that none of the run's retrievers (nor its answerer, nor the
    runner) reads, and the valid ones; a misspelt ``--option`` was once silently ignored. Nothing is checked
    when one of them was registered without declaring its options."""
    declared = [_names(RETRIEVERS[r].options) for r in retrievers if r in RETRIEVERS]
    if answerer is not None and answerer in ANSWERERS:
        declared.append(_names(ANSWERERS[answerer][2]))
    if any(d is None for d in declared):
        return
    valid = RUN_OPTIONS.union(*declared)
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {', '.join(retrievers)}"
                         f"{f' and {answerer}' if answerer else ''}; valid: {', '.join(sorted(valid))}")


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


def _gold(docs: list, o: dict):
    from .baselines.oracle import GoldOracleRetriever

    if "gold" not in o:
        raise ValueError("the 'gold' oracle reads the run's gold annotations; it runs inside eval-vqa runs only")
    return GoldOracleRetriever(docs, o["gold"], similarity_top_k=o["top_k"])


def _gemkr_options() -> set[str]:
    from .gemkr import option_names

    return option_names()


def _gemkr_factory(docs: list, o: dict):
    from .gemkr import gemkr_retriever

    return gemkr_retriever(docs, o)


def _gemkr_scored(scoring: str):
    """The ``gemkr`` retriever ranked the named way (``gemkr-paper``, ``gemkr-seal``, ``gemkr-fast``)."""

    def factory(docs: list, o: dict):
        from .gemkr import gemkr_retriever

        return gemkr_retriever(docs, {**o, "scoring": scoring})

    return factory


def _gemkr_bm25(docs: list, o: dict):
    """GeMKR and BM25 fused by reciprocal rank (LlamaIndex ``QueryFusionRetriever``, no query generation)."""
    from gemkr_llamaindex.llamaindex.fusion import MultimodalFusionRetriever

    from .gemkr import gemkr_retriever

    return MultimodalFusionRetriever([gemkr_retriever(docs, o), _bm25(docs, o)], similarity_top_k=o["top_k"],
                                     mode="reciprocal_rerank", num_queries=1, use_async=False)


def _top_title(options: dict) -> Answerer:
    """Floor baseline: answer with the top passage's doc id (a Wikipedia title in the mini benchmark)."""

    def answer(req: AnswerRequest) -> str:
        return req.passage_ids[0] if req.passage_ids else ""

    return answer


def _reader(options: dict) -> Answerer:
    """The VQA reader: packaged SmolLM2-135M-Instruct unless ``--option reader_model=DIR``.

    It reads the request's nodes as they came from the retriever: ``--reader-context clue_window``
    (``--option reader_window=N`` sentences each side) reads the sentences around GeMKR's clues.
    The run's visual tags reach the reader as a hints line unless ``--option reader_hints=0`` (with the
    packaged 135M reader, hints lower exact match on gold passages: measure both). ``--option
    reader_spans=1`` decodes the answer as a span of the passages read (:mod:`reader.spans`).
    """
    from gemkr_llamaindex.assets import DEFAULT_LLM
    from reader import VQAReader

    vqa = VQAReader(model=options.get("reader_model", DEFAULT_LLM),
                    max_new_tokens=int(options.get("reader_max_new_tokens", 20)))
    context = options.get("reader_context", "passage")
    window = int(options.get("reader_window", 1))
    hints = str(options.get("reader_hints", "1")).strip().lower() not in ("0", "false", "no")
    spans = str(options.get("reader_spans", "0")).strip().lower() in ("1", "true", "yes")

    def answer(req: AnswerRequest) -> str:
        return vqa.answer(req.question, image_path=req.image_path, passages=req.nodes, tags=req.tags if hints else None,
                          context=context, clue_window=window, answer_spans=spans)

    return answer


register_retriever("bm25", _bm25, uses_tags=True, uses_image=False, description="BM25 (bm25s) over passage text",
                   options=())
register_retriever("dense", _dense, uses_tags=True, uses_image=False, description="all-MiniLM-L6-v2 cosine",
                   options=("text_model",))
register_retriever("clip", _clip, description="open_clip image -> passage text",
                   options=("clip_model", "clip_pretrained", "clip_question_weight"))
register_retriever("li", _li, uses_tags=True, description="late interaction MaxSim (PreFLMR-style, small)",
                   options=("text_model", "li_clip_model", "clip_pretrained", "li_mapping"))
register_retriever("gemkr", _gemkr_factory, uses_tags=True, description="GeMKR clues by constrained decoding "
                   "(zero-shot SmolLM2 unless --option checkpoint=DIR)", options=_gemkr_options)
register_retriever("gemkr-paper", _gemkr_scored("paper"), uses_tags=True,
                   description="GeMKR ranked by its best unique clues (the paper's scoring), same search",
                   options=_gemkr_options)
register_retriever("gemkr-seal", _gemkr_scored("seal"), uses_tags=True,
                   description="GeMKR ranked by SEAL's published n-gram aggregation (alpha 2, beta 0.8)",
                   options=_gemkr_options)
register_retriever("gemkr-fast", _gemkr_scored("fast"), uses_tags=True,
                   description="GeMKR fast mode: the query's LM-scored n-grams alone, no beam search",
                   options=_gemkr_options)
register_retriever("gemkr+bm25", _gemkr_bm25, uses_tags=True, companions=("gemkr",),
                   description="GeMKR and BM25 fused by reciprocal rank (LlamaIndex QueryFusionRetriever); "
                   "reported beside pure gemkr", options=_gemkr_options)
register_retriever("gold", _gold, oracle=True, description="oracle: the query's gold documents (an upper bound)",
                   options=())
register_answerer("reader", _reader, description="VQA reader (SmolLM2-135M-Instruct by default)",
                  options=("reader_model", "reader_max_new_tokens", "reader_context", "reader_window", "reader_hints",
                           "reader_spans"))
register_answerer("top-title", _top_title, description="top passage's doc id (floor baseline)", options=())
