// Python module `pic_core._C_cuda`: importing it loads the CUDA kernels of the fedpic ops.
// pic_core imports it only after pic_core._C (the schemas) and only when a GPU is present.
#include <Python.h>

extern "C" PyObject* PyInit__C_cuda(void) {
  static PyModuleDef module = {
      PyModuleDef_HEAD_INIT,
      "_C_cuda",
      "fedpic compiled ops (CUDA kernels for torch.ops.fedpic).",
      -1,
      nullptr,
  };
  return PyModule_Create(&module);
}
