// Python module entry of wrn_fast._C. The ops themselves are registered with
// TORCH_LIBRARY(wrn_fast, m) in the other csrc/*.cpp files; importing this module
// loads the shared library and so registers them.
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
