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
from gemkr_llamaindex.llamaindex import ClueGenerator, VQAQueryBundle

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
def generator(tiny_llm):
    """A generator exists before any index: it holds no KB."""
    llm, tok = tiny_llm
    return ClueGenerator(llm=llm, tokenizer=tok, config=CFG)


@pytest.fixture(scope="module")
def index(documents, generator, tmp_path_factory):
    kb_dir = tmp_path_factory.mktemp("idx") / "kb"
    index = GeMKRIndex.from_documents(documents, generator=generator, kb_dir=kb_dir)
    assert index.kb.doc_ids([])[:3] == [d.id_ for d in documents[:3]]  # documents are the passages
    return index


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


def test_clues_map_to_their_documents(generator, index):
    res = generator.generate([VQAQueryBundle(query_str="Tell me about a famous tower")], index.kb)[0]
    assert res.clues
    for c in res.clues:
        assert CFG.min_length <= len(c.token_ids) <= CFG.max_length or c.ends_document
        assert index.kb.unique_doc(c.token_ids) == c.doc_id or c.ends_document
        assert c.text == index.kb.decode(c.token_ids)


def test_persistence_round_trip(index, generator, tmp_path):
    retriever = index.as_retriever(similarity_top_k=4)
    before = [(h.node.node_id, h.score) for h in retriever.retrieve("What is a volcano?")]
    index.persist(tmp_path / "store")
    again = GeMKRIndex.from_persist_dir(tmp_path / "store", generator=generator)
    after = [(h.node.node_id, h.score) for h in again.as_retriever(similarity_top_k=4).retrieve("What is a volcano?")]
    assert before == after
    storage = StorageContext.from_defaults(persist_dir=str(tmp_path / "store"))
    with pytest.raises(ValueError, match="persist_dir=DIR"):
        load_index_from_storage(storage, generator=generator)  # never guessed from an absolute path
    loaded = load_index_from_storage(storage, generator=generator, persist_dir=tmp_path / "store")
    assert isinstance(loaded, GeMKRIndex)
    assert loaded.kb.num_docs == index.kb.num_docs


def test_query_engine_end_to_end_and_postprocessor(index):
    retriever = index.as_retriever(similarity_top_k=3)
    engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM(max_tokens=8),
                                            node_postprocessors=[SimilarityPostprocessor(similarity_cutoff=-50.0)])
    response = engine.query("Where is the Eiffel Tower?")
    assert response.source_nodes and str(response)
    assert all("clues" in n.node.metadata for n in response.source_nodes)
    qe = index.as_query_engine(llm=MockLLM(max_tokens=8), similarity_top_k=2)  # reader.VQAQueryEngine, MockLLM reads
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
    with pytest.raises(TypeError, match="similarity_topk"):
        index.as_retriever(similarity_topk=3)  # a typo is an error, not silently ignored
    with pytest.raises(FileNotFoundError, match="does not exist"):
        retriever.retrieve(QueryBundle(query_str="what is this?", image_path=str(tmp_path / "missing.jpg")))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="not a decodable image"):
        retriever.retrieve(QueryBundle(query_str="what is this?", image_path=str(bad)))
    with pytest.raises(ValueError, match="needs a question or an image"):
        retriever.retrieve(QueryBundle(query_str="  "))
    other = ClueGenerator(llm=tiny_llm[0], tokenizer=large_vocab_tokenizer)
    with pytest.raises(TokenizerMismatchError, match="rebuild the KB"):
        index.as_retriever(generator=other)  # the mismatch is found where the generator meets the KB
    with pytest.raises(TokenizerMismatchError):
        GeMKRRetriever(other, index.kb)
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
    gen = ClueGenerator(model=model, config=CFG)
    img = tmp_path / "red.png"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(img)
    hits = index.as_retriever(generator=gen, similarity_top_k=2).retrieve(
        QueryBundle(query_str="What is shown?", image_path=str(img)))
    assert hits and all(h.node.node_id in set(index.kb.doc_ids([])) for h in hits)
    text_only = gen.generate(["What is shown?"], index.kb)[0]
    assert all(index.kb.unique_doc(c.token_ids) == c.doc_id for c in text_only.clues if not c.ends_document)


def test_undecodable_image_error_survives_ultralytics_import(index, tmp_path):
    """ultralytics patches PIL.Image.open globally; a corrupt image must still give our clear error."""
    pytest.importorskip("ultralytics", reason="needs the [yolo] extra")
    import ultralytics.utils.patches  # noqa: F401  (applies the patch)

    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG but not really")
    with pytest.raises(ValueError, match="not a decodable image"):
        index.as_retriever().retrieve(QueryBundle(query_str="what is this?", image_path=str(bad)))


# ---------------------------------------------------------------------------------------------- one owner of the KB
def test_one_generator_serves_several_indexes(generator, wiki_docs, tmp_path):
    a = GeMKRIndex.from_documents([Document(text=t, id_=d) for d, t in wiki_docs[100:110]], generator=generator,
                                  kb_dir=tmp_path / "a")
    b = GeMKRIndex.from_documents([Document(text=t, id_=d) for d, t in wiki_docs[200:210]], tokenizer=generator.tokenizer,
                                  kb_dir=tmp_path / "b")
    ids_a = {h.node.node_id for h in a.as_retriever(similarity_top_k=3).retrieve("What is it?")}
    ids_b = {h.node.node_id for h in b.as_retriever(generator=generator, similarity_top_k=3).retrieve("What is it?")}
    assert ids_a <= {d for d, _ in wiki_docs[100:110]} and ids_b <= {d for d, _ in wiki_docs[200:210]}
    assert ids_a and ids_b


def test_persisted_index_opens_only_its_own_kb(generator, wiki_docs, tmp_path):
    import shutil

    docs = [Document(text=t, id_=d) for d, t in wiki_docs[300:306]]
    first = GeMKRIndex.from_documents(docs, generator=generator, kb_dir=tmp_path / "kb1")
    first.persist(tmp_path / "store")
    shutil.copytree(tmp_path / "store", tmp_path / "copy")
    other = GeMKRIndex.from_documents([Document(text=t, id_=d) for d, t in wiki_docs[400:406]], generator=generator,
                                      kb_dir=tmp_path / "kb2")
    shutil.rmtree(tmp_path / "store")
    other.persist(tmp_path / "store")  # another index where the first one was persisted
    copy = GeMKRIndex.from_persist_dir(tmp_path / "copy", generator=generator)
    assert set(copy.kb.doc_ids([])) == {d.id_ for d in docs}  # its own KB, not the one now at the old place
    hits = copy.as_retriever(similarity_top_k=2).retrieve("What is it?")
    assert hits and all(copy.docstore.get_node(h.node.node_id, raise_error=False) is not None for h in hits)
    shutil.rmtree(tmp_path / "copy" / "gemkr_kb")
    shutil.copytree(tmp_path / "store" / "gemkr_kb", tmp_path / "copy" / "gemkr_kb")  # a foreign KB
    with pytest.raises(ValueError, match="mixes two indexes") as err:
        GeMKRIndex.from_persist_dir(tmp_path / "copy", generator=generator)
    assert copy.kb.build_id in str(err.value) and other.kb.build_id in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a persisted GeMKR index"):
        GeMKRIndex.from_persist_dir(tmp_path / "empty")


def test_from_persist_dir_checks_the_generator_against_the_kb(index, tmp_path, tiny_llm, large_vocab_tokenizer):
    index.persist(tmp_path / "store")
    with pytest.raises(TokenizerMismatchError):
        GeMKRIndex.from_persist_dir(tmp_path / "store",
                                    generator=ClueGenerator(llm=tiny_llm[0], tokenizer=large_vocab_tokenizer))


# ---------------------------------------------------------------------------------------------- guards
def test_a_prompt_past_the_context_is_refused_or_cut_before_any_forward(index, generator, tiny_llm):
    huge = "Which tower? " * 3000  # far past the tiny model's 1024 positions
    calls = []
    handle = tiny_llm[0].register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match="context is 1024 positions"):
            generator.generate([huge], index.kb)
        assert not calls  # refused before any forward pass
    finally:
        handle.remove()
    cutter = ClueGenerator(llm=tiny_llm[0], tokenizer=tiny_llm[1], config=CFG, on_long_prompt="truncate")
    with pytest.warns(UserWarning, match="question cut"):
        assert cutter.generate([huge], index.kb)[0] is not None


def test_a_picture_the_zero_shot_generator_cannot_see(index, tmp_path):
    from PIL import Image

    img = tmp_path / "x.png"
    Image.new("RGB", (32, 32), (9, 9, 9)).save(img)
    retriever = index.as_retriever()
    with pytest.raises(ValueError, match="give the retriever a tagger"):
        retriever.retrieve(QueryBundle(query_str="", image_path=str(img)))
    with pytest.warns(UserWarning, match="picture is ignored"):
        retriever.retrieve(QueryBundle(query_str="what is this?", image_path=str(img)))
    tagged = index.as_retriever(tagger=lambda image: "tower, Paris")
    assert tagged.retrieve(QueryBundle(query_str="", image_path=str(img)))  # tags carry the picture


# ---------------------------------------------------------------------------------------------- concurrency
QUESTIONS = ["Where is the Eiffel Tower?", "What is a volcano?", "Who wrote music?", "Which city is big?"]


def _ids_scores(hits):
    return [(h.node.node_id, h.score) for h in hits]


def _retrieve_in_threads(retriever, queries):
    """``retriever.retrieve`` of every query, each in its own thread, all started together."""
    import threading

    out: list = [None] * len(queries)

    def work(i):
        out[i] = _ids_scores(retriever.retrieve(queries[i]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(queries))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _same_as_sequential(retriever, bundles):
    sequential = [_ids_scores(retriever.retrieve(b)) for b in bundles]

    async def together():
        return await asyncio.gather(*(retriever.aretrieve(b) for b in bundles))

    gathered = [_ids_scores(hits) for hits in asyncio.run(together())]
    threaded = _retrieve_in_threads(retriever, bundles)
    assert any(sequential)
    assert gathered == sequential
    assert threaded == sequential


def test_concurrent_zero_shot_retrieval_equals_sequential(index):
    _same_as_sequential(index.as_retriever(similarity_top_k=3), [QueryBundle(query_str=q) for q in QUESTIONS])


def test_concurrent_gemkr_retrieval_with_detector_and_backend_equals_sequential(index, tmp_path):
    """The multimodal path (detector, vision tower, object cache) and a user-set backend factory under 4
    concurrent aretrieve calls and 4 threads."""
    pytest.importorskip("ultralytics", reason="needs the [yolo] extra")
    import numpy as np
    from PIL import Image

    from gemkr_llamaindex.decoding import HFBackend
    from gemkr_llamaindex.model.gemkr import GeMKRModel
    from gemkr_llamaindex.model.tiny import build_tiny_llm, tiny_config

    model = GeMKRModel(tiny_config(build_tiny_llm(tmp_path / "llm"), detector="yolov8n.yaml", detector_conf=0.0))
    gen = ClueGenerator(model=model, config=CFG, backend=lambda kb, end: HFBackend(model.llm))
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(paths[-1])
    bundles = [QueryBundle(query_str=q, image_path=str(p)) for q, p in zip(QUESTIONS, paths)]
    _same_as_sequential(index.as_retriever(generator=gen, similarity_top_k=3), bundles)


def test_micro_batched_concurrent_calls_equal_unbatched_calls(index, generator):
    plain = index.as_retriever(similarity_top_k=3)
    batched = index.as_retriever(similarity_top_k=3, batch_window_ms=200, max_batch=4)
    want = [_ids_scores(plain.retrieve(q)) for q in QUESTIONS]
    got = _retrieve_in_threads(batched, QUESTIONS)
    assert batched._batcher.batches < len(QUESTIONS)  # some calls shared a decoding batch
    for g, w in zip(got, want):
        assert [d for d, _ in g] == [d for d, _ in w]
        assert [s for _, s in g] == pytest.approx([s for _, s in w], abs=1e-4)
    with pytest.raises(ValueError, match="needs a question or an image"):
        batched.retrieve("   ")  # a bad query fails alone
    assert [h.node.node_id for h in batched.retrieve(QUESTIONS[0])] == [d for d, _ in want[0]]


def test_importable_under_llamaindex_integration_namespace():
    """LlamaIndex's convention: integrations live under llama_index.<kind>.<name> (a namespace package)."""
    import importlib
    from pathlib import Path

    import gemkr_llamaindex

    ns = importlib.import_module("llama_index.retrievers.gemkr")
    assert ns.GeMKRRetriever is GeMKRRetriever and ns.GeMKRIndex is GeMKRIndex
    repo = Path(gemkr_llamaindex.__file__).resolve().parents[1]
    assert not (repo / "llama_index" / "__init__.py").exists() and not (repo / "llama_index/retrievers/__init__.py").exists()
    importlib.import_module("llama_index.core")  # the namespace is shared, not shadowed
    importlib.import_module("llama_index.retrievers.bm25")


def test_the_retrievers_own_tags_leave_the_callers_bundle_untouched(index, tmp_path):
    """A retriever's tagger fills the tags slot of a copy: the caller's bundle (the reader's prompt in a
    query engine) keeps what it came with, and the tagged query still reaches decoding."""
    import numpy as np
    from PIL import Image

    from gemkr_llamaindex.query import VQAQueryBundle

    path = tmp_path / "q.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(path)
    seen = []
    retriever = index.as_retriever(similarity_top_k=3, tagger=lambda image: seen.append(image) or "Madrid")
    bundle = VQAQueryBundle(query_str=QUESTIONS[0], image_path=str(path))
    tagged = retriever.retrieve(bundle)
    assert bundle.tags is None and len(seen) == 1
    want = retriever.retrieve(VQAQueryBundle(query_str=QUESTIONS[0], image_path=str(path), tags="Madrid"))
    assert [h.node.node_id for h in tagged] == [h.node.node_id for h in want]


def test_prior_calibrated_scores_follow_their_formula(index, tiny_llm):
    llm, tok = tiny_llm
    res = ClueGenerator(llm=llm, tokenizer=tok, config=CFG.replace(prior_weight=0.5)).generate(
        ["Which city is the capital of France?"], index.kb)[0]
    assert res.clues
    for c in res.clues:
        assert c.prior_logprob is not None and c.prior_logprob < 0
        assert c.score == pytest.approx((c.logprob - 0.5 * c.prior_logprob) / len(c.token_ids))
    assert [c.score for c in res.clues] == sorted((c.score for c in res.clues), reverse=True)


def test_reranking_dumped_clues_equals_decoding_with_that_scoring(index, tiny_llm):
    """The search does not depend on how finished clues are scored: one run's clues, ranked again under
    another prior weight or document score (``eval_vqa.analysis.rerank``, what ``benchmarks/rescore_clues.py``
    runs), give the documents a run with those settings returns."""
    from eval_vqa.analysis import rerank

    llm, tok = tiny_llm
    dumped = ClueGenerator(llm=llm, tokenizer=tok, config=CFG.replace(prior_weight=0.5)).generate(QUESTIONS, index.kb)
    rankings = set()
    for weight in (0.0, 0.25, 1.0):
        for doc_score in ("max", "logsumexp"):
            cfg = CFG.replace(prior_weight=weight, doc_score=doc_score)
            direct = ClueGenerator(llm=llm, tokenizer=tok, config=cfg).generate(QUESTIONS, index.kb)
            for res, want in zip(dumped, direct):
                assert rerank([c.to_dict() for c in res.clues], weight, doc_score) == [d.doc_id for d in want.docs]
            rankings.add(tuple(tuple(d.doc_id for d in r.docs) for r in direct))
    assert len(rankings) > 1  # the settings do reorder documents here


def test_prior_is_the_clue_likelihood_under_the_empty_query_on_every_call(index, tiny_llm):
    """The prior pass (tree attention over the clues' prefixes, on the empty prompt encoded once per
    generator) gives each clue's teacher-forced log-likelihood after the empty query, call after call."""
    from gemkr_llamaindex.model.scoring import clue_log_likelihood

    llm, tok = tiny_llm
    gen = ClueGenerator(llm=llm, tokenizer=tok, config=CFG.replace(prior_weight=0.5))
    questions = ["Which city is the capital of France?", "What river flows through Paris?"]
    first = gen.generate(questions, index.kb)
    again = gen.generate(questions, index.kb)
    empty = gen.empty_prompt()
    for res, res2 in zip(first, again):
        assert [c.prior_logprob for c in res.clues] == pytest.approx([c.prior_logprob for c in res2.clues], abs=1e-6)
        for c in res.clues:
            seq = c.token_ids + ([tok.eos_token_id] if c.ends_document else [])
            ref = float(clue_log_likelihood(llm, empty, [seq], tok.pad_token_id or 0)[0])
            assert c.prior_logprob == pytest.approx(ref, abs=1e-4)


@pytest.mark.parametrize("window", [None, 50], ids=["direct", "micro-batched"])
def test_one_query_decodes_its_picture_once_and_tokenises_its_prompt_once(index, tmp_path, monkeypatch, window):
    """The walk of one query: picture decoded once (the tagger, the check and the prompt share it) and the
    prompt tokenised once, also under micro-batching, whose per-query check hands its prepared prompt on."""
    import numpy as np
    from PIL import Image

    import gemkr_llamaindex.query as query_module
    from gemkr_llamaindex.query import VQAQueryBundle

    path = tmp_path / "q.png"
    Image.fromarray(np.full((8, 8, 3), 90, dtype=np.uint8)).save(path)
    retriever = index.as_retriever(similarity_top_k=3, tagger=lambda image: "grey square", batch_window_ms=window)
    decodes, chats = [], []
    real_decode = query_module.load_image
    monkeypatch.setattr(query_module, "load_image", lambda image: decodes.append(image) or real_decode(image))
    tok = retriever.generator.tokenizer
    real_chat = type(tok).apply_chat_template
    monkeypatch.setattr(type(tok), "apply_chat_template", lambda self, *a, **k: chats.append(a) or real_chat(self, *a, **k))
    hits = retriever.retrieve(VQAQueryBundle(query_str=QUESTIONS[0], image_path=str(path)))
    assert hits and len(decodes) == 1 and len(chats) == 1
