"""How a generator ranks documents once the search has run: prior calibration and evidence scoring.

* :class:`PriorCalibration` (``DecodingConfig.prior_weight > 0``, the paper's clue scoring): every clue is
  scored again under the empty query, in one tree pass over the clues' trie on the empty prompt's cache
  (encoded once per generator), and re-ranked by ``(log p(c | q) - w log p(c | empty)) / len ** lp``.
* :class:`EvidenceScorer` (``DecodingConfig.evidence``): the search's n-grams and the query's own,
  scored by the LM under the query's prompt, looked up in the KB in batched calls and summed per document
  (:mod:`gemkr_llamaindex.decoding.evidence`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from gemkr_llamaindex.decoding import DecodingConfig, DocumentHit, Prompts, QueryResult
from gemkr_llamaindex.decoding.evidence import (
    GENERATED,
    Ngram,
    aggregate,
    clue_prefixes,
    query_ngrams,
    top_unigrams,
    visited_ngrams,
    word_start_mask,
)
from gemkr_llamaindex.generation.prompts import PromptSource, empty_prompt, prompt_embeds
from gemkr_llamaindex.model.prompt import PromptEmbeds
from gemkr_llamaindex.model.scoring import encode_prompt, shared_prompt_log_likelihood


class PriorCalibration:
    """Re-ranks clues by their log-likelihood under the query against that under the empty query."""

    def __init__(self, llm: Any, prompts: PromptSource, end_token_id: int | None) -> None:
        self.llm, self.prompts, self.end_token_id = llm, prompts, end_token_id
        self._encoded: tuple[Any, Any] | None = None  # (model state, encoded empty prompt)

    def empty_prompt(self) -> PromptEmbeds:
        """The empty query's prompt as input embeddings."""
        return prompt_embeds(self.llm, self.prompts.build([empty_prompt(self.prompts)]), 0)

    def encoded_empty_prompt(self, state: Any = None):
        """The empty query's prompt, run once (the model is read-only here; ``state`` - whether LoRA is
        merged, the one change a generator's model sees - keys the kept encoding)."""
        cached = self._encoded
        if cached is None or cached[0] != state:
            with torch.inference_mode():
                cached = (state, encode_prompt(self.llm, self.empty_prompt()))
            self._encoded = cached
        return cached[1]

    def __call__(self, results: Sequence[QueryResult], config: DecodingConfig, state: Any = None) -> list[QueryResult]:
        clues = [c for r in results for c in r.clues]
        if not clues:
            return list(results)
        end = self.end_token_id
        seqs = [c.token_ids + ([end] if c.ends_document and end is not None else []) for c in clues]
        with torch.inference_mode():
            prior = shared_prompt_log_likelihood(self.llm, self.encoded_empty_prompt(state), seqs, batch_size=64).tolist()
        for c, p in zip(clues, prior):
            c.prior_logprob = p
            c.score = config.clue_score(c.logprob, len(c.token_ids), p)
        return [QueryResult.from_clues(r.clues, config.doc_score, r.visited) for r in results]


class EvidenceScorer:
    """Ranks documents by the summed weight of the LM-scored n-grams they contain."""

    def __init__(self, llm: Any, tokenizer: Any) -> None:
        self.llm, self.tokenizer = llm, tokenizer
        self._word_starts: np.ndarray | None = None

    @property
    def word_starts(self) -> np.ndarray:
        """(vocab,) bool: which tokens begin a word (:func:`~gemkr_llamaindex.decoding.evidence.word_start_mask`)."""
        if self._word_starts is None:
            self._word_starts = word_start_mask(self.tokenizer)
        return self._word_starts

    def ngrams(self, config: DecodingConfig, prompts: Prompts, row: int, question: str, tags: str | None,
               result: QueryResult, kb: Any, sources: Sequence[str] | None = None, max_count: int | None = None
               ) -> tuple[list[Ngram], Any]:
        """Every candidate n-gram of one query with ``log P(n | q)``, and the KB's lookup of them.

        The search already holds the log-likelihood of what it generated; the query's n-grams are scored
        under the query's prompt in one pass (the prompt once, then each distinct n-gram prefix once), and
        only those that occur in the KB at most ``max_count`` times. ``sources`` and ``max_count``
        default to the config's (benchmarks ask for more, to sweep settings offline)."""
        sources = config.evidence_sources if sources is None else tuple(sources)
        max_count = config.evidence_max_count if max_count is None else int(max_count)
        starts = self.word_starts if config.evidence_whole_words else None
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
        enc = None
        if asked or "unigrams" in sources:
            with torch.inference_mode():
                enc = encode_prompt(self.llm, prompt_embeds(self.llm, prompts, row))
        if asked:
            counts = kb.ngram_counts([ids for _, ids, _ in asked]).tolist()
            keep = [a for a, n in zip(asked, counts) if 0 < n <= max_count]
            if keep:
                with torch.inference_mode():
                    lps = shared_prompt_log_likelihood(self.llm, enc, [ids for _, ids, _ in keep], batch_size=256).tolist()
                scored += [Ngram(ids, lp, source, t) for (t, ids, source), lp in zip(keep, lps)]
        if "unigrams" in sources:
            have = {n.token_ids for n in scored}
            scored += [Ngram((t,), lp, "unigrams") for t, lp in top_unigrams(enc.first.cpu().numpy(), config.evidence_unigram_top)
                       if (t,) not in have]
        lookup = kb.lookup_ngrams([n.token_ids for n in scored], max_count=max_count, word_starts=starts)
        for n in scored:
            if not n.text:
                n.text = kb.decode(n.token_ids)
        return scored, lookup

    def __call__(self, config: DecodingConfig, prompts: Prompts, row: int, question: str, tags: str | None,
                 result: QueryResult, kb: Any) -> QueryResult:
        """``result`` re-ranked by evidence; clues stay attached to their documents."""
        ngrams, lookup = self.ngrams(config, prompts, row, question, tags, result, kb)
        docs = [lookup.docs_of(i) for i in range(len(ngrams))]
        evidence = aggregate(ngrams, lookup.counts, docs, kb.num_tokens, alpha=config.evidence_alpha,
                             beta=config.evidence_beta, smoothing=config.evidence_smoothing,
                             max_count=config.evidence_max_count,
                             source_weights={s: config.evidence_generated_weight for s in GENERATED})
        clue_hits = {h.doc_index: h for h in result.docs}
        hits = [DocumentHit(d, kb.doc_id(d), ev.score, clue_hits[d].clues if d in clue_hits else [], ev.items)
                for d, ev in evidence.items()]
        hits.sort(key=lambda h: (-h.score, h.doc_index))
        return QueryResult(result.clues, hits, result.visited)
