// LSQ fake quantization in one pass forward and one pass backward, for one step per
// tensor (activations) or one step per slice along dim 0 (weights: per output channel).
// The Python chain it replaces is qmdd/quant/_lsq.py's _LSQFakeQuant, whose docstring
// derives the formulas. Built on first use by qmdd/quant/_native.py
// (torch.utils.cpp_extension); contiguous float32 CPU tensors only.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <tuple>

namespace {

// Elements per parallel task: big enough that a thread hand-off is amortised.
constexpr int64_t kGrain = 32768;

// out = round(clip(x / s, lo, hi)) * s on [0, n), rounding half to even as torch.round.
void forward_range(const float* __restrict__ in, float* __restrict__ out, int64_t n, float s, float lo, float hi) {
  for (int64_t i = 0; i < n; ++i) {
    float v = in[i] / s;
    v = v < lo ? lo : (v > hi ? hi : v);  // NaN passes through, as torch.clamp
    out[i] = std::nearbyint(v) * s;
  }
}

// grad_x = grad * [lo <= x / s <= hi] on [0, n), as the chain's product with a 0/1 mask
// (a NaN or infinite gradient outside the range stays NaN); returns the step gradient's
// sum(grad * out) - sum(grad_x * x). kLanes float accumulators (vector registers; one
// double accumulator would serialise the loop) are flushed into double every kFlush
// elements, so no float sum grows longer than kFlush / kLanes terms.
double backward_range(const float* __restrict__ g, const float* __restrict__ in, const float* __restrict__ q,
                      float* __restrict__ gx, int64_t n, float s, float lo, float hi) {
  constexpr int64_t kLanes = 16, kFlush = 1024;
  double total = 0.0;
  for (int64_t start = 0; start < n; start += kFlush) {
    const int64_t stop = std::min(n, start + kFlush);
    float lanes[kLanes] = {0.0f};
    int64_t i = start;
    for (; i + kLanes <= stop; i += kLanes) {
      for (int64_t l = 0; l < kLanes; ++l) {
        const float v = in[i + l] / s;
        const float gi = g[i + l] * static_cast<float>((v >= lo) & (v <= hi));  // branch-free: vectorises
        gx[i + l] = gi;
        lanes[l] += g[i + l] * q[i + l] - gi * in[i + l];
      }
    }
    for (; i < stop; ++i) {
      const float v = in[i] / s;
      const float gi = g[i] * static_cast<float>((v >= lo) & (v <= hi));
      gx[i] = gi;
      total += static_cast<double>(g[i] * q[i] - gi * in[i]);
    }
    for (int64_t l = 0; l < kLanes; ++l) total += lanes[l];
  }
  return total;
}

void check(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(),
              "qmdd native LSQ: ", name, " must be a contiguous float32 CPU tensor");
}

}  // namespace

// x: any shape; step: 1 element (per tensor) or x.size(0) elements (per slice of dim 0).
torch::Tensor lsq_forward(const torch::Tensor& x, const torch::Tensor& step, int64_t qmin, int64_t qmax) {
  check(x, "x");
  const auto steps = step.to(at::kFloat).contiguous();
  const int64_t slices = steps.numel(), n = x.numel();
  TORCH_CHECK(slices == 1 || (x.dim() > 0 && x.size(0) == slices), "qmdd native LSQ: one step, or one per slice of dim 0");
  auto out = torch::empty_like(x);
  const float *in = x.data_ptr<float>(), *s = steps.data_ptr<float>();
  float* result = out.data_ptr<float>();
  const float lo = static_cast<float>(qmin), hi = static_cast<float>(qmax);
  if (slices == 1) {
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      forward_range(in + begin, result + begin, end - begin, s[0], lo, hi);
    });
  } else {
    const int64_t inner = n / slices;
    at::parallel_for(0, slices, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, inner)), [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) forward_range(in + c * inner, result + c * inner, inner, s[c], lo, hi);
    });
  }
  return out;
}

// Returns grad_x and, per step, sum(grad * out) - sum(grad_x * x) (float64).
std::tuple<torch::Tensor, torch::Tensor> lsq_backward(const torch::Tensor& grad, const torch::Tensor& x, const torch::Tensor& out,
                                                      const torch::Tensor& step, int64_t qmin, int64_t qmax) {
  check(grad, "grad");
  check(x, "x");
  check(out, "out");
  const auto steps = step.to(at::kFloat).contiguous();
  const int64_t slices = steps.numel(), n = x.numel();
  TORCH_CHECK(slices == 1 || (x.dim() > 0 && x.size(0) == slices), "qmdd native LSQ: one step, or one per slice of dim 0");
  auto grad_x = torch::empty_like(x);
  auto sums = torch::empty({slices}, x.options().dtype(at::kDouble));
  const float *g = grad.data_ptr<float>(), *in = x.data_ptr<float>(), *q = out.data_ptr<float>(), *s = steps.data_ptr<float>();
  float* gx = grad_x.data_ptr<float>();
  double* total = sums.data_ptr<double>();
  const float lo = static_cast<float>(qmin), hi = static_cast<float>(qmax);
  if (slices == 1) {
    total[0] = at::parallel_reduce(0, n, kGrain, 0.0, [&](int64_t begin, int64_t end, double partial) {
      return partial + backward_range(g + begin, in + begin, q + begin, gx + begin, end - begin, s[0], lo, hi);
    }, std::plus<double>());
  } else {
    const int64_t inner = n / slices;
    at::parallel_for(0, slices, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, inner)), [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const int64_t offset = c * inner;
        total[c] = backward_range(g + offset, in + offset, q + offset, gx + offset, inner, s[c], lo, hi);
      }
    });
  }
  return {grad_x, sums};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("lsq_forward", &lsq_forward, "LSQ fake-quant forward (one step per tensor or per slice of dim 0)");
  m.def("lsq_backward", &lsq_backward, "LSQ fake-quant backward: input gradient and the step gradient's sums");
}
