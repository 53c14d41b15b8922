// What every fake-quantization kernel shares: the input checks, the task size, and the
// sums whose value does not depend on how many threads ran them.
#pragma once

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

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
