"""GeMKRIndex / GeMKRRetriever inside real LlamaIndex machinery, on tiny real models and a real KB."""

from __future__ import annotations

import asyncio

import pytest
from llama_index.core import Document, StorageContext, load_index_from_storage
from llama_index.core.llms import MockLLM
from llama_index.core.postprocessor import SimilarityPostprocessor
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import QueryBundle

from gemkr_llamaindex import DecodingConfig, GeMKRIndex, GeMKRRetriever
from gemkr_llamaindex.kb import TokenizerMismatchError
from gemkr_llamaindex.llamaindex import ClueGenerator, ClueQuery

CFG = DecodingConfig(num_beams=4, num_groups=2, min_length=2, max_length=6)


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gemkr_llamaindex.model.tiny import build_tiny_llm

    path = build_tiny_llm(tmp_path_factory.mktemp("llm") / "tiny")
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def documents(wiki_docs):
    return [Document(text=text, id_=title) for title, text in wiki_docs[:40]]


@pytest.fixture(scope="module")
def index(documents, tiny_llm, tmp_path_factory):
    llm, tok = tiny_llm
    kb_dir = tmp_path_factory.mktemp("idx") / "kb"
    index = GeMKRIndex.from_documents(documents, tokenizer=tok, kb_dir=kb_dir)
    assert index.kb.doc_ids([])[:3] == [d.id_ for d in documents[:3]]  # documents are the passages
    gen = ClueGenerator(index.kb, llm=llm, tokenizer=tok, config=CFG)
    index._generator = gen
    return index


@pytest.fixture(scope="module")
def generator(index):
    return index._generator


def test_retriever_returns_kb_documents_with_clues(index, generator):
    retriever = index.as_retriever(similarity_top_k=3)
    assert isinstance(retriever, GeMKRRetriever)
    hits = retriever.retrieve("Which city is the capital of France?")
    assert 1 <= len(hits) <= 3
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True) and all(s < 0 for s in scores)
    for h in hits:
        assert h.node.node_id in {d for d in index.kb.doc_ids([]) }
        assert h.node.get_content() == index.kb.text(h.node.node_id)
        clues = h.node.metadata["clues"]
        assert clues and max(c["score"] for c in clues) == pytest.approx(h.score, abs=1e-5)
        assert "clues" in h.node.excluded_llm_metadata_keys
        for c in clues:  # every clue occurs in the KB and maps back to this node's document
            assert index.kb.unique_doc(index.kb.encode(c["text"])) in (h.node.node_id, None)
    # the docstore's node itself is not modified
    assert "clues" not in index.docstore.get_node(hits[0].node.node_id).metadata


def test_clues_map_to_their_documents(generator):
    res = generator.generate([ClueQuery(question="Tell me about a famous tower")])[0]
    assert res.clues
    for c in res.clues:
        assert CFG.min_length <= len(c.token_ids) <= CFG.max_length
        assert generator.kb.unique_doc(c.token_ids) == c.doc_id
        assert c.text == generator.kb.decode(c.token_ids)


def test_persistence_round_trip(index, generator, tmp_path):
    retriever = index.as_retriever(similarity_top_k=4)
    before = [(h.node.node_id, h.score) for h in retriever.retrieve("What is a volcano?")]
    index.persist(tmp_path / "store")
    again = GeMKRIndex.from_persist_dir(tmp_path / "store", generator=generator)
    after = [(h.node.node_id, h.score) for h in again.as_retriever(similarity_top_k=4).retrieve("What is a volcano?")]
    assert before == after
    loaded = load_index_from_storage(StorageContext.from_defaults(persist_dir=str(tmp_path / "store")),
                                     generator=generator)
    assert isinstance(loaded, GeMKRIndex)
    assert loaded.kb.num_docs == index.kb.num_docs


def test_query_engine_end_to_end_and_postprocessor(index):
    retriever = index.as_retriever(similarity_top_k=3)
    engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM(max_tokens=8),
                                            node_postprocessors=[SimilarityPostprocessor(similarity_cutoff=-50.0)])
    response = engine.query("Where is the Eiffel Tower?")
    assert response.source_nodes and str(response)
    assert all("clues" in n.node.metadata for n in response.source_nodes)
    qe = index.as_query_engine(llm=MockLLM(max_tokens=8), generator=index._generator, similarity_top_k=2)
    assert len(qe.query("Where is the Eiffel Tower?").source_nodes) <= 2


def test_async_retrieval_and_batch(index):
    retriever = index.as_retriever(similarity_top_k=2)

    async def main():
        return await asyncio.gather(retriever.aretrieve("volcano"), retriever.aretrieve("music"))

    a, b = asyncio.run(main())
    assert [h.node.node_id for h in a] == [h.node.node_id for h in retriever.retrieve("volcano")]
    batch = retriever.retrieve_batch(["volcano", QueryBundle(query_str="music")])
    assert [h.node.node_id for h in batch[1]] == [h.node.node_id for h in b]


def test_bad_input(index, generator, tmp_path, large_vocab_tokenizer, tiny_llm):
    retriever = index.as_retriever()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        retriever.retrieve(QueryBundle(query_str="what is this?", image_path=str(tmp_path / "missing.jpg")))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="not a decodable image"):
        retriever.retrieve(QueryBundle(query_str="what is this?", image_path=str(bad)))
    with pytest.raises(ValueError, match="needs a question or an image"):
        retriever.retrieve(QueryBundle(query_str="  "))
    with pytest.raises(TokenizerMismatchError, match="rebuild the KB"):
        ClueGenerator(index.kb, llm=tiny_llm[0], tokenizer=large_vocab_tokenizer)
    with pytest.raises(NotImplementedError, match="rebuild it"):
        index.insert(Document(text="new", id_="new"))
    with pytest.raises(ValueError, match="needs a clue generator"):
        GeMKRIndex(index_struct=index.index_struct, storage_context=index.storage_context, kb=index.kb).as_retriever()


def test_image_query_with_a_trained_style_gemkr_model(index, tmp_path):
    """The multimodal path: a tiny GeMKRModel's prompt embeddings drive the same search."""
    from PIL import Image

    from gemkr_llamaindex.model.gemkr import GeMKRModel
    from gemkr_llamaindex.model.tiny import build_tiny_llm, tiny_config

    model = GeMKRModel(tiny_config(build_tiny_llm(tmp_path / "llm")))
    gen = ClueGenerator(index.kb, model=model, config=CFG)
    img = tmp_path / "red.png"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(img)
    hits = index.as_retriever(generator=gen, similarity_top_k=2).retrieve(
        QueryBundle(query_str="What is shown?", image_path=str(img)))
    assert hits and all(h.node.node_id in set(index.kb.doc_ids([])) for h in hits)
    text_only = gen.generate(["What is shown?"])[0]
    assert all(index.kb.unique_doc(c.token_ids) == c.doc_id for c in text_only.clues)


def test_undecodable_image_error_survives_ultralytics_import(index, tmp_path):
    """ultralytics patches PIL.Image.open globally; a corrupt image must still give our clear error."""
    import ultralytics.utils.patches  # noqa: F401  (applies the patch)

    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG but not really")
    with pytest.raises(ValueError, match="not a decodable image"):
        index.as_retriever().retrieve(QueryBundle(query_str="what is this?", image_path=str(bad)))
