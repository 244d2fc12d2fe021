"""ClueGenerator: a query (question, optional image, optional visual tags) -> knowledge clues and documents.

Two prompt paths feed the same constrained search:

* **GeMKR** (a trained :class:`~gemkr_llamaindex.model.gemkr.GeMKRModel`): the multimodal prompt —
  instruction template with the aligned CLIP [CLS] and object features spliced into the LLM's input
  embeddings (paper Eq. 7) — decoded by the LoRA-tuned LLM.
* **Zero-shot** (any instruct causal LM, e.g. the packaged SmolLM2): a text instruction holding the
  question and the visual tags; the image reaches the model only through those tags. Use it when no
  trained checkpoint exists; it is what ``make demo`` runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gemkr_llamaindex.decoding import ConstrainedBeamSearch, DecodingConfig, HFBackend, LogProbBackend, Prompts, QueryResult

ZERO_SHOT_SYSTEM = (
    "You are a knowledge retriever. Quote the beginning of an encyclopedia sentence that answers the "
    "question about the image."
)


@dataclass
class ClueQuery:
    """One retrieval query. ``image`` is a path or a PIL image; ``tags`` a plain hint string."""

    question: str = ""
    image: Any = None
    tags: str | None = None


def load_image(image: Any):
    """A PIL RGB image from a path, bytes or PIL image; clear errors for a missing or undecodable file."""
    from gemkr_llamaindex.images import load_image as decode

    return decode(image).image


def check_query(q: ClueQuery) -> None:
    if not (q.question or "").strip() and q.image is None:
        raise ValueError("a query needs a question or an image; both are empty")


class ClueGenerator:
    """Generates knowledge clues for batches of queries with knowledge-guided constrained decoding."""

    def __init__(
        self,
        kb: Any,
        *,
        model: Any = None,
        llm: Any = None,
        tokenizer: Any = None,
        config: DecodingConfig | None = None,
        batch_size: int = 4,
        system_prompt: str = ZERO_SHOT_SYSTEM,
        backend: LogProbBackend | None = None,
    ) -> None:
        if (model is None) == (llm is None):
            raise ValueError("give exactly one of model= (a trained GeMKRModel) or llm= (a zero-shot causal LM)")
        self.kb = kb
        self.model = model
        self.llm = llm if llm is not None else model.llm
        self.tokenizer = tokenizer if tokenizer is not None else model.tokenizer
        if self.tokenizer is None:
            raise ValueError("a zero-shot llm needs its tokenizer=")
        kb.check_tokenizer(self.tokenizer)  # TokenizerMismatchError names both tokenizers
        self.search = ConstrainedBeamSearch(kb, config or DecodingConfig())
        self.batch_size = batch_size
        self.system_prompt = system_prompt
        self.backend = backend  # None: a KV-cached HFBackend over ``llm`` (e.g. VLLMBackend.from_gemkr on a GPU)

    @property
    def config(self) -> DecodingConfig:
        return self.search.config

    @property
    def zero_shot(self) -> bool:
        return self.model is None

    @classmethod
    def zero_shot_from(cls, kb: Any, llm: str = "smollm2", **kwargs: Any) -> ClueGenerator:
        """A zero-shot generator over an HF causal LM by name or path (``"smollm2"`` = packaged)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from gemkr_llamaindex.assets import smollm2_path

        path = str(smollm2_path()) if llm.lower() == "smollm2" else llm
        if not Path(path).exists() and "/" not in path:
            raise FileNotFoundError(f"LLM {llm!r} is neither a local folder nor a model name")
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        return cls(kb, llm=model, tokenizer=tok, **kwargs)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, kb: Any, device: str = "cpu", **kwargs: Any) -> ClueGenerator:
        """A generator over a trained GeMKR checkpoint (``GeMKRModel.save_pretrained`` output)."""
        from gemkr_llamaindex.model.gemkr import GeMKRModel

        model = GeMKRModel.from_pretrained(checkpoint, device=device)
        model.eval()
        return cls(kb, model=model, **kwargs)

    # ------------------------------------------------------------------ prompts
    def _text_prompts(self, queries: Sequence[ClueQuery]) -> Prompts:
        rows = []
        for q in queries:
            user = f"Question: {q.question.strip()}"
            if q.tags:
                user += f"\nVisual tags: {q.tags}"
            if getattr(self.tokenizer, "chat_template", None):
                msgs = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": user}]
                text = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
                ids = self.tokenizer(text, add_special_tokens=False).input_ids
            else:
                ids = self.tokenizer(f"{self.system_prompt}\n{user}\nAnswer:").input_ids
            rows.append(ids)
        n = max(map(len, rows))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), n), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), n, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, n - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, n - len(r):] = 1
        return Prompts(attention_mask=mask, input_ids=ids)

    def _gemkr_prompts(self, queries: Sequence[ClueQuery]) -> Prompts:
        from PIL import Image

        size = 224
        images = []
        for q in queries:
            # A text-only query gets a black image: a constant "no picture" visual input.
            images.append(load_image(q.image) if q.image is not None else Image.new("RGB", (size, size)))
        with torch.inference_mode():
            p = self.model.prompt_embeds([q.question for q in queries], images=images, tags=[q.tags for q in queries])
        return Prompts(attention_mask=p.attention_mask, inputs_embeds=p.inputs_embeds)

    # ------------------------------------------------------------------ generation
    def generate(self, queries: Sequence[ClueQuery | str]) -> list[QueryResult]:
        """Clues and ranked documents for each query (batched ``batch_size`` at a time)."""
        qs = [ClueQuery(question=q) if isinstance(q, str) else q for q in queries]
        for q in qs:
            check_query(q)
            if q.image is not None:
                load_image(q.image)  # fail early (missing/undecodable), before any batch runs
        out: list[QueryResult] = []
        backend = self.backend if self.backend is not None else HFBackend(self.llm)
        for i in range(0, len(qs), self.batch_size):
            chunk = qs[i : i + self.batch_size]
            prompts = self._text_prompts(chunk) if self.zero_shot else self._gemkr_prompts(chunk)
            out.extend(self.search(backend, prompts, len(chunk), decode=self.kb.decode))
        return out
