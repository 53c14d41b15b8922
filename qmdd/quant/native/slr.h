// SLR fake quantization (qmdd/quant/_slr.py): the fused Python form _SLRFakeQuant, whose
// docstring defines v, c, k, m and the backward's factors A, B, C, in two passes over
// cache-sized blocks forward and one pass backward.
//
// The transcendentals are torch's own, so the values are the Python form's bit for bit:
// the log is torch's log1p, run on each block in cache (on whatever vector unit torch
// dispatches to); the exp is only ever taken of k * s for the 2^b codes k, so Python
// passes the table exp(|k s|), k = qmin .. qmax, computed by torch.exp (which gives an
// element the same value wherever it sits in a tensor), and the kernel looks it up.
#pragma once

#include "common.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>
#include <type_traits>

namespace qmdd_native {

// The grid of one call: its step, shift, code range and exp(|k step|) for k = lo .. hi,
// copied into the kernel's own locals so that the element loops vectorise.
template <int64_t kLevels>
struct SLRGrid {
  float step, shift, lo, hi;
  float growth[kLevels];
};

// The log's argument is |x| on a signed grid; on an unsigned one x clamped at
// -shift / 2 (a negative input only has to stay negative: it clips to code 0).
template <bool kSigned>
inline float slr_magnitude(float x, float shift) {
  if (kSigned) return std::fabs(x);
  const float floor = -0.5f * shift;
  return x < floor ? floor : x;  // NaN passes through, as torch.clamp_min
}

// What a forward writes besides the output: nothing (inference), A (only the input
// needs a gradient), or A and B.
enum class SLRSaves { kNothing, kSlope, kSlopeAndRow };

// One block of n elements. On entry out holds log1p(magnitude / shift); on exit the
// quantized values, and slope_x A and b_row B as kSaves says. Everything the loop
// branches on is a template argument, so it compiles to straight-line vector code.
template <bool kSigned, int64_t kLevels, SLRSaves kSaves>
inline void slr_finish_block(const float* __restrict__ in, float* __restrict__ out, float* __restrict__ slope_x,
                             float* __restrict__ b_row, int64_t n, const SLRGrid<kLevels> grid) {
  for (int64_t i = 0; i < n; ++i) {
    const float u = kSigned ? std::copysign(out[i], in[i]) : out[i];
    const float v = u / grid.step;
    const float c = clip(v, grid.lo, grid.hi);
    const float k = std::nearbyint(c);  // half to even, as torch.round
    // exp(|k s|) by lookup, as arithmetic (one term is the level, the others 0; k - k
    // is 0, or NaN for a NaN code, as exp(NaN)): an indexed load would not vectorise.
    float growth = k - k;
#pragma GCC unroll 16  // unrolled, the element loop vectorises
    for (int64_t j = 0; j < kLevels; ++j) growth += grid.growth[j] * static_cast<float>(k == grid.lo + static_cast<float>(j));
    const float q = (growth - 1.0f) * grid.shift;
    out[i] = kSigned ? std::copysign(q, k) : q;
    if constexpr (kSaves != SLRSaves::kNothing) {
      const float inside = static_cast<float>(c == v);
      const float factor = growth * grid.shift;
      slope_x[i] = (factor * inside) / (slr_magnitude<kSigned>(in[i], grid.shift) + grid.shift);  // A
      if constexpr (kSaves == SLRSaves::kSlopeAndRow) b_row[i] = (k - c * inside) * factor;       // B
    }
  }
}

template <bool kSigned, int64_t kLevels, SLRSaves kSaves>
void slr_forward_grid(const torch::Tensor& x, const torch::Tensor& out, float* slope_x, float* b_row, const SLRGrid<kLevels>& grid) {
  const float* in = x.data_ptr<float>();
  float* result = out.data_ptr<float>();
  at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t lo = begin; lo < end; lo += kGrain) {  // blocks that stay in cache
      const int64_t hi = std::min(end, lo + kGrain);
      for (int64_t i = lo; i < hi; ++i) result[i] = slr_magnitude<kSigned>(in[i], grid.shift) / grid.shift;
      out.narrow(0, lo, hi - lo).log1p_();
      slr_finish_block<kSigned, kLevels, kSaves>(in + lo, result + lo, slope_x + lo, b_row + lo, hi - lo, grid);
    }
  });
}

// Returns out and, when training, A (slope_x) and, when with_rows, B; None otherwise.
// growth: exp(|k step|) for k = qmin .. qmax (2, 3 or 4 bits).
inline std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> slr_forward(const torch::Tensor& x, const torch::Tensor& growth, double step,
                                                                           double shift, int64_t qmin, int64_t qmax, bool train,
                                                                           bool with_rows) {
  check(x, "x");
  check(growth, "growth");
  const int64_t levels = qmax - qmin + 1;
  TORCH_CHECK(growth.numel() == levels, "qmdd native SLR: one growth value per code");
  const int64_t n = x.numel();
  auto out = torch::empty({n}, x.options());
  auto slope_x = train ? torch::empty({n}, x.options()) : torch::Tensor();
  auto b_row = train && with_rows ? torch::empty({n}, x.options()) : torch::Tensor();
  float* a = train ? slope_x.data_ptr<float>() : nullptr;
  float* b = b_row.defined() ? b_row.data_ptr<float>() : nullptr;
  auto run = [&](auto is_signed, auto level_count) {
    constexpr bool kSigned = decltype(is_signed)::value;
    constexpr int64_t kLevels = decltype(level_count)::value;
    SLRGrid<kLevels> grid{static_cast<float>(step), static_cast<float>(shift), static_cast<float>(qmin), static_cast<float>(qmax), {}};
    std::copy_n(growth.data_ptr<float>(), kLevels, grid.growth);
    if (b != nullptr) {
      slr_forward_grid<kSigned, kLevels, SLRSaves::kSlopeAndRow>(x, out, a, b, grid);
    } else if (a != nullptr) {
      slr_forward_grid<kSigned, kLevels, SLRSaves::kSlope>(x, out, a, b, grid);
    } else {
      slr_forward_grid<kSigned, kLevels, SLRSaves::kNothing>(x, out, a, b, grid);
    }
  };
  with_level_count(levels, "SLR", [&](auto level_count) {
    qmin < 0 ? run(std::true_type{}, level_count) : run(std::false_type{}, level_count);
  });
  return {out.view(x.sizes()), train ? slope_x.view(x.sizes()) : slope_x, b_row};
}

// grad_x = grad * A and, when b_row is given, the sums (sum grad * B, sum grad * C)
// with C = out - A x (float64; None without b_row).
inline std::tuple<torch::Tensor, torch::Tensor> slr_backward(const torch::Tensor& grad, const torch::Tensor& x, const torch::Tensor& out,
                                                             const torch::Tensor& slope_x, const std::optional<torch::Tensor>& b_row) {
  check(x, "x");
  check_like(grad, x, "grad");
  check_like(out, x, "out");
  check_like(slope_x, x, "slope_x");
  const int64_t n = x.numel();
  auto grad_x = torch::empty_like(x);
  const float *g = grad.data_ptr<float>(), *in = x.data_ptr<float>(), *q = out.data_ptr<float>(), *a = slope_x.data_ptr<float>();
  float* gx = grad_x.data_ptr<float>();
  if (!b_row.has_value()) {
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) gx[i] = g[i] * a[i];
    });
    return {grad_x, torch::Tensor()};
  }
  check_like(*b_row, x, "b_row");
  const float* b = b_row->data_ptr<float>();
  auto sums = chunked_sums(n, 2, [=](int64_t begin, int64_t end, double* partial) {
    for (int64_t start = begin; start < end; start += kFlush) {
      const int64_t stop = std::min(end, start + kFlush);
      partial[0] += lane_sum(start, stop, [=](int64_t i) {
        gx[i] = g[i] * a[i];
        return g[i] * b[i];
      });
      partial[1] += lane_sum(start, stop, [=](int64_t i) { return g[i] * (q[i] - a[i] * in[i]); });
    }
  });
  return {grad_x, sums};
}

}  // namespace qmdd_native
