"""ClueGenerator: multimodal queries -> knowledge clues and documents, for whichever KB the caller names.

A generator is a model plus prompt building plus decoding settings; it holds no knowledge base. The KB
is an argument of :meth:`ClueGenerator.generate` (the retriever binds its index's KB in one place), so one
generator can exist before any index and serve several. Two prompt paths feed the same constrained
search:

* **GeMKR** (a trained :class:`~gemkr_llamaindex.model.gemkr.GeMKRModel`): the instruction template with
  the aligned CLIP [CLS] and object features spliced into the LLM's input embeddings (paper Eq. 7),
  decoded by the LoRA-tuned LLM; a checkpoint without a vision tower reads question + visual tags.
* **Zero-shot** (any instruct causal LM, e.g. the packaged SmolLM2): a chat instruction holding the
  question and the visual tags; the image reaches the model only through those tags.

Every call builds its own backend state (KV cache) from the shared, read-only model, so concurrent calls
(``aretrieve`` runs in worker threads) give exactly what sequential calls give.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from llama_index.core.schema import QueryBundle

from gemkr_llamaindex.decoding import (
    ConstrainedBeamSearch,
    DecodingConfig,
    DocumentHit,
    HFBackend,
    Prompts,
    QueryResult,
    SearchStats,
)
from gemkr_llamaindex.decoding.evidence import Ngram
from gemkr_llamaindex.llamaindex.query import VQAQueryBundle

ZERO_SHOT_SYSTEM = (
    "You are a knowledge retriever. Quote the beginning of an encyclopedia sentence that answers the "
    "question about the image."
)
LONG_PROMPT_MODES = ("error", "truncate")

#: ``backend(kb, end_token_id) -> LogProbBackend``: makes one search's backend (e.g. a ``VLLMServer``).
BackendFactory = Callable[[Any, "int | None"], Any]


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
        self._checked_kbs: set[str] = set()
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        self._prior_prompt: tuple[Any, Any] | None = None  # (model state, encoded empty prompt), see calibrate
        self._word_starts = None

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
    def zero_shot_llm(cls, llm: str = "smollm2", **kwargs: Any) -> ClueGenerator:
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
        checkpoint's own decoding settings (``decoding.json``, if it has one) are the default ``config``.
        LoRA is merged into the LLM's weights (:meth:`GeMKRModel.merge_lora`): same clues, faster decoding."""
        from gemkr_llamaindex.model.gemkr import GeMKRModel

        model = GeMKRModel.from_pretrained(checkpoint, device=device)
        model.eval().merge_lora()
        gen = cls(model=model, config=config or checkpoint_decoding_config(checkpoint), **kwargs)
        gen.origin = {"checkpoint": str(Path(checkpoint).resolve())}
        return gen

    # ------------------------------------------------------------------ the KB
    def check_kb(self, kb: Any) -> None:
        """Raise ``TokenizerMismatchError`` (naming both sides) unless clues of this model are ids of ``kb``."""
        key = str(getattr(kb, "build_id", None) or id(kb))
        if key in self._checked_kbs:
            return
        kb.check_tokenizer(self.tokenizer)
        self._checked_kbs.add(key)

    # ------------------------------------------------------------------ prompts
    def _chat_ids(self, question: str, tags: str | None) -> list[int]:
        user = f"Question: {question.strip()}"
        if tags:
            user += f"\nVisual tags: {tags}"
        if getattr(self.tokenizer, "chat_template", None):
            msgs = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": user}]
            text = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            return self.tokenizer(text, add_special_tokens=False).input_ids
        return self.tokenizer(f"{self.system_prompt}\n{user}\nAnswer:").input_ids

    def _prompt_length(self, question: str, tags: str | None) -> int:
        if self.zero_shot:
            return len(self._chat_ids(question, tags))
        return self.model.prompt_lengths([question], [tags])[0]

    def _fit(self, q: VQAQueryBundle, index: int) -> str:
        """The question, checked (or cut) so that prompt + clue fit the model's context."""
        limit = self.context_length - self.config.max_length
        if self.context_length <= 0:
            return q.query_str
        n = self._prompt_length(q.query_str, q.tags)
        if n <= limit:
            return q.query_str
        if self.on_long_prompt == "error":
            raise ValueError(
                f"query {index}: the prompt has {n} tokens but the model's context is {self.context_length} "
                f"positions, {self.config.max_length} of them for the clue; shorten the question or pass "
                "ClueGenerator(on_long_prompt='truncate')"
            )
        ids = self.tokenizer(q.query_str, add_special_tokens=False).input_ids
        keep = max(len(ids) - (n - limit), 0)
        question = self.tokenizer.decode(ids[:keep])
        warnings.warn(f"query {index}: question cut from {len(ids)} to {keep} tokens to fit the model's context",
                      stacklevel=4)
        return question

    def _text_prompts(self, questions: Sequence[str], tags: Sequence[str | None]) -> Prompts:
        rows = [self._chat_ids(q, t) for q, t in zip(questions, tags)]
        n = max(map(len, rows))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), n), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), n, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, n - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, n - len(r):] = 1
        return Prompts(attention_mask=mask, input_ids=ids)

    def _gemkr_prompts(self, queries: Sequence[VQAQueryBundle], questions: Sequence[str]) -> Prompts:
        images = [q.loaded_image() for q in queries] if self.model.has_vision else None
        with torch.inference_mode():
            p = self.model.prompt_embeds(list(questions), images=images, tags=[q.tags for q in queries])
        return Prompts(attention_mask=p.attention_mask, inputs_embeds=p.inputs_embeds)

    def _prepare(self, queries: Sequence[VQAQueryBundle | QueryBundle | str]) -> tuple[list[VQAQueryBundle], list[str]]:
        """Validate every query before any model work: decode pictures once, check emptiness and length."""
        bundles = [VQAQueryBundle.of(q) for q in queries]
        questions = []
        for i, q in enumerate(bundles):
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
            questions.append(self._fit(q, i))
        return bundles, questions

    def validate(self, queries: Sequence[VQAQueryBundle | QueryBundle | str]) -> list[str]:
        """Raise the error :meth:`generate` would raise for these queries, without any model work; return
        the questions as they will be read (cut to fit the context under ``on_long_prompt="truncate"``)."""
        return self._prepare(queries)[1]

    def _warn_once(self, key: str, message: str) -> None:
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        warnings.warn(message, stacklevel=4)

    # ------------------------------------------------------------------ generation
    def generate(self, queries: Sequence[VQAQueryBundle | QueryBundle | str], kb: Any,
                 stats: SearchStats | None = None) -> list[QueryResult]:
        """Clues and ranked documents of ``kb`` for each query (batched ``batch_size`` at a time).

        ``stats`` (optional) accumulates this call's timings.
        """
        self.check_kb(kb)
        bundles, questions = self._prepare(queries)
        cfg = self.config
        out: list[QueryResult] = []
        for i in range(0, len(bundles), self.batch_size):
            chunk, qs = bundles[i : i + self.batch_size], questions[i : i + self.batch_size]
            prompts = self.build_prompts(chunk, qs)
            if cfg.runs_search:
                results = self.search_clues(prompts, len(chunk), kb, stats, keep_history="beams" in cfg.evidence_sources)
            else:
                results = [QueryResult([], []) for _ in chunk]
            if cfg.evidence_sources:
                results = [self.score_evidence(prompts, j, qs[j], q.tags, r, kb) for j, (q, r) in enumerate(zip(chunk, results))]
            out.extend(results)
        return out

    def build_prompts(self, bundles: Sequence[VQAQueryBundle], questions: Sequence[str]) -> Prompts:
        """The batch's prompts (``questions``: the bundles' questions as :meth:`validate` fitted them)."""
        if self.zero_shot:
            return self._text_prompts(questions, [q.tags for q in bundles])
        return self._gemkr_prompts(bundles, questions)

    def search_clues(self, prompts: Prompts, num_queries: int, kb: Any, stats: SearchStats | None = None,
                     keep_history: bool = False) -> list[QueryResult]:
        """The constrained search's clues and documents (prior-calibrated when the config says so and the
        clues rank the documents, i.e. without evidence scoring)."""
        backend = self.backend(kb, self.end_token_id) if self.backend is not None else HFBackend(self.llm)
        results = self.search(backend, prompts, num_queries, kb, decode=kb.decode, end_token_id=self.end_token_id,
                              stats=stats, keep_history=keep_history)
        cfg = self.config
        return self.calibrate(results) if cfg.prior_weight > 0 and not cfg.evidence_sources else results

    # ------------------------------------------------------------------ evidence scoring
    def evidence_ngrams(self, prompts: Prompts, row: int, question: str, tags: str | None, result: QueryResult,
                        kb: Any, sources: Sequence[str] | None = None, max_count: int | None = None
                        ) -> tuple[list[Ngram], Any]:
        """Every candidate n-gram of one query with ``log P(n | q)``, and the KB's lookup of them.

        The search already holds the log-likelihood of what it generated; the query's n-grams are scored
        under the query's prompt in one pass (the prompt once, then each distinct n-gram prefix once), and
        only those that occur in the KB at most ``max_count`` times. ``sources`` and ``max_count``
        default to the config's (benchmarks ask for more, to sweep settings offline)."""
        from gemkr_llamaindex.decoding.evidence import clue_prefixes, query_ngrams, top_unigrams, visited_ngrams
        from gemkr_llamaindex.model.scoring import encode_prompt, shared_prompt_log_likelihood

        cfg = self.config
        sources = cfg.evidence_sources if sources is None else tuple(sources)
        max_count = cfg.evidence_max_count if max_count is None else int(max_count)
        starts = self.word_starts if cfg.evidence_whole_words else None
        generated: dict[tuple[int, ...], Ngram] = {}
        if "clues" in sources:
            for c in result.clues:
                for toks, lp in clue_prefixes(c.token_ids, c.prefix_logprobs, starts):
                    generated.setdefault(toks, Ngram(toks, lp, "clues"))
        if "beams" in sources and result.visited:
            for toks, lp in visited_ngrams(result.visited, starts):
                generated.setdefault(toks, Ngram(toks, lp, "beams"))
        scored: list[Ngram] = list(generated.values())
        asked: list[tuple[str, tuple[int, ...], str]] = []
        if "query" in sources or "inflections" in sources:
            for t, ids, source in query_ngrams(question, tags, kb.encode_batch, inflections="inflections" in sources):
                if source not in sources:
                    continue
                if ids in generated:  # one the model generated too keeps its log-likelihood and counts under both
                    scored.append(Ngram(ids, generated[ids].logprob, source, t))
                else:
                    asked.append((t, ids, source))
        first = None
        if asked or "unigrams" in sources:
            with torch.inference_mode():
                enc = encode_prompt(self.llm, self._prompt_row(prompts, row))
            first = enc.first
        if asked:
            counts = kb.ngram_counts([ids for _, ids, _ in asked]).tolist()
            keep = [a for a, n in zip(asked, counts) if 0 < n <= max_count]
            if keep:
                with torch.inference_mode():
                    lps = shared_prompt_log_likelihood(self.llm, enc, [ids for _, ids, _ in keep], batch_size=256).tolist()
                scored += [Ngram(ids, lp, source, t) for (t, ids, source), lp in zip(keep, lps)]
        if "unigrams" in sources:
            have = {n.token_ids for n in scored}
            scored += [Ngram((t,), lp, "unigrams") for t, lp in top_unigrams(first.cpu().numpy(), cfg.evidence_unigram_top)
                       if (t,) not in have]
        lookup = kb.lookup_ngrams([n.token_ids for n in scored], max_count=max_count, word_starts=starts)
        for n in scored:
            if not n.text:
                n.text = kb.decode(n.token_ids)
        return scored, lookup

    @property
    def word_starts(self):
        """(vocab,) bool: which tokens begin a word (:func:`~gemkr_llamaindex.decoding.evidence.word_start_mask`)."""
        if self._word_starts is None:
            from gemkr_llamaindex.decoding.evidence import word_start_mask

            self._word_starts = word_start_mask(self.tokenizer)
        return self._word_starts

    def score_evidence(self, prompts: Prompts, row: int, question: str, tags: str | None, result: QueryResult,
                       kb: Any) -> QueryResult:
        """``result`` re-ranked by evidence (:mod:`gemkr_llamaindex.decoding.evidence`); clues stay attached."""
        from gemkr_llamaindex.decoding.evidence import GENERATED, aggregate

        cfg = self.config
        ngrams, lookup = self.evidence_ngrams(prompts, row, question, tags, result, kb)
        docs = [lookup.docs_of(i) for i in range(len(ngrams))]
        weights = {s: cfg.evidence_generated_weight for s in GENERATED}
        evidence = aggregate(ngrams, lookup.counts, docs, kb.num_tokens, alpha=cfg.evidence_alpha,
                             beta=cfg.evidence_beta, smoothing=cfg.evidence_smoothing,
                             max_count=cfg.evidence_max_count, source_weights=weights)
        clue_hits = {h.doc_index: h for h in result.docs}
        hits = [DocumentHit(d, kb.doc_id(d), ev.score, clue_hits[d].clues if d in clue_hits else [], ev.items)
                for d, ev in evidence.items()]
        hits.sort(key=lambda h: (-h.score, h.doc_index))
        return QueryResult(result.clues, hits, result.visited)

    def _prompt_row(self, prompts: Prompts, row: int):
        """One query's prompt of a batch as embeddings (a zero-shot prompt's ids embedded)."""
        from gemkr_llamaindex.model.prompt import PromptEmbeds

        mask = prompts.attention_mask[row : row + 1].to(self.llm.device)
        if prompts.inputs_embeds is not None:
            return PromptEmbeds(prompts.inputs_embeds[row : row + 1], mask)
        return PromptEmbeds(self.llm.get_input_embeddings()(prompts.input_ids[row : row + 1].to(self.llm.device)), mask)

    # ------------------------------------------------------------------ prior calibration
    def calibrate(self, results: Sequence[QueryResult]) -> list[QueryResult]:
        """Re-rank clues by ``(log p(c | q) - w log p(c | empty query)) / len ** lp`` (one batched pass)."""
        from gemkr_llamaindex.model.scoring import shared_prompt_log_likelihood

        clues = [c for r in results for c in r.clues]
        if not clues:
            return list(results)
        empty = self._encoded_empty_prompt()
        seqs = [c.token_ids + ([self.end_token_id] if c.ends_document and self.end_token_id is not None else [])
                for c in clues]
        with torch.inference_mode():
            prior = shared_prompt_log_likelihood(self.llm, empty, seqs, batch_size=64).tolist()
        cfg = self.config
        for c, p in zip(clues, prior):
            c.prior_logprob = p
            c.score = cfg.clue_score(c.logprob, len(c.token_ids), p)
        return [QueryResult.from_clues(r.clues, cfg.doc_score, r.visited) for r in results]

    def _encoded_empty_prompt(self):
        """The empty query's prompt, run once per generator (the model is read-only here; the key includes
        whether LoRA is merged, the one change a generator's model sees)."""
        from gemkr_llamaindex.model.scoring import encode_prompt

        key = getattr(self.model, "lora_merged", None)
        cached = self._prior_prompt
        if cached is None or cached[0] != key:
            with torch.inference_mode():
                cached = (key, encode_prompt(self.llm, self._empty_prompt()))
            self._prior_prompt = cached
        return cached[1]

    def _empty_prompt(self):
        from gemkr_llamaindex.model.prompt import PromptEmbeds

        with torch.inference_mode():
            if self.zero_shot:
                p = self._text_prompts([""], [None])
                embeds = self.llm.get_input_embeddings()(p.input_ids.to(self.llm.device))
                return PromptEmbeds(embeds, p.attention_mask.to(self.llm.device))
            return self.model.prompt_embeds([""], images=[None] if self.model.has_vision else None, tags=[None])


def checkpoint_decoding_config(checkpoint: str | Path) -> DecodingConfig | None:
    """The decoding settings a checkpoint was tuned with (``decoding.json``; None, with a warning, for an
    older checkpoint without one): :func:`gemkr_llamaindex.model.checkpoint.read_decoding`."""
    from gemkr_llamaindex.model.checkpoint import read_decoding

    return read_decoding(checkpoint)
