// Inner loops of the fastgp CPU kernels: plain C++ over raw memory, no ATen types.
//
// Every loop runs over one contiguous run of elements of one sample ("row segment"). The
// callers in fastgp_ops.cpp split the work into such runs and spread them over threads.
//
// Precision: T is the storage type (float, double, c10::Half, c10::BFloat16); Acc is the
// accumulation/compute type (double for double, float otherwise). Every element is widened
// to Acc once, the arithmetic happens in Acc, and the result is rounded to T once. The
// extension is compiled with -ffp-contract=off so `a * x + b * y` is two rounded products
// and a rounded sum, exactly as PyTorch's eager reference computes it (no silent FMA).
//
// Indexing: every count and offset is int64_t. A tensor may hold more than 2^31 - 1
// elements (8 GiB of fp32 is only 2^31 elements); a 32-bit index would wrap and address the
// wrong memory, so no int appears in any index computation.
#pragma once

#include <cstdint>

namespace fastgp {

// Sum of squares of x[0..n) in Acc.
//
// kLanes independent accumulators (128 bytes: 32 fp32 / 16 fp64): element i of the main
// loop always goes to lane i % kLanes, the lanes are combined in a fixed pairwise tree and
// the tail (n % kLanes elements) is summed in order and added last, so the result depends
// only on the data and n, never on the thread that runs it. The lanes break the add
// dependency chain, which lets the compiler keep several vector registers of partial sums
// in flight (SLP vectorization without -ffast-math reassociation); the tail has its own
// accumulator so that the lanes are only ever indexed by constants and stay in registers.
template <typename T, typename Acc>
inline Acc sum_of_squares(const T* __restrict x, int64_t n) {
  constexpr int64_t kLanes = 128 / static_cast<int64_t>(sizeof(Acc));
  if (n < kLanes) {
    // Short rows (a 2-D toy sample, a small tail chunk): the lane setup and the tree below
    // would cost more than the row. The result is bitwise the one the general path gives
    // for such n (all lanes stay 0, so it returns 0 + the in-order tail).
    Acc tail = 0;
    for (int64_t i = 0; i < n; ++i) {
      const Acc v = static_cast<Acc>(x[i]);
      tail += v * v;
    }
    return tail;
  }
  Acc lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int64_t k = 0; k < kLanes; ++k) {
      const Acc v = static_cast<Acc>(x[i + k]);
      lanes[k] += v * v;
    }
  }
  for (int64_t width = kLanes / 2; width > 0; width /= 2) {
    for (int64_t k = 0; k < width; ++k) {
      lanes[k] += lanes[k + width];
    }
  }
  Acc tail = 0;
  for (; i < n; ++i) {
    const Acc v = static_cast<Acc>(x[i]);
    tail += v * v;
  }
  return lanes[0] + tail;
}

// out[j] = T(a * real[j] + b * fake[j]) for j in [0, n), with b = 1 - a given by the caller.
template <typename T, typename Acc>
inline void blend(
    const T* __restrict real, const T* __restrict fake, Acc a, Acc b, T* __restrict out,
    int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    out[j] = static_cast<T>(a * static_cast<Acc>(real[j]) + b * static_cast<Acc>(fake[j]));
  }
}

// out[j] = T(c * x[j]) for j in [0, n).
template <typename T, typename Acc>
inline void scale(const T* __restrict x, Acc c, T* __restrict out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    out[j] = static_cast<T>(c * static_cast<Acc>(x[j]));
  }
}

// out_a[j] = T(a * x[j]), out_b[j] = T(b * x[j]) for j in [0, n): both interpolation
// gradients from one read of grad_out.
template <typename T, typename Acc>
inline void scale_twice(
    const T* __restrict x, Acc a, Acc b, T* __restrict out_a, T* __restrict out_b, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const Acc v = static_cast<Acc>(x[j]);
    out_a[j] = static_cast<T>(a * v);
    out_b[j] = static_cast<T>(b * v);
  }
}

// Calls f(row, begin, end) for each maximal run [begin, end) of flat element indices of
// [first, last) that lies inside one row of `row_length` elements.
template <typename F>
inline void for_each_row_segment(int64_t first, int64_t last, int64_t row_length, const F& f) {
  int64_t row = first / row_length;
  int64_t begin = first;
  while (begin < last) {
    const int64_t row_end = (row + 1) * row_length;
    const int64_t end = row_end < last ? row_end : last;
    f(row, begin, end);
    begin = end;
    ++row;
  }
}

}  // namespace fastgp
