"""What a persisted GeMKR index or retriever needs to retrieve again: its KB, its docstore, its generator.

A generator is recorded as a *spec*, never as weights or pickles: where the model is (a packaged name,
a local folder or ``.gguf`` file, or a trained checkpoint folder), a fingerprint of those files (XXH64
over every file's name, size and checksum, as the KB's manifest does), the decoding settings and the
prompt options. Loading rebuilds the generator from local files only; a missing or changed model is an
error that names it, the file that recorded it, and what to do. A generator built from in-memory
models (``ClueGenerator(llm=..., tokenizer=...)``) has no spec: its loader passes ``generator=``.

Every path a persist dir records is relative and must resolve inside that dir (``../kb`` is refused),
and the record is written last and atomically, holding the build id or checksum of what it names: an
interrupted persist leaves a dir that fails to load with an error, never one that loads mixed parts.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gemkr_llamaindex.kb import KnowledgeBase
from gemkr_llamaindex.kb.store import checksum_file, content_hash, file_records

if TYPE_CHECKING:  # pragma: no cover
    from gemkr_llamaindex.generation import ClueGenerator
    from gemkr_llamaindex.llamaindex.retriever import GeMKRRetriever

KB_SUBDIR = "gemkr_kb"
RETRIEVER_FILE = "retriever.json"
DOCSTORE_FILE = "docstore.json"
SPEC_FORMAT = 1
RETRIEVER_FORMAT = 1
PACKAGED = "packaged:"  # a checkpoint shipped inside this package, by name (its folder moves with the install)
RETRIEVER_ARGS = ("similarity_top_k", "batch_window_ms", "max_batch", "normalize_scores")


# ------------------------------------------------------------------------------------------------ paths
def inside(base: Path, relative: str, record: Path | str) -> Path:
    """``base / relative``, refused unless it resolves inside ``base`` (``record`` names the file that said it)."""
    if not isinstance(relative, str) or not relative or Path(relative).is_absolute():
        raise ValueError(f"{record} names {relative!r}; a persist dir records relative paths inside itself only: "
                         "persist it again")
    path = base / relative
    if not path.resolve().is_relative_to(base.resolve()):
        raise ValueError(f"{record} names {relative!r}, which resolves outside the persist dir {base}; a persist "
                         "dir holds its own files: persist it again")
    return path


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` through a temporary sibling and one rename."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return data


# ------------------------------------------------------------------------------------------------ generator specs
def fingerprint(path: Path) -> str:
    """XXH64 over the name, size and checksum of a model file, or of every file of a model folder."""
    if path.is_file():
        return content_hash(file_records(path.parent, [path.name]))
    names = sorted(str(p.relative_to(path)) for p in path.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    return content_hash(file_records(path, names))


def _model_files(source: dict[str, str]) -> tuple[str, Path]:
    """(what, local path) of a spec's model: the files its fingerprint covers."""
    from gemkr_llamaindex.assets import SMOLLM2_ALIASES, smollm2_gguf_path
    from gemkr_llamaindex.checkpoints import CHECKPOINT_DIR

    if "checkpoint" in source:
        ref = source["checkpoint"]
        path = CHECKPOINT_DIR / ref[len(PACKAGED):] if ref.startswith(PACKAGED) else Path(ref)
        return f"checkpoint {ref}", path
    name = source["llm"]
    if name.lower() in SMOLLM2_ALIASES:
        return f"packaged LLM {name!r}", smollm2_gguf_path()  # the shipped GGUF, not the folder converted here
    return f"LLM {name}", Path(name)


def generator_spec(generator: ClueGenerator) -> dict[str, Any] | None:
    """What rebuilds ``generator``: model source and fingerprint, decoding settings, prompt options; None
    when it was built from in-memory models or by hub id (neither can be rebuilt from local files)."""
    from gemkr_llamaindex.checkpoints import CHECKPOINT_DIR

    origin = dict(generator.origin or {})
    if not origin:
        return None
    if "checkpoint" in origin:
        path = Path(origin["checkpoint"])
        if path.parent.resolve() == CHECKPOINT_DIR.resolve():
            origin = {"checkpoint": PACKAGED + path.name}
    _, path = _model_files(origin)
    if not path.exists():  # a hub id: the Hugging Face cache, not a file this library can check
        return None
    return {
        "format": SPEC_FORMAT, **origin, "fingerprint": fingerprint(path), "decoding": generator.config.to_dict(),
        "batch_size": generator.batch_size, "system_prompt": generator.system_prompt,
        "on_long_prompt": generator.on_long_prompt,
    }


def load_generator(spec: Any, record: Path | str) -> ClueGenerator:
    """Rebuild the generator a spec describes, from local files; ``record`` is the file that holds the spec."""
    from gemkr_llamaindex.decoding import DecodingConfig
    from gemkr_llamaindex.generation import ClueGenerator

    if not isinstance(spec, dict) or spec.get("format") != SPEC_FORMAT:
        found = spec.get("format") if isinstance(spec, dict) else type(spec).__name__
        raise ValueError(f"{record}: the generator spec has format {found!r}; this version reads format {SPEC_FORMAT}")
    sources = [k for k in ("llm", "checkpoint") if isinstance(spec.get(k), str)]
    if len(sources) != 1 or not isinstance(spec.get("fingerprint"), str):
        raise ValueError(f"{record}: the generator spec needs one of 'llm' or 'checkpoint' and a 'fingerprint'")
    what, path = _model_files({sources[0]: spec[sources[0]]})
    hint = "pass generator=ClueGenerator(...) to load the index with another generator"
    if not path.exists():
        raise FileNotFoundError(f"{record}: the generator's {what} is missing ({path}); {hint}")
    if fingerprint(path) != spec["fingerprint"]:
        raise ValueError(f"{record}: the generator's {what} changed since it was persisted (its files no longer match "
                         f"fingerprint {spec['fingerprint']}); {hint}, or persist again")
    try:
        config = DecodingConfig.from_options(dict(spec.get("decoding") or {}))
        options = {k: spec[k] for k in ("batch_size", "system_prompt", "on_long_prompt") if k in spec}
        if "checkpoint" in sources:
            return ClueGenerator.from_checkpoint(path, config=config, **options)
        return ClueGenerator.zero_shot_llm(spec["llm"], config=config, **options)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{record}: cannot rebuild the generator ({exc})") from exc


# ------------------------------------------------------------------------------------------------ retrievers
def persist_retriever(retriever: GeMKRRetriever, persist_dir: str | Path) -> None:
    """Write ``gemkr_kb/`` (a copy of the KB), ``docstore.json`` (when the retriever has a docstore) and,
    last, ``retriever.json``: constructor arguments, the generator spec and what the others must be."""
    persist_dir = Path(persist_dir)
    persist_dir.mkdir(parents=True, exist_ok=True)
    target = persist_dir / KB_SUBDIR
    if retriever.kb.path.resolve() != target.resolve():
        retriever.kb.copy_to(target, overwrite=True)  # atomic: a temporary sibling, then one rename
    record: dict[str, Any] = {"format": RETRIEVER_FORMAT, "kb_dir": KB_SUBDIR, "kb_build_id": retriever.kb.build_id,
                              "docstore": None, "docstore_xxh64": None}
    if retriever.docstore is not None:
        if not hasattr(retriever.docstore, "persist"):
            raise TypeError(f"cannot persist a {type(retriever.docstore).__name__} docstore; use a SimpleDocumentStore")
        retriever.docstore.persist(str(persist_dir / DOCSTORE_FILE))
        record.update(docstore=DOCSTORE_FILE, docstore_xxh64=checksum_file(persist_dir / DOCSTORE_FILE))
    record.update({k: getattr(retriever, k) for k in RETRIEVER_ARGS})
    record["generator"] = generator_spec(retriever.generator)
    write_json_atomic(persist_dir / RETRIEVER_FILE, record)


def load_retriever(cls: type[GeMKRRetriever], persist_dir: str | Path, generator: ClueGenerator | None = None,
                   **overrides: Any) -> GeMKRRetriever:
    """The retriever :func:`persist_retriever` wrote (``overrides``: constructor arguments to change, e.g. ``tagger``)."""
    from llama_index.core.storage.docstore import SimpleDocumentStore

    persist_dir = Path(persist_dir)
    record_path = persist_dir / RETRIEVER_FILE
    if not record_path.is_file():
        raise FileNotFoundError(f"{persist_dir} is not a persisted GeMKR retriever: {RETRIEVER_FILE} is missing "
                                "(write one with retriever.persist(dir))")
    record = read_json(record_path)
    if record.get("format") != RETRIEVER_FORMAT:
        raise ValueError(f"{record_path} has format {record.get('format')!r}; this version reads {RETRIEVER_FORMAT}")
    kb = KnowledgeBase.open(inside(persist_dir, record.get("kb_dir"), record_path))
    if kb.build_id != record.get("kb_build_id"):
        raise ValueError(f"{record_path} was written for KB build {record.get('kb_build_id')}, but {kb.path} is build "
                         f"{kb.build_id}: an interrupted or mixed persist; persist the retriever again")
    docstore = None
    if record.get("docstore") is not None:
        path = inside(persist_dir, record["docstore"], record_path)
        if not path.is_file() or checksum_file(path) != record.get("docstore_xxh64"):
            raise ValueError(f"{path} is missing or differs from what {record_path} recorded: an interrupted or mixed "
                             "persist; persist the retriever again")
        docstore = SimpleDocumentStore.from_persist_path(str(path))
    if generator is None:
        if record.get("generator") is None:
            raise ValueError(f"{record_path} records no generator (it was built from in-memory models or a hub id): "
                             "pass generator=ClueGenerator(...)")
        generator = load_generator(record["generator"], record_path)
    kwargs = {k: record[k] for k in RETRIEVER_ARGS if k in record}
    return cls(generator, kb, docstore=docstore, **{**kwargs, **overrides})
