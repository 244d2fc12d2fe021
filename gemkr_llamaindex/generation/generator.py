"""ClueGenerator: multimodal queries -> knowledge clues and ranked documents of a knowledge base.

A generator is a model, its prompts (:mod:`~gemkr_llamaindex.generation.prompts`), decoding settings and
the rankings built on them (:mod:`~gemkr_llamaindex.generation.scoring`); it holds no knowledge base.
:meth:`ClueGenerator.bind` ties it to one KB, checking once that the model's token ids are the KB's; the
retriever holds such a :class:`BoundGenerator`. One generator can exist before any index and serve several.

A query's walk: :meth:`ClueGenerator.prepare` decodes its picture (once: the bundle keeps it), checks it
and tokenises its prompt (once); a batch of prepared queries is built into tensors, searched by
knowledge-guided constrained decoding (:mod:`gemkr_llamaindex.decoding`) and ranked. Every call builds its
own decoding state (KV cache) from the shared, read-only model, so concurrent calls (``aretrieve`` runs in
worker threads) give exactly what sequential calls give.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from llama_index.core.schema import QueryBundle

from gemkr_llamaindex.assets import DEFAULT_LLM
from gemkr_llamaindex.decoding import ConstrainedBeamSearch, DecodingConfig, HFBackend, Prompts, QueryResult, SearchStats
from gemkr_llamaindex.decoding.evidence import Ngram
from gemkr_llamaindex.generation.prompts import ZERO_SHOT_SYSTEM, ChatPrompts, PreparedPrompt, TemplatePrompts, prompt_embeds
from gemkr_llamaindex.generation.scoring import EvidenceScorer, PriorCalibration
from gemkr_llamaindex.model.prompt import PromptEmbeds
from gemkr_llamaindex.query import VQAQueryBundle

LONG_PROMPT_MODES = ("error", "truncate")
Query = VQAQueryBundle | QueryBundle | str

#: ``backend(kb, end_token_id) -> LogProbBackend``: makes one search's backend (e.g. a ``VLLMServer``).
BackendFactory = Callable[[Any, "int | None"], Any]


@dataclass(frozen=True)
class PreparedQuery:
    """A query checked and tokenised (:meth:`ClueGenerator.prepare`): its bundle, which holds the decoded
    picture, and its prepared prompt."""

    bundle: VQAQueryBundle
    prompt: PreparedPrompt


class ClueGenerator:
    """Generates knowledge clues for batches of queries with knowledge-guided constrained decoding.

    Args:
        model / llm + tokenizer: a trained GeMKRModel, or a zero-shot causal LM and its tokenizer.
        config: decoding settings (default: :class:`DecodingConfig`'s defaults).
        batch_size: queries decoded together.
        backend: a factory ``(kb, end_token_id) -> backend`` for another inference engine; default: a
            KV-cached :class:`HFBackend` over the model, one per call.
        on_long_prompt: a prompt that does not fit the model's context (minus ``max_length`` clue tokens)
            raises (``"error"``, the default) or has its question cut from the end (``"truncate"``, with a
            warning); either way before any forward pass.
    """

    #: How to build this generator again, set by :meth:`zero_shot_llm` / :meth:`from_checkpoint`
    #: (``{"llm": name}`` or ``{"checkpoint": path}``); None for one built from in-memory models. A
    #: persisted index records it (:mod:`gemkr_llamaindex.llamaindex.persist`) and rebuilds from it.
    origin: dict[str, str] | None = None

    def __init__(
        self,
        *,
        model: Any = None,
        llm: Any = None,
        tokenizer: Any = None,
        config: DecodingConfig | None = None,
        batch_size: int = 4,
        system_prompt: str = ZERO_SHOT_SYSTEM,
        backend: BackendFactory | None = None,
        on_long_prompt: str = "error",
    ) -> None:
        if (model is None) == (llm is None):
            raise ValueError("give exactly one of model= (a trained GeMKRModel) or llm= (a zero-shot causal LM)")
        if on_long_prompt not in LONG_PROMPT_MODES:
            raise ValueError(f"on_long_prompt must be one of {LONG_PROMPT_MODES}, got {on_long_prompt!r}")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.model = model
        self.llm = llm if llm is not None else model.llm
        self.tokenizer = tokenizer if tokenizer is not None else model.tokenizer
        if self.tokenizer is None:
            raise ValueError("a zero-shot llm needs its tokenizer=")
        self.search = ConstrainedBeamSearch(config or DecodingConfig())
        self.batch_size = batch_size
        self.system_prompt = system_prompt
        self.backend = backend
        self.on_long_prompt = on_long_prompt
        self.prompts = ChatPrompts(self.tokenizer, system_prompt) if model is None else TemplatePrompts(model)
        self.prior = PriorCalibration(self.llm, self.prompts, self.end_token_id)
        self.evidence = EvidenceScorer(self.llm, self.tokenizer)
        self._checked_kbs: set[str] = set()
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    @property
    def config(self) -> DecodingConfig:
        return self.search.config

    @property
    def zero_shot(self) -> bool:
        return self.model is None

    @property
    def reads_pixels(self) -> bool:
        """Whether the picture itself reaches the model (a GeMKR model with a vision tower)."""
        return self.model is not None and self.model.has_vision

    @property
    def end_token_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    @property
    def context_length(self) -> int:
        return int(getattr(self.llm.config, "max_position_embeddings", 0) or 0)

    @classmethod
    def zero_shot_llm(cls, llm: str = DEFAULT_LLM, **kwargs: Any) -> ClueGenerator:
        """A zero-shot generator over a causal LM by name, folder or ``.gguf`` file (``"smollm2"`` = packaged)."""
        from gemkr_llamaindex.model.llm import load_llm

        model, tok = load_llm(llm)
        gen = cls(llm=model, tokenizer=tok, **kwargs)
        gen.origin = {"llm": str(Path(llm).resolve()) if Path(llm).exists() else str(llm)}  # a path, or a name
        return gen

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, device: str = "cpu", config: DecodingConfig | None = None,
                        **kwargs: Any) -> ClueGenerator:
        """A generator over a trained GeMKR checkpoint (``GeMKRModel.save_pretrained`` output). The
        checkpoint's own decoding settings (``decoding.json``) are the default ``config``. LoRA is merged
        into the LLM's weights (:meth:`GeMKRModel.merge_lora`): same clues, faster decoding."""
        from gemkr_llamaindex.model.checkpoint import read_decoding
        from gemkr_llamaindex.model.gemkr import GeMKRModel

        model = GeMKRModel.from_pretrained(checkpoint, device=device)
        model.eval().merge_lora()
        gen = cls(model=model, config=config or read_decoding(checkpoint), **kwargs)
        gen.origin = {"checkpoint": str(Path(checkpoint).resolve())}
        return gen

    # ------------------------------------------------------------------ the KB
    def bind(self, kb: Any) -> BoundGenerator:
        """This generator bound to ``kb``: ``TokenizerMismatchError`` (naming both sides) unless clues of
        this model are ids of ``kb``, checked once per KB build (a copy keeps its build id)."""
        key = str(getattr(kb, "build_id", None) or id(kb))
        with self._lock:
            checked = key in self._checked_kbs
        if not checked:
            kb.check_tokenizer(self.tokenizer)  # TokenizerMismatchError names both tokenizers
            with self._lock:
                self._checked_kbs.add(key)
        return BoundGenerator(self, kb)

    def check_kb(self, kb: Any) -> None:
        """Raise ``TokenizerMismatchError`` unless this generator can decode against ``kb`` (:meth:`bind`)."""
        self.bind(kb)

    # ------------------------------------------------------------------ queries
    def prepare(self, queries: Sequence[Query]) -> list[PreparedQuery]:
        """Check every query before any model work, decode its picture (once: the bundle keeps it) and
        tokenise its prompt (once), cut to fit the context under ``on_long_prompt="truncate"``."""
        out = []
        for i, q in enumerate(VQAQueryBundle.of(q) for q in queries):
            image = q.loaded_image()  # missing/undecodable pictures fail here, before any batch runs
            if not (q.query_str or "").strip() and image is None:
                raise ValueError(f"query {i}: a query needs a question or an image; both are empty")
            if image is not None and not self.reads_pixels and not q.tags:
                if not (q.query_str or "").strip():
                    raise ValueError(
                        f"query {i} has only a picture, which this generator cannot see (it reads visual tags): "
                        "give the retriever a tagger (gemkr_llamaindex.tags.hint_tagger()) or use a trained "
                        "checkpoint with a vision tower"
                    )
                self._warn_once("image-ignored", "the query picture is ignored: this generator reads the picture only "
                                "through visual tags and none were given; pass tagger=gemkr_llamaindex.tags.hint_tagger() "
                                "to the retriever (or use a checkpoint with a vision tower)")
            out.append(PreparedQuery(q, self._fitted_prompt(q, i)))
        return out

    def validate(self, queries: Sequence[Query]) -> list[str]:
        """Raise the error :meth:`generate` would raise for these queries, without any model work; return
        the questions as they will be read (cut to fit the context under ``on_long_prompt="truncate"``)."""
        return [p.prompt.question for p in self.prepare(queries)]

    def _fitted_prompt(self, q: VQAQueryBundle, index: int) -> PreparedPrompt:
        """The query's prepared prompt, checked (or its question cut) so that prompt + clue fit the context."""
        prompt = self.prompts.prepare(q.query_str, q.tags)
        limit = self.context_length - self.config.max_length
        if self.context_length <= 0 or prompt.length <= limit:
            return prompt
        if self.on_long_prompt == "error":
            raise ValueError(
                f"query {index}: the prompt has {prompt.length} tokens but the model's context is "
                f"{self.context_length} positions, {self.config.max_length} of them for the clue; shorten the "
                "question or pass ClueGenerator(on_long_prompt='truncate')"
            )
        ids = self.tokenizer(q.query_str, add_special_tokens=False).input_ids
        keep = max(len(ids) - (prompt.length - limit), 0)
        warnings.warn(f"query {index}: question cut from {len(ids)} to {keep} tokens to fit the model's context",
                      stacklevel=4)
        return self.prompts.prepare(self.tokenizer.decode(ids[:keep]), q.tags)

    def _warn_once(self, key: str, message: str) -> None:
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        warnings.warn(message, stacklevel=4)

    # ------------------------------------------------------------------ generation
    def generate(self, queries: Sequence[Query], kb: Any, stats: SearchStats | None = None) -> list[QueryResult]:
        """Clues and ranked documents of ``kb`` for each query (batched ``batch_size`` at a time);
        ``stats`` (optional) accumulates this call's timings. Same as ``bind(kb).generate(queries)``."""
        return self.bind(kb).generate(queries, stats)

    def build_prompts(self, prepared: Sequence[PreparedQuery]) -> Prompts:
        """The left-padded batch of prepared queries' prompts (pictures spliced in for a vision tower)."""
        images = [p.bundle.loaded_image() for p in prepared] if self.reads_pixels else None
        return self.prompts.build([p.prompt for p in prepared], images)

    def search_clues(self, prompts: Prompts, num_queries: int, kb: Any, stats: SearchStats | None = None,
                     keep_history: bool = False) -> list[QueryResult]:
        """The constrained search's clues and documents (prior-calibrated when the config says so and the
        clues rank the documents, i.e. without evidence scoring)."""
        backend = self.backend(kb, self.end_token_id) if self.backend is not None else HFBackend(self.llm)
        results = self.search(backend, prompts, num_queries, kb, decode=kb.decode, end_token_id=self.end_token_id,
                              stats=stats, keep_history=keep_history)
        cfg = self.config
        return self.calibrate(results) if cfg.prior_weight > 0 and not cfg.evidence_sources else results

    def _ranked(self, prepared: Sequence[PreparedQuery], kb: Any, stats: SearchStats | None) -> list[QueryResult]:
        cfg = self.config
        out: list[QueryResult] = []
        for i in range(0, len(prepared), self.batch_size):
            chunk = prepared[i : i + self.batch_size]
            prompts = self.build_prompts(chunk)
            if cfg.runs_search:
                results = self.search_clues(prompts, len(chunk), kb, stats, keep_history="beams" in cfg.evidence_sources)
            else:
                results = [QueryResult([], []) for _ in chunk]
            if cfg.evidence_sources:
                results = [self.evidence(cfg, prompts, j, p.prompt.question, p.prompt.tags, r, kb)
                           for j, (p, r) in enumerate(zip(chunk, results))]
            out.extend(results)
        return out

    # ------------------------------------------------------------------ ranking
    def calibrate(self, results: Sequence[QueryResult]) -> list[QueryResult]:
        """Re-rank clues by ``(log p(c | q) - w log p(c | empty query)) / len ** lp`` (one batched pass)."""
        return self.prior(results, self.config, getattr(self.model, "lora_merged", None))

    def evidence_ngrams(self, prompts: Prompts, row: int, question: str, tags: str | None, result: QueryResult,
                        kb: Any, sources: Sequence[str] | None = None, max_count: int | None = None
                        ) -> tuple[list[Ngram], Any]:
        """One query's evidence n-grams and their KB lookup (:meth:`EvidenceScorer.ngrams`)."""
        return self.evidence.ngrams(self.config, prompts, row, question, tags, result, kb, sources, max_count)

    @property
    def word_starts(self) -> np.ndarray:
        """(vocab,) bool: which tokens begin a word."""
        return self.evidence.word_starts

    def empty_prompt(self) -> PromptEmbeds:
        """The empty query's prompt (the prior pass's condition) as input embeddings."""
        return self.prior.empty_prompt()

    def prompt_row(self, prompts: Prompts, row: int) -> PromptEmbeds:
        """One query's prompt of a batch as input embeddings."""
        return prompt_embeds(self.llm, prompts, row)


class BoundGenerator:
    """A generator bound to one KB, made by :meth:`ClueGenerator.bind` (which checked the tokenizer): every
    call decodes against this KB."""

    def __init__(self, generator: ClueGenerator, kb: Any) -> None:
        self.generator, self.kb = generator, kb

    def prepare(self, queries: Sequence[Query]) -> list[PreparedQuery]:
        return self.generator.prepare(queries)

    def generate(self, queries: Sequence[Query], stats: SearchStats | None = None) -> list[QueryResult]:
        """Clues and ranked documents for each query (see :meth:`ClueGenerator.generate`)."""
        return self.generate_prepared(self.generator.prepare(queries), stats)

    def generate_prepared(self, prepared: Sequence[PreparedQuery], stats: SearchStats | None = None) -> list[QueryResult]:
        """The same for queries :meth:`prepare` already checked and tokenised (nothing is tokenised again)."""
        return self.generator._ranked(prepared, self.kb, stats)


def checkpoint_decoding_config(checkpoint: str | Path) -> DecodingConfig | None:
    """The decoding settings a checkpoint was tuned with (:func:`gemkr_llamaindex.model.checkpoint.read_decoding`)."""
    from gemkr_llamaindex.model.checkpoint import read_decoding

    return read_decoding(checkpoint)
