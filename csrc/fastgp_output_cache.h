// A bounded cache of large CPU output buffers, so that their pages stay mapped between calls.
//
// Why: PyTorch's CPU allocator hands every allocation above glibc's mmap threshold (at most
// 32 MiB) to the kernel and returns it on free, so a fresh 64 MiB output is 64 MiB of pages
// the kernel must fault in and zero before the first write. On this project's 2-core VM that
// costs ~17 ms for 64 MiB, ten times the kernel's own memory traffic (measured:
// `torch.empty_like(g).fill_(1)` against `g.fill_(1)` on 16.8M fp32). A training loop frees
// its penalty gradient and its interpolation every step and asks for the same sizes again,
// so a buffer kept here is reused with its pages already resident, as PyTorch's CUDA caching
// allocator does on GPUs.
//
// What is cached: only buffers of at least kMinCachedBytes (smaller ones are recycled by
// glibc's heap already), matched by exact size (a loop repeats exact shapes), and only
// while the free buffers held stay within the limit (FASTGP_CPU_CACHE_MB, default 1024;
// 0 disables the cache). A buffer that does not fit is returned to the system at once.
// Buffers held by live tensors are never counted: the cache holds only memory nobody uses.
//
// Every allocation and free is reported to PyTorch's profiler like the default CPU
// allocator's, so torch.profiler(profile_memory=True) sees fastgp outputs.
#pragma once

#include <c10/core/Allocator.h>
#include <c10/core/Device.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <iterator>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace fastgp {

class OutputCache final : public c10::Allocator {
 public:
  static constexpr size_t kMinCachedBytes = size_t(4) << 20;
  static constexpr size_t kHugePage = size_t(2) << 20;

  // The process-wide cache. Never destroyed: tensors freed during interpreter shutdown
  // may still hand their buffers back.
  static OutputCache& get() {
    static OutputCache* cache = new OutputCache(limit_from_environment());
    return *cache;
  }

  c10::DataPtr allocate(size_t bytes) override {
    void* ptr = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto found = free_.find(bytes);
      if (found != free_.end() && !found->second.empty()) {
        ptr = found->second.back();
        found->second.pop_back();
        cached_bytes_ -= bytes;
      }
      if (ptr == nullptr) {
        ptr = fresh(bytes);
      }
      allocated_bytes_ += bytes;
      report(ptr, static_cast<int64_t>(bytes));
    }
    return {ptr, new Block{ptr, bytes}, &release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  // Free buffers held (not counting buffers in use), in bytes.
  int64_t cached_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<int64_t>(cached_bytes_);
  }

  int64_t limit_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<int64_t>(limit_);
  }

  // Sets the limit (0 disables caching) and returns every free buffer above it.
  void set_limit(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    limit_ = bytes;
    trim_locked();
  }

  // Returns every free buffer to the system.
  void empty() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& entry : free_) {
      for (void* ptr : entry.second) {
        std::free(ptr);
      }
    }
    free_.clear();
    cached_bytes_ = 0;
  }

 private:
  struct Block {
    void* ptr;
    size_t bytes;
  };

  explicit OutputCache(size_t limit) : limit_(limit) {}

  static size_t limit_from_environment() {
    const char* value = std::getenv("FASTGP_CPU_CACHE_MB");
    if (value == nullptr || *value == '\0') {
      return size_t(1024) << 20;
    }
    char* end = nullptr;
    const long long mb = std::strtoll(value, &end, 10);
    // An unreadable value disables the cache rather than guessing.
    return (end != nullptr && *end == '\0' && mb > 0) ? static_cast<size_t>(mb) << 20 : 0;
  }

  // 2 MiB-aligned so that the whole buffer can be backed by transparent huge pages (one
  // fault per 2 MiB instead of 512) where THP is in "madvise" mode.
  static void* fresh(size_t bytes) {
    void* ptr = nullptr;
    if (posix_memalign(&ptr, kHugePage, bytes) != 0 || ptr == nullptr) {
      throw std::bad_alloc();
    }
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    (void)madvise(ptr, (bytes + kHugePage - 1) & ~(kHugePage - 1), MADV_HUGEPAGE);
#endif
    return ptr;
  }

  static void release(void* context) {
    Block* block = static_cast<Block*>(context);
    get().give_back(block->ptr, block->bytes);
    delete block;
  }

  void give_back(void* ptr, size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    allocated_bytes_ -= bytes;
    report(ptr, -static_cast<int64_t>(bytes));
    if (cached_bytes_ + bytes <= limit_) {
      free_[bytes].push_back(ptr);
      cached_bytes_ += bytes;
    } else {
      std::free(ptr);
    }
  }

  void trim_locked() {
    for (auto it = free_.begin(); it != free_.end() && cached_bytes_ > limit_;) {
      while (!it->second.empty() && cached_bytes_ > limit_) {
        std::free(it->second.back());
        it->second.pop_back();
        cached_bytes_ -= it->first;
      }
      it = it->second.empty() ? free_.erase(it) : std::next(it);
    }
  }

  void report(void* ptr, int64_t delta) {
    c10::reportMemoryUsageToProfiler(
        ptr, delta, allocated_bytes_, allocated_bytes_ + cached_bytes_,
        c10::Device(c10::DeviceType::CPU));
  }

  std::mutex mutex_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t cached_bytes_ = 0;
  size_t allocated_bytes_ = 0;
  size_t limit_;
};

}  // namespace fastgp
