// The fedpic operator library: schemas of the fused RoI + RoD align and its backward, and the
// Python module `pic_core._C` whose import loads them. Kernels live in roi_rod_align_cpu.cpp
// (this extension) and roi_rod_align_cuda.cu (the separate `pic_core._C_cuda`).
#include <Python.h>

#include <torch/library.h>

TORCH_LIBRARY(fedpic, m) {
  // register_fake / register_autograd for these ops live in this Python module; the dispatcher
  // imports it when a fake kernel is needed before pic_core was imported.
  m.set_python_module("pic_core._op_registration");
  // features (N, C, H, W), boxes (K, 5) = [batch_index, x1, y1, x2, y2] in input pixels
  // -> (K, 2C, A, A): C RoI channels, then C RoD channels.
  m.def("roi_rod_align(Tensor features, Tensor boxes, float spatial_scale, int output_size) -> Tensor");
  // Gradient w.r.t. features of the op above; linear in `grad`.
  m.def(
      "roi_rod_align_backward(Tensor grad, Tensor boxes, float spatial_scale, int output_size, "
      "SymInt batch, SymInt channels, SymInt height, SymInt width) -> Tensor");
}

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {
      PyModuleDef_HEAD_INIT,
      "_C",
      "fedpic compiled ops (CPU); importing this module registers torch.ops.fedpic.",
      -1,
      nullptr,
  };
  return PyModule_Create(&module);
}
