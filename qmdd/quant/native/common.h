// What every fake-quantization kernel shares: the input checks, the task size, and the
// sums whose value does not depend on how many threads ran them.
#pragma once

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace qmdd_native {

// Elements per parallel task: big enough that a thread hand-off is amortised.
constexpr int64_t kGrain = 32768;
// Float accumulators per sum (vector registers: one double accumulator would serialise
// the loop) and how many elements they take before being flushed into double, so no
// float sum grows longer than kFlush / kLanes terms.
constexpr int64_t kLanes = 16, kFlush = 1024;

inline void check(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(),
              "qmdd native kernels: ", name, " must be a contiguous float32 CPU tensor");
}

// check(t), and t holds as many elements as x (a gradient, an output, a saved factor).
inline void check_like(const torch::Tensor& t, const torch::Tensor& x, const char* name) {
  check(t, name);
  TORCH_CHECK(t.numel() == x.numel(), "qmdd native kernels: ", name, " must have as many elements as the input");
}

// v clipped to [lo, hi] as torch.clamp does it: a NaN passes through, and -0.0 stays -0.0
// at lo = 0 (a branch-free select: the element loops vectorise).
inline float clip(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

// An optional hardtanh(x, 0, ceiling) in front of an activation quantizer: a ReLU6 whose
// output feeds only that quantizer, run inside its kernel instead of as two passes of its
// own each way (qmdd/quant/_fuse.py). Forward as torch's clamp (a NaN passes through);
// backward as torch's vectorised hardtanh_backward on the clamped value y: the gradient
// where 0 < y < ceiling, else 0 (NaN y included: torch's scalar tail loop would pass it,
// its vector loop, which takes all but the last few elements, zeroes it). ceiling <= 0: none.
struct InputClamp {
  bool on;
  float ceiling;

  // The block's inputs, clamped into buffer when on (n <= kFlush), else in itself.
  const float* apply(const float* __restrict__ in, float* __restrict__ buffer, int64_t n) const {
    if (!on) return in;
    const float top = ceiling;
    for (int64_t i = 0; i < n; ++i) buffer[i] = in[i] < 0.0f ? 0.0f : (in[i] > top ? top : in[i]);
    return buffer;
  }
  // grad_x of the block through the clamp, given its clamped inputs.
  void mask(const float* __restrict__ clamped, float* __restrict__ gx, int64_t n) const {
    if (!on) return;
    const float top = ceiling;
    for (int64_t i = 0; i < n; ++i) gx[i] = (clamped[i] > 0.0f && clamped[i] < top) ? gx[i] : 0.0f;
  }
};

inline InputClamp input_clamp(double ceiling) { return {ceiling > 0.0, static_cast<float>(ceiling)}; }

// body(c) for each of `slices` slices of dim 0 of `inner` elements each (per-channel
// weights), in parallel tasks of about kGrain elements.
template <typename Body>
void parallel_slices(int64_t slices, int64_t inner, Body&& body) {
  at::parallel_for(0, slices, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, inner)), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) body(c);
  });
}

// Runs body(std::integral_constant<int64_t, levels>) for the level counts of 2, 3 and 4
// bits (4, 8, 16): a count known at compile time unrolls the loops over the levels, so
// the loops over elements vectorise.
template <typename Body>
auto with_level_count(int64_t levels, const char* family, Body&& body) {
  switch (levels) {
    case 4: return body(std::integral_constant<int64_t, 4>{});
    case 8: return body(std::integral_constant<int64_t, 8>{});
    case 16: return body(std::integral_constant<int64_t, 16>{});
  }
  TORCH_CHECK(false, "qmdd native ", family, ": 4, 8 or 16 levels (2 to 4 bits), got ", levels);
}

// sum of term(i) over [begin, end), end - begin <= kFlush, in kLanes float lanes then double.
template <typename Term>
inline double lane_sum(int64_t begin, int64_t end, Term&& term) {
  float lanes[kLanes] = {0.0f};
  int64_t i = begin;
  for (; i + kLanes <= end; i += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] += term(i + l);
  }
  double total = 0.0;
  for (; i < end; ++i) total += static_cast<double>(term(i));
  for (int64_t l = 0; l < kLanes; ++l) total += lanes[l];
  return total;
}

// `width` sums over [0, n): the range is cut into fixed chunks of kGrain elements,
// chunk_sums(begin, end, partial) adds one chunk's sums into partial[0 .. width), the
// chunks run in parallel, and their partials are added in chunk order, so the result
// is the same on one thread or sixteen. Returns a float64 tensor of `width` sums.
template <typename ChunkSums>
torch::Tensor chunked_sums(int64_t n, int64_t width, ChunkSums&& chunk_sums) {
  const int64_t chunks = std::max<int64_t>(1, (n + kGrain - 1) / kGrain);
  auto partials = torch::zeros({chunks, width}, torch::dtype(torch::kFloat64));
  double* partial = partials.data_ptr<double>();
  at::parallel_for(0, chunks, 1, [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) chunk_sums(c * kGrain, std::min(n, (c + 1) * kGrain), partial + c * width);
  });
  auto sums = torch::zeros({width}, torch::dtype(torch::kFloat64));
  double* total = sums.data_ptr<double>();
  for (int64_t c = 0; c < chunks; ++c) {
    for (int64_t w = 0; w < width; ++w) total[w] += partial[c * width + w];
  }
  return sums;
}

}  // namespace qmdd_native
