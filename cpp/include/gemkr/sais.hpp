// Suffix array construction by induced sorting (SA-IS; Nong, Zhang and Chan, 2009) for integer alphabets.
//
// Input: T[0..n) with symbols in [0, K), where T[n-1] == 0 is a unique sentinel (smaller than all other
// symbols). Output: SA[0..n). Extra memory: n/8 bytes of type bits plus K 32-bit ints per recursion level; the
// reduced problem lives inside SA, so the peak is about 4n (T) + 4n (SA) + n/8 + 4K bytes.
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <vector>

namespace gemkr {
namespace sais_detail {

class TypeBits {  // 1 = S-type, 0 = L-type
 public:
  explicit TypeBits(int64_t n) : w_((n + 63) / 64, 0) {}
  inline void set(int64_t i) { w_[i >> 6] |= uint64_t(1) << (i & 63); }
  inline bool s(int64_t i) const { return (w_[i >> 6] >> (i & 63)) & 1; }
  inline bool lms(int64_t i) const { return i > 0 && s(i) && !s(i - 1); }

 private:
  std::vector<uint64_t> w_;
};

inline void bucket_bounds(const int32_t* T, int64_t n, int32_t K, std::vector<int32_t>& bkt, bool ends) {
  std::fill(bkt.begin(), bkt.end(), 0);
  for (int64_t i = 0; i < n; ++i) ++bkt[T[i]];
  int64_t sum = 0;
  for (int32_t c = 0; c < K; ++c) {
    sum += bkt[c];
    bkt[c] = int32_t(ends ? sum : sum - bkt[c]);
  }
}

// Sort all suffixes from the LMS suffixes already placed in SA: L-types left to right, S-types right to left.
inline void induce(const int32_t* T, int32_t* SA, int64_t n, int32_t K, const TypeBits& t,
                   std::vector<int32_t>& bkt) {
  bucket_bounds(T, n, K, bkt, false);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t j = int64_t(SA[i]) - 1;
    if (SA[i] > 0 && !t.s(j)) SA[bkt[T[j]]++] = int32_t(j);
  }
  bucket_bounds(T, n, K, bkt, true);
  for (int64_t i = n - 1; i >= 0; --i) {
    const int64_t j = int64_t(SA[i]) - 1;
    if (SA[i] > 0 && t.s(j)) SA[--bkt[T[j]]] = int32_t(j);
  }
}

inline void sais(const int32_t* T, int32_t* SA, int64_t n, int32_t K) {
  if (n == 1) {
    SA[0] = 0;
    return;
  }
  TypeBits t(n);
  t.set(n - 1);
  for (int64_t i = n - 2; i >= 0; --i)
    if (T[i] < T[i + 1] || (T[i] == T[i + 1] && t.s(i + 1))) t.set(i);

  // Stage 1: bucket the LMS suffixes by first symbol and induce an order of the LMS substrings.
  std::vector<int32_t> bkt(K);
  bucket_bounds(T, n, K, bkt, true);
  std::fill(SA, SA + n, -1);
  for (int64_t i = 1; i < n; ++i)
    if (t.lms(i)) SA[--bkt[T[i]]] = int32_t(i);
  induce(T, SA, n, K, t, bkt);

  int64_t n1 = 0;  // compact the sorted LMS positions to the front
  for (int64_t i = 0; i < n; ++i)
    if (t.lms(SA[i])) SA[n1++] = SA[i];

  // Name the LMS substrings; equal substrings get equal names. LMS positions are >= 2 apart, so pos/2
  // gives each its own slot in SA[n1..n).
  std::fill(SA + n1, SA + n, -1);
  int32_t names = 0;
  int64_t prev = -1;
  for (int64_t i = 0; i < n1; ++i) {
    const int64_t pos = SA[i];
    bool differ = false;
    for (int64_t d = 0;; ++d) {
      if (prev < 0 || T[pos + d] != T[prev + d] || t.s(pos + d) != t.s(prev + d)) {
        differ = true;
        break;
      }
      if (d > 0 && (t.lms(pos + d) || t.lms(prev + d))) break;
    }
    if (differ) {
      ++names;
      prev = pos;
    }
    SA[n1 + pos / 2] = names - 1;
  }
  for (int64_t i = n - 1, j = n - 1; i >= n1; --i)
    if (SA[i] >= 0) SA[j--] = SA[i];

  // Stage 2: sort the reduced string (recursively if names repeat).
  int32_t* s1 = SA + n - n1;
  int32_t* sa1 = SA;
  if (names < n1) {
    sais(s1, sa1, n1, names);
  } else {
    for (int64_t i = 0; i < n1; ++i) sa1[s1[i]] = int32_t(i);
  }

  // Stage 3: place the LMS suffixes in their final order and induce the rest.
  bucket_bounds(T, n, K, bkt, true);
  for (int64_t i = 1, j = 0; i < n; ++i)
    if (t.lms(i)) s1[j++] = int32_t(i);
  for (int64_t i = 0; i < n1; ++i) sa1[i] = s1[sa1[i]];
  std::fill(SA + n1, SA + n, -1);
  for (int64_t i = n1 - 1; i >= 0; --i) {
    const int32_t j = SA[i];
    SA[i] = -1;
    SA[--bkt[T[j]]] = j;
  }
  induce(T, SA, n, K, t, bkt);
}

}  // namespace sais_detail

// Suffix array of T[0..n); T[n-1] must be the unique symbol 0 and every symbol must be < K.
inline void suffix_array(const int32_t* T, int32_t* SA, int64_t n, int32_t K) {
  if (n <= 0) throw std::invalid_argument("suffix_array: empty text");
  if (n >= (int64_t(1) << 31) - 1) throw std::invalid_argument("suffix_array: text longer than 2^31-2");
  sais_detail::sais(T, SA, n, K);
}

}  // namespace gemkr
