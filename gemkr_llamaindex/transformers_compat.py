"""One place for the transformers API that moved inside the declared ``transformers>=5.16,<6`` range.

transformers 5.24 renamed the key/value cache argument and output of model calls from ``past_key_values``
to ``cache`` (the old name warns and is removed in 5.40), while vLLM 0.33 still needs transformers < 5.21.
Callers pass the cache through :func:`cache_kwargs` and read it with :func:`output_cache`, which pick the
name the installed model's ``forward`` declares.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=64)
def _cache_arg(forward_owner: type) -> str:
    params = inspect.signature(forward_owner.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _base(model: Any) -> Any:
    get_base = getattr(model, "get_base_model", None)  # a peft wrapper forwards **kwargs to its base model
    return get_base() if callable(get_base) else model


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` for the cache argument ``model.forward`` takes."""
    return {_cache_arg(type(_base(model))): cache}


def output_cache(output: Any) -> Any:
    """The key/value cache of a model output, whichever name the installed transformers uses."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)
