// A knowledge base made of several FM-index shards, queried as one.
//
// A search state is one row range per shard, laid out as int64 [lo, hi] pairs: a batch of B states is a
// contiguous int64 array of shape (B, S, 2). Every batched call below crosses the Python boundary once.
// Merge rules across shards: next tokens are the union, counts add up, document lists concatenate
// (shards hold consecutive document numbers), and a prefix has a unique document only if exactly one
// shard has occurrences and they all lie in one document.
//
// END. A clue may end where a document ends: the token kEnd (-1) stands for that. Extending a state by
// kEnd gives a *terminal* state: per shard, the prefix's range [lo, hi) stored as (~lo, ~hi) (both
// negative, so every range-based query sees an empty range and any further extension is empty), or
// (0, 0) where no document of the shard ends with the prefix. Its count is the number of documents
// that end with the prefix; its unique document is that document if there is exactly one.
#pragma once

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "gemkr/fm_index.hpp"

namespace gemkr {

constexpr int64_t kEnd = -1;  // the END token: the clue ends at a document's end

struct ChildrenResult {
  std::vector<int64_t> offsets;  // B + 1
  std::vector<int64_t> tokens;   // M (kEnd first where present, then increasing token ids)
  std::vector<int64_t> counts;   // M
  std::vector<int64_t> states;   // M * S * 2
  std::vector<int64_t> unique;   // M (if asked for)
};

class ShardSet {
 public:
  explicit ShardSet(const std::vector<std::string>& paths) {
    uint64_t base = 0;
    for (const auto& p : paths) {
      shards_.push_back(std::make_unique<FMIndex>(p));
      doc_base_.push_back(base);
      base += shards_.back()->n_docs();
    }
    n_docs_ = base;
  }

  size_t n_shards() const { return shards_.size(); }
  uint64_t n_docs() const { return n_docs_; }
  const FMIndex& shard(size_t s) const { return *shards_[s]; }
  uint64_t doc_base(size_t s) const { return doc_base_[s]; }

  // The empty prefix: anywhere (every row), or anchored at document starts (the SEP block).
  void root(int64_t* state, bool anchored = false) const {
    for (size_t s = 0; s < shards_.size(); ++s) {
      const Range r = anchored ? shards_[s]->anchored_root() : shards_[s]->root();
      state[2 * s] = int64_t(r.lo);
      state[2 * s + 1] = int64_t(r.hi);
    }
  }

  void search(const int64_t* ids, int64_t n, int64_t* state, bool anchored = false) const {
    const bool valid = std::all_of(ids, ids + n, [](int64_t t) { return t >= 0; });  // negative ids never occur
    for (size_t s = 0; s < shards_.size(); ++s) {
      const FMIndex& fm = *shards_[s];
      const Range start = anchored ? fm.anchored_root() : fm.root();
      const Range r = valid ? fm.search_from(start, reinterpret_cast<const uint64_t*>(ids), uint64_t(n)) : Range{0, 0};
      state[2 * s] = int64_t(r.lo);
      state[2 * s + 1] = int64_t(r.hi);
    }
  }

  // One backward-search step per state (kEnd and other negative tokens give the empty state).
  void extend(const int64_t* states, const int64_t* tokens, int64_t B, int64_t* out) const {
    const size_t S = shards_.size();
    std::vector<Range> ranges(static_cast<size_t>(B));
    std::vector<uint32_t> syms(static_cast<size_t>(B));
    for (size_t s = 0; s < S; ++s) {
      const FMIndex& fm = *shards_[s];
      for (int64_t b = 0; b < B; ++b) {
        ranges[b] = range_of(states + (b * S + s) * 2);
        syms[b] = tokens[b] < 0 ? 0 : fm.symbol(uint64_t(tokens[b]));
      }
      fm.extend_many(ranges.data(), syms.data(), size_t(B));
      for (int64_t b = 0; b < B; ++b) {
        out[(b * S + s) * 2] = int64_t(ranges[b].lo);
        out[(b * S + s) * 2 + 1] = int64_t(ranges[b].hi);
      }
    }
  }

  // The fused decoding step: extend every state by its token (kEnd -> terminal state) and compute the
  // counts and unique documents of the results, all in one pass.
  void step(const int64_t* states, const int64_t* tokens, int64_t B, int64_t* out, int64_t* counts_out,
            int64_t* unique_out) const {
    const size_t S = shards_.size();
    extend(states, tokens, B, out);  // kEnd rows come out empty here and are filled in below
    for (int64_t b = 0; b < B; ++b) {
      if (tokens[b] != kEnd) continue;
      for (size_t s = 0; s < S; ++s) {
        const Range r = range_of(states + (b * S + s) * 2);
        const bool any = shards_[s]->ends(r).count() > 0;
        out[(b * S + s) * 2] = any ? ~int64_t(r.lo) : 0;
        out[(b * S + s) * 2 + 1] = any ? ~int64_t(r.hi) : 0;
      }
    }
    counts(out, B, counts_out);
    unique_docs(out, B, unique_out);
  }

  // Distinct next tokens of each state, CSR style (offsets has B + 1 entries), sorted within a state.
  // With `with_end`, kEnd comes first wherever some occurrence ends a document.
  void next_tokens(const int64_t* states, int64_t B, std::vector<int64_t>& offsets, std::vector<int64_t>& tokens,
                   bool with_end = false) const {
    const size_t S = shards_.size();
    offsets.assign(1, 0);
    std::vector<uint32_t> buf;
    for (int64_t b = 0; b < B; ++b) {
      buf.clear();
      size_t nonempty = 0;
      bool end = false;
      for (size_t s = 0; s < S; ++s) {
        const Range r = range_of(states + (b * S + s) * 2);
        if (r.empty()) continue;
        ++nonempty;
        shards_[s]->next_tokens(r, buf);
        if (with_end && !end) end = shards_[s]->ends(r).count() > 0;
      }
      if (nonempty > 1) {  // union across shards
        std::sort(buf.begin(), buf.end());
        buf.erase(std::unique(buf.begin(), buf.end()), buf.end());
      }
      if (end) tokens.push_back(kEnd);
      tokens.insert(tokens.end(), buf.begin(), buf.end());
      offsets.push_back(int64_t(tokens.size()));
    }
  }

  // Occurrences per state; for a terminal state, the number of documents that end with its prefix.
  void counts(const int64_t* states, int64_t B, int64_t* out) const {
    const size_t S = shards_.size();
    for (int64_t b = 0; b < B; ++b) {
      int64_t c = 0;
      for (size_t s = 0; s < S; ++s) {
        const int64_t* st = states + (b * S + s) * 2;
        c += terminal(st) ? int64_t(shards_[s]->ends(source_of(st)).count()) : int64_t(range_of(st).size());
      }
      out[b] = c;
    }
  }

  // Global doc number per state, or -1 (no occurrence, or occurrences in more than one document).
  // The first and last occurrence of every candidate state are located in one batch per shard (their
  // LF walks overlap in memory); only states whose two ends agree are checked in full.
  void unique_docs(const int64_t* states, int64_t B, int64_t* out) const {
    const size_t S = shards_.size();
    std::vector<std::vector<int64_t>> cand(S);  // per shard: candidate state numbers
    for (int64_t b = 0; b < B; ++b) {
      out[b] = -1;
      const int64_t* st = states + b * S * 2;
      if (terminal(st, S)) {
        out[b] = terminal_unique(st);
        continue;
      }
      int nonempty = 0;
      size_t shard = 0;
      for (size_t s = 0; s < S; ++s)
        if (!range_of(st + 2 * s).empty()) {
          ++nonempty;
          shard = s;
        }
      if (nonempty != 1) continue;
      const Range r = range_of(st + 2 * shard);
      if (r.size() > shards_[shard]->max_doc_len()) continue;  // a doc of length L holds <= L occurrences
      cand[shard].push_back(b);
    }
    std::vector<uint64_t> rows;
    std::vector<uint32_t> docs;
    for (size_t s = 0; s < S; ++s) {
      if (cand[s].empty()) continue;
      const FMIndex& fm = *shards_[s];
      rows.clear();
      for (int64_t b : cand[s]) {
        const Range r = range_of(states + (b * S + s) * 2);
        rows.push_back(r.lo);
        rows.push_back(r.hi - 1);
      }
      docs.resize(rows.size());
      fm.locate_docs(rows.data(), rows.size(), docs.data());
      for (size_t k = 0; k < cand[s].size(); ++k) {
        if (docs[2 * k] != docs[2 * k + 1]) continue;
        const int64_t b = cand[s][k];
        const Range r = range_of(states + (b * S + s) * 2);
        if (fm.interior_in_doc(r, docs[2 * k])) out[b] = int64_t(doc_base_[s]) + docs[2 * k];  // ends located above
      }
    }
  }

  // Sorted distinct global doc numbers containing the state's prefix (terminal: ending with it).
  std::vector<int64_t> docs(const int64_t* state) const {
    std::vector<int64_t> out;
    std::vector<uint32_t> local;
    const bool term = terminal(state, shards_.size());
    for (size_t s = 0; s < shards_.size(); ++s) {
      local.clear();
      const FMIndex& fm = *shards_[s];
      if (term)
        fm.end_docs(fm.ends(source_of(state + 2 * s)), local);
      else
        fm.docs(range_of(state + 2 * s), local);
      for (uint32_t d : local) out.push_back(int64_t(doc_base_[s]) + d);
    }
    return out;  // shards hold increasing doc numbers, so the concatenation stays sorted
  }

  // Many prefixes at once: n-gram b is ids[offsets[b] : offsets[b + 1]]; its state goes to
  // states[b * S * 2 ...]. Equals search() per n-gram.
  void search_many(const int64_t* ids, const int64_t* offsets, int64_t B, int64_t* states,
                   bool anchored = false) const {
    const size_t S = shards_.size();
    for (int64_t b = 0; b < B; ++b) search(ids + offsets[b], offsets[b + 1] - offsets[b], states + b * S * 2, anchored);
  }

  // The distinct documents of many states, CSR style (offsets has B + 1 entries), each list sorted.
  // A state with more than `max_count` occurrences gets an empty list (its documents are not located:
  // locating costs one LF walk per occurrence). Equals docs() per state otherwise.
  void docs_many(const int64_t* states, int64_t B, int64_t max_count, std::vector<int64_t>& offsets,
                 std::vector<int64_t>& out) const {
    const size_t S = shards_.size();
    offsets.assign(1, 0);
    std::vector<int64_t> count(1);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t* st = states + b * S * 2;
      counts(st, 1, count.data());
      if (count[0] > 0 && count[0] <= max_count) {
        const std::vector<int64_t> d = docs(st);
        out.insert(out.end(), d.begin(), d.end());
      }
      offsets.push_back(int64_t(out.size()));
    }
  }

  // Continuations of each state: kEnd first where some occurrence ends a document, then tokens in
  // increasing order, with occurrence counts, child states and (if asked) the children's unique docs.
  void children(const int64_t* states, int64_t B, ChildrenResult& res, bool with_unique = true) const {
    const size_t S = shards_.size();
    res.offsets.assign(1, 0);
    std::vector<std::vector<Child>> per(S);
    std::vector<size_t> pos(S);
    std::vector<Ends> ends(S);
    for (int64_t b = 0; b < B; ++b) {
      uint64_t n_end = 0;
      for (size_t s = 0; s < S; ++s) {
        const Range r = range_of(states + (b * S + s) * 2);
        per[s].clear();
        shards_[s]->children(r, per[s]);
        pos[s] = 0;
        ends[s] = shards_[s]->ends(r);
        n_end += ends[s].count();
      }
      if (n_end) {
        res.tokens.push_back(kEnd);
        res.counts.push_back(int64_t(n_end));
        for (size_t s = 0; s < S; ++s) {
          const Range r = range_of(states + (b * S + s) * 2);
          const bool any = ends[s].count() > 0;
          res.states.push_back(any ? ~int64_t(r.lo) : 0);
          res.states.push_back(any ? ~int64_t(r.hi) : 0);
        }
      }
      // k-way merge by token id (S is small).
      while (true) {
        uint64_t tok = UINT64_MAX;
        for (size_t s = 0; s < S; ++s)
          if (pos[s] < per[s].size()) tok = std::min<uint64_t>(tok, per[s][pos[s]].token);
        if (tok == UINT64_MAX) break;
        int64_t cnt = 0;
        res.tokens.push_back(int64_t(tok));
        for (size_t s = 0; s < S; ++s) {
          if (pos[s] < per[s].size() && per[s][pos[s]].token == tok) {
            const Child& c = per[s][pos[s]++];
            res.states.push_back(int64_t(c.lo));
            res.states.push_back(int64_t(c.hi));
            cnt += int64_t(c.hi - c.lo);
          } else {
            res.states.push_back(0);
            res.states.push_back(0);
          }
        }
        res.counts.push_back(cnt);
      }
      res.offsets.push_back(int64_t(res.tokens.size()));
    }
    if (with_unique) {
      res.unique.assign(res.tokens.size(), -1);
      unique_docs(res.states.data(), int64_t(res.tokens.size()), res.unique.data());
    }
  }

  // A state entry is terminal when it holds an encoded (~lo, ~hi) range (see the file comment); a state
  // is terminal when any of its S entries is.
  static bool terminal(const int64_t* entry) { return entry[0] < 0; }
  static bool terminal(const int64_t* state, size_t S) {
    for (size_t s = 0; s < S; ++s)
      if (state[2 * s] < 0) return true;
    return false;
  }

 private:
  static Range range_of(const int64_t* st) {
    return st[1] > st[0] ? Range{uint64_t(st[0]), uint64_t(st[1])} : Range{0, 0};
  }
  static Range source_of(const int64_t* st) {
    return st[0] < 0 ? Range{uint64_t(~st[0]), uint64_t(~st[1])} : Range{0, 0};
  }

  // The unique document of a terminal state: exactly one document (in one shard) ends with the prefix.
  int64_t terminal_unique(const int64_t* state) const {
    uint64_t total = 0;
    int64_t doc = -1;
    for (size_t s = 0; s < shards_.size(); ++s) {
      const FMIndex& fm = *shards_[s];
      const Ends e = fm.ends(source_of(state + 2 * s));
      if (!e.count()) continue;
      total += e.count();
      if (total > 1) return -1;
      doc = int64_t(doc_base_[s]) + fm.end_unique(e);
    }
    return total == 1 ? doc : -1;
  }

  std::vector<std::unique_ptr<FMIndex>> shards_;
  std::vector<uint64_t> doc_base_;
  uint64_t n_docs_ = 0;
};

}  // namespace gemkr
