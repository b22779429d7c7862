// The .npy readers: read_npy (src/core/tensor_files.cpp, a tensor) and npy::read / to_int64
// (src/core/npy.cpp, raw arrays, what the puzzle builders use). Seeds: the .npy fixtures.
#include "fuzz_tensor.h"

#include <hrmclara/npy.h>

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  hrmclara_fuzz::init_torch();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace hrmclara_fuzz;
  const std::string path = WorkDir::get().file("input.npy");
  write_file(path, data, size);
  expect_typed_errors("read_npy", [&] { touch_tensor("npy", hrmclara::read_npy(path)); });
  expect_typed_errors("npy::read", [&] {
    const hrmclara::npy::Array a = hrmclara::npy::read(path);
    // What the callers rely on: the bytes are exactly numel * item size.
    const size_t item = a.descr.size() > 2 ? static_cast<size_t>(std::atoi(a.descr.c_str() + 2)) : 0;
    if (item == 0 || a.bytes.size() != a.numel() * item)
      die("npy::read: " + std::to_string(a.bytes.size()) + " bytes for " + std::to_string(a.numel()) + " elements of " + a.descr);
    touch_bytes(a.bytes.data(), a.bytes.size());
    if (a.descr[1] != 'f') {
      const auto values = a.to_int64();
      if (values.size() != a.numel()) die("npy::Array::to_int64 returned the wrong count");
    }
  });
  return 0;
}
