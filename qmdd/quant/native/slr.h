// SLR fake quantization (qmdd/quant/_slr.py): the fused Python form _SLRFakeQuant, whose
// docstring defines v, c, k, m and the backward's factors A, B, C, in one pass forward
// (writing the output and v) and one backward (A, B and C = out - A x found again from x
// and v).
//
// Exactness. The fused form takes torch's log1p; here the log is a short series (below)
// within 2 ulp of it, and v = u / s decides the output only through its rounding and its
// clip, so an element's code, clip mask, output and input gradient are torch's unless v
// lies within kDoubt of a rounding tie or a clip limit. A block of kFlush elements that
// holds such an element (about one in a hundred) is redone with torch's log1p, so the
// output and the input gradient are the fused form's bit for bit. What keeps v itself is
// B = (k - v) growth s inside the clip range, the step's gradient term: there the series'
// v moves the parameter sums by float rounding only.
//
// The exp is only ever taken of k * s for the 2^b codes k, so Python passes the table
// exp(|k s|), k = qmin .. qmax, computed by torch.exp (which gives an element the same
// value wherever it sits in a tensor), and the kernel looks it up.
#pragma once

#include "common.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <tuple>
#include <type_traits>

namespace qmdd_native {

// log1p(t) for t >= -1/2, within 2 ulp of torch's (Sleef's) on float32; t == 0 gives t
// (either sign), as torch does. 1 + t = 2^e m with m in [sqrt(1/2), sqrt(2)), and
// log(m) = 2 atanh(f / (2 + f)), f = m - 1, by its series to z^4 (|f / (2 + f)| < 0.172,
// so the next term is below 2e-9 relative); what 1 + t lost to rounding is added back as
// about (t - (u - 1)) / u. ln 2 is split into a part exact in 16 bits and the rest (fdlibm's
// e_logf.c constants), so e ln 2 adds no rounding for |e| < 2^8.
// Infinite, NaN, subnormal and huge (> 1e30) t are not handled here: slr_scaled_logs sends
// them to torch.
inline float series_log1p(float t) {
  const float u = 1.0f + t;
  int32_t bits;
  std::memcpy(&bits, &u, sizeof bits);
  const int32_t e = (bits - 0x3f3504f3) >> 23;  // 0x3f3504f3: the bits of sqrt(1/2)
  const int32_t m_bits = bits - (e << 23), inverse_power_bits = (127 - e) << 23;
  float m, inverse_power;
  std::memcpy(&m, &m_bits, sizeof m);
  std::memcpy(&inverse_power, &inverse_power_bits, sizeof inverse_power);
  // (t - (u - 1)) / u with 1 / u = 2^-e / m, 1 / m taken as 2 - m (within 17 % on
  // [sqrt(1/2), sqrt(2)) of a term below half an ulp of u): no division.
  const float lost = (t - (u - 1.0f)) * inverse_power * (2.0f - m);
  const float f = m - 1.0f;
  const float s = f / (2.0f + f);
  const float z = s * s;
  const float two_s = 2.0f * s;
  const float atanh2 = two_s + two_s * (z * (0.33333334f + z * (0.2f + z * (0.14285715f + z * 0.11111111f))));
  const float ef = static_cast<float>(e);
  const float log = ef * 0.693145751953125f + (atanh2 + lost + ef * 1.428606765330187e-06f);
  return t == 0.0f ? t : log;
}

// series_log1p over a tensor (tests hold it to torch.log1p).
inline torch::Tensor series_log1p_of(const torch::Tensor& t) {
  check(t, "t");
  auto out = torch::empty_like(t);
  const float* in = t.data_ptr<float>();
  float* result = out.data_ptr<float>();
  at::parallel_for(0, t.numel(), kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) result[i] = series_log1p(in[i]);
  });
  return out;
}

// How close (relative to |v|) v may come to a rounding tie or a clip limit before its
// block is redone with torch's log: 2^-18, 32 float steps of v, against at most about 4
// between the series' v and torch's (2 ulp in the log; the roundings of 1 / step and of
// the product here, of the division there).
constexpr float kDoubt = 1.0f / 262144.0f;

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

// v = sign(x) log1p(magnitude / shift) / step for n <= kFlush elements, as the fused form
// computes it, into v[0 .. n): by the series, and again by torch's log1p when an element
// is in doubt (near a tie or a clip limit, or its log argument infinite, NaN, above 1e30 or
// subnormal). Clip limits only matter at |v| = hi (and |lo| when signed), integers >= hi;
// v = 0 (the unsigned clip at lo = 0) the series decides exactly, by the sign of t.
template <bool kSigned, int64_t kLevels>
inline void slr_scaled_logs(const float* __restrict__ in, float* __restrict__ v, int64_t n, const SLRGrid<kLevels>& grid) {
  // Times 1 / step where the fused form divides: half an ulp more, well inside kDoubt.
  const float inverse_step = 1.0f / grid.step, shift = grid.shift, first_limit = grid.hi;
  int32_t doubtful = 0;  // an OR of 0/1 flags, each computed as a float: so it vectorises
  for (int64_t i = 0; i < n; ++i) {
    const float t = slr_magnitude<kSigned>(in[i], shift) / shift;
    const float log = series_log1p(t);
    const float vi = (kSigned ? std::copysign(log, in[i]) : log) * inverse_step;
    v[i] = vi;
    const float a = std::fabs(vi), margin = a * kDoubt;
    const float near_tie = static_cast<float>(std::fabs(a - std::floor(a) - 0.5f) <= margin);
    const float near_limit = static_cast<float>(a >= first_limit - 0.5f) * static_cast<float>(std::fabs(a - std::nearbyint(a)) <= margin);
    const float abs_t = std::fabs(t);
    const float unusual = static_cast<float>(!(abs_t <= 1.0e30f)) + static_cast<float>(abs_t < 1.2e-38f) * static_cast<float>(t != 0.0f);
    doubtful |= static_cast<int32_t>(near_tie + near_limit + unusual);
  }
  if (doubtful == 0) return;
  for (int64_t i = 0; i < n; ++i) v[i] = slr_magnitude<kSigned>(in[i], shift) / shift;
  torch::from_blob(v, {n}, torch::dtype(torch::kFloat)).log1p_();
  for (int64_t i = 0; i < n; ++i) v[i] = (kSigned ? std::copysign(v[i], in[i]) : v[i]) / grid.step;
}

// What the fused form derives from v for one element: the output q and, for the
// backward, A and B (its docstring).
struct SLRElement {
  float q, slope_x, b_row;
};

template <bool kSigned, int64_t kLevels>
inline SLRElement slr_element(float x, float v, const SLRGrid<kLevels>& grid) {
  const float c = clip(v, grid.lo, grid.hi);
  const float k = std::nearbyint(c);  // half to even, as torch.round
  // exp(|k s|) by lookup, as arithmetic (one term is the level, the others 0; k - k
  // is 0, or NaN for a NaN code, as exp(NaN)): an indexed load would not vectorise.
  float growth = k - k;
#pragma GCC unroll 16  // unrolled, the element loop vectorises
  for (int64_t j = 0; j < kLevels; ++j) growth += grid.growth[j] * static_cast<float>(k == grid.lo + static_cast<float>(j));
  const float q = (growth - 1.0f) * grid.shift;
  const float inside = static_cast<float>(c == v);
  const float factor = growth * grid.shift;
  return {kSigned ? std::copysign(q, k) : q,
          (factor * inside) / (slr_magnitude<kSigned>(x, grid.shift) + grid.shift),  // A
          (k - c * inside) * factor};                                                  // B
}

// Runs body(grid) with the call's grid, its sign and level count compile-time constants.
template <typename Body>
void with_slr_grid(const torch::Tensor& growth, double step, double shift, int64_t qmin, int64_t qmax, Body&& body) {
  check(growth, "growth");
  const int64_t levels = qmax - qmin + 1;
  TORCH_CHECK(growth.numel() == levels, "qmdd native SLR: one growth value per code");
  auto run = [&](auto is_signed, auto level_count) {
    constexpr int64_t kLevels = decltype(level_count)::value;
    SLRGrid<kLevels> grid{static_cast<float>(step), static_cast<float>(shift), static_cast<float>(qmin), static_cast<float>(qmax), {}};
    std::copy_n(growth.data_ptr<float>(), kLevels, grid.growth);
    body(is_signed, grid);
  };
  with_level_count(levels, "SLR", [&](auto level_count) {
    qmin < 0 ? run(std::true_type{}, level_count) : run(std::false_type{}, level_count);
  });
}

// The outputs of n <= kFlush elements from their v. Restrict parameters: it vectorises.
template <bool kSigned, int64_t kLevels>
inline void slr_finish_block(const float* __restrict__ in, const float* __restrict__ v, float* __restrict__ out, int64_t n,
                             const SLRGrid<kLevels> grid) {
  for (int64_t i = 0; i < n; ++i) out[i] = slr_element<kSigned>(in[i], v[i], grid).q;
}

// Returns out and, when training, v (the scaled log, kept for the backward; undefined
// otherwise). growth: exp(|k step|) for k = qmin .. qmax (2, 3 or 4 bits). ceiling > 0:
// an InputClamp in front.
inline std::tuple<torch::Tensor, torch::Tensor> slr_forward(const torch::Tensor& x, const torch::Tensor& growth, double step, double shift,
                                                            int64_t qmin, int64_t qmax, bool train, double ceiling) {
  check(x, "x");
  const int64_t n = x.numel();
  auto out = torch::empty_like(x);
  auto scaled = train ? torch::empty_like(x) : torch::Tensor();
  const float* in = x.data_ptr<float>();
  float* result = out.data_ptr<float>();
  float* kept = train ? scaled.data_ptr<float>() : nullptr;
  const InputClamp clamp = input_clamp(ceiling);
  with_slr_grid(growth, step, shift, qmin, qmax, [&](auto is_signed, const auto grid) {
    constexpr bool kSigned = decltype(is_signed)::value;
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      float block[kFlush], buffer[kFlush];
      for (int64_t start = begin; start < end; start += kFlush) {
        const int64_t count = std::min(end, start + kFlush) - start;
        const float* x_block = clamp.apply(in + start, buffer, count);
        float* v = kept ? kept + start : block;
        slr_scaled_logs<kSigned>(x_block, v, count, grid);
        slr_finish_block<kSigned>(x_block, v, result + start, count, grid);
      }
    });
  });
  return {out, scaled};
}

// The backward of n <= kFlush elements: grad_x = grad * A and, when b_terms is given, the
// terms grad * B and grad * C (C = out - A x) of the parameter sums, with A, B and the
// output found again from x and v (cheaper than writing A and B forward and reading them
// back: two tensors fewer through memory each way).
template <bool kSigned, int64_t kLevels>
inline void slr_backward_block(const float* __restrict__ g, const float* __restrict__ in, const float* __restrict__ v, float* __restrict__ gx,
                               float* __restrict__ b_terms, float* __restrict__ c_terms, int64_t n, const SLRGrid<kLevels> grid) {
  if (b_terms == nullptr) {
    for (int64_t i = 0; i < n; ++i) gx[i] = g[i] * slr_element<kSigned>(in[i], v[i], grid).slope_x;
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    const SLRElement e = slr_element<kSigned>(in[i], v[i], grid);
    gx[i] = g[i] * e.slope_x;
    b_terms[i] = g[i] * e.b_row;
    c_terms[i] = g[i] * (e.q - e.slope_x * in[i]);
  }
}

// grad_x and, when with_rows, the sums (sum grad * B, sum grad * C) (float64; undefined
// without), from the forward's x and v and the same grid and ceiling.
inline std::tuple<torch::Tensor, torch::Tensor> slr_backward(const torch::Tensor& grad, const torch::Tensor& x, const torch::Tensor& scaled,
                                                             const torch::Tensor& growth, double step, double shift, int64_t qmin,
                                                             int64_t qmax, bool with_rows, double ceiling) {
  check(x, "x");
  check_like(grad, x, "grad");
  check_like(scaled, x, "scaled");
  const int64_t n = x.numel();
  auto grad_x = torch::empty_like(x);
  const float *g = grad.data_ptr<float>(), *in = x.data_ptr<float>(), *v = scaled.data_ptr<float>();
  float* gx = grad_x.data_ptr<float>();
  torch::Tensor sums;
  const InputClamp clamp = input_clamp(ceiling);
  with_slr_grid(growth, step, shift, qmin, qmax, [&](auto is_signed, const auto grid) {
    constexpr bool kSigned = decltype(is_signed)::value;
    if (!with_rows) {
      at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
        float buffer[kFlush];
        for (int64_t start = begin; start < end; start += kFlush) {
          const int64_t count = std::min(end, start + kFlush) - start;
          const float* x_block = clamp.apply(in + start, buffer, count);
          slr_backward_block<kSigned>(g + start, x_block, v + start, gx + start, nullptr, nullptr, count, grid);
          clamp.mask(x_block, gx + start, count);
        }
      });
      return;
    }
    sums = chunked_sums(n, 2, [&](int64_t begin, int64_t end, double* partial) {
      float b_terms[kFlush], c_terms[kFlush], buffer[kFlush];
      for (int64_t start = begin; start < end; start += kFlush) {
        const int64_t count = std::min(end, start + kFlush) - start;
        const float* x_block = clamp.apply(in + start, buffer, count);
        slr_backward_block<kSigned>(g + start, x_block, v + start, gx + start, b_terms, c_terms, count, grid);
        clamp.mask(x_block, gx + start, count);
        partial[0] += lane_sum(0, count, [&](int64_t i) { return b_terms[i]; });
        partial[1] += lane_sum(0, count, [&](int64_t i) { return c_terms[i]; });
      }
    });
  });
  return {grad_x, sums};
}

}  // namespace qmdd_native
