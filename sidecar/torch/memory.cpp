// memory.cpp makes tensors over memory the caller owns (a file mapping):
// gotch's API only copies into new tensors.
#include <ATen/ATen.h>

#include <exception>
#include <vector>

#include "kernel.h"
#include "memory.h"

extern "C" {

int m3_from_memory(void *data, const long *shape, int dims, int kind, void **out, char *err, int errlen) {
  try {
    std::vector<int64_t> sizes(shape, shape + dims);
    at::Tensor t = at::from_blob(data, sizes, at::TensorOptions().dtype(static_cast<c10::ScalarType>(kind)));
    *out = new at::Tensor(t);
    return 0;
  } catch (const std::exception &e) {
    m3CopyErr(e.what(), err, errlen);
    return -1;
  }
}

}  // extern "C"
