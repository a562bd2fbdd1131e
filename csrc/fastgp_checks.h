// Argument checks of the C++ CPU kernels: the op contract of fastgp/validation.py, message
// for message (tests/test_checks_agree.py runs both on every bad input and compares type
// and text). Shape and device problems raise ValueError (TORCH_CHECK_VALUE), dtype problems
// TypeError (TORCH_CHECK_TYPE); dtypes print as torch.float32 and shapes as [2, 3], as in
// Python. Keep the order of the checks the same as there: with several problems, both
// sides must name the same one.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <optional>
#include <string>

namespace fastgp {

inline c10::ScalarType accumulation_type(c10::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

// "torch.float32", as str(torch.float32) prints in Python.
inline std::string dtype_name(c10::ScalarType dtype) {
  return "torch." + std::string(c10::getDtypeNames(dtype).first);
}

inline bool is_kernel_dtype(c10::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
         dtype == at::kBFloat16;
}

// A floating (B, *) tensor with B >= 1 and at least one element per sample.
inline void check_rows(const at::Tensor& t, const std::string& name) {
  TORCH_CHECK_VALUE(t.defined(), "fastgp: `", name, "` is an undefined tensor");
  TORCH_CHECK_TYPE(
      is_kernel_dtype(t.scalar_type()), "fastgp: `", name,
      "` must be float32, float64, float16 or bfloat16, got ", dtype_name(t.scalar_type()));
  TORCH_CHECK_VALUE(
      t.dim() >= 1, "fastgp: `", name, "` must have a batch dimension (B, *), got a 0-dim tensor");
  TORCH_CHECK_VALUE(
      t.size(0) >= 1, "fastgp: `", name, "` is an empty batch (shape ", t.sizes(),
      "); need B >= 1");
  TORCH_CHECK_VALUE(
      t.numel() >= 1, "fastgp: `", name, "` has samples with no elements (shape ", t.sizes(), ")");
}

// `values` is (count,) in the accumulation dtype of `like`, on its device.
inline void check_per_sample(
    const at::Tensor& values, const char* name, int64_t count, const at::Tensor& like,
    const char* like_name) {
  TORCH_CHECK_VALUE(values.defined(), "fastgp: `", name, "` is an undefined tensor");
  TORCH_CHECK_VALUE(
      values.device() == like.device(), "fastgp: `", name, "` must be on the device of `",
      like_name, "` (", like.device(), "), got ", values.device());
  TORCH_CHECK_VALUE(
      values.dim() == 1 && values.size(0) == count, "fastgp: `", name, "` must have shape (",
      count, ",), got ", values.sizes());
  const auto acc = accumulation_type(like.scalar_type());
  TORCH_CHECK_TYPE(
      values.scalar_type() == acc, "fastgp: `", name, "` must be ", dtype_name(acc), " for ",
      dtype_name(like.scalar_type()), " `", like_name, "` (the accumulation dtype), got ",
      dtype_name(values.scalar_type()));
}

inline void check_interpolate(
    const at::Tensor& real, const at::Tensor& fake, const at::Tensor& alpha) {
  check_rows(real, "real");
  TORCH_CHECK_VALUE(fake.defined(), "fastgp: `fake` is an undefined tensor");
  TORCH_CHECK_VALUE(
      fake.device() == real.device(), "fastgp: `fake` must be on the device of `real` (",
      real.device(), "), got ", fake.device());
  TORCH_CHECK_TYPE(
      fake.scalar_type() == real.scalar_type(), "fastgp: `fake` must have the dtype of `real` (",
      dtype_name(real.scalar_type()), "), got ", dtype_name(fake.scalar_type()));
  TORCH_CHECK_VALUE(
      fake.sizes() == real.sizes(), "fastgp: `fake` must have the shape of `real` ", real.sizes(),
      ", got ", fake.sizes());
  check_per_sample(alpha, "alpha", real.size(0), real, "real");
}

inline void check_interpolate_backward(const at::Tensor& grad_out, const at::Tensor& alpha) {
  check_rows(grad_out, "grad_out");
  check_per_sample(alpha, "alpha", grad_out.size(0), grad_out, "grad_out");
}

inline std::string grads_name(size_t index, size_t count) {
  return count == 1 ? std::string("grads") : "grads[" + std::to_string(index) + "]";
}

inline void check_penalty(
    at::TensorList grads, const std::optional<at::Tensor>& grad_scale, int64_t pac) {
  TORCH_CHECK_VALUE(!grads.empty(), "fastgp: `grads` must hold at least one tensor");
  const at::Tensor& first = grads[0];
  for (size_t k = 0; k < grads.size(); ++k) {
    const std::string name = grads_name(k, grads.size());
    const at::Tensor& g = grads[k];
    check_rows(g, name);
    if (k == 0) {
      continue;
    }
    TORCH_CHECK_VALUE(
        g.device() == first.device(), "fastgp: `", name, "` is on ", g.device(),
        " but `grads[0]` is on ", first.device());
    TORCH_CHECK_TYPE(
        g.scalar_type() == first.scalar_type(), "fastgp: `", name, "` has dtype ",
        dtype_name(g.scalar_type()), " but `grads[0]` has ", dtype_name(first.scalar_type()));
    TORCH_CHECK_VALUE(
        g.size(0) == first.size(0), "fastgp: `", name, "` has batch size ", g.size(0),
        " but `grads[0]` has ", first.size(0), "; every gradient needs the same batch size");
  }
  TORCH_CHECK_VALUE(pac >= 1, "fastgp: `pac` must be a positive integer, got ", pac);
  TORCH_CHECK_VALUE(
      first.size(0) % pac == 0, "fastgp: `pac`=", pac, " must divide the batch size B=",
      first.size(0));
  if (grad_scale.has_value() && grad_scale->defined()) {
    const at::Tensor& s = *grad_scale;
    TORCH_CHECK_VALUE(
        s.device() == first.device(),
        "fastgp: `grad_scale` must be on the device of the gradients (", first.device(),
        "), got ", s.device());
    TORCH_CHECK_TYPE(
        s.is_floating_point(), "fastgp: `grad_scale` must be a floating-point tensor, got ",
        dtype_name(s.scalar_type()));
    TORCH_CHECK_VALUE(
        s.numel() == 1, "fastgp: `grad_scale` must have one element, got shape ", s.sizes());
  }
}

inline void check_penalty_backward(
    const at::Tensor& grad_penalty, at::TensorList grads, const at::Tensor& norms,
    const std::optional<at::Tensor>& grad_scale, int64_t pac) {
  check_penalty(grads, grad_scale, pac);
  const at::Tensor& first = grads[0];
  const auto acc = accumulation_type(first.scalar_type());
  TORCH_CHECK_VALUE(grad_penalty.defined(), "fastgp: `grad_penalty` is an undefined tensor");
  TORCH_CHECK_VALUE(
      grad_penalty.device() == first.device(),
      "fastgp: `grad_penalty` must be on the device of the gradients (", first.device(),
      "), got ", grad_penalty.device());
  TORCH_CHECK_VALUE(
      grad_penalty.numel() == 1, "fastgp: `grad_penalty` must have one element, got shape ",
      grad_penalty.sizes());
  TORCH_CHECK_TYPE(
      grad_penalty.scalar_type() == acc, "fastgp: `grad_penalty` must be ", dtype_name(acc),
      " for ", dtype_name(first.scalar_type()), " `grads`, got ",
      dtype_name(grad_penalty.scalar_type()));
  check_per_sample(norms, "norms", first.size(0) / pac, first, "grads");
}

}  // namespace fastgp
