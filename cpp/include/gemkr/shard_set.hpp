// A knowledge base made of several FM-index shards, queried as one.
//
// A search state is one row range per shard, laid out as int64 [lo, hi] pairs: a batch of B states is a
// contiguous int64 array of shape (B, S, 2). Every batched call below crosses the Python boundary once.
// Merge rules across shards: next tokens are the union, counts add up, document lists concatenate
// (shards hold consecutive document numbers), and a prefix has a unique document only if exactly one
// shard has occurrences and they all lie in one document.
#pragma once

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "gemkr/fm_index.hpp"

namespace gemkr {

struct ChildrenResult {
  std::vector<int64_t> offsets;  // B + 1
  std::vector<int64_t> tokens;   // M
  std::vector<int64_t> counts;   // M
  std::vector<int64_t> states;   // M * S * 2
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

  void root(int64_t* state) const {
    for (size_t s = 0; s < shards_.size(); ++s) {
      state[2 * s] = 0;
      state[2 * s + 1] = int64_t(shards_[s]->n_rows());
    }
  }

  void search(const int64_t* ids, int64_t n, int64_t* state) const {
    const bool valid = std::all_of(ids, ids + n, [](int64_t t) { return t >= 0; });  // negative ids never occur
    for (size_t s = 0; s < shards_.size(); ++s) {
      const Range r = valid ? shards_[s]->search(reinterpret_cast<const uint64_t*>(ids), uint64_t(n)) : Range{0, 0};
      state[2 * s] = int64_t(r.lo);
      state[2 * s + 1] = int64_t(r.hi);
    }
  }

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

  // Distinct next tokens of each state, CSR style (offsets has B + 1 entries), sorted within a state.
  void next_tokens(const int64_t* states, int64_t B, std::vector<int64_t>& offsets, std::vector<int64_t>& tokens) const {
    const size_t S = shards_.size();
    offsets.assign(1, 0);
    std::vector<uint32_t> buf;
    for (int64_t b = 0; b < B; ++b) {
      buf.clear();
      size_t nonempty = 0;
      for (size_t s = 0; s < S; ++s) {
        const Range r = range_of(states + (b * S + s) * 2);
        if (r.empty()) continue;
        ++nonempty;
        shards_[s]->next_tokens(r, buf);
      }
      if (nonempty > 1) {  // union across shards
        std::sort(buf.begin(), buf.end());
        buf.erase(std::unique(buf.begin(), buf.end()), buf.end());
      }
      tokens.insert(tokens.end(), buf.begin(), buf.end());
      offsets.push_back(int64_t(tokens.size()));
    }
  }

  void counts(const int64_t* states, int64_t B, int64_t* out) const {
    const size_t S = shards_.size();
    for (int64_t b = 0; b < B; ++b) {
      int64_t c = 0;
      for (size_t s = 0; s < S; ++s) c += int64_t(range_of(states + (b * S + s) * 2).size());
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
      int nonempty = 0;
      size_t shard = 0;
      for (size_t s = 0; s < S; ++s)
        if (!range_of(states + (b * S + s) * 2).empty()) {
          ++nonempty;
          shard = s;
        }
      if (nonempty != 1) continue;
      const Range r = range_of(states + (b * S + shard) * 2);
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

  // Sorted distinct global doc numbers containing the state's prefix.
  std::vector<int64_t> docs(const int64_t* state) const {
    std::vector<int64_t> out;
    std::vector<uint32_t> local;
    for (size_t s = 0; s < shards_.size(); ++s) {
      local.clear();
      shards_[s]->docs(range_of(state + 2 * s), local);
      for (uint32_t d : local) out.push_back(int64_t(doc_base_[s]) + d);
    }
    return out;  // shards hold increasing doc numbers, so the concatenation stays sorted
  }

  // Continuations of each state: tokens in increasing order, their occurrence counts and child states.
  void children(const int64_t* states, int64_t B, ChildrenResult& res) const {
    const size_t S = shards_.size();
    res.offsets.assign(1, 0);
    std::vector<std::vector<Child>> per(S);
    std::vector<size_t> pos(S);
    for (int64_t b = 0; b < B; ++b) {
      for (size_t s = 0; s < S; ++s) {
        per[s].clear();
        shards_[s]->children(range_of(states + (b * S + s) * 2), per[s]);
        pos[s] = 0;
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
  }

 private:
  static Range range_of(const int64_t* st) {
    return st[1] > st[0] ? Range{uint64_t(st[0]), uint64_t(st[1])} : Range{0, 0};
  }

  std::vector<std::unique_ptr<FMIndex>> shards_;
  std::vector<uint64_t> doc_base_;
  uint64_t n_docs_ = 0;
};

}  // namespace gemkr
