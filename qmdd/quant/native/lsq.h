// LSQ fake quantization in one pass forward and one pass backward, for one step per
// tensor (activations) or one step per slice along dim 0 (weights: per output channel).
// The Python chain it replaces is qmdd/quant/_lsq.py's _LSQFakeQuant, whose docstring
// derives the formulas.
#pragma once

#include "common.h"

#include <cmath>
#include <tuple>

namespace qmdd_native {

// out = round(clip(x / s, lo, hi)) * s on [0, n), rounding half to even as torch.round.
inline void lsq_forward_range(const float* __restrict__ in, float* __restrict__ out, int64_t n, float s, float lo, float hi) {
  for (int64_t i = 0; i < n; ++i) {
    out[i] = std::nearbyint(clip(in[i] / s, lo, hi)) * s;
  }
}

// grad_x = grad * [lo <= x / s <= hi] on [0, n), as the chain's product with a 0/1 mask
// (a NaN or infinite gradient outside the range stays NaN); returns the step gradient's
// sum(grad * out) - sum(grad_x * x), with out found again from x as the forward computes
// it (the same bits; cheaper than reading the output back from memory).
// With a clamp (activations only) the sums take the clamped input, and grad_x then goes
// through the clamp's mask.
inline double lsq_backward_range(const float* __restrict__ g, const float* __restrict__ x, float* __restrict__ gx, int64_t n, float s,
                                 float lo, float hi, InputClamp clamp = {false, 0.0f}) {
  double total = 0.0;
  float buffer[kFlush];
  for (int64_t start = 0; start < n; start += kFlush) {
    const int64_t count = std::min(n, start + kFlush) - start;
    const float* __restrict__ in = clamp.apply(x + start, buffer, count);
    const float* __restrict__ gb = g + start;
    float* __restrict__ gxb = gx + start;
    total += lane_sum(0, count, [&](int64_t i) {
      const float v = in[i] / s;
      const float gi = gb[i] * static_cast<float>((v >= lo) & (v <= hi));  // branch-free: vectorises
      gxb[i] = gi;
      return gb[i] * (std::nearbyint(clip(v, lo, hi)) * s) - gi * in[i];
    });
    clamp.mask(in, gxb, count);
  }
  return total;
}

inline torch::Tensor float_steps(const torch::Tensor& x, const torch::Tensor& step) {
  auto steps = step.to(at::kFloat).contiguous();
  TORCH_CHECK(steps.numel() == 1 || (x.dim() > 0 && x.size(0) == steps.numel()),
              "qmdd native LSQ: one step, or one per slice of dim 0");
  return steps;
}

// x: any shape; step: 1 element (per tensor) or x.size(0) elements (per slice of dim 0);
// ceiling > 0: an InputClamp in front (one step per tensor only).
inline torch::Tensor lsq_forward(const torch::Tensor& x, const torch::Tensor& step, int64_t qmin, int64_t qmax, double ceiling) {
  check(x, "x");
  const auto steps = float_steps(x, step);
  const int64_t slices = steps.numel(), n = x.numel();
  auto out = torch::empty_like(x);
  const float *in = x.data_ptr<float>(), *s = steps.data_ptr<float>();
  float* result = out.data_ptr<float>();
  const float lo = static_cast<float>(qmin), hi = static_cast<float>(qmax);
  const InputClamp clamp = input_clamp(ceiling);
  TORCH_CHECK(!clamp.on || slices == 1, "qmdd native LSQ: an input clamp needs one step per tensor");
  if (slices == 1) {
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      float buffer[kFlush];
      for (int64_t start = begin; start < end; start += kFlush) {
        const int64_t count = std::min(end, start + kFlush) - start;
        lsq_forward_range(clamp.apply(in + start, buffer, count), result + start, count, s[0], lo, hi);
      }
    });
  } else {
    const int64_t inner = n / slices;
    parallel_slices(slices, inner, [&](int64_t c) { lsq_forward_range(in + c * inner, result + c * inner, inner, s[c], lo, hi); });
  }
  return out;
}

// Returns grad_x and, per step, sum(grad * out) - sum(grad_x * x) (float64).
inline std::tuple<torch::Tensor, torch::Tensor> lsq_backward(const torch::Tensor& grad, const torch::Tensor& x, const torch::Tensor& step,
                                                             int64_t qmin, int64_t qmax, double ceiling) {
  check(x, "x");
  check_like(grad, x, "grad");
  const auto steps = float_steps(x, step);
  const int64_t slices = steps.numel(), n = x.numel();
  auto grad_x = torch::empty_like(x);
  const float *g = grad.data_ptr<float>(), *in = x.data_ptr<float>(), *s = steps.data_ptr<float>();
  float* gx = grad_x.data_ptr<float>();
  const float lo = static_cast<float>(qmin), hi = static_cast<float>(qmax);
  const InputClamp clamp = input_clamp(ceiling);
  TORCH_CHECK(!clamp.on || slices == 1, "qmdd native LSQ: an input clamp needs one step per tensor");
  if (slices == 1) {
    auto sums = chunked_sums(n, 1, [&](int64_t begin, int64_t end, double* partial) {
      partial[0] += lsq_backward_range(g + begin, in + begin, gx + begin, end - begin, s[0], lo, hi, clamp);
    });
    return {grad_x, sums};
  }
  auto sums = torch::empty({slices}, x.options().dtype(at::kDouble));
  double* total = sums.data_ptr<double>();
  const int64_t inner = n / slices;
  parallel_slices(slices, inner, [&](int64_t c) {
    const int64_t offset = c * inner;
    total[c] = lsq_backward_range(g + offset, in + offset, gx + offset, inner, s[c], lo, hi);
  });
  return {grad_x, sums};
}

}  // namespace qmdd_native
