// N2UQ activation fake quantization (qmdd/quant/_n2uq.py): the fused Python form
// _N2UQFakeQuant, whose docstring defines the bounds, the GSTE slope and the ramps, in one
// pass forward and one backward. Nothing per element is kept between them: the backward
// finds each element's code and slope again from x (n + 1 comparisons, cheaper than
// writing them out and reading them back).
#pragma once

#include "common.h"

#include <algorithm>
#include <cmath>
#include <tuple>
#include <type_traits>

namespace qmdd_native {

// One call's n thresholds, by value: the n + 1 bounds T_1 .. T_n and the end of the
// last interval (ascending), and the GSTE slope Delta / a_k of each interval. Held in
// the kernel's locals (not read through a pointer), so the element loops vectorise.
template <int64_t n>
struct N2UQGrid {
  float bound[n + 1];
  float slope[n];

  N2UQGrid(const torch::Tensor& bounds, const torch::Tensor& slopes) {
    std::copy_n(bounds.data_ptr<float>(), n + 1, bound);
    if (slopes.defined()) std::copy_n(slopes.data_ptr<float>(), n, slope);
  }
  // #{k : x >= T_k}, as the Python form sums its comparison rows (NaN compares false).
  float code(float x) const {
    float count = 0.0f;
#pragma GCC unroll 16  // unrolled, the element loop vectorises
    for (int64_t k = 0; k < n; ++k) count += static_cast<float>(x >= bound[k]);
    return count;
  }
  // Delta / a of x's interval, 0 outside [T_1, end): the Python form's chain of lerps
  // up the comparison rows (each row overwrites the slope of what lies at or above it).
  float slope_at(float x) const {
    float s = 0.0f;
#pragma GCC unroll 16
    for (int64_t k = 0; k < n; ++k) s = x >= bound[k] ? slope[k] : s;
    return x >= bound[n] ? 0.0f : s;
  }
  // The backward's per-element values on [0, count): grad_x = grad * slope and
  // grad * (code + qmin) (restrict pointers: the two stores vectorise).
  void gradient_terms(const float* __restrict__ g, const float* __restrict__ in, float* __restrict__ gx,
                      float* __restrict__ level_terms, int64_t count, float offset) const {
    const N2UQGrid local = *this;  // in registers, not read through this
    for (int64_t i = 0; i < count; ++i) {
      gx[i] = g[i] * local.slope_at(in[i]);
      level_terms[i] = g[i] * (local.code(in[i]) + offset);
    }
  }
};

// Runs body(N2UQGrid<n>) for the grid of 3, 7 or 15 thresholds (2 to 4 bits).
template <typename Body>
auto with_n2uq_grid(const torch::Tensor& bounds, const torch::Tensor& slopes, Body&& body) {
  return with_level_count(bounds.numel(), "N2UQ", [&](auto levels) { return body(N2UQGrid<decltype(levels)::value - 1>(bounds, slopes)); });
}

inline void check_values(const torch::Tensor& t, int64_t count, const char* name) {
  check(t, name);
  TORCH_CHECK(t.numel() == count, "qmdd native N2UQ: ", name, " must hold ", count, " values");
}

// out = (code + qmin) * step; ceiling > 0: an InputClamp in front.
inline torch::Tensor n2uq_forward(const torch::Tensor& x, const torch::Tensor& bounds, double step, int64_t qmin, double ceiling) {
  check(x, "x");
  check(bounds, "bounds");
  auto out = torch::empty_like(x);
  const float* in = x.data_ptr<float>();
  float* result = out.data_ptr<float>();
  const float s = static_cast<float>(step), offset = static_cast<float>(qmin);
  const InputClamp clamp = input_clamp(ceiling);
  with_n2uq_grid(bounds, torch::Tensor(), [&](const auto grid) {
    at::parallel_for(0, x.numel(), kGrain, [=](int64_t begin, int64_t end) {
      float buffer[kFlush];
      for (int64_t start = begin; start < end; start += kFlush) {
        const int64_t count = std::min(end, start + kFlush) - start;
        const float* __restrict__ block = clamp.apply(in + start, buffer, count);
        float* __restrict__ out_block = result + start;
        for (int64_t i = 0; i < count; ++i) out_block[i] = (grid.code(block[i]) + offset) * s;
      }
    });
    return 0;
  });
  return out;
}

// grad_x = grad * slope(x) and, when with_sums, the float64 sums: sum grad_x,
// sum grad * (code + qmin), then (when with_ramps) for each of the n ramps
// r_j(x) = clip((x - origin_j) / span_j, 0, 1), sum grad_x * r_j. ceiling > 0: an
// InputClamp in front (the sums take the clamped x and the quantizer's grad_x; the
// returned grad_x then goes through the clamp's mask).
inline std::tuple<torch::Tensor, torch::Tensor> n2uq_backward(const torch::Tensor& grad, const torch::Tensor& x, const torch::Tensor& bounds,
                                                              const torch::Tensor& slopes, const torch::Tensor& origins,
                                                              const torch::Tensor& spans, int64_t qmin, bool with_sums, bool with_ramps,
                                                              double ceiling) {
  check(x, "x");
  check_like(grad, x, "grad");
  check(bounds, "bounds");
  const int64_t n_thresholds = bounds.numel() - 1;
  check_values(slopes, n_thresholds, "slopes");
  check_values(origins, n_thresholds, "origins");
  check_values(spans, n_thresholds, "spans");
  const int64_t n = x.numel();
  auto grad_x = torch::empty_like(x);
  const float *g = grad.data_ptr<float>(), *in = x.data_ptr<float>();
  const float *origin = origins.data_ptr<float>(), *span = spans.data_ptr<float>();
  float* gx = grad_x.data_ptr<float>();
  const float offset = static_cast<float>(qmin);
  const InputClamp clamp = input_clamp(ceiling);
  return with_n2uq_grid(bounds, slopes, [&](const auto grid) -> std::tuple<torch::Tensor, torch::Tensor> {
    if (!with_sums) {
      at::parallel_for(0, n, kGrain, [=](int64_t begin, int64_t end) {
        float buffer[kFlush];
        for (int64_t start = begin; start < end; start += kFlush) {
          const int64_t count = std::min(end, start + kFlush) - start;
          const float* __restrict__ block = clamp.apply(in + start, buffer, count);
          const float* __restrict__ g_block = g + start;
          float* __restrict__ gx_block = gx + start;
          for (int64_t i = 0; i < count; ++i) gx_block[i] = g_block[i] * grid.slope_at(block[i]);
          clamp.mask(block, gx_block, count);
        }
      });
      return {grad_x, torch::Tensor()};
    }
    const int64_t width = 2 + (with_ramps ? n_thresholds : 0);
    auto sums = chunked_sums(n, width, [=](int64_t begin, int64_t end, double* partial) {
      // Per sub-chunk, first the per-element values (the grid's unrolled comparisons),
      // then each sum as a plain loop over them in L1: a loop with both does not
      // vectorise.
      float level_terms[kFlush], buffer[kFlush];
      for (int64_t start = begin; start < end; start += kFlush) {
        const int64_t count = std::min(end, start + kFlush) - start;
        const float* block = clamp.apply(in + start, buffer, count);
        float* gx_block = gx + start;
        grid.gradient_terms(g + start, block, gx_block, level_terms, count, offset);
        partial[0] += lane_sum(0, count, [=](int64_t i) { return gx_block[i]; });
        partial[1] += lane_sum(0, count, [&](int64_t i) { return level_terms[i]; });
        for (int64_t j = 0; with_ramps && j < n_thresholds; ++j) {
          // times 1 / span where the fused form divides: a parameter sum's terms only,
          // so within rounding, and a multiply costs a fraction of a vector division.
          const float o = origin[j], inverse_span = 1.0f / span[j];
          partial[2 + j] += lane_sum(0, count, [=](int64_t i) {
            return gx_block[i] * clip((block[i] - o) * inverse_span, 0.0f, 1.0f);
          });
        }
        clamp.mask(block, gx_block, count);
      }
    });
    return {grad_x, sums};
  });
}

// N2UQ weights (_N2UQWeightFakeQuant), one scale per output channel (dim 0). Python
// computes the scales as the fused form does (gamma * mean|W_c|, clamped: a reduction
// whose order only torch reproduces); per element, with v = w / s_c, the fused form's
// operations in its order: out = (round((clip(v, -1, 1) + 1) * (n / 2)) * (2 / n) - 1) * s_c.
inline void check_channel_scales(const torch::Tensor& weight, const torch::Tensor& scale) {
  check(weight, "weight");
  check(scale, "scale");
  TORCH_CHECK(weight.dim() > 0 && scale.numel() == weight.size(0), "qmdd native N2UQ: one scale per output channel");
}

inline torch::Tensor n2uq_weight_forward(const torch::Tensor& weight, const torch::Tensor& scale, int64_t bits) {
  check_channel_scales(weight, scale);
  auto out = torch::empty_like(weight);
  const int64_t channels = weight.size(0), inner = weight.numel() / std::max<int64_t>(1, channels);
  const float *w = weight.data_ptr<float>(), *s = scale.data_ptr<float>();
  float* q = out.data_ptr<float>();
  const double levels = static_cast<double>((int64_t{1} << bits) - 1);
  // The Python scalars as torch applies them to a float32 tensor: rounded to float.
  const float half = static_cast<float>(levels / 2), unit = static_cast<float>(2.0 / levels);
  parallel_slices(channels, inner, [&](int64_t c) {
    const float sc = s[c];
    const float* __restrict__ in = w + c * inner;
    float* __restrict__ result = q + c * inner;
    for (int64_t i = 0; i < inner; ++i) result[i] = (std::nearbyint((clip(in[i] / sc, -1.0f, 1.0f) + 1.0f) * half) * unit - 1.0f) * sc;
  });
  return out;
}

// grad_w = grad * [clip(v, -1, 1) == v], the fused form's mask, found again from w.
inline torch::Tensor n2uq_weight_backward(const torch::Tensor& grad, const torch::Tensor& weight, const torch::Tensor& scale) {
  check_channel_scales(weight, scale);
  check_like(grad, weight, "grad");
  auto grad_w = torch::empty_like(weight);
  const int64_t channels = weight.size(0), inner = weight.numel() / std::max<int64_t>(1, channels);
  const float *g = grad.data_ptr<float>(), *w = weight.data_ptr<float>(), *s = scale.data_ptr<float>();
  float* gw = grad_w.data_ptr<float>();
  parallel_slices(channels, inner, [&](int64_t c) {
    const float sc = s[c];
    const float* __restrict__ in = w + c * inner;
    const float* __restrict__ gi = g + c * inner;
    float* __restrict__ result = gw + c * inner;
    for (int64_t i = 0; i < inner; ++i) {
      const float v = in[i] / sc;
      result[i] = gi[i] * static_cast<float>(clip(v, -1.0f, 1.0f) == v);
    }
  });
  return grad_w;
}

}  // namespace qmdd_native
