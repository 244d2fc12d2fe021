// XXH64 (Yann Collet's 64-bit xxHash, written here from the published algorithm description) as a
// streaming hasher and a file checksum. It is what the KB manifest records for every file: a
// non-cryptographic checksum that runs at memory speed, so open() can verify every file by default.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

namespace gemkr {

class XXH64 {
 public:
  explicit XXH64(uint64_t seed = 0) : seed_(seed) {
    v_[0] = seed + kP1 + kP2;
    v_[1] = seed + kP2;
    v_[2] = seed;
    v_[3] = seed - kP1;
  }

  void update(const void* data, size_t n) {
    const uint8_t* p = static_cast<const uint8_t*>(data);
    total_ += n;
    if (buffered_ + n < 32) {  // not a full stripe yet
      std::memcpy(buf_ + buffered_, p, n);
      buffered_ += n;
      return;
    }
    if (buffered_) {  // complete the pending stripe
      const size_t take = 32 - buffered_;
      std::memcpy(buf_ + buffered_, p, take);
      stripe(buf_);
      p += take;
      n -= take;
      buffered_ = 0;
    }
    const uint8_t* end = p + (n & ~size_t(31));
    for (; p < end; p += 32) stripe(p);
    buffered_ = n & 31;
    std::memcpy(buf_, p, buffered_);
  }

  uint64_t digest() const {
    uint64_t h;
    if (total_ >= 32) {
      h = rotl(v_[0], 1) + rotl(v_[1], 7) + rotl(v_[2], 12) + rotl(v_[3], 18);
      for (uint64_t v : v_) h = (h ^ round(0, v)) * kP1 + kP4;
    } else {
      h = seed_ + kP5;
    }
    h += total_;
    const uint8_t* p = buf_;
    size_t n = buffered_;
    for (; n >= 8; n -= 8, p += 8) h = rotl(h ^ round(0, read64(p)), 27) * kP1 + kP4;
    if (n >= 4) {
      h = rotl(h ^ (uint64_t(read32(p)) * kP1), 23) * kP2 + kP3;
      n -= 4;
      p += 4;
    }
    for (; n; --n, ++p) h = rotl(h ^ (uint64_t(*p) * kP5), 11) * kP1;
    h ^= h >> 33;
    h *= kP2;
    h ^= h >> 29;
    h *= kP3;
    h ^= h >> 32;
    return h;
  }

  static uint64_t hash(const void* data, size_t n, uint64_t seed = 0) {
    XXH64 x(seed);
    x.update(data, n);
    return x.digest();
  }

 private:
  static constexpr uint64_t kP1 = 0x9E3779B185EBCA87ULL;
  static constexpr uint64_t kP2 = 0xC2B2AE3D27D4EB4FULL;
  static constexpr uint64_t kP3 = 0x165667B19E3779F9ULL;
  static constexpr uint64_t kP4 = 0x85EBCA77C2B2AE63ULL;
  static constexpr uint64_t kP5 = 0x27D4EB2F165667C5ULL;

  static uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
  static uint64_t read64(const uint8_t* p) {
    uint64_t v;
    std::memcpy(&v, p, 8);  // little-endian hosts only (x86-64, aarch64), as the index files are
    return v;
  }
  static uint32_t read32(const uint8_t* p) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
  }
  static uint64_t round(uint64_t acc, uint64_t input) { return rotl(acc + input * kP2, 31) * kP1; }

  void stripe(const uint8_t* p) {
    v_[0] = round(v_[0], read64(p));
    v_[1] = round(v_[1], read64(p + 8));
    v_[2] = round(v_[2], read64(p + 16));
    v_[3] = round(v_[3], read64(p + 24));
  }

  uint64_t seed_;
  uint64_t v_[4];
  uint8_t buf_[32] = {0};
  size_t buffered_ = 0;
  uint64_t total_ = 0;
};

// XXH64 of a whole file. The file is memory-mapped and hashed straight from the page cache (a read()
// into a buffer would copy every byte once more and halve the speed), in windows of 64 MiB so that
// the address space stays small. Throws std::runtime_error if the file cannot be read.
inline uint64_t xxh64_file(const std::string& path, uint64_t* bytes_read = nullptr) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw std::runtime_error("cannot open " + path + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw std::runtime_error("cannot stat " + path + ": " + std::strerror(err));
  }
  const uint64_t size = uint64_t(st.st_size);
  constexpr uint64_t kWindow = uint64_t(64) << 20;
#ifdef MAP_POPULATE
  constexpr int kFlags = MAP_PRIVATE | MAP_POPULATE;  // fault the window in at once
#else
  constexpr int kFlags = MAP_PRIVATE;
#endif
  XXH64 h;
  for (uint64_t off = 0; off < size; off += kWindow) {
    const size_t n = size_t(std::min(kWindow, size - off));
    void* p = ::mmap(nullptr, n, PROT_READ, kFlags, fd, off_t(off));
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      throw std::runtime_error("cannot map " + path + ": " + std::strerror(err));
    }
    ::madvise(p, n, MADV_SEQUENTIAL | MADV_WILLNEED);
    h.update(p, n);
    ::munmap(p, n);
  }
  ::close(fd);
  if (bytes_read) *bytes_read = size;
  return h.digest();
}

}  // namespace gemkr
