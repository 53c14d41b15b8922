// qmdd's native fake-quantization kernels: one translation unit, so a build parses
// libtorch's headers once. Built on first use by qmdd/quant/_native.py
// (torch.utils.cpp_extension); contiguous float32 CPU tensors only. Each header says which
// Python form it replaces; tests/quant/test_native_kernels.py holds them to it.
#include "lsq.h"
#include "n2uq.h"
#include "slr.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace qmdd_native;
  m.def("lsq_forward", &lsq_forward, "LSQ fake-quant forward (one step per tensor or per slice of dim 0)");
  m.def("lsq_backward", &lsq_backward, "LSQ fake-quant backward: input gradient and the step gradient's sums");
  m.def("n2uq_forward", &n2uq_forward, "N2UQ activation forward: (code + qmin) * step");
  m.def("n2uq_backward", &n2uq_backward, "N2UQ GSTE backward: input gradient and the parameter gradients' sums");
  m.def("n2uq_weight_forward", &n2uq_weight_forward, "N2UQ weight forward, one scale per output channel");
  m.def("n2uq_weight_backward", &n2uq_weight_backward, "N2UQ weight backward: the clipped straight-through gradient");
  m.def("slr_forward", &slr_forward, "SLR forward: output and, when training, the scaled log v for the backward");
  m.def("series_log1p", &series_log1p_of, "The SLR kernels' log1p (t >= -1/2, finite), for tests");
  m.def("slr_backward", &slr_backward, "SLR backward: input gradient and the step and shift gradients' sums");
}
