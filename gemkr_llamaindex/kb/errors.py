"""Exceptions of the knowledge base. Each message names the file, row or document and what to do."""

from __future__ import annotations


class KBError(Exception):
    """Base class of knowledge-base errors."""


class CorpusError(KBError, ValueError):
    """The input corpus is unusable: empty, an empty or duplicated document, a non-UTF-8 row, ..."""


class IndexFormatError(KBError):
    """A KB directory is missing, truncated, corrupt, or written by a newer format version."""


class ChecksumError(IndexFormatError):
    """A KB file's content does not match the checksum recorded in the manifest."""


class TokenizerMismatchError(KBError, ValueError):
    """The tokenizer given (or the model's) is not the one the KB was built with."""
