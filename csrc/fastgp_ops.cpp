// CPU kernels for the torch.ops.fastgp operators (schemas defined in fastgp/ops/library.py).
//
// The semantics of each op are those of fastgp/backends/reference.py (the contract and the
// test oracle). This file validates arguments (fastgp_checks.h), arranges memory so that
// every kernel reads and writes plain contiguous runs, and spreads the work over threads
// with at::parallel_for; the inner loops live in fastgp_kernels.h.
//
// Layout. A tensor (B, *) is "row-dense" when each sample's D = numel / B elements form one
// contiguous run and samples follow each other (contiguous, channels_last, or any other
// dense permutation whose batch stride is the largest; mirrors fastgp/backends/layout.py).
// Such a tensor is processed in memory order without a copy: the norm is invariant under
// a permutation of a sample's elements, and interpolation and the backward passes are
// elementwise, so all that matters is that every tensor taking part in one elementwise op
// has the same strides. Outputs are allocated with at::empty_like(input), which keeps the
// input's strides for dense inputs, so channels_last in gives channels_last out with no
// copy. Anything else (slices with gaps, transposes that move the batch dimension,
// broadcasts, an input whose strides differ from its partner's) is first copied once into
// the output's layout; that copy is the price of an unusual layout, never of a common one.
//
// Threads and determinism. Elementwise ops split the flat element range of a tensor into
// equal parts, one per thread (each element's result does not depend on the split). The
// penalty forward splits every row into fixed chunks of kChunk elements; each chunk's sum of
// squares is computed by one thread in a fixed order and stored in its own slot, and the
// slots are combined serially in a fixed order afterwards. The result is therefore
// bitwise identical for any thread count, and a single long row (B = 1) still uses every
// thread.
//
// 64-bit indexing: every size, count and offset is int64_t (see fastgp_kernels.h).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/EmptyTensor.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/SmallVector.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "fastgp_checks.h"
#include "fastgp_kernels.h"
#include "fastgp_output_cache.h"

namespace fastgp {
namespace {

// Elements of one penalty-forward work unit (16 KiB of fp32): small enough that a batch of
// one 3x256x256 image (196,608 elements, 48 chunks) keeps two threads busy, large enough
// that the per-chunk bookkeeping is noise.
constexpr int64_t kChunk = 4096;
// Elements below which a loop stays on the calling thread: starting an OpenMP team costs a
// few microseconds, about what one thread needs for this many fp32 elements.
constexpr int64_t kGrain = 32768;

// FASTGP_DEBUG_POISON=1, read once when the library is loaded: every output buffer is
// filled with NaN before a kernel writes it, so an element a kernel forgets shows up.
const bool kPoison = [] {
  const char* value = std::getenv("FASTGP_DEBUG_POISON");
  return value != nullptr && std::strcmp(value, "1") == 0;
}();

void poison(const at::Tensor& t) {
  if (kPoison) {
    t.fill_(std::numeric_limits<double>::quiet_NaN());
  }
}

// A large output is a fresh allocation that the kernel touches for the first time; with 4 KiB
// pages the page faults cost about as much as the kernel's own memory traffic (a 64 MiB
// output is 16,384 faults). Asking for transparent huge pages (2 MiB, one fault each) on the
// aligned middle of the buffer removes most of that cost where THP is in "madvise" mode. It
// is only a hint: the memory stays PyTorch's, and a refusal changes nothing.
void prefer_huge_pages(const at::Tensor& t) {
  const size_t bytes = t.nbytes();
  if (bytes >= 4 * kHugePage) {
    advise_huge_pages(t.data_ptr(), bytes);
  }
}

// An output laid out as at::empty_like(like) (the layout the contract promises). Large
// dense outputs come from the output cache (fastgp_output_cache.h) when it is on: memory
// whose pages are already resident, where a fresh allocation would fault in and zero every
// page first.
at::Tensor new_output_like(const at::Tensor& like) {
  OutputCache& cache = OutputCache::get();
  const size_t bytes = static_cast<size_t>(like.numel()) * like.element_size();
  if (bytes >= OutputCache::kMinCachedBytes && like.is_non_overlapping_and_dense() &&
      cache.limit_bytes() > 0) {
    // Dense input: empty_like would copy its strides too.
    return at::detail::empty_strided_generic(
        like.sizes(), like.strides(), &cache, c10::DispatchKeySet(c10::DispatchKey::CPU),
        like.scalar_type());
  }
  at::Tensor out = at::empty_like(like);
  prefer_huge_pages(out);
  return out;
}

// True when each sample's elements are one contiguous run and samples are back to back
// (see the file comment); mirrors fastgp.backends.layout.rows_view.
bool is_row_dense(const at::Tensor& t) {
  const int64_t batch = t.size(0);
  const int64_t numel = t.numel();
  if (batch == 0 || numel == 0) {
    return false;
  }
  const int64_t row_length = numel / batch;
  if (t.dim() == 1) {
    return t.stride(0) == 1;
  }
  if (batch > 1 && t.stride(0) != row_length) {
    return false;
  }
  c10::SmallVector<std::pair<int64_t, int64_t>, 8> dims;  // (stride, size), size > 1
  for (int64_t i = 1; i < t.dim(); ++i) {
    if (t.size(i) != 1) {
      dims.emplace_back(t.stride(i), t.size(i));
    }
  }
  std::sort(dims.begin(), dims.end());
  int64_t expected = 1;
  for (const auto& [stride, size] : dims) {
    if (stride != expected) {
      return false;
    }
    expected *= size;
  }
  return true;
}

// Same sizes and the same strides on every dimension that has more than one element, so
// element k of one tensor's memory is element k of the other's.
bool same_layout(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes()) {
    return false;
  }
  for (int64_t i = 0; i < a.dim(); ++i) {
    if (a.size(i) > 1 && a.stride(i) != b.stride(i)) {
      return false;
    }
  }
  return true;
}

// The buffer a kernel writes for output `out`: `out` itself when it is row-dense (always,
// unless `out` copies the strides of a dense input whose batch dimension is not outermost),
// else a contiguous buffer that finish() copies into `out`.
at::Tensor work_buffer(const at::Tensor& out) {
  if (is_row_dense(out)) {
    return out;
  }
  at::Tensor work = at::empty(out.sizes(), out.options());
  prefer_huge_pages(work);
  return work;
}

void finish(const at::Tensor& out, const at::Tensor& work) {
  if (!out.is_same(work)) {
    out.copy_(work);
  }
}

// x's values laid out exactly like the row-dense tensor `like`: x itself when the layouts
// already match (no copy), else one copy into like's strides.
at::Tensor with_layout_of(const at::Tensor& x, const at::Tensor& like) {
  if (same_layout(x, like)) {
    return x;
  }
  at::Tensor copy = new_output_like(like);
  copy.copy_(x);
  return copy;
}

// Elementwise loops over a (rows, row_length) row-dense layout, split over threads.
template <typename F>
void parallel_row_segments(int64_t rows, int64_t row_length, const F& f) {
  at::parallel_for(0, rows * row_length, kGrain, [&](int64_t first, int64_t last) {
    for_each_row_segment(first, last, row_length, f);
  });
}

// ---------------------------------------------------------------------------------------
// interpolate: x_hat[i] = alpha[i] * real[i] + (1 - alpha[i]) * fake[i].
// Bytes: reads 2 N sizeof(T) + B sizeof(Acc), writes N sizeof(T) (N = numel): one pass,
// against 4-5 passes for eager PyTorch (two casts, two products and a sum, each a tensor).
// Derivatives (interpolate_backward): d x_hat / d real = alpha, d x_hat / d fake = 1 - alpha.
at::Tensor interpolate_cpu(const at::Tensor& real, const at::Tensor& fake, const at::Tensor& alpha) {
  check_interpolate(real, fake, alpha);

  at::Tensor out = new_output_like(real);
  at::Tensor work = work_buffer(out);
  poison(work);
  const at::Tensor real_w = with_layout_of(real, work);
  const at::Tensor fake_w = with_layout_of(fake, work);
  const int64_t rows = real.size(0);
  const int64_t row_length = real.numel() / rows;
  const int64_t alpha_stride = alpha.stride(0);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, real.scalar_type(), "fastgp_interpolate", [&] {
        using T = scalar_t;
        using Acc = at::opmath_type<T>;
        const T* r = real_w.const_data_ptr<T>();
        const T* f = fake_w.const_data_ptr<T>();
        const Acc* a = alpha.const_data_ptr<Acc>();
        T* o = work.mutable_data_ptr<T>();
        parallel_row_segments(rows, row_length, [&](int64_t row, int64_t begin, int64_t end) {
          const Acc w = a[row * alpha_stride];
          blend<T, Acc>(r + begin, f + begin, w, Acc(1) - w, o + begin, end - begin);
        });
      });
  finish(out, work);
  return out;
}

// interpolate_backward: grad_real = alpha * grad_out, grad_fake = (1 - alpha) * grad_out.
// Bytes: reads N sizeof(T) + B sizeof(Acc), writes N sizeof(T) per requested gradient: one
// read of grad_out serves both outputs.
std::vector<at::Tensor> interpolate_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& alpha, bool need_real, bool need_fake) {
  check_interpolate_backward(grad_out, alpha);
  std::vector<at::Tensor> outs;
  if (!need_real && !need_fake) {
    return outs;
  }
  at::Tensor grad_real = need_real ? new_output_like(grad_out) : at::Tensor();
  at::Tensor grad_fake = need_fake ? new_output_like(grad_out) : at::Tensor();
  at::Tensor work_real = need_real ? work_buffer(grad_real) : at::Tensor();
  // Both outputs come from empty_like(grad_out), so they share one layout.
  at::Tensor work_fake = need_fake ? work_buffer(grad_fake) : at::Tensor();
  const at::Tensor& work_first = need_real ? work_real : work_fake;
  if (need_real) {
    poison(work_real);
  }
  if (need_fake) {
    poison(work_fake);
  }
  const at::Tensor go = with_layout_of(grad_out, work_first);
  const int64_t rows = grad_out.size(0);
  const int64_t row_length = grad_out.numel() / rows;
  const int64_t alpha_stride = alpha.stride(0);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad_out.scalar_type(), "fastgp_interpolate_backward", [&] {
        using T = scalar_t;
        using Acc = at::opmath_type<T>;
        const T* g = go.const_data_ptr<T>();
        const Acc* a = alpha.const_data_ptr<Acc>();
        T* out_real = need_real ? work_real.mutable_data_ptr<T>() : nullptr;
        T* out_fake = need_fake ? work_fake.mutable_data_ptr<T>() : nullptr;
        parallel_row_segments(rows, row_length, [&](int64_t row, int64_t begin, int64_t end) {
          const Acc w = a[row * alpha_stride];
          const int64_t n = end - begin;
          if (out_real != nullptr && out_fake != nullptr) {
            scale_twice<T, Acc>(g + begin, w, Acc(1) - w, out_real + begin, out_fake + begin, n);
          } else if (out_real != nullptr) {
            scale<T, Acc>(g + begin, w, out_real + begin, n);
          } else {
            scale<T, Acc>(g + begin, Acc(1) - w, out_fake + begin, n);
          }
        });
      });
  if (need_real) {
    finish(grad_real, work_real);
    outs.push_back(std::move(grad_real));
  }
  if (need_fake) {
    finish(grad_fake, work_fake);
    outs.push_back(std::move(grad_fake));
  }
  return outs;
}

// One gradient tensor as (rows, row_length) raw memory.
struct RowsOf {
  at::Tensor keep;  // the tensor `data` points into (a contiguous copy when needed)
  int64_t row_length;
  int64_t chunks_per_row;  // ceil(row_length / kChunk)
  int64_t first_slot;      // index of this tensor's first chunk sum in the slot array
};

// ---------------------------------------------------------------------------------------
// penalty_forward: norms[i] = sqrt(sum_{j in group i} sum g_j**2) * (inv_scale / grad_scale),
// penalty = lambda_gp * mean_i h(norms[i] - center), h(d) = d**2 (max(d, 0)**2 one-sided).
// Bytes: reads N sizeof(T) once (all of grads), writes (B // pac + 1) sizeof(Acc) plus one
// Acc per kChunk elements of scratch; eager PyTorch casts, squares, sums and concatenates
// in separate passes.
// The loss scale the gradients carry, in Acc (1 when there is none): a CPU scalar.
template <typename Acc>
Acc loss_scale_of(const std::optional<at::Tensor>& grad_scale) {
  if (!grad_scale.has_value() || !grad_scale->defined()) {
    return Acc(1);
  }
  return grad_scale->item().template to<Acc>();
}

bool has_scale(const std::optional<at::Tensor>& grad_scale) {
  return grad_scale.has_value() && grad_scale->defined();
}

// max(d, 0) that keeps a NaN a NaN (std::max's result for NaN depends on argument order):
// a non-finite gradient must make the one-sided penalty non-finite, as in the reference.
template <typename Acc>
Acc clamp_at_zero(Acc d) {
  return d < Acc(0) ? Acc(0) : d;
}

std::tuple<at::Tensor, at::Tensor> penalty_forward_cpu(
    at::TensorList grads, const std::optional<at::Tensor>& grad_scale, double inv_scale,
    double lambda_gp, double center, bool one_sided, int64_t pac) {
  check_penalty(grads, grad_scale, pac);
  const int64_t rows = grads[0].size(0);
  const int64_t groups = rows / pac;
  const auto dtype = grads[0].scalar_type();
  const auto acc_options = grads[0].options().dtype(accumulation_type(dtype));

  c10::SmallVector<RowsOf, 4> inputs;
  int64_t slots = 0;
  int64_t total = 0;
  for (const at::Tensor& g : grads) {
    // A gradient that is not row-dense is copied once into contiguous memory; the norm
    // needs each sample as one run.
    at::Tensor keep = is_row_dense(g) ? g : g.contiguous();
    const int64_t row_length = g.numel() / rows;
    const int64_t chunks = (row_length + kChunk - 1) / kChunk;
    inputs.push_back(RowsOf{std::move(keep), row_length, chunks, slots});
    slots += rows * chunks;
    total += rows * row_length;
  }

  at::Tensor norms = at::empty({groups}, acc_options);
  at::Tensor penalty = at::empty({}, acc_options);
  poison(norms);
  poison(penalty);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fastgp_penalty_forward", [&] {
    using T = scalar_t;
    using Acc = at::opmath_type<T>;
    // Slot u holds the sum of squares of one chunk: slot first_slot + row * chunks + c.
    std::vector<Acc> sums(static_cast<size_t>(slots));
    // Data pointers read once: const_data_ptr<T>() checks the dtype on every call.
    c10::SmallVector<const T*, 4> data_of;
    for (const RowsOf& in : inputs) {
      data_of.push_back(in.keep.const_data_ptr<T>());
    }
    const int64_t per_slot = std::max<int64_t>(1, total / slots);
    const int64_t grain = std::max<int64_t>(1, kGrain / per_slot);
    at::parallel_for(0, slots, grain, [&](int64_t first, int64_t last) {
      size_t k = 0;
      for (int64_t u = first; u < last; ++u) {
        while (k + 1 < inputs.size() && u >= inputs[k + 1].first_slot) {
          ++k;
        }
        const RowsOf& in = inputs[k];
        const int64_t local = u - in.first_slot;
        // One chunk per row (rows up to kChunk elements, the common case) needs no division.
        const bool whole_rows = in.chunks_per_row == 1;
        const int64_t row = whole_rows ? local : local / in.chunks_per_row;
        const int64_t begin = whole_rows ? 0 : (local % in.chunks_per_row) * kChunk;
        const int64_t n = std::min(kChunk, in.row_length - begin);
        const T* data = data_of[k] + row * in.row_length + begin;
        sums[static_cast<size_t>(u)] = sum_of_squares<T, Acc>(data, n);
      }
    });
    // Fixed-order combination: groups, then rows of the group, then tensors, then chunks.
    Acc* norms_out = norms.mutable_data_ptr<Acc>();
    // inv_scale / grad_scale once, as reference.penalty_forward computes it.
    const Acc scale = has_scale(grad_scale)
                          ? static_cast<Acc>(inv_scale) / loss_scale_of<Acc>(grad_scale)
                          : static_cast<Acc>(inv_scale);
    const Acc center_acc = static_cast<Acc>(center);
    Acc h_sum = 0;
    for (int64_t i = 0; i < groups; ++i) {
      Acc s = 0;
      for (int64_t row = i * pac; row < (i + 1) * pac; ++row) {
        for (const RowsOf& in : inputs) {
          const Acc* chunk = sums.data() + in.first_slot + row * in.chunks_per_row;
          for (int64_t c = 0; c < in.chunks_per_row; ++c) {
            s += chunk[c];
          }
        }
      }
      const Acc norm = std::sqrt(s) * scale;
      norms_out[i] = norm;
      Acc d = norm - center_acc;
      if (one_sided) {
        d = clamp_at_zero(d);
      }
      h_sum += d * d;
    }
    *penalty.mutable_data_ptr<Acc>() =
        static_cast<Acc>(lambda_gp) * (h_sum / static_cast<Acc>(groups));
  });
  return std::make_tuple(std::move(penalty), std::move(norms));
}

// ---------------------------------------------------------------------------------------
// penalty_backward: dP/dg = d_i / norms[i] * u * g, u = grad_penalty * 2 lambda_gp
// inv_scale**2 / G (/ grad_scale**2), d_i = norms[i] - center (clamped at 0 one-sided),
// G = B // pac, i = sample // pac, and coefficient 0 where norms[i] == 0 exactly (the
// subgradient PyTorch's norm backward uses; a NaN norm gives a NaN coefficient).
// Bytes: reads N sizeof(T) + (G + 1) sizeof(Acc), writes N sizeof(T): one pass per tensor.
std::vector<at::Tensor> penalty_backward_cpu(
    const at::Tensor& grad_penalty, at::TensorList grads, const at::Tensor& norms,
    const std::optional<at::Tensor>& grad_scale, double inv_scale, double lambda_gp,
    double center, bool one_sided, int64_t pac) {
  check_penalty_backward(grad_penalty, grads, norms, grad_scale, pac);
  const int64_t rows = grads[0].size(0);
  const int64_t groups = rows / pac;
  const auto dtype = grads[0].scalar_type();

  std::vector<at::Tensor> outs;
  outs.reserve(grads.size());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fastgp_penalty_backward", [&] {
    using T = scalar_t;
    using Acc = at::opmath_type<T>;
    // Per-group coefficient, computed as reference.penalty_backward does: ratio d / n, then
    // times u = grad_penalty * factor (factor = 2 lambda inv_scale**2 / G rounded to Acc
    // once), divided by the loss scale squared when there is one.
    const double factor = 2.0 * lambda_gp * inv_scale * inv_scale / static_cast<double>(groups);
    Acc upstream = *grad_penalty.const_data_ptr<Acc>() * static_cast<Acc>(factor);
    if (has_scale(grad_scale)) {
      const Acc loss_scale = loss_scale_of<Acc>(grad_scale);
      upstream = upstream / (loss_scale * loss_scale);
    }
    const Acc center_acc = static_cast<Acc>(center);
    const Acc* n = norms.const_data_ptr<Acc>();
    const int64_t norms_stride = norms.stride(0);
    std::vector<Acc> coef(static_cast<size_t>(groups));
    for (int64_t i = 0; i < groups; ++i) {
      const Acc norm = n[i * norms_stride];
      Acc d = norm - center_acc;
      if (one_sided) {
        d = clamp_at_zero(d);
      }
      const Acc ratio = norm == Acc(0) ? Acc(0) : d / norm;
      coef[static_cast<size_t>(i)] = ratio * upstream;
    }
    for (const at::Tensor& g : grads) {
      at::Tensor out = new_output_like(g);
      at::Tensor work = work_buffer(out);
      poison(work);
      const at::Tensor g_w = with_layout_of(g, work);
      const int64_t row_length = g.numel() / rows;
      const T* x = g_w.const_data_ptr<T>();
      T* o = work.mutable_data_ptr<T>();
      parallel_row_segments(rows, row_length, [&](int64_t row, int64_t begin, int64_t end) {
        // (No division for the usual pac = 1: with 2-element rows it is half the work.)
        const Acc c = coef[static_cast<size_t>(pac == 1 ? row : row / pac)];
        scale<T, Acc>(x + begin, c, o + begin, end - begin);
      });
      finish(out, work);
      outs.push_back(std::move(out));
    }
  });
  return outs;
}

// ---------------------------------------------------------------------------------------
// penalty: penalty_forward with its autograd node in C++, the CPU eager fast path of
// fastgp.ops.penalty. The node is the same formula as PenaltyFunction in
// fastgp/ops/autograd.py (the one autograd definition, used everywhere else): a Python
// autograd.Function costs about 60 us more per fwd+bwd than this node (measured numbers in
// fastgp/ops/__init__.py), more than the kernels themselves for a toy critic's batch.
//
// Every pass calls the ops through the dispatcher, not the functions above: under
// create_graph the backward is fastgp::penalty_grads, the differentiable reference formula
// registered from Python (fastgp/backends/reference.py), so that formula exists once.

using OptionalTensor = std::optional<at::Tensor>;

std::tuple<at::Tensor, at::Tensor> dispatch_penalty_forward(
    at::TensorList grads, const OptionalTensor& grad_scale, double inv_scale, double lambda_gp,
    double center, bool one_sided, int64_t pac) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fastgp::penalty_forward", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(
              at::TensorList, const OptionalTensor&, double, double, double, bool, int64_t)>();
  return op.call(grads, grad_scale, inv_scale, lambda_gp, center, one_sided, pac);
}

std::vector<at::Tensor> dispatch_penalty_backward(
    const at::Tensor& grad_penalty, at::TensorList grads, const at::Tensor& norms,
    const OptionalTensor& grad_scale, double inv_scale, double lambda_gp, double center,
    bool one_sided, int64_t pac) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fastgp::penalty_backward", "")
          .typed<std::vector<at::Tensor>(
              const at::Tensor&, at::TensorList, const at::Tensor&, const OptionalTensor&, double,
              double, double, bool, int64_t)>();
  return op.call(
      grad_penalty, grads, norms, grad_scale, inv_scale, lambda_gp, center, one_sided, pac);
}

std::vector<at::Tensor> dispatch_penalty_grads(
    const at::Tensor& grad_penalty, at::TensorList grads, const OptionalTensor& grad_scale,
    double inv_scale, double lambda_gp, double center, bool one_sided, int64_t pac) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fastgp::penalty_grads", "")
          .typed<std::vector<at::Tensor>(
              const at::Tensor&, at::TensorList, const OptionalTensor&, double, double, double,
              bool, int64_t)>();
  return op.call(grad_penalty, grads, grad_scale, inv_scale, lambda_gp, center, one_sided, pac);
}

class PenaltyFunction : public torch::autograd::Function<PenaltyFunction> {
 public:
  static torch::autograd::variable_list forward(
      torch::autograd::AutogradContext* ctx, at::TensorList grads,
      const OptionalTensor& grad_scale, double inv_scale, double lambda_gp, double center,
      bool one_sided, int64_t pac) {
    auto [penalty, norms] = dispatch_penalty_forward(
        grads, grad_scale, inv_scale, lambda_gp, center, one_sided, pac);
    std::vector<at::Tensor> saved(grads.begin(), grads.end());
    saved.push_back(norms);
    const bool scaled = has_scale(grad_scale);
    if (scaled) {
      saved.push_back(*grad_scale);
    }
    ctx->save_for_backward(saved);
    ctx->saved_data["has_scale"] = scaled;
    ctx->saved_data["inv_scale"] = inv_scale;
    ctx->saved_data["lambda_gp"] = lambda_gp;
    ctx->saved_data["center"] = center;
    ctx->saved_data["one_sided"] = one_sided;
    ctx->saved_data["pac"] = pac;
    // The norms are for logging: they carry no gradient.
    ctx->mark_non_differentiable({norms});
    return {penalty, norms};
  }

  static torch::autograd::variable_list backward(
      torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grad_outputs) {
    std::vector<at::Tensor> grads = ctx->get_saved_variables();
    OptionalTensor grad_scale;
    if (ctx->saved_data["has_scale"].toBool()) {
      grad_scale = grads.back();
      grads.pop_back();
    }
    const at::Tensor norms = grads.back();
    grads.pop_back();
    const double inv_scale = ctx->saved_data["inv_scale"].toDouble();
    const double lambda_gp = ctx->saved_data["lambda_gp"].toDouble();
    const double center = ctx->saved_data["center"].toDouble();
    const bool one_sided = ctx->saved_data["one_sided"].toBool();
    const int64_t pac = ctx->saved_data["pac"].toInt();
    const at::Tensor& grad_penalty = grad_outputs[0];
    std::vector<at::Tensor> out =
        at::GradMode::is_enabled()
            ? dispatch_penalty_grads(
                  grad_penalty, grads, grad_scale, inv_scale, lambda_gp, center, one_sided, pac)
            : dispatch_penalty_backward(
                  grad_penalty, grads, norms, grad_scale, inv_scale, lambda_gp, center,
                  one_sided, pac);
    // No gradient for grad_scale, inv_scale, lambda_gp, center, one_sided, pac.
    out.resize(out.size() + 6);
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor> penalty_autograd(
    at::TensorList grads, const OptionalTensor& grad_scale, double inv_scale, double lambda_gp,
    double center, bool one_sided, int64_t pac) {
  torch::autograd::variable_list out = PenaltyFunction::apply(
      grads, grad_scale, inv_scale, lambda_gp, center, one_sided, pac);
  return std::make_tuple(std::move(out[0]), std::move(out[1]));
}

// interpolate_autograd: interpolate with its autograd node in C++, the CPU eager fast path of
// fastgp.ops.interpolate; the same formula as InterpolateFunction in fastgp/ops/autograd.py.
// Through the Python node a 16x1x28x28 fwd+bwd was 0.59-0.66x eager, through this node 1.14x
// (1 thread, autograd.grad included; the commands are in fastgp/ops/__init__.py). Under
// create_graph the backward is fastgp::interpolate_grads, the differentiable reference
// formula registered from Python.

at::Tensor dispatch_interpolate(
    const at::Tensor& real, const at::Tensor& fake, const at::Tensor& alpha) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fastgp::interpolate", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  return op.call(real, fake, alpha);
}

using InterpolateBackwardOp = c10::TypedOperatorHandle<std::vector<at::Tensor>(
    const at::Tensor&, const at::Tensor&, bool, bool)>;

InterpolateBackwardOp find_interpolate_backward(const char* name) {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow(name, "")
      .typed<std::vector<at::Tensor>(const at::Tensor&, const at::Tensor&, bool, bool)>();
}

// The fused kernel, or (differentiable: create_graph) the reference formula.
std::vector<at::Tensor> dispatch_interpolate_backward(
    bool differentiable, const at::Tensor& grad_out, const at::Tensor& alpha, bool need_real,
    bool need_fake) {
  static const InterpolateBackwardOp fused =
      find_interpolate_backward("fastgp::interpolate_backward");
  static const InterpolateBackwardOp formula =
      find_interpolate_backward("fastgp::interpolate_grads");
  return (differentiable ? formula : fused).call(grad_out, alpha, need_real, need_fake);
}

class InterpolateFunction : public torch::autograd::Function<InterpolateFunction> {
 public:
  static at::Tensor forward(
      torch::autograd::AutogradContext* ctx, const at::Tensor& real, const at::Tensor& fake,
      const at::Tensor& alpha) {
    ctx->save_for_backward({alpha});
    return dispatch_interpolate(real, fake, alpha);
  }

  static torch::autograd::variable_list backward(
      torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grad_outputs) {
    const at::Tensor alpha = ctx->get_saved_variables()[0];
    const bool need_real = ctx->needs_input_grad(0);
    const bool need_fake = ctx->needs_input_grad(1);
    std::vector<at::Tensor> grads = dispatch_interpolate_backward(
        at::GradMode::is_enabled(), grad_outputs[0], alpha, need_real, need_fake);
    torch::autograd::variable_list out(3);  // alpha gets none: see fastgp.ops.interpolate
    size_t next = 0;
    if (need_real) {
      out[0] = grads[next++];
    }
    if (need_fake) {
      out[1] = grads[next++];
    }
    return out;
  }
};

at::Tensor interpolate_autograd(
    const at::Tensor& real, const at::Tensor& fake, const at::Tensor& alpha) {
  return InterpolateFunction::apply(real, fake, alpha);
}

bool debug_poison() {
  return kPoison;
}

int64_t output_cache_bytes() {
  return OutputCache::get().cached_bytes();
}

int64_t output_cache_limit() {
  return OutputCache::get().limit_bytes();
}

int64_t output_cache_requests() {
  return OutputCache::get().requests();
}

int64_t output_cache_min_bytes() {
  return static_cast<int64_t>(OutputCache::kMinCachedBytes);
}

int64_t output_cache_max_idle_requests() {
  return static_cast<int64_t>(OutputCache::kMaxIdleRequests);
}

void set_output_cache_limit(int64_t bytes) {
  TORCH_CHECK(bytes >= 0, "fastgp: the output cache limit must be >= 0 bytes, got ", bytes);
  OutputCache::get().set_limit(static_cast<size_t>(bytes));
}

void empty_output_cache() {
  OutputCache::get().empty();
}

}  // namespace
}  // namespace fastgp

TORCH_LIBRARY_IMPL(fastgp, CPU, m) {
  m.impl("interpolate", &fastgp::interpolate_cpu);
  m.impl("interpolate_backward", &fastgp::interpolate_backward_cpu);
  m.impl("penalty_forward", &fastgp::penalty_forward_cpu);
  m.impl("penalty_backward", &fastgp::penalty_backward_cpu);
  // Below autograd (inference mode, or called from PenaltyFunction's own redispatch).
  m.impl("penalty", &fastgp::penalty_forward_cpu);
  m.impl("interpolate_autograd", &fastgp::interpolate_cpu);
}

TORCH_LIBRARY_IMPL(fastgp, AutogradCPU, m) {
  m.impl("penalty", &fastgp::penalty_autograd);
  m.impl("interpolate_autograd", &fastgp::interpolate_autograd);
}

// Introspection of the loaded build, separate from the public `fastgp` namespace.
TORCH_LIBRARY(fastgp_cpp, m) {
  m.def("debug_poison() -> bool", &fastgp::debug_poison);
  m.def("output_cache_bytes() -> int", &fastgp::output_cache_bytes);
  m.def("output_cache_limit() -> int", &fastgp::output_cache_limit);
  m.def("output_cache_requests() -> int", &fastgp::output_cache_requests);
  m.def("output_cache_min_bytes() -> int", &fastgp::output_cache_min_bytes);
  m.def("output_cache_max_idle_requests() -> int", &fastgp::output_cache_max_idle_requests);
  m.def("set_output_cache_limit(int bytes) -> ()", &fastgp::set_output_cache_limit);
  m.def("empty_output_cache() -> ()", &fastgp::empty_output_cache);
}
