// Every op schema of dcls_convert in one block. Implementations: cpu/*_cpu.cpp, cuda/*_cuda.cu (the CPU
// emulation of the CUDA kernels, emulation/, is built by the tests only); autograd: autograd.cpp;
// fake kernels: dcls_convert/ops/_fake.py.
#include <Python.h>
#include <torch/library.h>

#include "dcls_convert/path_tuning.h"

extern "C" {
// Importing dcls_convert._C loads this library, which runs the registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(dcls_convert, m) {
  // Dense kernel (Cout, Cin/g, *window) from taps: weight (Cout, Cin/g, K), positions (D, Cout, Cin/g, K).
  m.def("construct(Tensor weight, Tensor positions, Tensor? sigma, int[] window, str interpolation, "
        "float sigma_min) -> Tensor");
  m.def("construct_backward(Tensor grad, Tensor weight, Tensor positions, Tensor? sigma, int[] window, "
        "str interpolation, float sigma_min, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // Depthwise convolution that reads only the taps: input (N, C, [H,] W), weight (C, 1, K), positions (D, C, 1, K).
  m.def("taps_conv(Tensor input, Tensor weight, Tensor positions, Tensor? bias, int[] window, int[] stride, "
        "int[] padding, str interpolation) -> Tensor");
  m.def("taps_conv_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor positions, int[] window, "
        "int[] stride, int[] padding, str interpolation, bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");
  // The paths tuning chose on CUDA ("<part key> -> <path>", kernels/include/dcls_convert/path_tuning.h), and a
  // way to forget them (the next call of each shape times its paths again).
  m.def("tuned_paths() -> str[]", &dcls_convert::tuned_paths);
  m.def("clear_tuned_paths() -> ()", &dcls_convert::clear_tuned_paths);
}
