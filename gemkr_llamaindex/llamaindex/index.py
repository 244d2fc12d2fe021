"""GeMKRIndex: a LlamaIndex index whose store is the FM-index knowledge base.

``from_documents`` builds the KB from the nodes (``node_id`` = KB doc id) and keeps the nodes in the
docstore. ``persist(dir)`` writes the storage context and the KB (``dir/gemkr_kb``);
``GeMKRIndex.from_persist_dir(dir)`` loads both. ``load_index_from_storage`` also returns a GeMKRIndex
once this module is imported (the index type is registered with LlamaIndex's registries).

The FM-index is static: ``insert``/``delete`` raise an error that says to rebuild with
``GeMKRIndex.from_documents`` over the full document set (a rebuild of 1M tokens takes seconds).
"""

from __future__ import annotations

import shutil
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

from gemkr_llamaindex.kb import KnowledgeBase
from gemkr_llamaindex.llamaindex.clue_generator import ClueGenerator
from gemkr_llamaindex.llamaindex.retriever import GeMKRRetriever

STRUCT_TYPE = "gemkr"
KB_SUBDIR = "gemkr_kb"


@dataclass
class GeMKRIndexStruct(IndexStruct):
    """Where the KB lives: relative to the persist dir after ``persist``, else absolute."""

    kb_dir: str = ""
    kb_dir_absolute: str = ""

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
        **kwargs: Any,
    ) -> None:
        self._kb = kb
        self._kb_dir = Path(kb_dir) if kb_dir is not None else None
        self._tokenizer = tokenizer if tokenizer is not None else (generator.tokenizer if generator else None)
        self._generator = generator
        self._kb_build_kwargs = kb_build_kwargs or {}
        super().__init__(nodes=nodes, index_struct=index_struct, storage_context=storage_context, **kwargs)
        if self._kb is None:
            self._kb = self._open_kb(self.index_struct, base=None)

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
            raise ValueError("GeMKRIndex needs the LLM's tokenizer to build its KB: pass tokenizer= or generator=")
        if self._kb_dir is None:
            import uuid

            from gemkr_llamaindex.assets import cache_dir

            self._kb_dir = cache_dir() / "indices" / uuid.uuid4().hex
        self._kb = KnowledgeBase.build(list(nodes), self._tokenizer, self._kb_dir, show_progress=self._show_progress,
                                       **self._kb_build_kwargs)
        self._docstore.add_documents(nodes, allow_update=True)
        path = str(self._kb_dir.resolve())
        return GeMKRIndexStruct(kb_dir=path, kb_dir_absolute=path)

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
        """A :class:`GeMKRRetriever`; pass ``generator=`` unless the index was built with one."""
        generator = kwargs.pop("generator", None) or self._generator
        if generator is None:
            raise ValueError(
                "GeMKRIndex.as_retriever needs a clue generator: pass generator=ClueGenerator(...) here or to "
                "the index (e.g. ClueGenerator.zero_shot_from(index.kb))"
            )
        kwargs.pop("llm", None)  # as_query_engine passes the synthesizer's llm through
        known = {"similarity_top_k", "tagger", "callback_manager", "verbose"}
        return GeMKRRetriever(generator, docstore=self._docstore, **{k: v for k, v in kwargs.items() if k in known})

    # ------------------------------------------------------------------ persistence
    def persist(self, persist_dir: str | Path) -> None:
        """Write the storage context and a copy of the KB (``persist_dir/gemkr_kb``)."""
        persist_dir = Path(persist_dir)
        persist_dir.mkdir(parents=True, exist_ok=True)
        target = persist_dir / KB_SUBDIR
        if self._kb.path.resolve() != target.resolve():
            tmp = persist_dir / f".{KB_SUBDIR}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(self._kb.path, tmp)
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        self.index_struct.kb_dir = KB_SUBDIR
        self.index_struct.kb_dir_absolute = str(target.resolve())
        self._storage_context.index_store.add_index_struct(self.index_struct)
        self._storage_context.persist(persist_dir=str(persist_dir))

    @classmethod
    def from_persist_dir(cls, persist_dir: str | Path, generator: ClueGenerator | None = None,
                         **kwargs: Any) -> GeMKRIndex:
        persist_dir = Path(persist_dir)
        if not persist_dir.is_dir():
            raise FileNotFoundError(f"persist dir {persist_dir} does not exist")
        storage_context = StorageContext.from_defaults(persist_dir=str(persist_dir))
        structs = [s for s in storage_context.index_store.index_structs() if isinstance(s, GeMKRIndexStruct)]
        if len(structs) != 1:
            raise ValueError(f"{persist_dir} holds {len(structs)} GeMKR indices; expected exactly one")
        kb = cls._open_kb(structs[0], base=persist_dir, tokenizer=generator.tokenizer if generator else None)
        return cls(index_struct=structs[0], storage_context=storage_context, kb=kb, generator=generator, **kwargs)

    @staticmethod
    def _open_kb(struct: GeMKRIndexStruct, base: Path | None, tokenizer: Any = None) -> KnowledgeBase:
        candidates = []
        if base is not None and struct.kb_dir:
            candidates.append(base / struct.kb_dir)
        if struct.kb_dir_absolute:
            candidates.append(Path(struct.kb_dir_absolute))
        for path in candidates:
            if (path / "manifest.json").is_file():
                return KnowledgeBase.open(path, tokenizer=tokenizer)
        raise FileNotFoundError(
            f"cannot find the GeMKR knowledge base (looked in {[str(c) for c in candidates]}); load the index with "
            "GeMKRIndex.from_persist_dir(persist_dir) or pass kb=KnowledgeBase.open(path)"
        )


# load_index_from_storage resolves index classes through these registries: register ours so a persisted
# GeMKRIndex comes back as one (and never silently as another index type).
INDEX_STRUCT_TYPE_TO_INDEX_STRUCT_CLASS[STRUCT_TYPE] = GeMKRIndexStruct  # type: ignore[index]
INDEX_STRUCT_TYPE_TO_INDEX_CLASS[STRUCT_TYPE] = GeMKRIndex  # type: ignore[index]
