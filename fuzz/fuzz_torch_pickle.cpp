// read_torch_save's unpickler (src/core/torch_pickle.cpp) with a well-formed zip around it: the
// input is data.pkl; the harness adds "byteorder" and storage records data/0 .. data/15 of 4 KiB
// each, so mutations reach the pickle machine instead of dying in the zip reader. Seeds: the
// data.pkl of every .pt / .pth fixture (fuzz/seeds.py) and a few hand-made pickles.
#include "fuzz_tensor.h"

#include <caffe2/serialize/inline_container.h>

namespace {
constexpr int kRecords = 16;
constexpr size_t kRecordBytes = 4096;
std::string g_storage;  // pattern bytes shared by every record
}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  hrmclara_fuzz::init_torch();
  g_storage.resize(kRecordBytes);
  for (size_t i = 0; i < kRecordBytes; ++i) g_storage[i] = static_cast<char>(i * 131 + 7);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace hrmclara_fuzz;
  const std::string path = WorkDir::get().file("archive.pt");
  {
    caffe2::serialize::PyTorchStreamWriter writer(path);
    writer.writeRecord("data.pkl", data, size);
    writer.writeRecord("byteorder", "little", 6);
    for (int i = 0; i < kRecords; ++i) writer.writeRecord("data/" + std::to_string(i), g_storage.data(), g_storage.size());
    writer.writeEndOfFile();
  }
  expect_typed_errors("read_torch_save", [&] { touch_all(hrmclara::read_torch_save(path)); });
  return 0;
}
