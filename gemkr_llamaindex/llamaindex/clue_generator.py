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

from gemkr_llamaindex.decoding import ConstrainedBeamSearch, DecodingConfig, HFBackend, Prompts, QueryResult, SearchStats
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

    def validate(self, queries: Sequence[VQAQueryBundle | QueryBundle | str]) -> None:
        """Raise the error :meth:`generate` would raise for these queries, without any model work."""
        self._prepare(queries)

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
        out: list[QueryResult] = []
        for i in range(0, len(bundles), self.batch_size):
            chunk, qs = bundles[i : i + self.batch_size], questions[i : i + self.batch_size]
            prompts = self._text_prompts(qs, [q.tags for q in chunk]) if self.zero_shot else self._gemkr_prompts(chunk, qs)
            backend = self.backend(kb, self.end_token_id) if self.backend is not None else HFBackend(self.llm)
            results = self.search(backend, prompts, len(chunk), kb, decode=kb.decode, end_token_id=self.end_token_id,
                                  stats=stats)
            if self.config.prior_weight > 0:
                results = self.calibrate(results)
            out.extend(results)
        return out

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
        return [QueryResult.from_clues(r.clues, cfg.doc_score) for r in results]

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
    """The decoding settings a checkpoint was tuned with (``decoding.json``), or None."""
    import json

    path = Path(checkpoint) / "decoding.json"
    if not path.is_file():
        return None
    return DecodingConfig.from_options(json.loads(path.read_text()))
