// Standalone C++ test of the FM-index core against brute force on random corpora.
// Build: cmake -S . -B build/cpp && cmake --build build/cpp && ctest --test-dir build/cpp
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "gemkr/fm_index.hpp"
#include "gemkr/sais.hpp"
#include "gemkr/shard_set.hpp"

using namespace gemkr;

static int failures = 0;
#define CHECK(cond, msg)                                                  \
  do {                                                                    \
    if (!(cond)) {                                                        \
      ++failures;                                                         \
      std::fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, msg); \
    }                                                                     \
  } while (0)

using Docs = std::vector<std::vector<uint32_t>>;

// All occurrences of pattern in the docs: (doc, position) pairs.
static std::vector<std::pair<uint32_t, size_t>> occurrences(const Docs& docs, const std::vector<uint32_t>& pat) {
  std::vector<std::pair<uint32_t, size_t>> out;
  for (uint32_t d = 0; d < docs.size(); ++d)
    for (size_t i = 0; i + pat.size() <= docs[d].size(); ++i) {
      bool ok = true;
      for (size_t k = 0; k < pat.size() && ok; ++k) ok = docs[d][i + k] == pat[k];
      if (ok) out.emplace_back(d, i);
    }
  return out;
}

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

static void test_corpus(std::mt19937& rng, uint32_t vocab, const std::string& path) {
  Docs docs(1 + rng() % 12);
  std::vector<uint32_t> tokens;
  std::vector<uint64_t> offsets{0};
  for (auto& d : docs) {
    d.resize(rng() % 20);  // empty documents included
    for (auto& t : d) t = (rng() % 4 == 0) ? uint32_t(rng() % vocab) : uint32_t(rng() % 4);
    tokens.insert(tokens.end(), d.begin(), d.end());
    offsets.push_back(tokens.size());
  }
  BuildParams params;
  params.sample_rate = 1 + rng() % 5;
  params.cache_min_children = 1 + rng() % 3;
  FMIndex::build(tokens.data(), offsets.data(), docs.size(), path, params);
  ShardSet set({path});
  const FMIndex& fm = set.shard(0);
  CHECK(fm.n_docs() == docs.size(), "doc count");

  for (int q = 0; q < 200; ++q) {
    std::vector<uint32_t> pat(rng() % 4);
    for (auto& t : pat) t = (rng() % 4 == 0) ? uint32_t(rng() % vocab) : uint32_t(rng() % 4);
    if (q % 3 == 0 && !tokens.empty()) {  // a pattern that occurs
      const auto& d = docs[rng() % docs.size()];
      if (!d.empty()) {
        const size_t a = rng() % d.size(), len = std::min<size_t>(1 + rng() % 4, d.size() - a);
        pat.assign(d.begin() + a, d.begin() + a + len);
      }
    }
    const auto occ = occurrences(docs, pat);
    std::vector<int64_t> ids(pat.begin(), pat.end());
    std::vector<int64_t> st(2);
    set.search(ids.data(), int64_t(ids.size()), st.data());
    int64_t cnt;
    set.counts(st.data(), 1, &cnt);
    if (pat.empty()) {
      CHECK(uint64_t(cnt) == fm.n_rows(), "root count is the number of rows");
    } else {
      CHECK(size_t(cnt) == occ.size(), "count");
    }
    // next tokens
    std::set<uint32_t> ref_next;
    for (auto& o : occ)
      if (o.second + pat.size() < docs[o.first].size()) ref_next.insert(docs[o.first][o.second + pat.size()]);
    if (pat.empty())
      for (auto& d : docs) ref_next.insert(d.begin(), d.end());
    ChildrenResult ch;
    set.children(st.data(), 1, ch);
    std::set<uint32_t> got(ch.tokens.begin(), ch.tokens.end());
    CHECK(got == ref_next, "next tokens");
    CHECK(std::is_sorted(ch.tokens.begin(), ch.tokens.end()), "children sorted");
    for (size_t k = 0; k < ch.tokens.size(); ++k) {
      std::vector<uint32_t> longer = pat;
      longer.push_back(uint32_t(ch.tokens[k]));
      CHECK(size_t(ch.counts[k]) == occurrences(docs, longer).size(), "child count");
      std::vector<int64_t> ext(2);
      int64_t tok = ch.tokens[k];
      set.extend(st.data(), &tok, 1, ext.data());
      CHECK(ext[0] == ch.states[2 * k] && ext[1] == ch.states[2 * k + 1], "child state equals extend");
    }
    {
      std::vector<int64_t> off, toks;
      set.next_tokens(st.data(), 1, off, toks);
      CHECK(std::set<uint32_t>(toks.begin(), toks.end()) == ref_next && toks.size() == ref_next.size(), "next tokens only");
    }
    if (pat.empty()) continue;
    std::set<uint32_t> ref_docs;
    for (auto& o : occ) ref_docs.insert(o.first);
    auto got_docs = set.docs(st.data());
    CHECK(std::vector<int64_t>(ref_docs.begin(), ref_docs.end()) == got_docs, "docs");
    int64_t u;
    set.unique_docs(st.data(), 1, &u);
    CHECK(u == (ref_docs.size() == 1 ? int64_t(*ref_docs.begin()) : -1), "unique doc");
  }
}

int main() {
  std::mt19937 rng(12345);
  test_sais(rng);
  const std::string path = "/tmp/gemkr_test_fm_index.fmi";
  for (int i = 0; i < 300; ++i) test_corpus(rng, i % 2 ? 70000 : 9, path);
  std::remove(path.c_str());
  if (failures) {
    std::fprintf(stderr, "%d failures\n", failures);
    return 1;
  }
  std::printf("all C++ FM-index tests passed\n");
  return 0;
}
