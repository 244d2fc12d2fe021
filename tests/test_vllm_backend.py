"""The vLLM backend's constraint logic on CPU, without vLLM: the mass-preserving KB mask, the per-request
processor callable, and a search over an engine that (like vLLM) returns only the top-N processed log-probs."""

from __future__ import annotations

import copy
import importlib.util
import math
import sys

import numpy as np
import pytest
import torch
from conftest import DECODING_VOCAB, as_text

from gemkr_llamaindex.decoding import ConstrainedBeamSearch, DecodingConfig, HFBackend, Prompts
from gemkr_llamaindex.decoding.kb_logits import (
    BackendRows,
    allowed_tokens,
    choose_sink,
    dense_logprobs,
    log1mexp,
    logprobs_needed,
    mass_preserving_mask,
)
from gemkr_llamaindex.decoding.vllm_backend import (
    INSTALL_HINT,
    RequestKBMask,
    TopLogprobsBackend,
    VLLMBackend,
    VLLMServer,
    export_lora_adapter,
    unpad_prompts,
)

VOCAB = DECODING_VOCAB
HAS_VLLM = importlib.util.find_spec("vllm") is not None


# ---------------------------------------------------------------------------------------------- the mask
def check_mask(logits: torch.Tensor, allowed: list[int]) -> None:
    """Brute force in float64: after any log-softmax the processed row holds the raw log-probs at the
    allowed ids, the whole disallowed mass at the sink, and nothing elsewhere."""
    vocab = logits.shape[-1]
    sink = choose_sink(np.array(allowed), vocab)
    out = mass_preserving_mask(logits, torch.tensor(allowed, dtype=torch.long), sink)
    assert out.dtype == torch.float32
    again = torch.log_softmax(out.double(), -1)
    raw = torch.log_softmax(logits.double(), -1)
    raw32 = torch.log_softmax(logits.float(), -1).double()
    # A second log-softmax moves the allowed entries by logsumexp(out) = log(P + 1 - P), i.e. by rounding only.
    assert torch.allclose(again[allowed], raw32[allowed], rtol=0, atol=1e-6)
    assert torch.allclose(again[allowed], raw[allowed], rtol=1e-6, atol=1e-6)  # float32 vs exact
    rest = sorted(set(range(vocab)) - set(allowed) - {sink})
    assert torch.isneginf(out[rest]).all()
    mass = raw[allowed].exp().sum().item()
    if sink is None:
        assert len(allowed) == vocab
    else:
        assert sink not in allowed
        assert math.exp(out[sink].item()) == pytest.approx(1 - mass, abs=1e-6)


def test_mask_matches_brute_force_on_random_rows():
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    for _ in range(200):
        vocab = int(rng.integers(2, 400))
        logits = torch.randn(vocab, generator=g) * float(rng.choice([0.1, 1.0, 5.0, 30.0]))
        n = int(rng.integers(1, vocab + 1))
        allowed = sorted(rng.choice(vocab, size=n, replace=False).tolist())
        check_mask(logits, allowed)


@pytest.mark.parametrize("case", ["all", "one", "nearly_all_mass", "tiny_mass", "sink_is_last"])
def test_mask_edge_cases(case):
    vocab = 50
    logits = torch.randn(vocab, generator=torch.Generator().manual_seed(1))
    allowed = {"all": list(range(vocab)), "one": [17], "sink_is_last": list(range(vocab - 1))}.get(case)
    if case == "nearly_all_mass":  # the allowed ids hold all but ~1e-12 of the mass
        logits[:10] += 40.0
        allowed = list(range(10))
    if case == "tiny_mass":  # the allowed ids hold ~e^-60 of the mass: still exact in log space
        logits[5:8] -= 60.0
        allowed = [5, 6, 7]
    check_mask(logits, allowed)
    if case == "all":
        assert choose_sink(np.arange(vocab), vocab) is None
    if case == "sink_is_last":
        assert choose_sink(np.array(allowed), vocab) == vocab - 1


def test_mask_without_allowed_tokens_parks_everything_in_the_sink():
    out = mass_preserving_mask(torch.randn(20), torch.zeros(0, dtype=torch.long), 0)
    assert out[0].item() == 0.0 and torch.isneginf(out[1:]).all()


def test_mask_on_a_batch_equals_row_by_row():
    logits = torch.randn(4, 30, generator=torch.Generator().manual_seed(2))
    allowed = torch.tensor([1, 4, 9, 16, 25])
    batch = mass_preserving_mask(logits, allowed, 0)
    for r in range(4):
        assert torch.equal(batch[r], mass_preserving_mask(logits[r], allowed, 0))


def test_log1mexp_is_accurate_at_both_ends():
    x = torch.tensor([-1e-12, -1e-6, -0.5, -math.log(2), -5.0, -50.0, 0.0, 1e-7], dtype=torch.float64)
    expected = [math.log(-math.expm1(v)) if v < 0 else -math.inf for v in x.tolist()]
    got = log1mexp(x).tolist()
    for g, e in zip(got, expected):
        assert g == e or g == pytest.approx(e, rel=1e-12)


def test_choose_sink_picks_the_first_gap():
    assert choose_sink(np.array([0, 1, 2, 5]), 10) == 3
    assert choose_sink(np.array([1, 2]), 10) == 0
    assert choose_sink(np.array([0, 1, 2]), 10) == 3
    assert choose_sink(np.array([], dtype=np.int64), 10) == 0


def test_request_callable_equals_the_mask_and_reads_extra_args():
    logits = torch.randn(40, generator=torch.Generator().manual_seed(3))
    params = type("Params", (), {"extra_args": {"gemkr_kb": {"allowed": [3, 8, 21], "sink": 0}}})()
    fn = RequestKBMask.from_params(params)
    assert torch.equal(fn([], logits), mass_preserving_mask(logits, torch.tensor([3, 8, 21]), 0))
    assert RequestKBMask.from_params(type("P", (), {"extra_args": None})()) is None
    with pytest.raises(ValueError, match="'allowed'"):
        RequestKBMask.from_params(type("P", (), {"extra_args": {"gemkr_kb": [3, 8]}})())


def test_dense_rows_drop_the_sink_and_non_finite_entries():
    top = [{0: -0.1, 4: -2.0, 7: -3.5}, {2: -1.0, 3: -math.inf}]
    dense = dense_logprobs(top, 10, [0, 5])
    assert dense[0, 4].item() == -2.0 and dense[0, 7].item() == -3.5
    assert torch.isfinite(dense[0]).sum() == 2 and torch.isfinite(dense[1]).sum() == 1


def test_logprobs_needed():
    assert logprobs_needed(DecodingConfig(num_beams=20, num_groups=4)) == 2 * 5 + 3 * 5 + 1
    assert logprobs_needed(DecodingConfig(num_beams=10, num_groups=10, diversity_penalty=0.5)) == 2 + 9 + 1
    assert logprobs_needed(DecodingConfig(num_beams=8, num_groups=4, diversity_penalty=0.0)) == 2 * 2 + 1
    with pytest.raises(ValueError, match="negative"):
        logprobs_needed(DecodingConfig(num_beams=4, num_groups=2, diversity_penalty=-1.0))


# ------------------------------------------------------------------------- search equivalence on a tiny LM
@pytest.fixture(scope="module")
def kb(decoding_kb):
    return decoding_kb


@pytest.fixture(scope="module")
def model(decoding_lm):
    return decoding_lm


class EmulatedVLLM(TopLogprobsBackend):
    """What VLLMBackend's engine does for each request, in torch: run the model on the row's whole input
    (vLLM's prefix cache only saves work), apply the per-request processor, log-softmax, keep the top N."""

    def __init__(self, model, kb, num_logprobs, end_token_id=None):
        super().__init__(kb, VOCAB, num_logprobs, embed_tokens=model.get_input_embeddings(), end_token_id=end_token_id)
        self.model = model

    def _top(self, allowed, sinks):
        out = []
        for r, (a, sink) in enumerate(zip(allowed, sinks)):
            x = self.row_input(r)
            inputs = {"input_ids": torch.tensor([x])} if isinstance(x, list) else {"inputs_embeds": x[None]}
            with torch.no_grad():
                logits = self.model(**inputs).logits[0, -1].float()
            processed = RequestKBMask(a.tolist(), sink)([], logits)
            values, ids = torch.topk(torch.log_softmax(processed, -1), self.num_logprobs)
            out.append(dict(zip(ids.tolist(), values.tolist())))
        return out


PROMPTS = [[5, 9, 13, 44, 71], [8, 120, 3], [150, 151, 152, 7, 9, 11, 13]]


def id_prompts(rows):
    n = max(map(len, rows))
    ids = torch.full((len(rows), n), 2, dtype=torch.long)
    mask = torch.zeros(len(rows), n, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, n - len(r):] = torch.tensor(r)
        mask[i, n - len(r):] = 1
    return Prompts(attention_mask=mask, input_ids=ids)


def embed_prompts(model, rows):
    """Left-padded embedding prompts with hidden slots inside, like GeMKR's empty object slots."""
    ids = id_prompts(rows)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        emb = model.get_input_embeddings()(ids.input_ids)
    hidden = torch.randn(len(rows), 2, emb.shape[-1], generator=g)  # never attended to
    n = emb.shape[1]
    embeds = torch.cat([emb[:, : n - 2], hidden, emb[:, n - 2:]], 1)
    mask = torch.cat([ids.attention_mask[:, : n - 2], torch.zeros(len(rows), 2, dtype=torch.long),
                      ids.attention_mask[:, n - 2:]], 1)
    return Prompts(attention_mask=mask, inputs_embeds=embeds)


def clues(results):
    return [[(c.token_ids, c.doc_id) for c in r.clues] for r in results]


def scores(results):
    return [c.score for r in results for c in r.clues]


@pytest.mark.parametrize("constraint", ["mask", "topk"])
@pytest.mark.parametrize("prompt_kind", ["ids", "embeds"])
def test_top_n_processed_logprobs_give_the_hf_search(kb, model, constraint, prompt_kind):
    cfg = DecodingConfig(num_beams=8, num_groups=4, diversity_penalty=0.5, min_length=2, max_length=6,
                         constraint=constraint, topk_candidates=4, enumerate_below=2)
    prompts = id_prompts(PROMPTS) if prompt_kind == "ids" else embed_prompts(model, PROMPTS)
    reference = ConstrainedBeamSearch(cfg)(HFBackend(model), prompts, len(PROMPTS), kb)
    emulated = ConstrainedBeamSearch(cfg)(EmulatedVLLM(model, kb, logprobs_needed(cfg)), prompts, len(PROMPTS), kb)
    assert sum(len(r.clues) for r in reference) >= 6
    assert clues(emulated) == clues(reference)
    assert scores(emulated) == pytest.approx(scores(reference), abs=1e-5)


def test_too_few_logprobs_change_the_result(kb, model):
    """The test above is sensitive: with top-2 log-probs per row the diverse search loses candidates."""
    cfg = DecodingConfig(num_beams=8, num_groups=4, diversity_penalty=0.5, min_length=2, max_length=6)
    reference = ConstrainedBeamSearch(cfg)(HFBackend(model), id_prompts(PROMPTS), len(PROMPTS), kb)
    starved = ConstrainedBeamSearch(cfg)(EmulatedVLLM(model, kb, 2), id_prompts(PROMPTS), len(PROMPTS), kb)
    assert clues(starved) != clues(reference)


@pytest.mark.parametrize("constraint", ["mask", "topk"])
def test_anchors_and_document_ends_inside_the_engine(kb, model, constraint):
    """Anchored groups and END clues: the engine masks with the states the search hands over (END as EOS)."""
    cfg = DecodingConfig(num_beams=8, num_groups=4, diversity_penalty=0.5, min_length=3, max_length=6,
                         anchor="mixed", constraint=constraint, topk_candidates=4, enumerate_below=2)
    reference = ConstrainedBeamSearch(cfg)(HFBackend(model), id_prompts(PROMPTS), len(PROMPTS), kb, end_token_id=1)
    emulated = ConstrainedBeamSearch(cfg)(EmulatedVLLM(model, kb, logprobs_needed(cfg), end_token_id=1),
                                         id_prompts(PROMPTS), len(PROMPTS), kb, end_token_id=1)
    assert clues(emulated) == clues(reference)
    assert scores(emulated) == pytest.approx(scores(reference), abs=1e-5)


def test_rows_follow_the_search(kb, model):
    backend = EmulatedVLLM(model, kb, 5)
    root = kb.root_states(2)
    backend.start(id_prompts(PROMPTS[:2]), root)
    first = int(kb.next_tokens([])[0])
    second = int(kb.next_tokens([first])[0])
    one = kb.step(kb.root_states(3), [first] * 3).states
    backend.advance(torch.tensor([1, 1, 0]), torch.tensor([first, first, first]), one)
    two = kb.step(one[2:], [second]).states
    backend.advance(torch.tensor([2]), torch.tensor([second]), two)
    assert backend.rows.prompt.tolist() == [0] and backend.rows.tokens == [(first, second)]
    assert backend.row_input(0) == PROMPTS[0] + [first, second]
    assert allowed_tokens(kb, two, None)[0].tolist() == kb.next_tokens([first, second]).tolist()
    with pytest.raises(ValueError, match="states"):
        backend.advance(torch.tensor([0]), torch.tensor([second]))  # an engine-side mask needs the row states
    rows = BackendRows()
    rows.start(1)
    rows.advance([0, 0], [7, 8])
    assert rows.tokens == [(7,), (8,)]


def test_unpadding_drops_padding_and_hidden_slots(model):
    p = embed_prompts(model, PROMPTS)
    rows = unpad_prompts(p)
    for r, prompt in zip(rows, PROMPTS):
        with torch.no_grad():
            assert torch.equal(r, model.get_input_embeddings()(torch.tensor(prompt)))
    assert unpad_prompts(id_prompts(PROMPTS)) == PROMPTS


# ------------------------------------------------------------------------------- packaging and adapters
@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_without_vllm_the_backend_names_the_install(kb):
    before = set(sys.modules)
    import gemkr_llamaindex.decoding.vllm_backend as vb

    assert "vllm" not in sys.modules or "vllm" in before  # importing the module never imports vLLM
    with pytest.raises(ImportError, match=r"pip install 'gemkr-llamaindex\[vllm\]'"):
        VLLMBackend(object(), kb, vocab_size=VOCAB, num_logprobs=5)
    with pytest.raises(ImportError, match="CUDA machine"):
        vb.KBMaskLogitsProcessor  # noqa: B018 - built lazily, needs vLLM
    with pytest.raises(ImportError) as err:
        VLLMServer.create_llm("x", num_logprobs=5)
    assert str(err.value) == INSTALL_HINT


def test_lora_adapter_export_reloads_with_peft(model, tmp_path):
    from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model

    lora = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a non-trivial adapter (B starts at zero)
    holder = type("GeMKRLike", (), {"llm": lora})()
    out = export_lora_adapter(holder, tmp_path / "adapter")
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    cfg = PeftConfig.from_pretrained(str(out))
    assert cfg.r == 4 and set(cfg.target_modules) == {"q_proj", "v_proj"}
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        expected = lora(input_ids=ids).logits
        base = lora.unload()  # the plain base weights again
        reloaded = PeftModel.from_pretrained(base, str(out)).eval()
        assert torch.allclose(reloaded(input_ids=ids).logits, expected, atol=1e-5)
    with pytest.raises(TypeError, match="no peft LoRA adapter"):
        export_lora_adapter(copy.deepcopy(model), tmp_path / "none")


def test_clue_generator_runs_on_a_given_backend(kb, model):
    """``ClueGenerator(backend=factory)`` makes one engine backend per search (how VLLMServer plugs into the
    retriever) and returns what the default HF backend returns."""
    from gemkr_llamaindex.llamaindex.clue_generator import ClueGenerator

    cfg = DecodingConfig(num_beams=8, num_groups=4, min_length=2, max_length=6)
    tok = kb.tokenizer
    default = ClueGenerator(llm=model, tokenizer=tok, config=cfg)
    made = []

    def factory(kb_, end_token_id):
        made.append(EmulatedVLLM(model, kb_, logprobs_needed(cfg), end_token_id))
        return made[-1]

    plugged = ClueGenerator(llm=model, tokenizer=tok, config=cfg, backend=factory)
    queries = [as_text([5, 9, 13]), as_text([150, 151])]
    reference, got = default.generate(queries, kb), plugged.generate(queries, kb)
    assert made and all(len(b.rows) > 0 for b in made)  # the engine answered the search's steps
    assert sum(len(r.clues) for r in reference) >= 2
    assert clues(got) == clues(reference)
    assert scores(got) == pytest.approx(scores(reference), abs=1e-5)
    plugged.generate(queries, kb)
    assert len({id(b) for b in made}) == len(made)  # a fresh backend per search: nothing shared between calls
