"""The hybrid (``MultimodalFusionRetriever``, ``gemkr+bm25`` in eval-vqa): GeMKR fused with BM25 through
LlamaIndex's QueryFusionRetriever, the picture in every query, one node per document."""

from __future__ import annotations

import pytest
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.llms.types import CompletionResponse, LLMMetadata
from llama_index.core.llms import CustomLLM
from llama_index.core.retrievers import QueryFusionRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from gemkr_llamaindex.llamaindex.fusion import MultimodalFusionRetriever
from gemkr_llamaindex.query import VQAQueryBundle


class Fixed(BaseRetriever):
    """Returns fixed hits (fresh copies each call) and records the bundles it was asked with."""

    def __init__(self, hits: list[tuple[str, float, dict]]) -> None:
        super().__init__()
        self.hits = hits
        self.seen: list[QueryBundle] = []

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        self.seen.append(query_bundle)
        return [NodeWithScore(node=TextNode(id_=i, text=f"text of {i}", metadata=dict(m)), score=s)
                for i, s, m in self.hits]


@pytest.mark.parametrize("use_async", [False, True])
def test_rrf_by_node_id_with_the_bundle_passed_through(use_async):
    gemkr = Fixed([("d1", -0.2, {"clues": [{"text": "c1"}]}), ("d2", -0.5, {"clues": [{"text": "c2"}]}),
                   ("d3", -0.9, {"clues": [{"text": "c3"}]})])
    bm25 = Fixed([("d3", 7.0, {"bm25": True}), ("d4", 5.0, {})])
    fused = MultimodalFusionRetriever([gemkr, bm25], similarity_top_k=3, use_async=use_async)
    bundle = VQAQueryBundle(query_str="Which family does this animal belong to?", image_path="cat.png",
                            tags="tabby, tiger cat")
    hits = fused.retrieve(bundle)
    # both retrievers got the very bundle: picture and tags intact
    assert gemkr.seen == [bundle] and bm25.seen == [bundle]
    assert gemkr.seen[0] is bundle and bm25.seen[0] is bundle
    # RRF (k=60) by hand: d3 = 1/62 + 1/60, d1 = 1/60, d2 = d4 = 1/61 (first seen first)
    assert [h.node.node_id for h in hits] == ["d3", "d1", "d2"]
    assert hits[0].score == pytest.approx(1 / 62 + 1 / 60) and hits[1].score == pytest.approx(1 / 60)
    # one node per document: GeMKR's (with its clues), plus what BM25's copy added
    assert hits[0].node.metadata == {"clues": [{"text": "c3"}], "bm25": True}


def test_stock_query_fusion_splits_a_document_seen_with_different_metadata():
    # why the subclass exists: QueryFusionRetriever identifies nodes by text + metadata hash
    from llama_index.core.llms import MockLLM

    gemkr = Fixed([("d1", -0.2, {"clues": [{"text": "c1"}]}), ("d2", -0.4, {"clues": [{"text": "c2"}]})])
    bm25 = Fixed([("d2", 3.0, {}), ("d3", 2.0, {})])
    stock = QueryFusionRetriever([gemkr, bm25], llm=MockLLM(), mode="reciprocal_rerank", num_queries=1,
                                 use_async=False, similarity_top_k=3)
    # d2's two copies are scored apart (1/61 and 1/60, never summed), take two of the three slots, and
    # BaseRetriever then drops the second by node id: two hits, d2 without GeMKR's clues
    stock_hits = stock.retrieve("q")
    assert [h.node.node_id for h in stock_hits] == ["d1", "d2"] and stock_hits[1].node.metadata == {}
    hits = MultimodalFusionRetriever([gemkr, bm25], similarity_top_k=3).retrieve("q")
    assert [h.node.node_id for h in hits] == ["d2", "d1", "d3"]  # d2 = 1/61 + 1/60
    assert hits[0].node.metadata == {"clues": [{"text": "c2"}]}


def test_the_hybrid_is_reported_beside_pure_gemkr():
    from eval_vqa.registry import with_companions

    assert with_companions(["bm25", "gemkr+bm25"]) == ["bm25", "gemkr", "gemkr+bm25"]
    assert with_companions(["gemkr+bm25", "gemkr", "gold"]) == ["gemkr+bm25", "gemkr", "gold"]
    assert with_companions(["bm25", "dense"]) == ["bm25", "dense"]


class Rewriter(CustomLLM):
    """A scripted query-writing LLM: always the same two rewrites."""

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata()

    def complete(self, prompt: str, formatted: bool = False, **kwargs) -> CompletionResponse:
        return CompletionResponse(text="felid family of the animal\ncat taxonomy")

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs):
        yield self.complete(prompt)


@pytest.mark.parametrize("use_async", [False, True])
def test_generated_queries_keep_the_picture_and_the_tags(tmp_path, use_async):
    from PIL import Image

    image = tmp_path / "cat.png"
    Image.new("RGB", (8, 8), (200, 120, 40)).save(image)
    bundle = VQAQueryBundle(query_str="Which family does this animal belong to?", image_path=str(image), tags="tabby")
    # the stock class rebuilds generated queries as QueryBundle(text): the picture is gone
    seen_stock = Fixed([("d1", 1.0, {})])
    QueryFusionRetriever([seen_stock], llm=Rewriter(), num_queries=3, use_async=use_async,
                         mode="reciprocal_rerank").retrieve(bundle)
    assert [q.image_path for q in seen_stock.seen] == [str(image), None, None]
    gemkr, bm25 = Fixed([("d1", -0.2, {}), ("d2", -0.4, {})]), Fixed([("d2", 3.0, {})])
    fused = MultimodalFusionRetriever([gemkr, bm25], llm=Rewriter(), num_queries=3, use_async=use_async)
    hits = fused.retrieve(bundle)
    for seen in (gemkr.seen, bm25.seen):
        assert [q.query_str for q in seen] == [bundle.query_str, "felid family of the animal", "cat taxonomy"]
        assert all(q.image_path == str(image) and q.tags == "tabby" for q in seen)
        assert seen[0] is bundle and all(q.loaded_image() is bundle.loaded_image() for q in seen)  # decoded once
    assert [h.node.node_id for h in hits] == ["d2", "d1"]  # d2: 3 x (1/61 + 1/60); d1: 3 x 1/60


def test_query_generation_needs_an_explicit_llm_and_nothing_needs_settings_llm():
    with pytest.raises(ValueError, match="pass llm="):
        MultimodalFusionRetriever([Fixed([])], num_queries=4)
    # the stock class resolves Settings.llm even when it will never generate a query (OpenAI: offline, an error)
    with pytest.raises((ImportError, ValueError), match="openai"):
        QueryFusionRetriever([Fixed([])], num_queries=1)
    assert MultimodalFusionRetriever([Fixed([("d1", 1.0, {})])]).retrieve("q")[0].node.node_id == "d1"


def test_the_hybrid_lives_in_the_library_and_the_eval_name_still_works():
    import eval_vqa.fusion
    import llama_index.retrievers.gemkr as integration

    assert eval_vqa.fusion.MultimodalFusionRetriever is MultimodalFusionRetriever
    assert integration.MultimodalFusionRetriever is MultimodalFusionRetriever


def test_gemkr_bm25_registry_entry_sends_image_and_tags_to_gemkr(tmp_path):
    """The registered ``gemkr+bm25`` on a small corpus: GeMKR's decoder sees the picture and the tags."""
    from PIL import Image
    from skimage import data

    from eval_vqa.registry import RETRIEVERS, build_retriever
    from gemkr_llamaindex import assets

    docs = [d for i, d in enumerate(assets.wiki_summaries()) if i < 30 or d[0] == "Cat"]
    assert RETRIEVERS["gemkr+bm25"].uses_image and RETRIEVERS["gemkr+bm25"].uses_tags
    fused = build_retriever("gemkr+bm25", docs, {"top_k": 3, "use_tags": True, "beams": 2, "groups": 1,
                                                 "min_length": 2, "max_length": 4})
    gemkr, bm25 = fused.retrievers
    asked = []
    prepare = gemkr.generator.prepare  # every query the decoder sees is prepared first

    def spy(queries, *args, **kwargs):
        asked.extend(queries)
        return prepare(queries, *args, **kwargs)

    gemkr.generator.prepare = spy
    image = tmp_path / "chelsea.png"
    Image.fromarray(data.chelsea()).save(image)
    bundle = VQAQueryBundle(query_str="Which family does this animal belong to?", image_path=str(image),
                            tags="tabby, tiger cat")
    hits = fused.retrieve(bundle)
    (query,) = asked
    assert str(getattr(query, "image_path", None) or getattr(query, "image", None)) == str(image)
    assert query.tags == "tabby, tiger cat"
    ids = [h.node.node_id for h in hits]
    assert len(ids) == len(set(ids)) <= 3 and "Cat" in ids  # BM25 reads the tags: "tabby, tiger cat"
