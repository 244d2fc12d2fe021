"""Tokenizing documents for the KB: normalisation, batching, and the tokenizer fingerprint."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
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
    """A Hugging Face tokenizer from an instance or a local folder (or a hub id already in the Hugging Face
    cache). Names of the package's own models (``"smollm2"``) are resolved by the callers:
    ``gemkr_llamaindex.load_tokenizer("smollm2")``."""
    if isinstance(tokenizer, (str, Path)):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(tokenizer))
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"cannot load a tokenizer from {str(tokenizer)!r} ({type(exc).__name__}); pass a tokenizer, a local "
                "folder, or for the packaged SmolLM2 gemkr_llamaindex.load_tokenizer('smollm2')"
            ) from exc
    if not callable(getattr(tokenizer, "get_vocab", None)):
        raise TypeError(f"expected a Hugging Face tokenizer or its name/path, got {type(tokenizer).__name__}")
    return tokenizer


def vocab_size(tokenizer: Any) -> int:
    return len(tokenizer)


def vocab_hash(tokenizer: Any) -> str:
    """SHA-256 over the sorted (token, id) pairs (the vocabulary alone; see :func:`fingerprint`)."""
    items = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return _sha256(items)


# The parts of a fast tokenizer's pipeline that decide which ids a text gets with add_special_tokens=False.
# The post-processor (special tokens around a sequence), the decoder, padding and truncation (set per
# call) do not, so they are left out: a tokenizer that differs only there is accepted.
FINGERPRINT_PARTS = ("normalizer", "pre_tokenizer", "model", "added_tokens")


def _sha256(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


def fingerprint(tokenizer: Any) -> dict[str, str]:
    """SHA-256 of each part of the tokenizer's serialised pipeline that determines the ids.

    Fast (Rust-backed) tokenizers: ``normalizer``, ``pre_tokenizer``, ``model`` (vocabulary, merges and
    options) and ``added_tokens``. Other tokenizers: the vocabulary and the class, which is the best a
    tokenizer without a serialised pipeline offers.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    to_str = getattr(backend, "to_str", None)
    if callable(to_str):
        spec = json.loads(to_str())
        return {part: _sha256(spec.get(part)) for part in FINGERPRINT_PARTS}
    return {"vocab": vocab_hash(tokenizer), "class": _sha256(type(tokenizer).__name__)}


def fingerprint_differences(expected: dict[str, str], tokenizer: Any) -> list[str]:
    """The parts of ``tokenizer``'s pipeline whose hash differs from ``expected`` (same key set)."""
    got = fingerprint(tokenizer)
    if set(got) != set(expected):  # one fast, one slow tokenizer: compare what both have
        return [k for k in sorted(set(got) | set(expected)) if got.get(k) != expected.get(k)] or ["pipeline"]
    return [k for k in expected if got[k] != expected[k]]


def tokenizer_name(tokenizer: Any) -> str:
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def encode_batch(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids without special tokens; literal special-token strings in the text are split as text.

    Fast tokenizers encode a batch on all cores (Rust threads).
    """
    out = tokenizer(texts, add_special_tokens=False, split_special_tokens=True, return_attention_mask=False)
    return out["input_ids"]
