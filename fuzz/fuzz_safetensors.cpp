// read_safetensors (src/core/tensor_files.cpp): the 8-byte header length, the JSON header, dtypes,
// shapes and data offsets, zero-copy and copied tensors. Seeds: the .safetensors fixtures.
#include "fuzz_tensor.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  hrmclara_fuzz::init_torch();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace hrmclara_fuzz;
  const std::string path = WorkDir::get().file("input.safetensors");
  write_file(path, data, size);
  expect_typed_errors("read_safetensors", [&] {
    std::map<std::string, std::string> metadata;
    touch_all(hrmclara::read_safetensors(path, &metadata));
  });
  return 0;
}
