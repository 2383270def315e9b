// Python module entry of wrn_fast._C. The ops themselves are registered by the
// other csrc/*.cpp files (schemas: the one TORCH_LIBRARY(wrn_fast, m) block in
// csrc/schemas.cpp; kernels: TORCH_LIBRARY_IMPL next to their code); importing
// this module loads the shared library and so registers them.
#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("with_cuda", []() {
#ifdef WRN_FAST_WITH_CUDA
    return true;
#else
    return false;
#endif
  }, "True when the CUDA kernels were compiled in.");
}
