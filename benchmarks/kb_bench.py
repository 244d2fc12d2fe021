"""Knowledge-base benchmark: build cost, size and query latency, beside baselines measured in the same run.

Corpora: synthetic Zipf token streams (vocab 32,000, documents of ~150 tokens) at the sizes given, plus
the packaged Wikipedia summaries tokenized with SmolLM2. For each corpus:

* our KB (``KnowledgeBase.build_from_token_ids``): build seconds and peak RSS (measured in a child
  process), index bytes/token, open time with checksum verification (the default) and without it,
  the XXH64 checksum speed, median/p99 latency of next_tokens at prefix lengths 0, 1, 2, 4, 8, of
  count, doc_ids and unique_doc, one fused ``step`` for 20 beams against the separate extend + counts +
  unique_docs calls on the same states, and a decoding workload (20 beams x 15 steps per query, all beams
  of a step in one call to the stateful API: next_tokens_of + extend + unique_docs);
* a plain numpy suffix array (forward text, binary search per query; suffix array from our SA-IS);
* the PyPI ``fm-index`` package (``MultiFMIndex`` over token ids mapped to characters) where it has the
  operation (count, doc ids; it has no continuation listing), up to ``--fm-index-max-tokens``.

Query prefixes are drawn from random corpus positions (so frequent tokens are queried often, as a
decoder does). The anchor figures for sdsl-lite (SEAL/GeMKR) are the ones quoted in the project's issue,
measured earlier on this machine; sdsl is GPL and not on PyPI, so it is not rebuilt here.

Usage: python -m benchmarks.kb_bench [--sizes 1e6 15e6 100e6] [--queries 400] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.env import ROOT, print_environment

VOCAB = 32_000
DOC_LEN = 150
BEAMS, STEPS = 20, 15
STEP_DEPTHS = (0, 1, 3)
SDSL_ANCHOR = {"bytes_per_token": 2.95, "build_s": 170.0, "build_rss_gb": 1.81, "next1_median_ms": 3.2,
               "next1_p99_ms": 4.7, "doc_lookup_us": 91.0, "decode_ms": 67.0, "tokens": 100e6}


# ---------------------------------------------------------------------------------------------- corpora
def zipf_chunks(n_tokens: int, seed: int = 0, chunk: int = 2_000_000):
    """Deterministic synthetic corpus, chunk by chunk: ``(tokens uint32, document bounds)``.

    Zipf(1.0) token ranks, document lengths uniform in [100, 200]; documents never span chunks.
    """
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, VOCAB + 1, dtype=np.float64)
    cdf = np.cumsum(1.0 / ranks)
    cdf /= cdf[-1]
    perm = rng.permutation(VOCAB).astype(np.uint32)  # token ids are not sorted by frequency
    produced = 0
    while produced < n_tokens:
        m = min(chunk, n_tokens - produced)
        toks = perm[np.searchsorted(cdf, rng.random(m))]
        lens = rng.integers(DOC_LEN - 50, DOC_LEN + 51, size=m // (DOC_LEN - 50) + 2)
        bounds = np.concatenate([[0], np.cumsum(lens)])
        bounds = np.asarray(bounds[bounds < m].tolist() + [m], dtype=np.int64)
        yield toks, bounds
        produced += m


def zipf_docs(n_tokens: int, seed: int = 0):
    """The synthetic corpus as ``(doc_id, tokens)`` pairs (what a build reads)."""
    doc = 0
    for toks, bounds in zipf_chunks(n_tokens, seed):
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            yield f"z{doc}", toks[a:b]
            doc += 1


def zipf_flat(n_tokens: int, seed: int = 0):
    """The same corpus as one token array (uint32) and document offsets: no per-document objects, so the
    query sampling of a billion-token run costs 4 bytes/token instead of a list of arrays."""
    tokens = np.empty(n_tokens, dtype=np.uint32)
    offsets, pos = [np.zeros(1, dtype=np.int64)], 0
    for toks, bounds in zipf_chunks(n_tokens, seed):
        tokens[pos : pos + len(toks)] = toks
        offsets.append(bounds[1:] + pos)
        pos += len(toks)
    return tokens, np.concatenate(offsets)


def wiki_docs():
    from gemkr_llamaindex.assets import load_tokenizer, wiki_summaries

    tok = load_tokenizer("smollm2")
    docs = list(wiki_summaries())
    ids = tok([t for _, t in docs], add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return [(d, np.asarray(i, dtype=np.uint32)) for (d, _), i in zip(docs, ids)], len(tok)


def flatten(docs):
    lens = np.array([len(t) for _, t in docs], dtype=np.int64)
    return np.concatenate([t for _, t in docs]).astype(np.int64), np.concatenate([[0], np.cumsum(lens)])


# ---------------------------------------------------------------------------------------------- timing
def stats_us(samples):
    a = np.asarray(samples) * 1e6
    return {"median_us": float(np.median(a)), "p99_us": float(np.percentile(a, 99))}


def timeit(fn, args_list, warmup: int = 20):
    for a in args_list[:warmup]:
        fn(a)
    out = []
    for a in args_list:
        t = time.perf_counter()
        fn(a)
        out.append(time.perf_counter() - t)
    return stats_us(out)


def decode_workload(kb, seed_prefix) -> None:
    """20 beams x 15 steps as the constrained decoder runs them: per step, one call lists every live
    beam's allowed tokens (the mask), the beam keeps one of them (here: a deterministic pick), one call
    extends all beams, one call checks which beams already map to a unique document."""
    states = kb.state(seed_prefix[:1]).repeat(BEAMS, axis=0)
    for step in range(STEPS):
        offsets, tokens = kb.next_tokens_of(states)
        keep, chosen = [], []
        for b in range(len(states)):
            n = offsets[b + 1] - offsets[b]
            if n:
                keep.append(b)
                chosen.append(tokens[offsets[b] + (b * 7 + step) % n])
        if not keep:
            break
        states = kb.extend(states[keep], chosen)
        kb.unique_docs(states)


def sample_prefixes(tokens, offsets, length, n, rng):
    """Prefixes of the given length starting at random positions, inside one document."""
    out = []
    while len(out) < n:
        d = int(rng.integers(len(offsets) - 1))
        a, b = int(offsets[d]), int(offsets[d + 1])
        if b - a <= length:
            continue
        s = int(rng.integers(a, b - length))
        out.append(tokens[s : s + length].tolist())
    return out


# ---------------------------------------------------------------------------------------------- builds
def vm_hwm() -> int:
    """Peak resident set of this process in bytes (VmHWM: unlike ru_maxrss it is not inherited across fork)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def build_child(spec: dict) -> None:
    """Runs in a child process: build our KB and report time and peak RSS on stdout as JSON."""
    from gemkr_llamaindex.kb import KnowledgeBase

    if spec["corpus"] == "wiki":
        docs, vocab = wiki_docs()
        gen_s = 0.0
        source = docs
    else:
        t = time.perf_counter()
        for _ in zipf_docs(spec["tokens"]):
            pass
        gen_s = time.perf_counter() - t
        source = zipf_docs(spec["tokens"])
        vocab = VOCAB
    rss_before = vm_hwm()
    t = time.perf_counter()
    kb = KnowledgeBase.build_from_token_ids(source, spec["out"], vocab_size=vocab, overwrite=True,
                                            max_ram_gb=spec.get("max_ram_gb"), shard_tokens=spec.get("shard_tokens"))
    build_s = time.perf_counter() - t - gen_s
    peak = vm_hwm()
    print(json.dumps({"build_s": build_s, "peak_rss": peak, "rss_before": rss_before, "shards": kb.num_shards,
                      "tokens": kb.num_tokens, "docs": kb.num_docs}))


def build_ours(corpus: str, tokens: int, out: Path, max_ram_gb: float | None, shard_tokens: int | None) -> dict:
    spec = json.dumps({"corpus": corpus, "tokens": tokens, "out": str(out), "max_ram_gb": max_ram_gb,
                       "shard_tokens": shard_tokens})
    done = subprocess.run([sys.executable, "-m", "benchmarks.kb_bench", "--_build-child", spec], capture_output=True,
                          text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


class NumpySuffixArray:
    """Baseline: suffix array over the forward text (separator = -1), binary search per query."""

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray) -> None:
        from gemkr_llamaindex.kb import _fmindex

        n_docs = len(offsets) - 1
        text = np.empty(len(tokens) + n_docs, dtype=np.int32)
        owner = np.empty(len(text), dtype=np.int32)
        pos = 0
        t0 = time.perf_counter()
        starts = offsets[:-1] + np.arange(n_docs)
        for d in range(n_docs):
            a, b = offsets[d], offsets[d + 1]
            text[pos : pos + b - a] = tokens[a:b] + 2
            text[pos + b - a] = 1
            owner[pos : pos + b - a + 1] = d
            pos += b - a + 1
        text[-1] = 0  # SA-IS wants a unique smallest sentinel; the last separator becomes it
        del starts
        self.sa = _fmindex.suffix_array(text, int(text.max()) + 1)
        self.build_s = time.perf_counter() - t0
        self.text, self.owner = text, owner
        self.bytes = self.sa.nbytes + text.nbytes + owner.nbytes

    def range(self, ids):
        """Suffix-array rows whose suffix starts with ids: two binary searches."""
        pat = (np.asarray(ids, dtype=np.int32) + 2).tolist()
        m = len(pat)
        text, sa = self.text, self.sa

        def before(i, or_equal):  # suffix at sa[i], cut to m tokens, sorts before pat (or equals it)
            seg = text[sa[i] : sa[i] + m].tolist()
            for x, y in zip(seg, pat):
                if x != y:
                    return x < y
            return or_equal or len(seg) < m

        def bound(lo, or_equal):
            hi = len(sa)
            while lo < hi:
                mid = (lo + hi) // 2
                if before(mid, or_equal):
                    lo = mid + 1
                else:
                    hi = mid
            return lo

        start = bound(0, False)
        return start, bound(start, True)

    def next_tokens(self, ids):
        if not ids:
            return np.unique(self.text[self.text >= 2]) - 2
        lo, hi = self.range(ids)
        nxt = self.text[self.sa[lo:hi] + len(ids)]
        return np.unique(nxt[nxt >= 2]) - 2

    def count(self, ids):
        lo, hi = self.range(ids)
        return hi - lo

    def doc_ids(self, ids):
        lo, hi = self.range(ids)
        return np.unique(self.owner[self.sa[lo:hi]])

    def unique_doc(self, ids):
        d = self.doc_ids(ids)
        return int(d[0]) if len(d) == 1 else -1


def to_chars(ids) -> str:
    return "".join(chr(0x10000 + int(i)) for i in ids)


# ---------------------------------------------------------------------------------------------- measure
def measure_corpus(name: str, corpus_fn, tokens_hint: int, args, workdir: Path) -> dict:
    """``corpus_fn() -> (tokens, offsets)``: the corpus the KB was built from, flat, for query sampling."""
    from gemkr_llamaindex.kb import KnowledgeBase

    print(f"\n== {name} ==", flush=True)
    out = workdir / f"kb_{name}"
    shard_tokens = int(args.shard_tokens) if args.shard_tokens else None
    built = build_ours("wiki" if name == "wiki" else "zipf", tokens_hint, out, args.max_ram_gb, shard_tokens)
    opened = {v: time_open(out, v) for v in (True, False)}  # page cache warm (just built)
    opened["cold"] = time_open(out, True, repeat=1, cold=True)
    kb = KnowledgeBase.open(out, verify=False)
    kb_bytes = sum(r["bytes"] for r in kb.manifest["files"].values())
    index_bytes = sum(s["file_size"] for s in kb.shard_info())
    row = {"corpus": name, "tokens": kb.num_tokens, "docs": kb.num_docs, "shards": kb.num_shards,
           "build_s": built["build_s"], "peak_rss_gb": built["peak_rss"] / 2**30,
           "peak_rss_bytes_per_token": built["peak_rss"] / kb.num_tokens,
           "build_rss_increase_gb": (built["peak_rss"] - built["rss_before"]) / 2**30,
           "bytes_per_token": index_bytes / kb.num_tokens}
    print(f"ours: built in {built['build_s']:.1f} s, peak RSS {row['peak_rss_gb']:.2f} GiB, "
          f"{row['bytes_per_token']:.2f} B/token, {kb.num_shards} shard(s)", flush=True)
    row["kb_bytes"] = kb_bytes
    row["open_verify_ms"], row["open_noverify_ms"] = opened[True] * 1e3, opened[False] * 1e3
    row["open_cold_ms"] = opened["cold"] * 1e3
    row["checksum_gb_per_s"] = checksum_speed(kb)
    print(f"open: {row['open_verify_ms']:.0f} ms with checksums (default), {row['open_noverify_ms']:.1f} ms "
          f"without, for {kb_bytes / 2**20:.0f} MiB (page cache warm); {row['open_cold_ms']:.0f} ms with checksums "
          f"after evicting the KB's pages; xxh64 {row['checksum_gb_per_s']:.1f} GB/s", flush=True)

    tokens, offsets = corpus_fn()
    rng = np.random.default_rng(1)
    q = args.queries
    prefixes = {L: sample_prefixes(tokens, offsets, L, q, rng) if L else [[]] * q for L in (0, 1, 2, 4, 8)}
    lookup = sample_prefixes(tokens, offsets, 4, q, rng)
    for L, ps in prefixes.items():
        row[f"next{L}"] = timeit(kb.next_tokens, ps if L else ps[: max(20, q // 10)])
    row["count"] = timeit(kb.count, lookup)
    row["doc_ids"] = timeit(kb.doc_ids, lookup)
    row["unique_doc"] = timeit(kb.unique_doc, lookup)
    for depth in STEP_DEPTHS:
        row[f"step{depth}"], row[f"step{depth}_separate"] = step_latency(kb, tokens, offsets, rng, q, depth)
        print(f"step of {BEAMS} beams at depth {depth}: fused {fmt_us(row[f'step{depth}'])} us, extend + counts + "
              f"unique_docs {fmt_us(row[f'step{depth}_separate'])} us (median / p99)", flush=True)

    row["decode"] = timeit(lambda seed: decode_workload(kb, seed), lookup[: max(20, q // 4)], warmup=5)
    row["decode_ms_per_query"] = row["decode"]["median_us"] / 1e3

    # ---- numpy suffix array baseline
    if tokens.size <= args.sa_max_tokens:
        sa = NumpySuffixArray(tokens, offsets)
        for q in lookup[:50] + prefixes[1][:50]:  # the baseline answers the same questions
            assert sa.count(q) == kb.count(q) and sa.next_tokens(q).tolist() == kb.next_tokens(q).tolist(), q
        base = {"build_s": sa.build_s, "bytes_per_token": sa.bytes / tokens.size}
        for L, ps in prefixes.items():
            base[f"next{L}"] = timeit(sa.next_tokens, ps if L else ps[:5], warmup=2)
        base["count"] = timeit(sa.count, lookup, warmup=5)
        base["doc_ids"] = timeit(sa.doc_ids, lookup, warmup=5)
        base["unique_doc"] = timeit(sa.unique_doc, lookup, warmup=5)
        row["numpy_sa"] = base
        del sa
    # ---- PyPI fm-index baseline (count, doc ids; no continuations)
    if tokens.size <= args.fm_index_max_tokens:
        from fm_index import MultiFMIndex

        strings = [to_chars(tokens[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]
        t0 = time.perf_counter()
        fmi = MultiFMIndex(strings)
        fb = {"build_s": time.perf_counter() - t0}
        del strings
        pats = [to_chars(p) for p in lookup]
        fb["count"] = timeit(fmi.count_all, pats, warmup=5)
        fb["doc_ids"] = timeit(lambda p: sorted(fmi.count(p)), pats, warmup=5)
        fb["unique_doc"] = timeit(lambda p: len(fmi.count(p)) == 1, pats, warmup=5)
        row["fm_index"] = fb
        del fmi
    row["sharing"] = page_cache_sharing(out, lookup[:200])
    sh = row["sharing"]
    print(f"two processes on one KB: RSS {sh['rss_mib'][0]:.0f} + {sh['rss_mib'][1]:.0f} MiB, PSS {sh['pss_mib'][0]:.0f} + "
          f"{sh['pss_mib'][1]:.0f} MiB, KB file pages mapped shared {sh['shared_file_mib'][0]:.0f} MiB each", flush=True)
    kb.close()
    remove_kb(out)
    return row


SHARING_CHILD = r"""
import json, sys
import numpy as np
from gemkr_llamaindex.kb import KnowledgeBase

kb = KnowledgeBase.open(sys.argv[1])  # verified: the checksums read every byte once
lookups = json.loads(sys.stdin.readline())
for ids in lookups:  # the decoding-style workload: every beam's mask, extend, unique document
    states = kb.state(ids[:1]).repeat(20, axis=0)
    for step in range(1, len(ids)):
        kb.next_tokens_of(states)
        states = kb.step(states, np.full(len(states), ids[step])).states
    kb.doc_ids(ids)
print("ready", flush=True)
sys.stdin.readline()  # both processes have run: now read the kernel's accounting of this one
fields = {}
with open("/proc/self/smaps_rollup") as fh:
    for line in fh:
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
            fields[parts[0][:-1]] = int(parts[1]) * 1024
print(json.dumps(fields), flush=True)
sys.stdin.readline()
"""


def page_cache_sharing(path: Path, lookups) -> dict:
    """Two processes open the same KB and run queries; their RSS vs PSS shows the memory-mapped pages are
    shared (one copy in the page cache, PSS charges each process half of it), not copied per process."""
    procs = [subprocess.Popen([sys.executable, "-c", SHARING_CHILD, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    payload = json.dumps([list(map(int, ids)) for ids in lookups]) + "\n"
    for p in procs:
        p.stdin.write(payload)
        p.stdin.flush()
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    stats = []
    for p in procs:
        p.stdin.write("report\n")
        p.stdin.flush()
        stats.append(json.loads(p.stdout.readline()))
    for p in procs:
        p.stdin.write("exit\n")
        p.stdin.flush()
        p.wait()
    mib = 2**20
    return {"rss_mib": [s["Rss"] / mib for s in stats], "pss_mib": [s["Pss"] / mib for s in stats],
            "shared_file_mib": [(s.get("Shared_Clean", 0) + s.get("Shared_Dirty", 0)) / mib for s in stats],
            "pss_file_mib": [s.get("Pss_File", 0) / mib for s in stats]}


def remove_kb(path: Path) -> None:
    """A built KB is a symlink to a versioned sibling folder: remove both."""
    if path.is_symlink():
        shutil.rmtree(os.path.realpath(path), ignore_errors=True)
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def evict(path: Path) -> None:
    """Drop the page-cache pages of the KB's own files (POSIX_FADV_DONTNEED; nothing else is touched)."""
    for f in Path(os.path.realpath(path)).rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def time_open(path: Path, verify: bool, repeat: int = 3, cold: bool = False) -> float:
    """Best of ``repeat`` wall times of KnowledgeBase.open (seconds); ``cold``: evict the KB's pages first."""
    from gemkr_llamaindex.kb import KnowledgeBase

    best = float("inf")
    for _ in range(repeat):
        if cold:
            evict(path)
        t = time.perf_counter()
        KnowledgeBase.open(path, verify=verify).close()
        best = min(best, time.perf_counter() - t)
    return best


def checksum_speed(kb) -> float:
    """GB/s of the XXH64 checksum over every file of the KB (page cache warm), best of 3."""
    from gemkr_llamaindex.kb.store import checksum_file

    files = [kb.real_path / n for n in kb.manifest["files"]]
    total = sum(f.stat().st_size for f in files)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for f in files:
            checksum_file(f)
        best = min(best, time.perf_counter() - t)
    return total / best / 1e9


def step_latency(kb, tokens, offsets, rng, n, depth):
    """Per call: one fused step for BEAMS states vs extend + counts + unique_docs on the same states.

    The beams are BEAMS distinct prefixes of ``depth`` tokens (random corpus positions), each stepping by
    the token that follows it there. Short prefixes are frequent (their unique-doc check stops at once,
    so the call overhead shows); longer ones are rare (locating their occurrences dominates).
    """
    cases = []
    for _ in range(n):
        ps = sample_prefixes(tokens, offsets, depth + 1, BEAMS, rng)
        states = np.concatenate([kb.state(p[:depth]) for p in ps])
        cases.append((states, np.array([p[depth] for p in ps], dtype=np.int64)))

    def fused(case):
        kb.step(*case)

    def separate(case):
        s = kb.extend(*case)
        kb.counts(s)
        kb.unique_docs(s)

    return timeit(fused, cases), timeit(separate, cases)


# ---------------------------------------------------------------------------------------------- report
def fmt_us(d):
    return f"{d['median_us']:.1f} / {d['p99_us']:.1f}" if d else "-"


def ratio(base, ours, key="median_us"):
    if not base or not ours:
        return "-"
    return f"{base[key] / max(ours[key], 1e-9):.1f}x"


def projection(a: dict, b: dict, max_ram_gb: float | None, shard_tokens: float | None,
               total: float = 3e9) -> list[str]:
    """Lines projecting the largest measured KB ``b`` to ``total`` tokens (OKVQA-WK21M: ~3B) from the slopes
    between the two measured sizes ``a`` < ``b``. Shards are built one after another, so build time grows
    with the number of shards of ``b``'s size and the build's peak memory stays at one shard's."""
    from gemkr_llamaindex.kb.build import BUILD_BYTES_PER_TOKEN, MAX_SHARD_SYMBOLS
    from gemkr_llamaindex.kb.build import default_max_ram_gb as _default_max_ram_gb

    # Shard size of the measured run (its limit counts a separator per document, as the build does).
    shard = (shard_tokens or b["tokens"] / b["shards"]) * b["tokens"] / (b["tokens"] + b["docs"])
    n_shards = int(np.ceil(total / shard))
    per_tok_s = b["build_s"] / b["tokens"]
    doc_tokens = b["tokens"] / b["docs"]
    per_shard_decode = b["decode_ms_per_query"] / b["shards"]  # every step asks every shard
    budget = max_ram_gb or _default_max_ram_gb()
    default_shard = min(int(budget * 2**30 / BUILD_BYTES_PER_TOKEN), MAX_SHARD_SYMBOLS // 2)
    return [
        f"- projected to {total / 1e9:g}B tokens (OKVQA-WK21M, 21M passages of ~{doc_tokens:.0f} tokens) with "
        f"{shard / 1e6:.0f}M-token shards as measured: {n_shards} shards; build ~{per_tok_s * total / 60:.0f} min on "
        f"one core (linear: {per_tok_s * 1e9:.0f} s per billion tokens at this shard size; shards are independent, "
        f"so k workers divide it by ~k); index ~{b['bytes_per_token'] * total / 2**30:.1f} GiB on disk and in "
        f"page cache ({b['bytes_per_token']:.2f} B/token); build peak ~{b['peak_rss_gb']:.1f} GiB as measured (one "
        f"shard of that size in memory at a time); open with checksums ~{b['open_verify_ms'] * total / b['tokens'] / 1e3:.1f} s "
        f"(linear in bytes); decoding workload ~{per_shard_decode * n_shards:.0f} ms/query on one core (the measured "
        f"{per_shard_decode:.1f} ms per shard of this size times {n_shards} shards: every step asks every shard; "
        f"shards served by k Ray actors in parallel divide the KB part by up to k).",
        f"- with the default build budget ({budget:.1f} GiB here) shards would hold up to {default_shard / 1e6:.0f}M "
        f"tokens: {int(np.ceil(total / default_shard))} shards (peak ~{default_shard * BUILD_BYTES_PER_TOKEN / 2**30:.0f} "
        f"GiB by the build's own bound), fewer per-step merges.",
        "",
    ]


def report(rows, args) -> str:
    lines = [
        f"# KB benchmark ({platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()})",
        f"command: {' '.join(sys.argv)}",
        "",
        "Latency cells are median / p99 in microseconds; 'x' = baseline time / our time (higher = we are faster).",
        "",
    ]
    for r in rows:
        sa, fm = r.get("numpy_sa", {}), r.get("fm_index", {})
        lines += [
            f"## {r['corpus']}: {r['tokens']:,} tokens, {r['docs']:,} docs, {r['shards']} shard(s)",
            "",
            "| measure | ours | numpy suffix array | x | PyPI fm-index | x |",
            "|---|---|---|---|---|---|",
            f"| build s | {r['build_s']:.1f} | {sa.get('build_s', float('nan')):.1f} | | "
            f"{fm.get('build_s', float('nan')):.1f} | |",
            f"| peak RSS of the build process (GiB; B/token) | {r['peak_rss_gb']:.2f}; {r['peak_rss_bytes_per_token']:.1f} "
            f"| - | | - | |",
            f"| ... of which added by the build (GiB) | {r.get('build_rss_increase_gb', float('nan')):.2f} | - | | - | |",
            f"| index bytes/token | {r['bytes_per_token']:.2f} | {sa.get('bytes_per_token', float('nan')):.2f} | | - | |",
        ]
        for L in (0, 1, 2, 4, 8):
            k = f"next{L}"
            lines.append(f"| next_tokens, prefix {L} | {fmt_us(r[k])} | {fmt_us(sa.get(k))} | {ratio(sa.get(k), r[k])} "
                         f"| n/a | |")
        for k in ("count", "doc_ids", "unique_doc"):
            lines.append(f"| {k} (4-token prefix) | {fmt_us(r[k])} | {fmt_us(sa.get(k))} | {ratio(sa.get(k), r[k])} "
                         f"| {fmt_us(fm.get(k))} | {ratio(fm.get(k), r[k])} |")
        for depth in STEP_DEPTHS:
            lines.append(f"| step of {BEAMS} beams at depth {depth}: fused; extend+counts+unique_docs | "
                         f"{fmt_us(r[f'step{depth}'])}; {fmt_us(r[f'step{depth}_separate'])} | - | | - | |")
        lines.append(f"| open ms: verified (default) / verify=False, page cache warm ({r['kb_bytes'] / 2**20:.0f} MiB, "
                     f"xxh64 {r['checksum_gb_per_s']:.1f} GB/s) | {r['open_verify_ms']:.0f} / {r['open_noverify_ms']:.1f} "
                     f"| - | | - | |")
        lines.append(f"| open ms: verified, the KB's pages evicted first | {r['open_cold_ms']:.0f} | - | | - | |")
        lines.append(f"| decode 20 beams x 15 steps (ms/query) | {r['decode']['median_us'] / 1e3:.2f} / "
                     f"{r['decode']['p99_us'] / 1e3:.2f} | - | | - | |")
        if "sharing" in r:
            sh = r["sharing"]
            lines.append(f"| two processes on the KB: RSS each; PSS each; shared file pages each (MiB) | "
                         f"{sh['rss_mib'][0]:.0f}, {sh['rss_mib'][1]:.0f}; {sh['pss_mib'][0]:.0f}, {sh['pss_mib'][1]:.0f}; "
                         f"{sh['shared_file_mib'][0]:.0f}, {sh['shared_file_mib'][1]:.0f} | - | | - | |")
        lines.append("")
    synth = [r for r in rows if r["corpus"].startswith("zipf")]
    if len(synth) >= 2:
        a, b = synth[0], synth[-1]
        f = b["tokens"] / a["tokens"]
        lines += [
            f"## Growth from {a['tokens']:,} to {b['tokens']:,} tokens (x{f:.0f})",
            "",
            f"- build time x{b['build_s'] / a['build_s']:.1f}, peak RSS x{b['peak_rss_gb'] / a['peak_rss_gb']:.1f}, "
            f"bytes/token {a['bytes_per_token']:.2f} -> {b['bytes_per_token']:.2f}",
            f"- next_tokens after 1 token: median {a['next1']['median_us']:.1f} -> {b['next1']['median_us']:.1f} us; "
            f"decode {a['decode_ms_per_query']:.2f} -> {b['decode_ms_per_query']:.2f} ms/query",
        ]
        lines += projection(a, b, args.max_ram_gb, args.shard_tokens)
    a = SDSL_ANCHOR
    lines += [
        "## Anchor: sdsl-lite FM-index as used by SEAL/GeMKR (figures quoted in the issue, same machine, 100M Zipf tokens)",
        "",
        f"{a['bytes_per_token']} B/token; build {a['build_s']:.0f} s, {a['build_rss_gb']} GB; next_tokens after one token "
        f"{a['next1_median_ms']} ms median / {a['next1_p99_ms']} ms p99; {a['doc_lookup_us']:.0f} us per doc lookup; "
        f"{a['decode_ms']:.0f} ms per query for the decoding workload.",
    ]
    big = [r for r in rows if r["tokens"] >= 0.9 * a["tokens"]]
    if big:
        r = big[0]
        lines.append(
            f"Ours at {r['tokens'] / 1e6:.0f}M: {r['bytes_per_token']:.2f} B/token ({a['bytes_per_token'] / r['bytes_per_token']:.2f}x smaller "
            f"is >1), build {a['build_s'] / r['build_s']:.1f}x faster, next_tokens after one token "
            f"{a['next1_median_ms'] * 1e3 / r['next1']['median_us']:.0f}x faster (median), doc lookup "
            f"{a['doc_lookup_us'] / r['doc_ids']['median_us']:.0f}x faster, decoding workload "
            f"{a['decode_ms'] / r['decode_ms_per_query']:.0f}x faster.")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="*", type=float, default=[1e6, 15e6, 100e6])
    p.add_argument("--no-wiki", action="store_true")
    p.add_argument("--queries", type=int, default=400)
    p.add_argument("--max-ram-gb", type=float, default=None, help="build memory budget (default: the library's)")
    p.add_argument("--shard-tokens", type=float, default=None,
                   help="tokens per shard (default: what the memory budget allows, at most 2^30)")
    p.add_argument("--sa-max-tokens", type=float, default=100e6)
    p.add_argument("--fm-index-max-tokens", type=float, default=15e6)
    p.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    p.add_argument("--workdir", default=None, help="where the KBs are built (default: the system temp folder)")
    p.add_argument("--report-from", type=Path, default=None,
                   help="print the report of rows saved by an earlier --out run (same options) without measuring")
    p.add_argument("--_build-child", dest="build_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.build_child:
        build_child(json.loads(args.build_child))
        return
    env = print_environment()
    if args.report_from:
        saved = json.loads(args.report_from.read_text())
        print(f"(rows measured by: {saved.get('command', 'see ' + str(args.report_from))})")
        print(report(saved["rows"], args))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="kb_bench_", dir=args.workdir) as tmp:
        work = Path(tmp)
        if not args.no_wiki:
            rows.append(measure_corpus("wiki", lambda: flatten(wiki_docs()[0]), 0, args, work))
        for size in args.sizes:
            n = int(size)
            rows.append(measure_corpus(f"zipf-{n / 1e6:g}M", lambda n=n: zipf_flat(n), n, args, work))
    text = report(rows, args)
    print("\n" + text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows, "report": text,
                                             "environment": env}, indent=2))


if __name__ == "__main__":
    main()
