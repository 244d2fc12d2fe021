// Standalone C++ test of the FM-index core against brute force on random corpora: every query of the
// ShardSet (plain and anchored search, END / terminal states, the fused step, children with unique
// documents) on 1-3 shards, and corrupt shard files that must raise FormatError instead of crashing.
// Build: cmake -S . -B build/cpp && cmake --build build/cpp -j2 && ctest --test-dir build/cpp
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "gemkr/fm_index.hpp"
#include "gemkr/sais.hpp"
#include "gemkr/shard_set.hpp"
#include "gemkr/xxh64.hpp"

using namespace gemkr;

static int failures = 0;
#define CHECK(cond, msg)                                                  \
  do {                                                                    \
    if (!(cond)) {                                                        \
      ++failures;                                                         \
      std::fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, msg); \
    }                                                                     \
  } while (0)

using Doc = std::vector<uint32_t>;
using Docs = std::vector<Doc>;
using Pattern = std::vector<int64_t>;

// ---------------------------------------------------------------------------------------------------
// Brute force: occurrences are (doc, start) pairs; an anchored occurrence starts at position 0.
struct Brute {
  const Docs& docs;

  bool match(const Doc& d, size_t at, const Pattern& p) const {
    if (at + p.size() > d.size()) return false;
    for (size_t k = 0; k < p.size(); ++k)
      if (int64_t(d[at + k]) != p[k]) return false;
    return true;
  }
  std::vector<std::pair<size_t, size_t>> occ(const Pattern& p, bool anchored) const {
    std::vector<std::pair<size_t, size_t>> out;
    for (size_t d = 0; d < docs.size(); ++d)
      for (size_t i = 0; i + p.size() <= docs[d].size() && (!anchored || i == 0); ++i)
        if (match(docs[d], i, p)) out.emplace_back(d, i);
    return out;
  }
  // Documents in which an occurrence ends at the document's end (anchored: the document equals p).
  std::vector<int64_t> end_docs(const Pattern& p, bool anchored) const {
    std::vector<int64_t> out;
    for (size_t d = 0; d < docs.size(); ++d) {
      if (docs[d].size() < p.size() || (anchored && docs[d].size() != p.size())) continue;
      if (match(docs[d], docs[d].size() - p.size(), p)) out.push_back(int64_t(d));
    }
    return out;
  }
  std::vector<int64_t> next(const Pattern& p, bool anchored) const {
    std::set<int64_t> s;
    if (p.empty() && !anchored) {
      for (auto& d : docs) s.insert(d.begin(), d.end());
    } else {
      for (auto& o : occ(p, anchored))
        if (o.second + p.size() < docs[o.first].size()) s.insert(docs[o.first][o.second + p.size()]);
    }
    std::vector<int64_t> out;
    if (!end_docs(p, anchored).empty()) out.push_back(kEnd);
    out.insert(out.end(), s.begin(), s.end());
    return out;
  }
  std::vector<int64_t> doc_list(const Pattern& p, bool anchored) const {
    std::set<int64_t> s;
    for (auto& o : occ(p, anchored)) s.insert(int64_t(o.first));
    return std::vector<int64_t>(s.begin(), s.end());
  }
  int64_t count(const Pattern& p, bool anchored) const { return int64_t(occ(p, anchored).size()); }
  int64_t unique(const Pattern& p, bool anchored) const {
    auto d = doc_list(p, anchored);
    return d.size() == 1 ? d[0] : -1;
  }
  int64_t end_unique(const Pattern& p, bool anchored) const {
    auto d = end_docs(p, anchored);
    return d.size() == 1 ? d[0] : -1;
  }
};

// ---------------------------------------------------------------------------------------------------
static void test_sais(std::mt19937& rng) {
  for (int trial = 0; trial < 200; ++trial) {
    const int n = 1 + int(rng() % 60), K = 2 + int(rng() % 5);
    std::vector<int32_t> T(n);
    for (int i = 0; i + 1 < n; ++i) T[i] = 1 + int32_t(rng() % (K - 1));
    T[n - 1] = 0;
    std::vector<int32_t> SA(n);
    suffix_array(T.data(), SA.data(), n, K);
    std::vector<int32_t> ref(n);
    for (int i = 0; i < n; ++i) ref[i] = i;
    std::sort(ref.begin(), ref.end(), [&](int a, int b) {
      return std::lexicographical_compare(T.begin() + a, T.end(), T.begin() + b, T.end());
    });
    CHECK(SA == ref, "suffix array differs from sorting");
  }
}

static void test_xxh64() {
  // Reference digests of the published algorithm (seed 0 unless given).
  CHECK(XXH64::hash("", 0) == 0xef46db3751d8e999ULL, "xxh64 of empty input");
  CHECK(XXH64::hash("a", 1) == 0xd24ec4f1a98c6e5bULL, "xxh64 of 'a'");
  CHECK(XXH64::hash("abc", 3) == 0x44bc2cf5ad770999ULL, "xxh64 of 'abc'");
  CHECK(XXH64::hash("abc", 3, 7) == 0x9e755206156676d7ULL, "xxh64 of 'abc' seed 7");
  std::string big;
  for (int r = 0; r < 3; ++r)
    for (int i = 0; i < 256; ++i) big.push_back(char(i));
  CHECK(XXH64::hash(big.data(), big.size()) == 0x8e03c838c596036fULL, "xxh64 of 768 bytes");
  XXH64 streamed;  // streaming in odd pieces equals one call
  for (size_t a = 0; a < big.size();) {
    const size_t n = std::min<size_t>(big.size() - a, 1 + (a * 7) % 45);
    streamed.update(big.data() + a, n);
    a += n;
  }
  CHECK(streamed.digest() == 0x8e03c838c596036fULL, "streamed xxh64");
  const std::string path = "/tmp/gemkr_test_xxh64_" + std::to_string(::getpid());
  std::ofstream(path, std::ios::binary).write(big.data(), std::streamsize(big.size()));
  uint64_t n = 0;
  CHECK(xxh64_file(path, &n) == 0x8e03c838c596036fULL && n == big.size(), "xxh64 of a file");
  std::ofstream(path, std::ios::binary).close();
  CHECK(xxh64_file(path) == 0xef46db3751d8e999ULL, "xxh64 of an empty file");
  std::remove(path.c_str());
}

static Docs random_docs(std::mt19937& rng, uint32_t vocab) {
  Docs docs(1 + rng() % 12);
  for (auto& d : docs) {
    d.resize(rng() % 20);  // empty documents included
    for (auto& t : d) t = (rng() % 4 == 0) ? uint32_t(rng() % vocab) : uint32_t(rng() % 4);
  }
  // Duplicates, one-token documents, and documents that are prefixes / suffixes of others.
  const size_t n = docs.size();
  for (int k = 0; k < 3; ++k) {
    const Doc& src = docs[rng() % n];
    switch (rng() % 4) {
      case 0: docs.push_back(src); break;
      case 1: docs.push_back(Doc{uint32_t(rng() % 4)}); break;
      case 2: docs.push_back(Doc(src.begin(), src.begin() + (src.empty() ? 0 : rng() % src.size()))); break;
      default: docs.push_back(Doc(src.begin() + (src.empty() ? 0 : rng() % src.size()), src.end()));
    }
  }
  return docs;
}

// Writes the docs as 1-3 shards of consecutive documents; returns the shard paths.
static std::vector<std::string> write_shards(std::mt19937& rng, const Docs& docs, const std::string& stem) {
  const size_t n_shards = std::min<size_t>(docs.size(), 1 + rng() % 3);
  std::vector<std::string> paths;
  size_t begin = 0;
  for (size_t s = 0; s < n_shards; ++s) {
    const size_t end = s + 1 == n_shards ? docs.size() : begin + 1 + rng() % (docs.size() - begin - (n_shards - s - 1));
    std::vector<uint32_t> tokens;
    std::vector<uint64_t> offsets{0};
    for (size_t d = begin; d < end; ++d) {
      tokens.insert(tokens.end(), docs[d].begin(), docs[d].end());
      offsets.push_back(tokens.size());
    }
    BuildParams params;
    params.sample_rate = 1 + rng() % 5;
    params.cache_min_children = 1 + rng() % 3;
    params.sync = false;  // thousands of tiny files: fsync would dominate the run time
    paths.push_back(stem + std::to_string(s) + ".fmi");
    FMIndex::build(tokens.data(), offsets.data(), end - begin, paths.back(), params);
    begin = end;
  }
  return paths;
}

static Pattern random_pattern(std::mt19937& rng, const Docs& docs, uint32_t vocab) {
  Pattern pat(rng() % 4);
  for (auto& t : pat) t = (rng() % 4 == 0) ? int64_t(rng() % vocab) : int64_t(rng() % 4);
  const Doc& d = docs[rng() % docs.size()];
  if (rng() % 3 && !d.empty()) {  // a pattern that occurs: a substring, a prefix, a suffix or the whole doc
    size_t a = rng() % d.size(), len = std::min<size_t>(1 + rng() % 5, d.size() - a);
    switch (rng() % 4) {
      case 0: a = 0; break;
      case 1: len = d.size() - a; break;
      case 2: a = 0, len = d.size(); break;
      default: break;
    }
    pat.assign(d.begin() + a, d.begin() + a + len);
  }
  return pat;
}

// Children (with END and unique docs) and continuations of one state equal brute force.
static void check_state(const ShardSet& set, const Brute& ref, const std::vector<int64_t>& st, const Pattern& pat,
                        bool anchored) {
  const size_t S = set.n_shards();
  const auto next = ref.next(pat, anchored);
  ChildrenResult ch;
  set.children(st.data(), 1, ch, true);
  CHECK(ch.tokens == next, "children tokens (END first, then increasing)");
  std::vector<int64_t> off, cont;
  set.next_tokens(st.data(), 1, off, cont, true);
  CHECK(cont == next, "continuations");
  std::vector<int64_t> plain;
  set.next_tokens(st.data(), 1, off, plain, false);
  CHECK(plain == std::vector<int64_t>(next.begin() + (!next.empty() && next[0] == kEnd), next.end()),
        "next tokens without END");
  for (size_t k = 0; k < ch.tokens.size(); ++k) {
    Pattern longer = pat;
    const int64_t tok = ch.tokens[k];
    std::vector<int64_t> stepped(2 * S);
    int64_t cnt, uniq;
    set.step(st.data(), &tok, 1, stepped.data(), &cnt, &uniq);
    CHECK(std::equal(stepped.begin(), stepped.end(), ch.states.begin() + k * 2 * S), "child state equals step");
    CHECK(cnt == ch.counts[k], "child count equals step count");
    CHECK(uniq == ch.unique[k], "child unique equals step unique");
    if (tok == kEnd) {
      CHECK(ch.counts[k] == int64_t(ref.end_docs(pat, anchored).size()), "END child count");
      CHECK(ch.unique[k] == ref.end_unique(pat, anchored), "END child unique");
    } else {
      longer.push_back(tok);
      CHECK(ch.counts[k] == ref.count(longer, anchored), "child count");
      CHECK(ch.unique[k] == ref.unique(longer, anchored), "child unique");
    }
  }
}

static void test_corpus(std::mt19937& rng, uint32_t vocab, const std::string& stem) {
  const Docs docs = random_docs(rng, vocab);
  const auto paths = write_shards(rng, docs, stem);
  ShardSet set(paths);
  const size_t S = set.n_shards();
  CHECK(set.n_docs() == docs.size(), "doc count");
  Brute ref{docs};

  for (int q = 0; q < 40; ++q) {
    const Pattern pat = random_pattern(rng, docs, vocab);
    const bool anchored = rng() % 2;
    // Token by token with the fused step, checking every intermediate state.
    std::vector<int64_t> st(2 * S), nxt(2 * S);
    set.root(st.data(), anchored);
    Pattern prefix;
    for (size_t i = 0; i <= pat.size(); ++i) {
      if (i == pat.size() || rng() % 4 == 0) check_state(set, ref, st, prefix, anchored);
      if (i == pat.size()) break;
      int64_t cnt, uniq;
      set.step(st.data(), &pat[i], 1, nxt.data(), &cnt, &uniq);
      std::vector<int64_t> ext(2 * S);
      set.extend(st.data(), &pat[i], 1, ext.data());
      CHECK(ext == nxt, "step state equals extend");
      prefix.push_back(pat[i]);
      st = nxt;
      CHECK(cnt == ref.count(prefix, anchored), "step count");
      CHECK(uniq == ref.unique(prefix, anchored), "step unique");
      int64_t c2, u2;
      set.counts(st.data(), 1, &c2);
      set.unique_docs(st.data(), 1, &u2);
      CHECK(c2 == cnt && u2 == uniq, "counts/unique_docs equal the step's");
    }
    std::vector<int64_t> searched(2 * S);
    set.search(pat.data(), int64_t(pat.size()), searched.data(), anchored);
    CHECK(searched == st, "search equals stepping");
    if (!pat.empty()) CHECK(set.docs(st.data()) == ref.doc_list(pat, anchored), "docs");
    if (pat.empty() && anchored) {
      int64_t c;
      set.counts(st.data(), 1, &c);
      CHECK(c == int64_t(docs.size()), "anchored root count = documents");
    }

    // END: a terminal state, then nothing more.
    const int64_t end = kEnd;
    std::vector<int64_t> term(2 * S);
    int64_t cnt, uniq;
    set.step(st.data(), &end, 1, term.data(), &cnt, &uniq);
    const auto ends = ref.end_docs(pat, anchored);
    CHECK(cnt == int64_t(ends.size()), "END count = documents ending with the prefix");
    CHECK(uniq == ref.end_unique(pat, anchored), "END unique");
    CHECK(set.docs(term.data()) == ends, "END docs");
    std::vector<int64_t> off, cont;
    set.next_tokens(term.data(), 1, off, cont, true);
    CHECK(cont.empty(), "a terminal state has no continuations");
    for (int64_t tok : {kEnd, int64_t(0), int64_t(1), int64_t(rng() % vocab)}) {
      std::vector<int64_t> after(2 * S);
      set.step(term.data(), &tok, 1, after.data(), &cnt, &uniq);
      CHECK(cnt == 0 && uniq == -1, "extending a terminal state gives nothing");
    }
  }
  for (const auto& p : paths) std::remove(p.c_str());
}

// Batched calls equal one-state calls (the batch loops share buffers across states and shards).
static void test_batches(std::mt19937& rng, const std::string& stem) {
  const Docs docs = random_docs(rng, 9);
  const auto paths = write_shards(rng, docs, stem);
  ShardSet set(paths);
  const size_t S = set.n_shards();
  const int64_t B = 16;
  std::vector<int64_t> st(B * 2 * S), toks(B);
  for (int64_t b = 0; b < B; ++b) {
    const Pattern pat = random_pattern(rng, docs, 9);
    set.search(pat.data(), int64_t(pat.size()), st.data() + b * 2 * S, b % 2);
    toks[b] = (b % 3 == 0) ? kEnd : int64_t(rng() % 5);
  }
  std::vector<int64_t> out(B * 2 * S), cnt(B), uniq(B);
  set.step(st.data(), toks.data(), B, out.data(), cnt.data(), uniq.data());
  ChildrenResult all;
  set.children(st.data(), B, all, true);
  for (int64_t b = 0; b < B; ++b) {
    std::vector<int64_t> one(2 * S);
    int64_t c, u;
    set.step(st.data() + b * 2 * S, &toks[b], 1, one.data(), &c, &u);
    CHECK(std::equal(one.begin(), one.end(), out.begin() + b * 2 * S) && c == cnt[b] && u == uniq[b], "batched step");
    ChildrenResult ch;
    set.children(st.data() + b * 2 * S, 1, ch, true);
    const int64_t a = all.offsets[b], e = all.offsets[b + 1];
    CHECK(std::vector<int64_t>(all.tokens.begin() + a, all.tokens.begin() + e) == ch.tokens &&
              std::vector<int64_t>(all.unique.begin() + a, all.unique.begin() + e) == ch.unique,
          "batched children");
  }
  for (const auto& p : paths) std::remove(p.c_str());
}

// Flipped bytes anywhere in a shard: open() and the queries either work or throw FormatError; a crash
// or a hang fails the test (run it under -fsanitize=address to see out-of-bounds reads).
static void test_corrupt_files(std::mt19937& rng, const std::string& stem) {
  Docs docs(30);
  for (auto& d : docs) {
    d.resize(1 + rng() % 25);
    for (auto& t : d) t = uint32_t(rng() % 40);
  }
  std::vector<uint32_t> tokens;
  std::vector<uint64_t> offsets{0};
  for (auto& d : docs) {
    tokens.insert(tokens.end(), d.begin(), d.end());
    offsets.push_back(tokens.size());
  }
  const std::string good = stem + "good.fmi", bad = stem + "bad.fmi";
  BuildParams params;
  params.cache_min_children = 2;
  params.sync = false;
  FMIndex::build(tokens.data(), offsets.data(), docs.size(), good, params);
  std::ifstream in(good, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  int rejected = 0;
  for (int trial = 0; trial < 400; ++trial) {
    std::string copy = bytes;
    const size_t n_flips = 1 + rng() % 3;
    for (size_t f = 0; f < n_flips; ++f) {
      // Half the flips hit the header and tables, the rest anywhere (most of the file is bit vectors).
      const size_t at = (trial % 2) ? rng() % std::min<size_t>(copy.size(), 1024) : rng() % copy.size();
      copy[at] = char(copy[at] ^ (1 + rng() % 255));
    }
    std::ofstream(bad, std::ios::binary).write(copy.data(), std::streamsize(copy.size()));
    try {
      ShardSet set({bad});
      std::vector<int64_t> st(2), out(2);
      for (int q = 0; q < 20; ++q) {
        const Pattern pat = random_pattern(rng, docs, 40);
        set.search(pat.data(), int64_t(pat.size()), st.data(), q % 2);
        ChildrenResult ch;
        set.children(st.data(), 1, ch, true);
        const int64_t end = kEnd;
        int64_t c, u;
        set.step(st.data(), &end, 1, out.data(), &c, &u);
        set.docs(out.data());
        set.docs(st.data());
      }
    } catch (const FormatError&) {
      ++rejected;
    }
  }
  std::printf("corrupt shard files: %d of 400 rejected with FormatError, the rest answered\n", rejected);
  CHECK(rejected > 100, "most corrupt files are rejected");
  std::remove(good.c_str());
  std::remove(bad.c_str());
}

int main() {
  std::mt19937 rng(12345);
  test_sais(rng);
  test_xxh64();
  const std::string stem = "/tmp/gemkr_test_fm_index_" + std::to_string(::getpid()) + "_";
  for (int i = 0; i < 300; ++i) test_corpus(rng, i % 2 ? 70000 : 9, stem);
  for (int i = 0; i < 50; ++i) test_batches(rng, stem);
  test_corrupt_files(rng, stem);
  if (failures) {
    std::fprintf(stderr, "%d failures\n", failures);
    return 1;
  }
  std::printf("all C++ FM-index tests passed\n");
  return 0;
}
