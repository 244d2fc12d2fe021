"""Tokenizing documents for the KB: normalisation, batching, and the tokenizer fingerprint."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import asdict, dataclass
from typing import Any

UNICODE_FORMS = ("NFC", "NFKC", "NFD", "NFKD")


@dataclass(frozen=True)
class Normalization:
    """Text normalisation applied before tokenizing, both to documents and to queries/clues."""

    lowercase: bool = False
    unicode: str | None = None  # one of UNICODE_FORMS

    def __post_init__(self) -> None:
        if self.unicode is not None and self.unicode not in UNICODE_FORMS:
            raise ValueError(f"unicode normalisation must be one of {UNICODE_FORMS} or None, got {self.unicode!r}")

    def __call__(self, text: str) -> str:
        if self.unicode:
            text = unicodedata.normalize(self.unicode, text)
        return text.lower() if self.lowercase else text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_tokenizer(tokenizer: Any):
    """A Hugging Face tokenizer from an instance, a name or a path (``"smollm2"`` = the packaged one)."""
    if isinstance(tokenizer, str):
        from gemkr_llamaindex.assets import load_tokenizer

        return load_tokenizer(tokenizer)
    if not callable(getattr(tokenizer, "get_vocab", None)):
        raise TypeError(f"expected a Hugging Face tokenizer or its name/path, got {type(tokenizer).__name__}")
    return tokenizer


def vocab_size(tokenizer: Any) -> int:
    return len(tokenizer)


def vocab_hash(tokenizer: Any) -> str:
    """SHA-256 over the sorted (token, id) pairs: equal hashes mean identical token ids for every string."""
    items = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode("utf-8")).hexdigest()


def encode_batch(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids without special tokens; literal special-token strings in the text are split as text.

    Fast tokenizers encode a batch on all cores (Rust threads).
    """
    out = tokenizer(texts, add_special_tokens=False, split_special_tokens=True, return_attention_mask=False)
    return out["input_ids"]
