// read_torch_save (src/core/torch_pickle.cpp) on a whole file: the zip container (LibTorch's
// PyTorchStreamReader) and the pickle inside it. Seeds: the .pt / .pth fixtures.
#include "fuzz_tensor.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  hrmclara_fuzz::init_torch();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace hrmclara_fuzz;
  const std::string path = WorkDir::get().file("input.pt");
  write_file(path, data, size);
  expect_typed_errors("read_torch_save", [&] { touch_all(hrmclara::read_torch_save(path)); });
  return 0;
}
