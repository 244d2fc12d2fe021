"""Baseline retrievers on a tiny corpus: real MiniLM, a tiny random open_clip, oracle checks for MaxSim."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from llama_index.core.schema import QueryBundle

from eval_vqa.baselines import (
    BM25Baseline,
    CLIPImageTextRetriever,
    DenseTextRetriever,
    LateInteractionRetriever,
    register_tiny_clip,
)
from eval_vqa.baselines.common import query_text, top_k_indices
from gemkr_llamaindex.images import packaged_image_path
from gemkr_llamaindex.query import VQAQueryBundle

DOCS = [
    ("Cat", "The cat is a small domesticated carnivorous mammal; cats purr and meow."),
    ("Coffee", "Coffee is a beverage brewed from roasted coffee beans; it contains caffeine."),
    ("Bus", "A bus is a motor vehicle that carries many passengers in public transport."),
    ("Moon", "The Moon is the only natural satellite of Earth and orbits it every 29.5 days."),
    ("Rocket", "A rocket uses a rocket engine and carries its own propellant into space."),
    ("Horse", "The horse is a domesticated one-toed hoofed mammal of the family Equidae."),
]
IDS = [d for d, _ in DOCS]


@pytest.fixture(scope="module")
def coffee_path(tmp_path_factory) -> str:
    return str(packaged_image_path("skimage", "coffee", cache_dir=tmp_path_factory.mktemp("img")))


def test_query_text_and_bundle_round_trip():
    qb = VQAQueryBundle(query_str="What is this?", image_path="x.png", tags="espresso, cup")
    assert query_text(qb, use_tags=True) == "What is this? (espresso, cup)"
    assert query_text(qb, use_tags=False) == "What is this?"
    assert query_text(QueryBundle("plain"), use_tags=True) == "plain"
    assert list(top_k_indices(np.array([0.1, 0.9, 0.5, 0.9]), 3)) == [1, 3, 2]


def test_bm25_ids_tags_and_clamp():
    r = BM25Baseline(DOCS, similarity_top_k=3)
    res = r.retrieve(VQAQueryBundle(query_str="What is brewed here?", tags="coffee beans"))
    assert res[0].node.id_ == "Coffee" and res[0].score > 0
    no_tags = BM25Baseline(DOCS, similarity_top_k=3, use_tags=False)
    res2 = no_tags.retrieve(VQAQueryBundle(query_str="What animal?", tags="coffee beans"))
    assert all(n.score == 0 for n in res2)
    with pytest.warns(UserWarning, match="exceeds the corpus size 6"):
        big = BM25Baseline(DOCS, similarity_top_k=50)
    assert {n.node.id_ for n in big.retrieve("mammal")} <= set(IDS)
    with pytest.raises(ValueError, match="duplicate doc id"):
        BM25Baseline(DOCS + [("Cat", "again")])


def test_dense_semantic_ranking_and_cache(tmp_path):
    r = DenseTextRetriever(DOCS, similarity_top_k=2, cache_dir=tmp_path)
    assert r.retrieve("a feline pet that purrs")[0].node.id_ == "Cat"
    assert r.retrieve(VQAQueryBundle(query_str="What is this?", tags="espresso"))[0].node.id_ == "Coffee"
    assert len(list(tmp_path.glob("*.npz"))) == 1
    again = DenseTextRetriever(DOCS, similarity_top_k=2, cache_dir=tmp_path)
    np.testing.assert_allclose(again.doc_embeddings, r.doc_embeddings)
    with pytest.warns(UserWarning, match="exceeds the corpus size"):
        res = r.__class__(DOCS, similarity_top_k=9, cache_dir=tmp_path).retrieve("moon")
    assert len(res) == 6 and res[0].node.id_ == "Moon"
    scores = [n.score for n in res]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 + 1e-6 for s in scores)


def test_clip_tiny_random_model_scores_are_cosines(coffee_path):
    name = register_tiny_clip()
    with pytest.warns(UserWarning, match="random weights"):
        r = CLIPImageTextRetriever(DOCS, model_name=name, similarity_top_k=6)
    qb = QueryBundle(query_str="What drink?", image_path=coffee_path)
    res = r.retrieve(qb)
    assert sorted(n.node.id_ for n in res) == sorted(IDS)
    # oracle: recompute one cosine directly with the open_clip model
    import torch
    from PIL import Image

    with torch.no_grad():
        img = r.model.encode_image(r.preprocess(Image.open(coffee_path).convert("RGB")).unsqueeze(0), normalize=True)[0]
        txt = r.model.encode_text(r.tokenizer([DOCS[3][1]]), normalize=True)[0]
    moon = next(n for n in res if n.node.id_ == "Moon")
    assert moon.score == pytest.approx(float(img @ txt), abs=1e-5)
    with pytest.raises(ValueError, match="needs QueryBundle.image_path"):
        r.retrieve("no image")
    with pytest.raises(FileNotFoundError, match="query image not found"):
        r.retrieve(QueryBundle(query_str="q", image_path="/nonexistent.png"))


def test_late_interaction_matches_bruteforce_maxsim(tmp_path):
    # tiny blocks force the blocked reduceat path across document boundaries
    r = LateInteractionRetriever(DOCS, similarity_top_k=6, block_tokens=7, cache_dir=tmp_path)
    qb = QueryBundle("which animal purrs and meows?")
    q = r.query_tokens(qb)
    lengths = np.diff(np.append(r.doc_offsets, r.doc_tokens.shape[0]))
    expected = []
    for start, n in zip(r.doc_offsets, lengths):
        d = r.doc_tokens[start:start + n].astype(np.float32)
        expected.append((q @ d.T).max(axis=1).sum())
    np.testing.assert_allclose(r.score(qb), expected, rtol=1e-5)
    assert r.retrieve(qb)[0].node.id_ == "Cat"
    assert np.allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5) and q.shape[1] == 128


def test_late_interaction_adds_mapped_image_tokens(coffee_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = LateInteractionRetriever(DOCS, clip_model=register_tiny_clip(), similarity_top_k=3, cache_dir=False)
    text_only = r.query_tokens(QueryBundle("what drink?"))
    with_image = r.query_tokens(QueryBundle("what drink?", image_path=coffee_path))
    patches = (32 // 8) ** 2  # tiny CLIP: 32px images, 8px patches
    assert with_image.shape[0] == text_only.shape[0] + patches
    np.testing.assert_allclose(with_image[: text_only.shape[0]], text_only, rtol=1e-5, atol=1e-6)
    assert len(r.retrieve(QueryBundle("what drink?", image_path=coffee_path))) == 3
