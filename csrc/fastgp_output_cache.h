// An opt-in, bounded cache of large CPU output buffers, so that their pages stay mapped
// between calls.
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
// Off unless asked for: memory a process keeps after freeing it surprises whoever reads its
// resident size, so the limit starts at 0 (every request is a fresh allocation, returned to
// the system on free) and fastgp/backends/cpp.py sets it from FASTGP_CPU_CACHE_MB when it
// loads this library.
//
// What is cached: only buffers of at least kMinCachedBytes (smaller ones are recycled by
// glibc's heap already), matched by exact size (a loop repeats exact shapes), while the free
// buffers held stay within the limit, and only while they keep being reused (see
// kMaxIdleRequests). A buffer that does not fit is returned to the system at once. Buffers
// held by live tensors are never counted: the cache holds only memory nobody uses.
//
// Threads: one mutex guards the free list and the counters; the system calls that map or
// unmap memory run outside it. Fork: see the handlers at the end of the class.
//
// Every allocation and free is reported to PyTorch's profiler like the default CPU
// allocator's, so torch.profiler(profile_memory=True) sees fastgp outputs.
#pragma once

#include <c10/core/Allocator.h>
#include <c10/core/Device.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <new>
#include <vector>

#if defined(__linux__)
#include <pthread.h>
#include <sys/mman.h>
#endif

namespace fastgp {

constexpr size_t kHugePage = size_t(2) << 20;

// Asks for transparent huge pages (2 MiB, one page fault each instead of 512) on the whole
// 2 MiB-aligned pages inside [ptr, ptr + bytes), where THP is in "madvise" mode. Only a hint:
// a refusal changes nothing.
inline void advise_huge_pages(void* ptr, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const auto begin = reinterpret_cast<uintptr_t>(ptr);
  const uintptr_t first = (begin + kHugePage - 1) & ~(uintptr_t(kHugePage) - 1);
  const uintptr_t last = (begin + bytes) & ~(uintptr_t(kHugePage) - 1);
  if (last > first) {
    (void)madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
  }
#else
  (void)ptr;
  (void)bytes;
#endif
}

class OutputCache final : public c10::Allocator {
 public:
  static constexpr size_t kMinCachedBytes = size_t(4) << 20;

  // Eviction of sizes no longer requested: a free buffer not reused within this many
  // subsequent cache requests (allocations through this cache, of any size) is returned to
  // the system.
  //
  // Why a count of requests: a training step asks for a handful of large outputs (the
  // interpolation, its input gradients, one gradient per penalised tensor: 1 to 6 requests),
  // and reuse is last-freed-first, so a buffer that is part of the loop comes back within a
  // few requests; 64 leaves room for ten such steps, or for several penalties per step,
  // before a buffer counts as idle. A size the loop stopped asking for (the last, shorter
  // batch of an epoch, an evaluation pass, a changed batch size), and the surplus buffers of
  // a size after a burst, are returned after 64 requests instead of sitting within the limit
  // for the rest of the process. Counting requests rather than seconds needs no clock and no
  // thread, never frees a buffer while the process is not using fastgp (memory it then
  // wants back is one empty_output_cache() call away), and makes the bound exact to test.
  static constexpr uint64_t kMaxIdleRequests = 64;

  // The process-wide cache. Never destroyed: tensors freed during interpreter shutdown
  // may still hand their buffers back.
  static OutputCache& get() {
    static OutputCache* cache = create();
    return *cache;
  }

  c10::DataPtr allocate(size_t bytes) override {
    void* ptr = nullptr;
    std::vector<void*> idle;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ++requests_;
      ptr = take_locked(bytes);
      evict_idle_locked(idle);
      if (ptr != nullptr) {
        allocated_bytes_ += bytes;
        report(ptr, static_cast<int64_t>(bytes));
      }
    }
    release_to_system(idle);
    if (ptr == nullptr) {
      ptr = fresh(bytes);
      std::lock_guard<std::mutex> lock(mutex_);
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

  // Allocations served through the cache so far (hits and misses): the clock of eviction.
  int64_t requests() {
    std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<int64_t>(requests_);
  }

  // Sets the limit (0 turns the cache off) and returns the oldest free buffers until the
  // rest fit.
  void set_limit(size_t bytes) {
    std::vector<void*> over;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      limit_ = bytes;
      size_t keep_from = 0;
      while (keep_from < free_.size() && cached_bytes_ > limit_) {
        cached_bytes_ -= free_[keep_from].bytes;
        over.push_back(free_[keep_from].ptr);
        ++keep_from;
      }
      free_.erase(free_.begin(), free_.begin() + static_cast<std::ptrdiff_t>(keep_from));
    }
    release_to_system(over);
  }

  // Returns every free buffer to the system.
  void empty() {
    std::vector<void*> all;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      all = drop_all_locked();
    }
    release_to_system(all);
  }

 private:
  struct Block {
    void* ptr;
    size_t bytes;
  };

  struct FreeBuffer {
    void* ptr;
    size_t bytes;
    uint64_t freed_at;  // requests_ when it was handed back
  };

  OutputCache() = default;

  static OutputCache* create() {
    OutputCache* cache = new OutputCache();
    instance_ = cache;
#if defined(__linux__)
    (void)pthread_atfork(&before_fork, &after_fork_in_parent, &after_fork_in_child);
#endif
    return cache;
  }

  // 2 MiB-aligned so that the whole buffer can be backed by transparent huge pages.
  static void* fresh(size_t bytes) {
    void* ptr = nullptr;
    if (posix_memalign(&ptr, kHugePage, bytes) != 0 || ptr == nullptr) {
      throw std::bad_alloc();
    }
    advise_huge_pages(ptr, bytes);
    return ptr;
  }

  static void release_to_system(const std::vector<void*>& buffers) {
    for (void* ptr : buffers) {
      std::free(ptr);
    }
  }

  static void release(void* context) {
    Block* block = static_cast<Block*>(context);
    get().give_back(block->ptr, block->bytes);
    delete block;
  }

  void give_back(void* ptr, size_t bytes) {
    bool kept = false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      allocated_bytes_ -= bytes;
      report(ptr, -static_cast<int64_t>(bytes));
      if (cached_bytes_ + bytes <= limit_) {
        free_.push_back({ptr, bytes, requests_});
        cached_bytes_ += bytes;
        kept = true;
      }
    }
    if (!kept) {
      std::free(ptr);
    }
  }

  // The most recently freed buffer of exactly `bytes`, removed from the free list, or null.
  void* take_locked(size_t bytes) {
    for (size_t i = free_.size(); i-- > 0;) {
      if (free_[i].bytes == bytes) {
        void* ptr = free_[i].ptr;
        free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(i));
        cached_bytes_ -= bytes;
        return ptr;
      }
    }
    return nullptr;
  }

  // Moves the buffers idle for more than kMaxIdleRequests requests into `idle`. free_ is in
  // the order buffers were handed back, so they are a prefix.
  void evict_idle_locked(std::vector<void*>& idle) {
    size_t keep_from = 0;
    while (keep_from < free_.size() &&
           requests_ - free_[keep_from].freed_at > kMaxIdleRequests) {
      cached_bytes_ -= free_[keep_from].bytes;
      idle.push_back(free_[keep_from].ptr);
      ++keep_from;
    }
    free_.erase(free_.begin(), free_.begin() + static_cast<std::ptrdiff_t>(keep_from));
  }

  std::vector<void*> drop_all_locked() {
    std::vector<void*> all;
    all.reserve(free_.size());
    for (const FreeBuffer& buffer : free_) {
      all.push_back(buffer.ptr);
    }
    free_.clear();
    cached_bytes_ = 0;
    return all;
  }

  void report(void* ptr, int64_t delta) {
    c10::reportMemoryUsageToProfiler(
        ptr, delta, allocated_bytes_, allocated_bytes_ + cached_bytes_,
        c10::Device(c10::DeviceType::CPU));
  }

  // Fork safety (DataLoader workers, multiprocessing's "fork" start method). fork() copies
  // the address space but only the calling thread, so a mutex another thread held at that
  // moment would stay locked forever in the child, over a free list caught half-updated.
  // before_fork takes the mutex in the forking thread, so the fork happens between two
  // critical sections and the child's copy of the free list is consistent; both sides then
  // release it (the pattern POSIX gives for pthread_atfork: "the prepare fork handler can
  // acquire all mutex locks and the other two fork handlers can release them").
  //
  // The child then returns its copies of the free buffers. They are the child's own memory
  // (copy-on-write copies of the parent's pages, mapped in the child's address space), so
  // freeing them touches nothing of the parent's; keeping them would keep the original
  // pages referenced for as long as the child lives, so that every write of the parent into
  // a reused buffer would fault and copy each page first. Buffers of tensors alive at the
  // fork stay counted as allocated in both processes and are handed back by whichever
  // copy of a tensor dies in that process. glibc makes malloc and free usable again before
  // it runs the child handlers.
  static void before_fork() { instance_->mutex_.lock(); }

  static void after_fork_in_parent() { instance_->mutex_.unlock(); }

  static void after_fork_in_child() {
    OutputCache& cache = *instance_;
    std::vector<void*> inherited = cache.drop_all_locked();
    cache.mutex_.unlock();
    release_to_system(inherited);
  }

  // Set once by create(), before the fork handlers are registered; they never go through
  // get()'s initialisation guard.
  static inline OutputCache* instance_ = nullptr;

  std::mutex mutex_;
  std::vector<FreeBuffer> free_;  // in the order they were handed back
  size_t cached_bytes_ = 0;
  size_t allocated_bytes_ = 0;
  size_t limit_ = 0;
  uint64_t requests_ = 0;
};

}  // namespace fastgp
