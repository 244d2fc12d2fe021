"""Scale-out on a real local Ray cluster: shards served by actors answer exactly like the local KB (and
brute force), constrained decoding over them gives the same clues and scores, and a KB whose shards are
built by Ray tasks is the same files as a local build."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import DECODING_VOCAB, RAY_EXTRA_REASON, as_text, word_tokenizer
from kb_reference import ReferenceKB

pytest.importorskip("ray", reason=RAY_EXTRA_REASON)

from gemkr_llamaindex.decoding import ConstrainedBeamSearch, DecodingConfig, HFBackend, Prompts  # noqa: E402
from gemkr_llamaindex.distributed import build_kb_on_ray, open_remote_kb, shard_groups  # noqa: E402
from gemkr_llamaindex.kb import END, KnowledgeBase  # noqa: E402

TOKENIZER = word_tokenizer(DECODING_VOCAB)


@pytest.fixture(autouse=True)
def _cluster(ray_cluster):
    return ray_cluster


def random_docs(n: int, seed: int) -> list[list[int]]:
    """Frequent small ids make shared prefixes across shards; duplicates and one-token documents make the
    END and uniqueness rules matter."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        length = int(rng.integers(1, 16))
        docs.append([int(t) if rng.random() < 0.6 else int(rng.integers(3, 8)) for t in rng.integers(3, DECODING_VOCAB, length)])
    docs += [docs[3], docs[7][:2], [5], [5]]
    return docs


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    docs = random_docs(60, 0)
    path = tmp_path_factory.mktemp("ray") / "kb"
    kb = KnowledgeBase.build([(f"d{i}", as_text(d)) for i, d in enumerate(docs)], TOKENIZER, path,
                             shard_tokens=90, show_progress=False)
    assert kb.num_shards >= 5
    return docs, path, kb


def test_shard_groups_are_contiguous_and_balanced():
    shards = [{"num_tokens": t} for t in (10, 10, 10, 10, 100, 10)]
    assert shard_groups(shards, 1) == [(0, 6)]
    groups = shard_groups(shards, 3)
    assert groups[0][0] == 0 and groups[-1][1] == 6 and len(groups) == 3
    assert all(a < b for a, b in groups) and all(groups[i][1] == groups[i + 1][0] for i in range(2))
    assert shard_groups(shards[:2], 5) == [(0, 1), (1, 2)]
    with pytest.raises(ValueError):
        shard_groups(shards, 0)


def assert_children_equal(a, b):
    for field in ("offsets", "tokens", "counts", "states", "unique"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


@pytest.mark.parametrize("groups", [1, 3])
def test_remote_kb_answers_like_the_local_kb_and_brute_force(sharded, groups):
    docs, path, local = sharded
    ref = ReferenceKB(docs)
    remote = open_remote_kb(path, groups=groups, actor_options={"num_cpus": 0.1})
    try:
        assert remote._index.num_actors == min(groups, local.num_shards)
        assert (remote.num_shards, remote.num_docs) == (local.num_shards, local.num_docs)
        assert remote.shard_info() == local.shard_info()
        rng = np.random.default_rng(1)
        clues = []
        for _ in range(40):
            d = docs[int(rng.integers(len(docs)))]
            a = int(rng.integers(len(d)))
            b = int(rng.integers(a + 1, len(d) + 1))
            clues.append(d[a:b])
        clues += [[5], [5, 5], [199, 198], [3]]
        for ids in clues:  # the one-call queries
            assert remote.count(ids) == local.count(ids) == ref.count(ids)
            assert remote.doc_ids(ids) == local.doc_ids(ids)
            assert remote.unique_doc(ids) == local.unique_doc(ids)
            np.testing.assert_array_equal(remote.next_tokens(ids), local.next_tokens(ids))
            np.testing.assert_array_equal(remote.state(ids), local.state(ids))
        for anchor in ("any", "doc_start"):  # the decoder's stateful protocol, walked token by token with END
            walks = [c + [END] if i % 3 == 0 else c for i, c in enumerate(clues)]
            r_states, l_states = remote.root_states(len(walks), anchor), local.root_states(len(walks), anchor)
            np.testing.assert_array_equal(r_states, l_states)
            for t in range(max(map(len, walks))):
                live = [i for i, w in enumerate(walks) if len(w) > t]
                tokens = np.array([walks[i][t] for i in live])
                r_cur, l_cur = r_states[live], l_states[live]
                for fn in ("counts", "unique_docs", "next_tokens_of", "continuations"):
                    got, want = getattr(remote, fn)(r_cur), getattr(local, fn)(l_cur)
                    for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
                        np.testing.assert_array_equal(g, w, err_msg=f"{fn} at step {t}")
                assert_children_equal(remote.children(r_cur), local.children(l_cur))
                np.testing.assert_array_equal(remote.extend(r_cur, np.maximum(tokens, 0)),
                                              local.extend(l_cur, np.maximum(tokens, 0)))
                r, lo = remote.step(r_cur, tokens), local.step(l_cur, tokens)
                for field in ("states", "counts", "unique"):
                    np.testing.assert_array_equal(getattr(r, field), getattr(lo, field), err_msg=f"step {field}")
                r_states, l_states = r_states.copy(), l_states.copy()
                r_states[live], l_states[live] = r.states, lo.states
    finally:
        remote.close()


def test_decoding_over_remote_shards_gives_the_same_clues_and_scores(sharded, decoding_lm):
    import torch

    _, path, local = sharded
    cfg = DecodingConfig(num_beams=6, num_groups=3, diversity_penalty=0.5, min_length=2, max_length=6,
                         anchor="mixed")
    prompts = [[5, 9, 13, 44], [8, 120, 3, 3], [150, 151, 7, 9]]
    ids = torch.tensor(prompts)
    batch = Prompts(attention_mask=torch.ones_like(ids), input_ids=ids)
    remote = open_remote_kb(path, groups=2, actor_options={"num_cpus": 0.1})
    try:
        search = ConstrainedBeamSearch(cfg)
        want = search(HFBackend(decoding_lm), batch, len(prompts), local, end_token_id=1)
        got = search(HFBackend(decoding_lm), batch, len(prompts), remote, end_token_id=1)
    finally:
        remote.close()
    assert sum(len(r.clues) for r in want) >= 6
    for w, g in zip(want, got):
        assert [(c.token_ids, c.doc_id, c.ends_document) for c in g.clues] == \
            [(c.token_ids, c.doc_id, c.ends_document) for c in w.clues]
        assert [c.score for c in g.clues] == pytest.approx([c.score for c in w.clues], abs=1e-6)


def test_a_stalled_actor_is_a_timeout_error_not_a_hang(sharded):
    """A shard actor stopped with SIGSTOP (a hung process, a node under swap) once made ``ray.get`` wait for ever."""
    import signal
    import time

    import ray

    docs, path, _ = sharded
    remote = open_remote_kb(path, groups=2, actor_options={"num_cpus": 0.1}, timeout=3)
    actor = remote._index._actors[1]
    pid = ray.get(actor.pid.remote())
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.perf_counter()
        with pytest.raises(TimeoutError, match=r"did not answer 'count_of' within 3 s"):
            remote.count(docs[0][:2])
        assert time.perf_counter() - t0 < 30
    finally:
        os.kill(pid, signal.SIGCONT)
    assert remote.count(docs[0][:2]) >= 1  # once the actor runs again, so does the KB
    remote.close()
    with pytest.raises(ValueError, match="timeout must be > 0"):
        open_remote_kb(path, groups=1, timeout=0)


def test_a_corrupt_shard_is_refused_by_its_actor(tmp_path):
    docs = random_docs(30, 2)
    path = tmp_path / "kb"
    kb = KnowledgeBase.build([(f"d{i}", as_text(d)) for i, d in enumerate(docs)], TOKENIZER, path,
                             shard_tokens=80, show_progress=False)
    shard = kb.real_path / kb.manifest["shards"][-1]["file"]
    kb.close()
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    os.chmod(shard, 0o644)
    shard.write_bytes(bytes(data))
    with pytest.raises(Exception, match="checksum"):
        open_remote_kb(path, groups=2, actor_options={"num_cpus": 0.1})


def test_ray_build_is_the_local_build(tmp_path, wiki_docs, smollm2_tokenizer):
    docs = wiki_docs[:300]
    local = KnowledgeBase.build(docs, smollm2_tokenizer, tmp_path / "local", shard_tokens=6000, show_progress=False)
    dist = build_kb_on_ray(docs, smollm2_tokenizer, tmp_path / "ray", shard_tokens=6000, show_progress=False,
                           task_options={"num_cpus": 0.5})
    assert local.num_shards >= 4
    assert dist.content_hash == local.content_hash and dist.build_id != local.build_id
    for s in local.manifest["shards"]:
        assert (dist.real_path / s["file"]).read_bytes() == (local.real_path / s["file"]).read_bytes()
    reopened = KnowledgeBase.open(tmp_path / "ray")  # the ordinary open, checksums verified
    ids = reopened.encode(" classical music")
    assert reopened.count(ids) == local.count(ids) > 0 and reopened.doc_ids(ids) == local.doc_ids(ids)
    assert not list(tmp_path.glob(".ray.building-*")) and not list((dist.real_path).glob("*.part-*"))


def test_an_interrupted_ray_build_publishes_nothing(tmp_path, wiki_docs, smollm2_tokenizer):
    out = tmp_path / "kb"
    old = build_kb_on_ray(wiki_docs[:50], smollm2_tokenizer, out, shard_tokens=2000, show_progress=False,
                          task_options={"num_cpus": 0.5})
    old_id = old.build_id
    old.close()

    def corpus():
        yield from wiki_docs[:400]  # several shards are submitted before the interruption
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_kb_on_ray(corpus(), smollm2_tokenizer, out, shard_tokens=2000, show_progress=False, overwrite=True,
                        task_options={"num_cpus": 0.5})
    assert KnowledgeBase.open(out).build_id == old_id
    assert not list(tmp_path.glob(".kb.building-*"))


def test_gemkr_ray_build_cli_matches_gemkr_kb_build(tmp_path, wiki_docs):
    import json

    from gemkr_llamaindex.cli import main

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": d, "text": t}) + "\n" for d, t in wiki_docs[:120]))
    common = ["--input", str(corpus), "--tokenizer", "smollm2", "--shard-tokens", "4000"]
    assert main(["kb", "build", *common, "--out", str(tmp_path / "local")]) == 0
    assert main(["ray", "build", *common, "--out", str(tmp_path / "ray"), "--task-cpus", "0.5"]) == 0
    local, dist = KnowledgeBase.open(tmp_path / "local"), KnowledgeBase.open(tmp_path / "ray")
    assert dist.num_shards == local.num_shards >= 3 and dist.content_hash == local.content_hash
