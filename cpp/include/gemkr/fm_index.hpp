// FM-index over per-document-reversed token text: one shard of a knowledge base.
//
// Text layout: rev(doc_0) SEP rev(doc_1) SEP ... rev(doc_{n-1}) SEP $, with symbol 0 = $, 1 = SEP and
// 2 + r for the r-th distinct token id (the alphabet is compacted and sorted, so symbol order is token
// order). Because each document is reversed, backward search consumes a prefix p_1..p_k *forward*, and
// the BWT over the suffix-array range of that prefix lists the tokens that follow it in the documents.
// SEP never occurs in a query, so no match can span two documents.
//
// Two more things fall out of the layout:
//   * anchoring: the rows whose suffix starts with SEP (one per document; the SEP after rev(doc_d) is
//     followed, reading backwards, by doc_d's first token) are the empty prefix *at document starts*;
//     backward search from them finds only occurrences that start at a document's first token;
//   * document ends: an occurrence of a prefix that ends at its document's last token is preceded in the
//     text by SEP (or by $, via the wrap-around, for document 0 at text position 0), so the BWT over
//     the prefix's range holds SEP/$ exactly at those occurrences (`ends`).
//
// Every value read from the file is checked at open (section table, alphabet, C, D, zeros, rank
// directory ends, samples, cache) and every row a query computes is checked before it is used, so a
// corrupt file raises FormatError instead of reading out of bounds, even without a checksum pass.
//
// Structures (all in one file, memory-mapped on open):
//   * a wavelet matrix over the BWT with one-cache-line rank (extend, count, next tokens, LF);
//   * D[c] = C[c] - start of c in the matrix's bottom level, so a range mapped down the matrix gives the
//     child range directly;
//   * a sampled "document array": rows whose text position is a multiple of `sample_rate` or the first
//     token of a document carry their document number; LookupDoc walks LF until it meets one
//     (< sample_rate steps, never across a document start);
//   * a cache of the continuation lists of the root and of frequent short prefixes (GetNext on them would
//     otherwise enumerate thousands of symbols).
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "gemkr/rank_bitvector.hpp"
#include "gemkr/sais.hpp"

namespace gemkr {

constexpr char kMagic[8] = {'G', 'E', 'M', 'K', 'R', 'F', 'M', 'I'};
constexpr uint32_t kFormatVersion = 2;  // bump on any layout change
constexpr uint32_t kSymEnd = 0;  // $
constexpr uint32_t kSymSep = 1;  // document separator
constexpr uint32_t kSymFirstToken = 2;

class FormatError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A half-open row range [lo, hi) of the suffix array.
struct Range {
  uint64_t lo = 0, hi = 0;
  uint64_t size() const { return hi - lo; }
  bool empty() const { return hi <= lo; }
};

struct Child {
  uint32_t token;
  uint64_t lo, hi;
};

// The occurrences of a prefix that end a document: `sep` is the range of "SEP + prefix" (one row per
// document d >= 1 ending with the prefix; the SEP there belongs to document d - 1) and `dollar` says
// whether document 0 ends with it ($ precedes text position 0).
struct Ends {
  Range sep;
  bool dollar = false;
  uint64_t count() const { return sep.size() + (dollar ? 1 : 0); }
};

struct BuildParams {
  uint32_t sample_rate = 8;
  uint32_t cache_min_children = 512;  // cache a prefix's continuations when it has at least this many
  uint32_t cache_max_depth = 3;       // ... and is at most this many tokens long
  double cache_max_fraction = 0.25;   // cached entries (4 bytes each) <= this fraction of the text length
  bool sync = true;                   // fsync the finished shard file (tests turn it off for speed)
};

namespace fm_detail {

// Section table of the file; every section starts at a 64-byte boundary.
enum Section : uint32_t {
  kAlphabet = 0,    // uint32[sigma - 2]: token id of each token symbol
  kD,               // int64[sigma]
  kC,               // uint64[sigma + 1]
  kZeros,           // uint64[levels]
  kLevels,          // uint64[levels * blocks * 8]
  kSampleBits,      // uint64[blocks * 8]
  kSampleDocs,      // uint32[n_samples]
  kCacheKeys,       // uint64[2 * cache_entries]: lo, hi
  kCacheOffsets,    // uint64[cache_entries + 1]
  kCacheChildren,   // uint32[cache_children]: the symbols of the continuations, increasing
  kNumSections
};

struct Header {
  char magic[8];
  uint32_t version;
  uint32_t levels;
  uint64_t n_rows;  // text length including separators and $
  uint64_t n_tokens;
  uint64_t n_docs;
  uint64_t sigma;
  uint64_t sample_rate;
  uint64_t max_doc_len;
  uint64_t n_samples;
  uint64_t cache_entries;
  uint64_t cache_children;
  uint64_t file_size;
  uint64_t offsets[kNumSections];
  uint64_t sizes[kNumSections];  // in bytes
};

inline uint64_t align64(uint64_t x) { return (x + 63) & ~uint64_t(63); }

inline uint32_t bit_width(uint64_t x) {
  uint32_t w = 0;
  while (x) {
    ++w;
    x >>= 1;
  }
  return w;
}

}  // namespace fm_detail

class ShardBuilder;

class FMIndex {
  friend class ShardBuilder;

 public:
  // ---- construction -------------------------------------------------------------------------------
  // Builds the shard for documents tokens[doc_offsets[d] .. doc_offsets[d+1]) and writes it to `path`.
  static void build(const uint32_t* tokens, const uint64_t* doc_offsets, uint64_t n_docs, const std::string& path,
                    const BuildParams& params);

  // Opens a shard file by mmap and validates every stored size, offset and structural invariant
  // (see validate()). Throws FormatError for a wrong magic, another version, a short file or any
  // inconsistent value.
  explicit FMIndex(const std::string& path);
  ~FMIndex();
  FMIndex(const FMIndex&) = delete;
  FMIndex& operator=(const FMIndex&) = delete;

  // ---- properties ---------------------------------------------------------------------------------
  uint64_t n_rows() const { return h_.n_rows; }
  uint64_t n_tokens() const { return h_.n_tokens; }
  uint64_t n_docs() const { return h_.n_docs; }
  uint64_t sigma() const { return h_.sigma; }
  uint32_t levels() const { return h_.levels; }
  uint64_t sample_rate() const { return h_.sample_rate; }
  uint64_t max_doc_len() const { return h_.max_doc_len; }
  uint64_t cache_entries() const { return h_.cache_entries; }
  uint64_t file_size() const { return h_.file_size; }
  const uint32_t* alphabet() const { return alphabet_; }
  uint64_t alphabet_size() const { return h_.sigma - kSymFirstToken; }

  // ---- search -------------------------------------------------------------------------------------
  Range root() const { return Range{0, h_.n_rows}; }

  // The empty prefix anchored at document starts: the SEP block of rows, one row per document.
  Range anchored_root() const { return Range{C_[kSymSep], C_[kSymSep + 1]}; }

  // Symbol of a token id, or 0 if the token never occurs in this shard.
  uint32_t symbol(uint64_t token) const {
    const uint32_t* end = alphabet_ + alphabet_size();
    const uint32_t* it = std::lower_bound(alphabet_, end, token);
    if (it == end || *it != token) return 0;
    return uint32_t(it - alphabet_) + kSymFirstToken;
  }

  // Range of prefix+token given the range of prefix (one backward-search step).
  Range extend(Range r, uint64_t token) const {
    if (r.empty()) return Range{0, 0};
    const uint32_t c = symbol(token);
    if (c == 0) return Range{0, 0};
    return extend_symbol(r, c);
  }

  Range extend_symbol(Range r, uint32_t c) const {
    uint64_t lo = r.lo, hi = r.hi;
    for (uint32_t lev = 0; lev < h_.levels; ++lev) {
      const RankView& bv = level_[lev];
      const uint64_t rl = bv.rank1(lo), rh = bv.rank1(hi);
      if ((c >> (h_.levels - 1 - lev)) & 1) {
        lo = zeros_[lev] + rl;
        hi = zeros_[lev] + rh;
      } else {
        lo -= rl;
        hi -= rh;
      }
      check_rows(lo, hi);
      if (lo == hi) return Range{0, 0};
    }
    return bottom(c, lo, hi);
  }

  Range search(const uint64_t* ids, uint64_t n) const { return search_from(root(), ids, n); }

  Range search_from(Range r, const uint64_t* ids, uint64_t n) const {
    for (uint64_t i = 0; i < n && !r.empty(); ++i) r = extend(r, ids[i]);
    return r;
  }

  // The occurrences of r's prefix that end a document (SEP or $ in the BWT over r). Symbols 0 and 1
  // share every bit but the last, so both come out of one descent of the wavelet matrix. Row 0 is the
  // suffix "$" (no document position): its BWT symbol, the SEP after the last document, is dropped.
  Ends ends(Range r) const {
    Ends e;
    if (r.empty()) return e;
    uint64_t lo = r.lo, hi = r.hi;
    const uint32_t last = h_.levels - 1;
    for (uint32_t lev = 0; lev < last; ++lev) {
      lo -= level_[lev].rank1(lo);
      hi -= level_[lev].rank1(hi);
      check_rows(lo, hi);
      if (lo == hi) return e;
    }
    const uint64_t rl = level_[last].rank1(lo), rh = level_[last].rank1(hi);
    check_rows(lo - rl, hi - rh);
    e.dollar = hi - rh > lo - rl;
    const uint64_t z = zeros_[last];
    check_rows(z + rl, z + rh);
    if (rh > rl) e.sep = bottom(kSymSep, z + rl, z + rh);
    if (r.lo == 0 && !e.sep.empty()) ++e.sep.lo;
    return e;
  }

  // Local document numbers of the documents whose end `e` describes, increasing.
  void end_docs(const Ends& e, std::vector<uint32_t>& out) const {
    const size_t start = out.size();
    if (e.dollar) out.push_back(0);
    if (!e.sep.empty()) {
      const size_t at = out.size();
      out.resize(at + e.sep.size());
      docs_of_rows(e.sep.lo, e.sep.hi, out.data() + at);
      for (size_t k = at; k < out.size(); ++k) out[k] = next_doc(out[k]);
    }
    std::sort(out.begin() + start, out.end());
  }

  // The one document that ends with the prefix, or -1 (none, or several: a document has one end).
  int64_t end_unique(const Ends& e) const {
    if (e.count() != 1) return -1;
    if (e.dollar) return 0;
    return next_doc(doc_of_row(e.sep.lo));
  }

  // Distinct tokens following the prefix whose range is r, in increasing token order, with child ranges.
  void children(Range r, std::vector<Child>& out) const {
    if (r.empty()) return;
    uint64_t b, e;
    if (cached(r, &b, &e)) {
      // The cache stores symbols only (4 bytes each); child ranges are one batched extend away.
      thread_local std::vector<Range> ranges;
      ranges.assign(e - b, r);
      extend_many(ranges.data(), cache_children_ + b, e - b);
      for (uint64_t k = b; k < e; ++k)
        out.push_back(Child{alphabet_[cache_children_[k] - kSymFirstToken], ranges[k - b].lo, ranges[k - b].hi});
      return;
    }
    enumerate(r.lo, r.hi, out);
  }

  // Extends n ranges by one symbol each (in place). Breadth-first over the wavelet levels so the rank
  // look-ups of different ranges are independent memory accesses that the CPU overlaps.
  void extend_many(Range* ranges, const uint32_t* syms, size_t n) const {
    for (size_t i = 0; i < n; ++i)
      if (syms[i] == 0 || syms[i] >= h_.sigma) ranges[i] = Range{0, 0};
    for (uint32_t lev = 0; lev < h_.levels; ++lev) {
      const RankView& bv = level_[lev];
      const uint32_t shift = h_.levels - 1 - lev;
      for (size_t i = 0; i < n; ++i)
        if (!ranges[i].empty()) {
          bv.prefetch(ranges[i].lo);
          bv.prefetch(ranges[i].hi);
        }
      for (size_t i = 0; i < n; ++i) {
        Range& r = ranges[i];
        if (r.empty()) continue;
        const uint64_t rl = bv.rank1(r.lo), rh = bv.rank1(r.hi);
        if ((syms[i] >> shift) & 1) {
          r.lo = zeros_[lev] + rl;
          r.hi = zeros_[lev] + rh;
        } else {
          r.lo -= rl;
          r.hi -= rh;
        }
        check_rows(r.lo, r.hi);
        if (r.lo == r.hi) r = Range{0, 0};
      }
    }
    for (size_t i = 0; i < n; ++i)
      if (!ranges[i].empty()) ranges[i] = bottom(syms[i], ranges[i].lo, ranges[i].hi);
  }

  // ---- documents ----------------------------------------------------------------------------------
  // LF mapping: the row of the suffix that starts one position earlier in the text.
  uint64_t lf(uint64_t i) const {
    uint64_t c = 0;
    for (uint32_t lev = 0; lev < h_.levels; ++lev) {
      uint64_t r1;
      const bool bit = level_[lev].get_rank1(i, &r1);
      if (bit) {
        i = zeros_[lev] + r1;
        c = (c << 1) | 1;
      } else {
        i -= r1;
        c <<= 1;
      }
      if (i >= h_.n_rows) corrupt("an LF step left the row range");
    }
    if (c >= h_.sigma) corrupt("the wavelet matrix holds a symbol outside the alphabet");
    const int64_t row = D_[c] + int64_t(i);
    if (row < 0 || uint64_t(row) >= h_.n_rows) corrupt("an LF step left the row range");
    return uint64_t(row);
  }

  // Local document number of the occurrence at row i (any row: a SEP row belongs to the document before it).
  uint32_t doc_of_row(uint64_t i) const {
    for (uint64_t steps = 0; !samples_.get(i); ++steps) {
      if (steps >= walk_limit_) corrupt("a document walk found no sample within sample_rate steps");
      i = lf(i);
    }
    return sample_doc(samples_.rank1(i));
  }

  // doc_of_row for rows[lo..hi) at once: the LF walks advance together, one wavelet level at a time,
  // so the cache misses of different walks overlap.
  void docs_of_rows(uint64_t lo, uint64_t hi, uint32_t* out) const {
    thread_local std::vector<uint64_t> rows;
    rows.resize(hi - lo);
    for (uint64_t i = lo; i < hi; ++i) rows[i - lo] = i;
    locate_docs(rows.data(), rows.size(), out);
  }

  // Local doc numbers of arbitrary rows (each < n_rows), all walks advancing together.
  void locate_docs(const uint64_t* rows, size_t n, uint32_t* out) const {
    thread_local std::vector<uint64_t> pos, code;
    thread_local std::vector<uint32_t> active, next;
    pos.assign(rows, rows + n);
    code.resize(n);
    active.resize(n);
    for (size_t i = 0; i < n; ++i) active[i] = uint32_t(i);
    for (uint64_t steps = 0; !active.empty(); ++steps) {
      if (steps > walk_limit_) corrupt("a document walk found no sample within sample_rate steps");
      next.clear();
      for (uint32_t i : active) samples_.prefetch(pos[i]);
      for (uint32_t i : active) {
        if (samples_.get(pos[i])) {
          out[i] = sample_doc(samples_.rank1(pos[i]));
        } else {
          next.push_back(i);
          code[i] = 0;
        }
      }
      for (uint32_t lev = 0; lev < h_.levels; ++lev) {
        const RankView& bv = level_[lev];
        for (uint32_t i : next) bv.prefetch(pos[i]);
        for (uint32_t i : next) {
          uint64_t r1;
          if (bv.get_rank1(pos[i], &r1)) {
            pos[i] = zeros_[lev] + r1;
            code[i] = (code[i] << 1) | 1;
          } else {
            pos[i] -= r1;
            code[i] <<= 1;
          }
          if (pos[i] >= h_.n_rows) corrupt("an LF step left the row range");
        }
      }
      for (uint32_t i : next) {
        if (code[i] >= h_.sigma) corrupt("the wavelet matrix holds a symbol outside the alphabet");
        const int64_t row = D_[code[i]] + int64_t(pos[i]);
        if (row < 0 || uint64_t(row) >= h_.n_rows) corrupt("an LF step left the row range");
        pos[i] = uint64_t(row);
      }
      active.swap(next);
    }
  }

  // Local doc number if every occurrence of the range lies in one document, else -1.
  int64_t unique_doc(Range r) const {
    if (r.empty() || r.size() > h_.max_doc_len) return -1;  // a doc of length L holds <= L occurrences
    const uint32_t d = doc_of_row(r.lo);
    if (r.size() == 1) return d;
    if (doc_of_row(r.hi - 1) != d) return -1;
    return interior_in_doc(r, d) ? int64_t(d) : -1;
  }

  // Whether every row strictly between r's first and last lies in document d (the ends already do).
  bool interior_in_doc(Range r, uint32_t d) const {
    thread_local std::vector<uint32_t> buf;
    constexpr uint64_t kChunk = 64;  // check in chunks: most non-unique ranges fail in the first one
    for (uint64_t a = r.lo + 1; a + 1 < r.hi; a += kChunk) {
      const uint64_t b = std::min(a + kChunk, r.hi - 1);
      buf.resize(b - a);
      docs_of_rows(a, b, buf.data());
      for (uint32_t x : buf)
        if (x != d) return false;
    }
    return true;
  }

  // Sorted distinct local doc numbers of all occurrences.
  void docs(Range r, std::vector<uint32_t>& out) const {
    if (r.empty()) return;
    const size_t start = out.size();
    out.resize(start + r.size());
    docs_of_rows(r.lo, r.hi, out.data() + start);
    std::sort(out.begin() + start, out.end());
    out.erase(std::unique(out.begin() + start, out.end()), out.end());
  }

  // Distinct next tokens only (no child ranges): what a decoding mask needs.
  void next_tokens(Range r, std::vector<uint32_t>& out) const {
    if (r.empty()) return;
    uint64_t b, e;
    if (cached(r, &b, &e)) {
      for (uint64_t k = b; k < e; ++k) out.push_back(alphabet_[cache_children_[k] - kSymFirstToken]);
      return;
    }
    thread_local std::vector<Child> kids;
    kids.clear();
    enumerate(r.lo, r.hi, kids);
    for (const Child& c : kids) out.push_back(c.token);
  }

 private:
  static uint64_t cache_key(Range r) { return (r.lo << 32) ^ r.hi; }

  [[noreturn]] void corrupt(const std::string& why) const {
    throw FormatError("shard file " + path_ + " is corrupt (" + why +
                      "); rebuild the KB (KnowledgeBase.open(..., verify=True) names the damaged file)");
  }

  // A range computed inside the wavelet matrix must stay ordered and inside the rows.
  void check_rows(uint64_t lo, uint64_t hi) const {
    if (hi > h_.n_rows || lo > hi) corrupt("a rank value is out of range");
  }

  // The child range of symbol c from its range [lo, hi) in the matrix's bottom level; it must lie in
  // c's block of rows [C[c], C[c+1]).
  Range bottom(uint32_t c, uint64_t lo, uint64_t hi) const {
    const int64_t a = D_[c] + int64_t(lo), b = D_[c] + int64_t(hi);
    if (a < int64_t(C_[c]) || b > int64_t(C_[c + 1]) || a > b) corrupt("a rank value is out of range");
    return Range{uint64_t(a), uint64_t(b)};
  }

  uint32_t sample_doc(uint64_t k) const {
    if (k >= h_.n_samples) corrupt("a sample rank is out of range");
    const uint32_t d = sample_docs_[k];
    if (d >= h_.n_docs) corrupt("a sampled document number is out of range");
    return d;
  }

  // The document that starts right after a SEP that belongs to document d.
  uint32_t next_doc(uint32_t d) const {
    if (uint64_t(d) + 1 >= h_.n_docs) corrupt("a document end lies past the last document");
    return d + 1;
  }

  // Whether r's continuations are cached; [*b, *e) are then their slots in cache_children_ (checked
  // here, at use, so that open() need not read the whole cache).
  bool cached(Range r, uint64_t* b, uint64_t* e) const {
    if (cache_.empty()) return false;
    auto it = cache_.find(cache_key(r));
    if (it == cache_.end()) return false;
    *b = cache_offsets_[it->second];
    *e = cache_offsets_[it->second + 1];
    uint32_t prev = 0;
    for (uint64_t k = *b; k < *e; ++k) {
      const uint32_t c = cache_children_[k];
      if (c < kSymFirstToken || c >= h_.sigma || c <= prev) corrupt("a cached continuation is not a valid symbol");
      prev = c;
    }
    return true;
  }

  // All distinct symbols of BWT[lo, hi) with their child ranges, in increasing order. Breadth-first:
  // each level's nodes are independent, so their rank look-ups are prefetched and overlap.
  void enumerate(uint64_t lo, uint64_t hi, std::vector<Child>& out) const {
    struct Node {
      uint64_t lo, hi, code;
    };
    thread_local std::vector<Node> cur, nxt;
    cur.assign(1, Node{lo, hi, 0});
    for (uint32_t lev = 0; lev < h_.levels && !cur.empty(); ++lev) {
      const RankView& bv = level_[lev];
      const uint64_t z = zeros_[lev];
      for (const Node& nd : cur) {
        bv.prefetch(nd.lo);
        bv.prefetch(nd.hi);
      }
      nxt.clear();
      for (const Node& nd : cur) {
        const uint64_t rl = bv.rank1(nd.lo), rh = bv.rank1(nd.hi);
        check_rows(nd.lo - rl, nd.hi - rh);
        check_rows(z + rl, z + rh);
        if (nd.lo - rl < nd.hi - rh) nxt.push_back(Node{nd.lo - rl, nd.hi - rh, nd.code << 1});
        if (rl < rh) nxt.push_back(Node{z + rl, z + rh, (nd.code << 1) | 1});
      }
      cur.swap(nxt);
    }
    for (const Node& nd : cur) {
      if (nd.code >= h_.sigma) corrupt("the wavelet matrix holds a symbol outside the alphabet");
      if (nd.code >= kSymFirstToken) {
        const Range r = bottom(uint32_t(nd.code), nd.lo, nd.hi);
        out.push_back(Child{alphabet_[nd.code - kSymFirstToken], r.lo, r.hi});
      }
    }
  }

  template <typename T>
  const T* section(fm_detail::Section s) const {
    return reinterpret_cast<const T*>(base_ + h_.offsets[s]);
  }

  void validate(uint64_t size);

  std::string path_;
  const uint8_t* base_ = nullptr;
  size_t mapped_ = 0;
  fm_detail::Header h_{};
  const uint32_t* alphabet_ = nullptr;
  const int64_t* D_ = nullptr;
  const uint64_t* C_ = nullptr;
  const uint64_t* zeros_ = nullptr;
  std::vector<RankView> level_;
  RankView samples_;
  const uint32_t* sample_docs_ = nullptr;
  const uint64_t* cache_offsets_ = nullptr;
  const uint32_t* cache_children_ = nullptr;
  std::unordered_map<uint64_t, uint64_t> cache_;
  uint64_t walk_limit_ = 0;
};

// ===================================================================================================
// Implementation
// ===================================================================================================

inline FMIndex::FMIndex(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw FormatError("cannot open shard file " + path + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    throw FormatError("cannot stat shard file " + path);
  }
  const uint64_t size = uint64_t(st.st_size);
  if (size < sizeof(fm_detail::Header)) {
    ::close(fd);
    throw FormatError("shard file " + path + " is truncated (" + std::to_string(size) + " bytes)");
  }
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) throw FormatError("cannot mmap shard file " + path + ": " + std::strerror(errno));
  base_ = static_cast<const uint8_t*>(p);
  mapped_ = size;
  try {
    validate(size);
  } catch (...) {
    ::munmap(const_cast<uint8_t*>(base_), mapped_);
    base_ = nullptr;
    throw;
  }
}

// Every check below is O(sigma + levels + cache entries) plus a few cache lines per rank directory:
// cheap enough to run at every open, and together they guarantee that queries stay inside the mapping
// (the per-query checks catch what only shows in the bulk data: rank counts and sample numbers).
inline void FMIndex::validate(uint64_t size) {
  using namespace fm_detail;
  std::memcpy(&h_, base_, sizeof(h_));
  auto fail = [&](const std::string& why) { throw FormatError("shard file " + path_ + ": " + why); };
  auto bad = [&](const std::string& why) { fail("corrupt header or tables (" + why + "); rebuild the KB"); };
  if (std::memcmp(h_.magic, kMagic, 8) != 0) fail("not a gemkr FM-index shard (bad magic)");
  if (h_.version > kFormatVersion)
    fail("format version " + std::to_string(h_.version) + " is newer than this library's " +
         std::to_string(kFormatVersion) + "; upgrade gemkr-llamaindex or rebuild the KB");
  if (h_.version < kFormatVersion)
    fail("format version " + std::to_string(h_.version) + " is older than this library's " +
         std::to_string(kFormatVersion) + "; rebuild the KB with this version");
  if (h_.file_size != size)
    fail("size " + std::to_string(size) + " differs from the recorded " + std::to_string(h_.file_size) +
         " (truncated or corrupt); rebuild the KB");

  // Counts and alphabet.
  if (h_.n_docs == 0) bad("no documents");
  if (h_.n_rows >= (uint64_t(1) << 31) || h_.n_tokens >= h_.n_rows || h_.n_docs >= h_.n_rows ||
      h_.n_rows != h_.n_tokens + h_.n_docs + 1)
    bad("rows != tokens + documents + 1");
  if (h_.sigma < kSymFirstToken || h_.sigma - kSymFirstToken > h_.n_tokens) bad("alphabet size");
  if (h_.levels != std::max<uint32_t>(1, bit_width(h_.sigma - 1))) bad("levels do not match the alphabet size");
  if (h_.max_doc_len > h_.n_tokens) bad("max_doc_len");
  if (h_.sample_rate == 0) bad("sample_rate");
  // Every text position that is a multiple of sample_rate or a document start is sampled.
  const uint64_t multiples = h_.n_rows / h_.sample_rate + (h_.n_rows % h_.sample_rate != 0);
  walk_limit_ = std::min(h_.sample_rate, h_.n_rows);  // a walk meets a sample in < sample_rate LF steps
  if (h_.n_samples < std::max(multiples, h_.n_docs) || h_.n_samples > multiples + h_.n_docs - 1)
    bad("sample count does not match sample_rate and documents");
  if (h_.cache_entries > h_.n_rows || h_.cache_children > (h_.cache_entries ? size / 4 : 0)) bad("cache size");

  // Section table: each section inside the file, 64-byte aligned, of exactly the size its counts imply.
  const uint64_t blocks = rank_blocks_for(h_.n_rows);
  const uint64_t expected[kNumSections] = {
      (h_.sigma - kSymFirstToken) * 4, h_.sigma * 8, (h_.sigma + 1) * 8, uint64_t(h_.levels) * 8,
      uint64_t(h_.levels) * blocks * kBlockWords * 8, blocks * kBlockWords * 8, h_.n_samples * 4,
      h_.cache_entries * 16, (h_.cache_entries + 1) * 8, h_.cache_children * 4};
  for (uint32_t s = 0; s < kNumSections; ++s) {
    const uint64_t off = h_.offsets[s], n = h_.sizes[s];
    if (off < sizeof(Header) || off % 64 != 0 || off > size || n > size - off)
      fail("section " + std::to_string(s) + " runs past the end of the file (corrupt); rebuild the KB");
    if (n != expected[s]) bad("section " + std::to_string(s) + " has " + std::to_string(n) + " bytes, expected " +
                              std::to_string(expected[s]));
  }

  alphabet_ = section<uint32_t>(kAlphabet);
  D_ = section<int64_t>(kD);
  C_ = section<uint64_t>(kC);
  zeros_ = section<uint64_t>(kZeros);
  const uint64_t sigma = h_.sigma;
  for (uint64_t k = 1; k < alphabet_size(); ++k)
    if (alphabet_[k] <= alphabet_[k - 1]) bad("alphabet not increasing");
  // C: every symbol occurs ($ once, SEP once per document), totals add up to the rows.
  if (C_[0] != 0 || C_[1] != 1 || C_[2] != 1 + h_.n_docs || C_[sigma] != h_.n_rows) bad("C totals");
  for (uint64_t c = 0; c < sigma; ++c)
    if (C_[c + 1] <= C_[c]) bad("C not increasing");
  // zeros[l]: symbols whose bit at level l is 0.
  for (uint32_t l = 0; l < h_.levels; ++l) {
    uint64_t z = 0;
    const uint32_t shift = h_.levels - 1 - l;
    for (uint64_t c = 0; c < sigma; ++c)
      if (!((c >> shift) & 1)) z += C_[c + 1] - C_[c];
    if (zeros_[l] != z) bad("zeros of level " + std::to_string(l));
  }
  // D[c] = C[c] - start of c in the bottom level, where symbols lie in the order of their bit-reversed codes.
  {
    uint64_t run = 0;
    const uint64_t codes = uint64_t(1) << h_.levels;
    for (uint64_t rev = 0; rev < codes; ++rev) {
      uint64_t c = 0;
      for (uint32_t b = 0; b < h_.levels; ++b) c |= ((rev >> b) & 1) << (h_.levels - 1 - b);
      if (c >= sigma) continue;
      if (D_[c] != int64_t(C_[c]) - int64_t(run)) bad("D of symbol " + std::to_string(c));
      run += C_[c + 1] - C_[c];
    }
  }
  // Rank directories: first count 0, last count = the level's ones (a cache line each).
  const uint64_t* lv = section<uint64_t>(kLevels);
  level_.resize(h_.levels);
  for (uint32_t l = 0; l < h_.levels; ++l) {
    level_[l] = RankView{lv + l * blocks * kBlockWords, h_.n_rows};
    if (level_[l].blocks[0] != 0 || level_[l].rank1(h_.n_rows) != h_.n_rows - zeros_[l])
      bad("rank directory of level " + std::to_string(l));
  }
  samples_ = RankView{section<uint64_t>(kSampleBits), h_.n_rows};
  if (samples_.blocks[0] != 0 || samples_.rank1(h_.n_rows) != h_.n_samples) bad("sample bits");
  sample_docs_ = section<uint32_t>(kSampleDocs);
  // Cache: offsets increasing to the children count, keys inside the rows (children are checked at use).
  cache_offsets_ = section<uint64_t>(kCacheOffsets);
  cache_children_ = section<uint32_t>(kCacheChildren);
  if (cache_offsets_[0] != 0 || cache_offsets_[h_.cache_entries] != h_.cache_children) bad("cache offsets");
  for (uint64_t e = 0; e < h_.cache_entries; ++e)
    if (cache_offsets_[e + 1] < cache_offsets_[e]) bad("cache offsets not increasing");
  const uint64_t* keys = section<uint64_t>(kCacheKeys);
  cache_.reserve(h_.cache_entries);
  for (uint64_t e = 0; e < h_.cache_entries; ++e) {
    const uint64_t lo = keys[2 * e], hi = keys[2 * e + 1];
    if (lo >= hi || hi > h_.n_rows) bad("cache key outside the rows");
    cache_.emplace(cache_key(Range{lo, hi}), e);
  }
}

inline FMIndex::~FMIndex() {
  if (base_) ::munmap(const_cast<uint8_t*>(base_), mapped_);
}

namespace fm_detail {

class FileWriter {
 public:
  explicit FileWriter(const std::string& path) : path_(path), f_(std::fopen(path.c_str(), "wb")) {
    if (!f_) throw std::runtime_error("cannot write " + path + ": " + std::strerror(errno));
  }
  ~FileWriter() {
    if (f_) std::fclose(f_);
  }
  void write(const void* data, uint64_t n) {
    if (n && std::fwrite(data, 1, n, f_) != n) throw std::runtime_error("write failed for " + path_);
    pos_ += n;
  }
  void pad_to(uint64_t pos) {
    static const uint8_t zeros[64] = {0};
    while (pos_ < pos) write(zeros, std::min<uint64_t>(64, pos - pos_));
  }
  uint64_t pos() const { return pos_; }
  void seek_start() {
    if (std::fseek(f_, 0, SEEK_SET) != 0) throw std::runtime_error("seek failed for " + path_);
  }
  void close(bool sync = true) {
    if (std::fflush(f_) != 0 || (sync && ::fsync(fileno(f_)) != 0) || std::fclose(f_) != 0) {
      f_ = nullptr;
      throw std::runtime_error("close failed for " + path_);
    }
    f_ = nullptr;
  }

 private:
  std::string path_;
  std::FILE* f_;
  uint64_t pos_ = 0;
};

// Read-only mapping of a whole file (used for the spilled wavelet levels during a build).
class MappedFile {
 public:
  MappedFile(const std::string& path, uint64_t expected) : size_(expected) {
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) throw std::runtime_error("cannot open " + path + ": " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || uint64_t(st.st_size) != expected) {
      ::close(fd);
      throw std::runtime_error("spill file " + path + " has an unexpected size");
    }
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) throw std::runtime_error("cannot mmap " + path + ": " + std::strerror(errno));
    data_ = p;
  }
  ~MappedFile() { ::munmap(data_, size_); }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const void* data() const { return data_; }

 private:
  void* data_ = nullptr;
  uint64_t size_;
};

}  // namespace fm_detail

// Phase 1 of a build: the text (reversed documents with separators, as symbols), its alphabet and the
// document starts. After this the caller may free the token buffer before phase 2 (write) runs, so the
// two phases' peaks do not add up.
class ShardBuilder {
 public:
  ShardBuilder(const uint32_t* tokens, const uint64_t* doc_offsets, uint64_t n_docs);
  // Phase 2: suffix array, BWT, wavelet matrix, samples, cache; writes the shard file and frees the text.
  void write(const std::string& path, const BuildParams& params);

 private:
  uint64_t n_tokens_ = 0, n_docs_ = 0, N_ = 0, max_doc_len_ = 0;
  std::vector<uint32_t> alphabet_;
  std::vector<int32_t> T_;
  RankBuilder doc_start_;
};

inline ShardBuilder::ShardBuilder(const uint32_t* tokens, const uint64_t* doc_offsets, uint64_t n_docs)
    : doc_start_(0) {
  using namespace fm_detail;
  if (n_docs == 0) throw std::invalid_argument("cannot build an FM-index shard with no documents");
  const uint64_t n_tokens = doc_offsets[n_docs] - doc_offsets[0];
  const uint64_t N = n_tokens + n_docs + 1;
  if (N >= (uint64_t(1) << 31) - 1)
    throw std::invalid_argument("shard too large (" + std::to_string(N) +
                                " symbols); the limit is 2^31-2: use more shards");
  const uint32_t* tok0 = tokens + doc_offsets[0];

  // Alphabet: the distinct token ids, sorted; symbol of a token = its rank + kSymFirstToken.
  std::vector<uint32_t>& alphabet = alphabet_;
  uint32_t max_tok = 0;
  for (uint64_t i = 0; i < n_tokens; ++i) max_tok = std::max(max_tok, tok0[i]);
  const bool dense = max_tok < (uint32_t(1) << 28);
  std::vector<uint32_t> sym_of;  // dense token -> symbol map for ordinary vocabularies
  if (dense) {
    std::vector<uint64_t> seen((uint64_t(max_tok) + 64) / 64, 0);
    for (uint64_t i = 0; i < n_tokens; ++i) seen[tok0[i] >> 6] |= uint64_t(1) << (tok0[i] & 63);
    for (uint64_t w = 0; w < seen.size(); ++w)
      for (uint64_t b = seen[w]; b; b &= b - 1) alphabet.push_back(uint32_t(w * 64 + __builtin_ctzll(b)));
    sym_of.assign(uint64_t(max_tok) + 1, 0);
    for (uint64_t r = 0; r < alphabet.size(); ++r) sym_of[alphabet[r]] = uint32_t(r + kSymFirstToken);
  } else {
    alphabet.assign(tok0, tok0 + n_tokens);
    std::sort(alphabet.begin(), alphabet.end());
    alphabet.erase(std::unique(alphabet.begin(), alphabet.end()), alphabet.end());
  }

  // Text: per-document reversed symbols, SEP after each document, $ at the end. Doc starts are marked.
  std::vector<int32_t>& T = T_;
  T.resize(N);
  doc_start_ = RankBuilder(N);
  uint64_t out = 0;
  for (uint64_t d = 0; d < n_docs; ++d) {
    const uint64_t b = doc_offsets[d], e = doc_offsets[d + 1];
    max_doc_len_ = std::max(max_doc_len_, e - b);
    doc_start_.set(out);
    for (uint64_t k = e; k > b; --k) {
      const uint32_t tok = tokens[k - 1];
      T[out++] = dense ? int32_t(sym_of[tok])
                       : int32_t(std::lower_bound(alphabet.begin(), alphabet.end(), tok) - alphabet.begin() +
                                 kSymFirstToken);
    }
    T[out++] = int32_t(kSymSep);
  }
  T[out++] = int32_t(kSymEnd);
  doc_start_.finalize();
  n_tokens_ = n_tokens;
  n_docs_ = n_docs;
  N_ = N;
}

inline void FMIndex::build(const uint32_t* tokens, const uint64_t* doc_offsets, uint64_t n_docs,
                           const std::string& path, const BuildParams& params) {
  ShardBuilder builder(tokens, doc_offsets, n_docs);
  builder.write(path, params);
}

inline void ShardBuilder::write(const std::string& path, const BuildParams& params) {
  using namespace fm_detail;
  if (T_.empty()) throw std::logic_error("ShardBuilder::write called twice");
  if (params.sample_rate == 0) throw std::invalid_argument("sample_rate must be >= 1");
  const uint64_t N = N_, n_tokens = n_tokens_, n_docs = n_docs_, max_doc_len = max_doc_len_;
  std::vector<uint32_t>& alphabet = alphabet_;
  std::vector<int32_t> T;
  T.swap(T_);
  const uint64_t sigma = alphabet.size() + kSymFirstToken;
  const uint32_t levels = std::max<uint32_t>(1, bit_width(sigma - 1));
  const RankView ds = doc_start_.view();

  std::vector<int32_t> SA(N);
  suffix_array(T.data(), SA.data(), int64_t(N), int32_t(sigma));

  // Document samples, then the BWT written over the suffix array.
  RankBuilder samples(N);
  std::vector<uint32_t> sample_docs;
  sample_docs.reserve(N / params.sample_rate + n_docs + 1);
  for (uint64_t i = 0; i < N; ++i) {
    const uint64_t p = uint64_t(SA[i]);
    if (p % params.sample_rate == 0 || ds.get(p)) {
      samples.set(i);
      sample_docs.push_back(uint32_t(ds.rank1(p + 1) - 1));
    }
    SA[i] = T[p == 0 ? N - 1 : p - 1];
  }
  samples.finalize();
  std::vector<int32_t>().swap(T);
  // The BWT now lives in SA's memory; the wavelet matrix is built by stable partitions between that
  // buffer and one more of the same size (no third copy: peak ~ 8N bytes + the level bit vectors).
  uint32_t* cur = reinterpret_cast<uint32_t*>(SA.data());

  std::vector<uint64_t> C(sigma + 1, 0);
  for (uint64_t i = 0; i < N; ++i) ++C[cur[i] + 1];
  for (uint64_t c = 0; c < sigma; ++c) C[c + 1] += C[c];

  // Wavelet matrix, most significant bit first.
  // Each finished level is spilled to a side file, so the levels never sit in memory next to the two
  // partition buffers (peak ~ 8N bytes + one level); the final file maps them back in.
  std::vector<uint64_t> zeros(levels);
  std::vector<uint32_t> other(N);
  const std::string spill_path = path + ".levels.tmp";
  struct RemoveOnExit {
    std::string p;
    ~RemoveOnExit() { std::remove(p.c_str()); }
  } spill_guard{spill_path};
  {
    FileWriter spill(spill_path);
    uint32_t* nxt = other.data();
    for (uint32_t lev = 0; lev < levels; ++lev) {
      const uint32_t shift = levels - 1 - lev;
      RankBuilder bits(N);
      uint64_t z = 0;
      for (uint64_t i = 0; i < N; ++i) {
        if ((cur[i] >> shift) & 1)
          bits.set(i);
        else
          ++z;
      }
      bits.finalize();
      zeros[lev] = z;
      uint64_t zi = 0, oi = z;
      for (uint64_t i = 0; i < N; ++i) {
        if ((cur[i] >> shift) & 1)
          nxt[oi++] = cur[i];
        else
          nxt[zi++] = cur[i];
      }
      std::swap(cur, nxt);
      spill.write(bits.blocks().data(), bits.blocks().size() * 8);
    }
    spill.close();
  }
  std::vector<int64_t> D(sigma, 0);
  {
    std::vector<uint64_t> start(sigma, 0);
    for (uint64_t i = N; i > 0; --i) start[cur[i - 1]] = i - 1;
    for (uint64_t c = 0; c < sigma; ++c) D[c] = int64_t(C[c]) - int64_t(start[c]);
  }
  cur = nullptr;
  std::vector<int32_t>().swap(SA);
  std::vector<uint32_t>().swap(other);

  const uint64_t level_bytes = uint64_t(levels) * rank_blocks_for(N) * kBlockWords * 8;
  MappedFile level_map(spill_path, level_bytes);

  // Write everything except the cache, then reopen to compute the cache with the real query code.
  Header h{};
  std::memcpy(h.magic, kMagic, 8);
  h.version = kFormatVersion;
  h.levels = levels;
  h.n_rows = N;
  h.n_tokens = n_tokens;
  h.n_docs = n_docs;
  h.sigma = sigma;
  h.sample_rate = params.sample_rate;
  h.max_doc_len = max_doc_len;
  h.n_samples = sample_docs.size();

  struct Blob {
    const void* data;
    uint64_t bytes;
  };
  auto write_file = [&](const std::string& out_path, const std::vector<Blob>& blobs, bool sync) {
    uint64_t pos = align64(sizeof(Header));
    for (uint32_t s = 0; s < kNumSections; ++s) {
      h.offsets[s] = pos;
      h.sizes[s] = blobs[s].bytes;
      pos = align64(pos + blobs[s].bytes);
    }
    h.file_size = pos;
    FileWriter w(out_path);
    w.write(&h, sizeof(h));
    for (uint32_t s = 0; s < kNumSections; ++s) {
      w.pad_to(h.offsets[s]);
      w.write(blobs[s].data, blobs[s].bytes);
    }
    w.pad_to(h.file_size);
    w.close(sync);
  };

  std::vector<uint64_t> cache_keys, cache_offsets{0};
  std::vector<uint32_t> cache_children;
  auto blobs = [&]() {
    std::vector<Blob> b(kNumSections);
    b[kAlphabet] = {alphabet.data(), alphabet.size() * 4};
    b[kD] = {D.data(), D.size() * 8};
    b[kC] = {C.data(), C.size() * 8};
    b[kZeros] = {zeros.data(), zeros.size() * 8};
    b[kLevels] = {level_map.data(), level_bytes};
    b[kSampleBits] = {samples.blocks().data(), samples.blocks().size() * 8};
    b[kSampleDocs] = {sample_docs.data(), sample_docs.size() * 4};
    b[kCacheKeys] = {cache_keys.data(), cache_keys.size() * 8};
    b[kCacheOffsets] = {cache_offsets.data(), cache_offsets.size() * 8};
    b[kCacheChildren] = {cache_children.data(), cache_children.size() * 4};
    return b;
  };
  h.cache_entries = 0;
  h.cache_children = 0;
  write_file(path, blobs(), false);  // rewritten below with the cache: no need to sync this one

  // Cache: breadth-first over prefixes of length 0..max_depth, most frequent first, while within budget.
  {
    FMIndex idx(path);
    const uint64_t budget = uint64_t(params.cache_max_fraction * double(N));
    std::vector<Range> frontier{idx.root()};
    std::vector<Child> kids;
    uint64_t cached_below_root = 0;  // the root's list is always cached and not charged to the budget
    for (uint32_t depth = 0; depth <= params.cache_max_depth && !frontier.empty(); ++depth) {
      std::sort(frontier.begin(), frontier.end(), [](Range a, Range b) { return a.size() > b.size(); });
      std::vector<Range> next;
      for (const Range& r : frontier) {
        kids.clear();
        idx.enumerate(r.lo, r.hi, kids);
        if (depth > 0 && kids.size() < params.cache_min_children) continue;
        if (depth > 0 && cached_below_root + kids.size() > budget) break;
        if (depth > 0) cached_below_root += kids.size();
        cache_keys.push_back(r.lo);
        cache_keys.push_back(r.hi);
        for (const Child& k : kids) {
          cache_children.push_back(idx.symbol(k.token));
          if (k.hi - k.lo >= params.cache_min_children) next.push_back(Range{k.lo, k.hi});
        }
        cache_offsets.push_back(cache_children.size());
      }
      frontier.swap(next);
    }
  }
  h.cache_entries = cache_keys.size() / 2;
  h.cache_children = cache_children.size();
  const std::string tmp = path + ".tmp";
  write_file(tmp, blobs(), params.sync);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw std::runtime_error("cannot rename " + tmp + " to " + path);
}

}  // namespace gemkr
