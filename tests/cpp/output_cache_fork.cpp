// fork() while another thread allocates and frees through fastgp's CPU output cache.
//
// Built and run by tests/test_cpp_output_cache.py. A C++ loop holds the cache's mutex for a
// large share of its time, so many of the forks below land while the other thread holds it:
// without the cache's fork handlers a child then hangs on its first allocation (the alarm
// kills it) or finds the parent's free buffers in its copy of the cache. Prints one line of
// counts; exits 0 only if every child ran to completion.
#include "fastgp_output_cache.h"

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <thread>

int main() {
  constexpr size_t kMiB = size_t(1) << 20;
  constexpr int kForks = 200;
  constexpr unsigned kChildSeconds = 10;  // a child alive longer is stuck
  fastgp::OutputCache& cache = fastgp::OutputCache::get();
  cache.set_limit(64 * kMiB);
  std::atomic<bool> stop{false};
  std::atomic<long> cycles{0};
  std::thread user([&] {
    while (!stop.load()) {
      c10::DataPtr a = cache.allocate(4 * kMiB);
      c10::DataPtr b = cache.allocate(8 * kMiB);
      ++cycles;
    }
  });
  int hung = 0;
  int wrong = 0;
  for (int i = 0; i < kForks; ++i) {
    const pid_t pid = fork();
    if (pid == 0) {
      alarm(kChildSeconds);
      bool ok = cache.cached_bytes() == 0;  // the inherited free buffers were returned
      {
        c10::DataPtr p = cache.allocate(4 * kMiB);
        static_cast<char*>(p.get())[0] = 1;
      }
      ok = ok && cache.cached_bytes() == static_cast<int64_t>(4 * kMiB);
      _exit(ok ? 0 : 1);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFSIGNALED(status)) {
      ++hung;
    } else if (WEXITSTATUS(status) != 0) {
      ++wrong;
    }
  }
  stop.store(true);
  user.join();
  // The parent's cache after all that: the other thread's two buffers, nothing lost.
  const bool parent_ok = cache.cached_bytes() == static_cast<int64_t>(12 * kMiB);
  std::printf(
      "forks %d hung %d wrong %d parent_ok %d cycles %ld\n", kForks, hung, wrong,
      parent_ok ? 1 : 0, cycles.load());
  return (hung == 0 && wrong == 0 && parent_ok) ? 0 : 1;
}
