// kernel.h is what the package's C++ kernels (linear.cpp, attend.cpp) share.
#ifndef M3GATE_TORCH_KERNEL_H
#define M3GATE_TORCH_KERNEL_H
#include <cstring>

// m3CopyErr copies msg into err (errlen bytes, always terminated): how a
// wrapper hands a libtorch error back to Go.
inline void m3CopyErr(const char *msg, char *err, int errlen) {
  if (errlen <= 0) return;
  std::strncpy(err, msg, errlen - 1);
  err[errlen - 1] = 0;
}
#endif
