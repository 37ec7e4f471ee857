// tf32.cpp exposes libtorch's TF32 switches (at::globalContext()), which
// gotch's C API does not wrap, to Go through C functions.
#include <ATen/Context.h>

#include "tf32.h"

extern "C" {

int m3_set_allow_tf32(int cudnn, int cublas) {
  try {
    at::globalContext().setAllowTF32CuDNN(cudnn != 0);
    at::globalContext().setAllowTF32CuBLAS(cublas != 0);
    return 0;
  } catch (...) {
    return -1;
  }
}

int m3_allow_tf32_cudnn() {
  try {
    return at::globalContext().allowTF32CuDNN() ? 1 : 0;
  } catch (...) {
    return -1;
  }
}

int m3_allow_tf32_cublas() {
  try {
    return at::globalContext().allowTF32CuBLAS() ? 1 : 0;
  } catch (...) {
    return -1;
  }
}

}  // extern "C"
