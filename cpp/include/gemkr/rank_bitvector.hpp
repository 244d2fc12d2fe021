// Rank-enabled bit vector in a cache-line layout.
//
// Each 64-byte block holds one 64-bit cumulative count (ones before the block) and 448 payload bits in
// seven words, so rank1(i) touches exactly one cache line. Space: 512/448 = 1.143 bits per bit.
#pragma once

#include <cstdint>
#include <vector>

namespace gemkr {

constexpr uint64_t kBlockWords = 8;      // 1 count word + 7 payload words
constexpr uint64_t kBitsPerBlock = 448;  // 7 * 64

inline uint64_t rank_blocks_for(uint64_t n_bits) { return n_bits / kBitsPerBlock + 1; }

// Read-only view over blocks that live elsewhere (a memory-mapped file or a builder's vector).
struct RankView {
  const uint64_t* blocks = nullptr;
  uint64_t n_bits = 0;

  // Number of ones in [0, i), for 0 <= i <= n_bits.
  inline uint64_t rank1(uint64_t i) const {
    const uint64_t* blk = blocks + (i / kBitsPerBlock) * kBlockWords;
    const uint64_t off = i % kBitsPerBlock;
    uint64_t r = blk[0];
    const uint64_t w = off >> 6;
    for (uint64_t k = 0; k < w; ++k) r += __builtin_popcountll(blk[1 + k]);
    const uint64_t rem = off & 63;
    if (rem) r += __builtin_popcountll(blk[1 + w] & ((uint64_t(1) << rem) - 1));
    return r;
  }

  // Prefetch the cache line that rank1(i) / get(i) will read (used to overlap independent misses).
  inline void prefetch(uint64_t i) const { __builtin_prefetch(blocks + (i / kBitsPerBlock) * kBlockWords); }

  inline bool get(uint64_t i) const {
    const uint64_t* blk = blocks + (i / kBitsPerBlock) * kBlockWords;
    const uint64_t off = i % kBitsPerBlock;
    return (blk[1 + (off >> 6)] >> (off & 63)) & 1;
  }

  // The bit at i and the number of ones before it, from one cache line.
  inline bool get_rank1(uint64_t i, uint64_t* rank) const {
    const uint64_t* blk = blocks + (i / kBitsPerBlock) * kBlockWords;
    const uint64_t off = i % kBitsPerBlock;
    uint64_t r = blk[0];
    const uint64_t w = off >> 6;
    for (uint64_t k = 0; k < w; ++k) r += __builtin_popcountll(blk[1 + k]);
    const uint64_t word = blk[1 + w];
    const uint64_t rem = off & 63;
    if (rem) r += __builtin_popcountll(word & ((uint64_t(1) << rem) - 1));
    *rank = r;
    return (word >> rem) & 1;
  }
};

// Owns the blocks while a bit vector is being built; call finalize() once all bits are set.
class RankBuilder {
 public:
  explicit RankBuilder(uint64_t n_bits) : n_bits_(n_bits), blocks_(rank_blocks_for(n_bits) * kBlockWords, 0) {}

  inline void set(uint64_t i) {
    const uint64_t off = i % kBitsPerBlock;
    blocks_[(i / kBitsPerBlock) * kBlockWords + 1 + (off >> 6)] |= uint64_t(1) << (off & 63);
  }

  // Fills the cumulative counts; returns the total number of ones.
  uint64_t finalize() {
    uint64_t total = 0;
    for (uint64_t b = 0; b < blocks_.size(); b += kBlockWords) {
      blocks_[b] = total;
      for (uint64_t k = 1; k < kBlockWords; ++k) total += __builtin_popcountll(blocks_[b + k]);
    }
    return total;
  }

  RankView view() const { return RankView{blocks_.data(), n_bits_}; }
  const std::vector<uint64_t>& blocks() const { return blocks_; }
  std::vector<uint64_t>& blocks() { return blocks_; }

 private:
  uint64_t n_bits_;
  std::vector<uint64_t> blocks_;
};

}  // namespace gemkr
