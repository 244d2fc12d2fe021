"""The prior-calibration pass: scoring each distinct clue prefix once (tree attention, the library's) against
a padded batch of whole clues on the same prompt cache (the anchor, the library's former scorer), on the
clues real searches returned.

Each scores every query's clues under the empty prompt, as ``ClueGenerator.calibrate`` does (which also
keeps the empty prompt's encoding from one call to the next: the third row); the table gives
median and p99 ms per query, tokens run per query (distinct prefixes vs padded clue tokens) and the largest
score difference (float rounding only). The clues come from ``python -m benchmarks.clue_report --dump``.

Usage::

    python -m benchmarks.clue_report benchmarks/data/dev_text.jsonl --quiet --dump runs/dev_text_clues.json
    python -m benchmarks.prior_scoring runs/dev_text_clues.json [--checkpoint DIR] [--threads 2]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.env import print_environment


def padded_scores(llm, prompt, clue_ids: list[list[int]], pad: int) -> torch.Tensor:
    """The anchor: the prompt once, then all clues as one right-padded batch on copies of its cache."""
    from gemkr_llamaindex.model.prompt import right_pad
    from gemkr_llamaindex.transformers_compat import cache_kwargs, output_cache

    out = llm(inputs_embeds=prompt.inputs_embeds, attention_mask=prompt.attention_mask,
              position_ids=prompt.position_ids(), use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
    tgt, tmask = right_pad(clue_ids, pad, prompt.inputs_embeds.device)
    b, tlen = tgt.shape
    score = first[tgt[:, 0]]
    if tlen > 1:
        cache = copy.deepcopy(output_cache(out))
        cache.batch_repeat_interleave(b)
        mask = torch.cat([prompt.attention_mask.expand(b, -1), tmask[:, :-1]], dim=1)
        positions = (int(prompt.attention_mask.sum()) + torch.arange(tlen - 1)).expand(b, -1)
        step = llm(inputs_embeds=llm.get_input_embeddings()(tgt[:, :-1]), attention_mask=mask, position_ids=positions,
                   use_cache=True, **cache_kwargs(llm, cache))
        logp = torch.log_softmax(step.logits.float(), dim=-1).gather(-1, tgt[:, 1:, None]).squeeze(-1)
        score = score + (logp * tmask[:, 1:]).sum(1)
    return score.cpu()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("clues", type=Path, help="a clue_report.py --dump file")
    p.add_argument("--checkpoint", default=None, help="default: the checkpoint shipped for the packaged corpus")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    print_environment()
    torch.set_num_threads(args.threads)

    from gemkr_llamaindex.checkpoints import packaged_checkpoint
    from gemkr_llamaindex.llamaindex import ClueGenerator
    from gemkr_llamaindex.model.scoring import encode_prompt, shared_prompt_log_likelihood

    gen = ClueGenerator.from_checkpoint(args.checkpoint or packaged_checkpoint(), batch_size=1)
    pad = gen.tokenizer.pad_token_id if gen.tokenizer.pad_token_id is not None else 0
    queries = json.loads(args.clues.read_text())
    names = ("padded batch (anchor)", "distinct prefixes (tree)", "tree, empty prompt encoded once (calibrate)")
    times: dict[str, list[float]] = {k: [] for k in names}
    tokens: dict[str, list[int]] = {k: [] for k in names}
    encoded = encode_prompt(gen.llm, gen.empty_prompt())
    worst = 0.0
    with torch.inference_mode():
        for q in queries:
            seqs = [c["token_ids"] + ([gen.end_token_id] if c["ends_document"] else []) for c in q["clues"]]
            if not seqs:
                continue
            empty = gen.empty_prompt()
            t0 = time.perf_counter()
            ref = padded_scores(gen.llm, empty, seqs, pad)
            t1 = time.perf_counter()
            ours = shared_prompt_log_likelihood(gen.llm, empty, seqs, batch_size=64)
            t2 = time.perf_counter()
            kept = shared_prompt_log_likelihood(gen.llm, encoded, seqs, batch_size=64)
            t3 = time.perf_counter()
            distinct = len({tuple(s[:k]) for s in seqs for k in range(1, len(s))})
            for name, t, n_tok in zip(names, (t1 - t0, t2 - t1, t3 - t2),
                                      (len(seqs) * (max(map(len, seqs)) - 1), distinct, distinct)):
                times[name].append(t)
                tokens[name].append(n_tok)
            worst = max(worst, float((ref - ours).abs().max()), float((ref - kept).abs().max()))
    n = len(times[names[0]])
    print(f"{args.clues.name}: {n} queries, {args.threads} threads; largest score difference {worst:.1e}\n")
    print("| scorer | ms/query median | p99 | tokens run per query (mean) |\n|---|---:|---:|---:|")
    med = {}
    for name, ts in times.items():
        ts = sorted(ts)
        med[name] = statistics.median(ts)
        p99 = ts[min(n - 1, -(-99 * n // 100) - 1)]
        print(f"| {name} | {1000 * med[name]:.0f} | {1000 * p99:.0f} | {statistics.mean(tokens[name]):.0f} |")
    print("\nratio to the anchor (medians): " + ", ".join(f"{k}: {med[names[0]] / med[k]:.2f}x" for k in names[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
