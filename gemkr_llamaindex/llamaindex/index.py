"""GeMKRIndex: a LlamaIndex index whose store is the FM-index knowledge base.

``from_documents`` builds the KB from the nodes (``node_id`` = KB doc id) and keeps the nodes in the
docstore. ``persist(dir)`` writes the storage context and a copy of the KB (``dir/gemkr_kb``), and
records the KB's build id in the index struct; ``GeMKRIndex.from_persist_dir(dir)`` opens only the KB
inside ``dir`` and refuses one whose build id differs (a persist dir never opens another index's KB).
``load_index_from_storage`` also returns a GeMKRIndex once this module is imported (the index type is
registered with LlamaIndex's registries; LlamaIndex offers no hook to find it otherwise, so the recorded
type names the import to run). The index struct also records the generator's spec (model location,
fingerprint, decoding settings): a loaded index rebuilds its generator on ``as_retriever()``.

The index owns the KB; a :class:`ClueGenerator` holds none. ``as_retriever(generator=...)`` binds the
generator to this index's KB (checking the tokenizer), so one generator serves any number of indexes.

The FM-index is static: ``insert``/``delete`` raise an error that says to rebuild with
``GeMKRIndex.from_documents`` over the full document set (a rebuild of 1M tokens takes seconds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_index.core.data_structs.data_structs import IndexStruct
from llama_index.core.data_structs.registry import INDEX_STRUCT_TYPE_TO_INDEX_STRUCT_CLASS
from llama_index.core.indices.base import BaseIndex
from llama_index.core.indices.registry import INDEX_STRUCT_TYPE_TO_INDEX_CLASS
from llama_index.core.ingestion import run_transformations
from llama_index.core.schema import BaseNode, Document, TransformComponent
from llama_index.core.storage.docstore.types import RefDocInfo
from llama_index.core.storage.storage_context import StorageContext

from gemkr_llamaindex.generation import ClueGenerator
from gemkr_llamaindex.kb import KnowledgeBase
from gemkr_llamaindex.llamaindex.persist import KB_SUBDIR, generator_spec, inside, load_generator
from gemkr_llamaindex.llamaindex.retriever import GeMKRRetriever

#: The index type ``index_store.json`` records. LlamaIndex has no plugin hook (no entry point) through which
#: ``load_index_from_storage`` could find this package: it looks the type up in registries that this module
#: fills when imported, and raises ``KeyError(type)`` otherwise; the type itself says what to do.
STRUCT_TYPE = "gemkr (run `from gemkr_llamaindex import GeMKRIndex` before load_index_from_storage)"
LEGACY_STRUCT_TYPES = ("gemkr",)  # what earlier versions wrote; still read

#: Keyword arguments ``as_retriever`` accepts (anything else is a typo and an error).
RETRIEVER_KWARGS = frozenset({"generator", "similarity_top_k", "tagger", "callback_manager", "verbose",
                              "batch_window_ms", "max_batch", "normalize_scores", "filters"})


@dataclass
class GeMKRIndexStruct(IndexStruct):
    """Where the KB lives and which build it is: ``kb_dir`` is relative to the persist dir after
    ``persist`` (absolute before), ``kb_build_id`` the KB manifest's build id; ``generator`` the spec that
    rebuilds the index's generator (:func:`~gemkr_llamaindex.llamaindex.persist.generator_spec`), if any."""

    kb_dir: str = ""
    kb_build_id: str = ""
    generator: dict | None = None

    @classmethod
    def get_type(cls) -> str:  # type: ignore[override]
        return STRUCT_TYPE


class GeMKRIndex(BaseIndex[GeMKRIndexStruct]):
    """Generative multimodal knowledge retrieval over an FM-index of the nodes."""

    index_struct_cls = GeMKRIndexStruct

    def __init__(
        self,
        nodes: Sequence[BaseNode] | None = None,
        index_struct: GeMKRIndexStruct | None = None,
        storage_context: StorageContext | None = None,
        *,
        kb: KnowledgeBase | None = None,
        kb_dir: str | Path | None = None,
        tokenizer: Any = None,
        generator: ClueGenerator | None = None,
        kb_build_kwargs: dict[str, Any] | None = None,
        persist_dir: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        """``persist_dir``: where a persisted index's KB lives (``load_index_from_storage(storage_context,
        persist_dir=DIR)`` passes it; :meth:`from_persist_dir` does it for you)."""
        self._kb = kb
        self._kb_dir = Path(kb_dir) if kb_dir is not None else None
        if isinstance(tokenizer, str):  # a name of the package's own models ("smollm2") or a folder
            from gemkr_llamaindex.assets import load_tokenizer

            tokenizer = load_tokenizer(tokenizer)
        self._tokenizer = tokenizer if tokenizer is not None else (generator.tokenizer if generator else None)
        self._generator = generator
        self._kb_build_kwargs = kb_build_kwargs or {}
        self._persist_dir = Path(persist_dir) if persist_dir is not None else None
        super().__init__(nodes=nodes, index_struct=index_struct, storage_context=storage_context, **kwargs)
        if self._kb is None:
            self._kb = self._open_kb(self.index_struct, base=Path(persist_dir) if persist_dir is not None else None)
        if generator is not None:
            generator.bind(self._kb)  # a tokenizer mismatch fails here, naming both

    @classmethod
    def from_documents(
        cls,
        documents: Sequence[Document],
        storage_context: StorageContext | None = None,
        show_progress: bool = False,
        callback_manager: Any = None,
        transformations: list[TransformComponent] | None = None,
        **kwargs: Any,
    ) -> GeMKRIndex:
        """Index documents as passages: each document is one KB document (``node_id`` = ``doc.id_``).

        Unlike other indices this does not fall back to ``Settings.transformations`` (which would split
        documents into chunks with new ids); pass ``transformations=[...]`` to chunk explicitly.
        """
        storage_context = storage_context or StorageContext.from_defaults()
        for doc in documents:
            storage_context.docstore.set_document_hash(doc.id_, doc.hash)
        nodes = run_transformations(documents, transformations, show_progress=show_progress) if transformations \
            else list(documents)
        return cls(nodes=nodes, storage_context=storage_context, callback_manager=callback_manager,
                   show_progress=show_progress, **kwargs)

    # ------------------------------------------------------------------ BaseIndex hooks
    def _build_index_from_nodes(self, nodes: Sequence[BaseNode], **build_kwargs: Any) -> GeMKRIndexStruct:
        if self._tokenizer is None:
            raise ValueError("GeMKRIndex needs the LLM's tokenizer to build its KB: pass tokenizer= (or generator=)")
        if self._kb_dir is None:  # the corpus's KB for this tokenizer, built once in the cache
            from gemkr_llamaindex.kb_cache import cached_kb

            self._kb = cached_kb(list(nodes), self._tokenizer, show_progress=self._show_progress,
                                 **self._kb_build_kwargs)
            self._kb_dir = self._kb.path
        else:
            self._kb = KnowledgeBase.build(list(nodes), self._tokenizer, self._kb_dir,
                                           show_progress=self._show_progress, **self._kb_build_kwargs)
        self._docstore.add_documents(nodes, allow_update=True)
        return GeMKRIndexStruct(kb_dir=str(self._kb_dir.resolve()), kb_build_id=self._kb.build_id)

    def _insert(self, nodes: Sequence[BaseNode], **insert_kwargs: Any) -> None:
        raise NotImplementedError(
            "GeMKRIndex is static (an FM-index cannot take insertions): rebuild it with "
            "GeMKRIndex.from_documents(all_documents, tokenizer=...) including the new documents"
        )

    def _delete_node(self, node_id: str, **delete_kwargs: Any) -> None:
        raise NotImplementedError(
            "GeMKRIndex is static (an FM-index cannot delete): rebuild it with GeMKRIndex.from_documents "
            "over the remaining documents"
        )

    @property
    def ref_doc_info(self) -> dict[str, RefDocInfo]:
        return self._docstore.get_all_ref_doc_info() or {}

    # ------------------------------------------------------------------ use
    @property
    def kb(self) -> KnowledgeBase:
        return self._kb

    def as_retriever(self, **kwargs: Any) -> GeMKRRetriever:
        """A :class:`GeMKRRetriever` over this index's KB and docstore.

        Keywords: ``generator`` (a :class:`ClueGenerator`; default: the one given to the index),
        ``similarity_top_k``, ``tagger``, ``callback_manager``, ``verbose``, ``batch_window_ms`` and
        ``max_batch`` (opt-in micro-batching of concurrent calls), ``normalize_scores`` (scores become
        softmax shares, for cutoffs; see :class:`GeMKRRetriever`). Any other keyword is an error
        (``llm``, which LlamaIndex's engines pass through, is ignored). A loaded index without
        ``generator=`` rebuilds the one it was persisted with (from the spec in ``index_store.json``).
        ``filters`` (LlamaIndex ``MetadataFilters``) are refused with an error: see below.
        """
        kwargs.pop("llm", None)
        unknown = sorted(set(kwargs) - RETRIEVER_KWARGS)
        if unknown:
            raise TypeError(f"GeMKRIndex.as_retriever got unexpected keyword(s) {unknown}; valid: {sorted(RETRIEVER_KWARGS)}")
        if kwargs.pop("filters", None) is not None:
            raise NotImplementedError(
                "GeMKR does not apply metadata filters: constrained decoding ranks the documents of the whole KB, "
                "and filtering its hits afterwards would silently return fewer than similarity_top_k of them. "
                "Build a GeMKRIndex over the nodes that pass the filter, or filter the returned nodes (their "
                "metadata is the docstore's)"
            )
        generator = kwargs.pop("generator", None) or self._generator or self._persisted_generator()
        return GeMKRRetriever(generator, self._kb, docstore=self._docstore, **kwargs)

    def _persisted_generator(self) -> ClueGenerator:
        """The generator rebuilt from the persisted spec (once per index), or an error saying to pass one."""
        spec = self.index_struct.generator
        if spec is None:
            raise ValueError(
                "GeMKRIndex.as_retriever needs a clue generator: pass generator=ClueGenerator(...) here or to "
                "the index (e.g. ClueGenerator.zero_shot_llm('smollm2'))"
                + ("; this index was persisted without one (its generator was built from in-memory models)"
                   if self._persist_dir is not None else "")
            )
        record = (self._persist_dir or Path(".")) / "index_store.json"
        self._generator = load_generator(spec, record)
        self._generator.bind(self._kb)
        return self._generator

    def as_query_engine(self, llm: Any = None, **kwargs: Any):
        """The VQA query engine (``reader.VQAQueryEngine``) over :meth:`as_retriever`: it sends the query's
        picture to the retriever and to the reader, and works offline.

        ``llm``: the reader, any LlamaIndex chat LLM (default ``reader.VQAReader()``, the packaged
        SmolLM2-135M-Instruct; never ``Settings.llm``, which is OpenAI). Retriever keywords go to the
        retriever, the rest to ``VQAQueryEngine`` (``top_k``, ``tagger``, ``template``, ``context`` ...).
        For LlamaIndex's text response synthesizer instead, use
        ``RetrieverQueryEngine.from_args(index.as_retriever(...), llm=...)``.
        """
        import inspect

        engine_cls = _vqa_query_engine_class()
        retriever = self.as_retriever(**{k: kwargs.pop(k) for k in list(kwargs) if k in RETRIEVER_KWARGS})
        valid = set(inspect.signature(engine_cls).parameters) - {"retriever", "reader"}
        unknown = sorted(set(kwargs) - valid)
        if unknown:
            raise TypeError(
                f"GeMKRIndex.as_query_engine got unexpected keyword(s) {unknown}: it builds reader.VQAQueryEngine "
                f"(engine keywords {sorted(valid)}, retriever keywords {sorted(RETRIEVER_KWARGS)}); for LlamaIndex's "
                "response synthesizer use RetrieverQueryEngine.from_args(index.as_retriever(...), llm=...)"
            )
        return engine_cls(retriever, reader=llm, **kwargs)

    # ------------------------------------------------------------------ persistence
    def persist(self, persist_dir: str | Path) -> None:
        """Write the storage context and a copy of the KB (``persist_dir/gemkr_kb``) with its build id."""
        persist_dir = Path(persist_dir)
        persist_dir.mkdir(parents=True, exist_ok=True)
        target = persist_dir / KB_SUBDIR
        if self._kb.path.resolve() != target.resolve():
            self._kb.copy_to(target, overwrite=True)  # atomic: a temporary sibling, then one rename
        self.index_struct.kb_dir = KB_SUBDIR
        self.index_struct.kb_build_id = self._kb.build_id
        if self._generator is not None:
            self.index_struct.generator = generator_spec(self._generator)
        self._storage_context.index_store.add_index_struct(self.index_struct)
        self._storage_context.persist(persist_dir=str(persist_dir))

    @classmethod
    def from_persist_dir(cls, persist_dir: str | Path, generator: ClueGenerator | None = None,
                         **kwargs: Any) -> GeMKRIndex:
        """Load a persisted index: its docstore and the KB inside ``persist_dir`` (nowhere else)."""
        persist_dir = Path(persist_dir)
        if not persist_dir.is_dir():
            raise FileNotFoundError(f"persist dir {persist_dir} does not exist")
        missing = [n for n in ("docstore.json", "index_store.json") if not (persist_dir / n).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{persist_dir} is not a persisted GeMKR index: {', '.join(missing)} missing; write one with "
                "index.persist(persist_dir)"
            )
        storage_context = StorageContext.from_defaults(persist_dir=str(persist_dir))
        structs = [s for s in storage_context.index_store.index_structs() if isinstance(s, GeMKRIndexStruct)]
        if len(structs) != 1:
            raise ValueError(f"{persist_dir} holds {len(structs)} GeMKR indices; expected exactly one")
        kb = cls._open_kb(structs[0], base=persist_dir)
        return cls(index_struct=structs[0], storage_context=storage_context, kb=kb, generator=generator,
                   persist_dir=persist_dir, **kwargs)

    @staticmethod
    def _open_kb(struct: GeMKRIndexStruct, base: Path | None) -> KnowledgeBase:
        """The KB the struct names: inside ``base`` when loading a persist dir, and only there."""
        if not struct.kb_dir:
            raise ValueError("the GeMKR index struct names no KB; rebuild the index with GeMKRIndex.from_documents")
        path = Path(struct.kb_dir)
        if base is None and not path.is_absolute():
            raise ValueError(
                "this GeMKR index was persisted: its KB is inside the persist dir; load it with "
                "GeMKRIndex.from_persist_dir(DIR) or load_index_from_storage(storage_context, persist_dir=DIR)"
            )
        if base is not None:
            if path.is_absolute():
                raise ValueError(f"the persisted index names its KB by an absolute path ({path}); a persist dir "
                                 "must hold its own KB: re-persist it with index.persist(dir)")
            path = inside(base, struct.kb_dir, base / "index_store.json")  # "../kb" would open another index's KB
        if not (path / "manifest.json").is_file():
            raise FileNotFoundError(
                f"the GeMKR knowledge base is missing from {path}; a persist dir holds its own KB "
                f"({KB_SUBDIR}/), write it with index.persist(dir) or pass kb=KnowledgeBase.open(path)"
            )
        kb = KnowledgeBase.open(path)
        if struct.kb_build_id and kb.build_id != struct.kb_build_id:
            raise ValueError(
                f"the KB at {path} is build {kb.build_id}, but this index's docstore was persisted with build "
                f"{struct.kb_build_id}: the persist dir mixes two indexes; persist the index again"
            )
        return kb


def _vqa_query_engine_class() -> type:
    """``reader.VQAQueryEngine``, imported when first needed: the library never imports ``reader`` (which
    uses the library) at module import time."""
    from gemkr_llamaindex.distribution import check_top_level

    check_top_level("reader")  # another distribution's `reader` would shadow ours: say so, by name
    try:
        from reader import VQAQueryEngine
    except ImportError as exc:
        raise ImportError(
            f"GeMKRIndex.as_query_engine builds the VQA query engine of the package `reader`, which ships with "
            f"gemkr-llamaindex, but it cannot be imported ({exc}); reinstall gemkr-llamaindex, or build an engine "
            "yourself: RetrieverQueryEngine.from_args(index.as_retriever(...), llm=...)"
        ) from exc
    return VQAQueryEngine


# load_index_from_storage resolves index classes through these registries: register ours so a persisted
# GeMKRIndex comes back as one (and never silently as another index type).
for _type in (STRUCT_TYPE, *LEGACY_STRUCT_TYPES):
    INDEX_STRUCT_TYPE_TO_INDEX_STRUCT_CLASS[_type] = GeMKRIndexStruct  # type: ignore[index]
    INDEX_STRUCT_TYPE_TO_INDEX_CLASS[_type] = GeMKRIndex  # type: ignore[index]
