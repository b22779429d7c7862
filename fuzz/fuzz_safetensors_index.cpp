// read_safetensors_index and for_each_safetensors_shard (src/core/tensor_files.cpp): the input is
// a `*.safetensors.index.json`; its folder holds the two shards of the clara-reference fixture,
// a tiny shard of our own, a file that is not safetensors, a subdirectory and an empty file, so
// the index can name good shards, bad ones and things that are not files. Seeds: the fixture's
// index and hand-made ones (fuzz/seeds.py).
#include "fuzz_tensor.h"

#include <sys/stat.h>

namespace {
std::string g_dir;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  using namespace hrmclara_fuzz;
  init_torch();
  g_dir = WorkDir::get().file("model");
  ::mkdir(g_dir.c_str(), 0755);
  const std::string fixtures = source_dir() + "/tests/fixtures/clara-reference/";
  for (const char* shard : {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"})
    write_file(g_dir + "/" + shard, read_whole_file(fixtures + shard));
  hrmclara::write_safetensors(g_dir + "/tiny.safetensors",
                              {{"a", at::arange(6, at::kFloat).reshape({2, 3})}, {"b", at::ones({4}, at::kLong)}});
  write_file(g_dir + "/garbage.safetensors", std::string("\x10\0\0\0\0\0\0\0{\"x\":1}", 15));
  write_file(g_dir + "/empty.safetensors", std::string());
  ::mkdir((g_dir + "/folder.safetensors").c_str(), 0755);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace hrmclara_fuzz;
  const std::string path = g_dir + "/model.safetensors.index.json";
  write_file(path, data, size);
  expect_typed_errors("read_safetensors_index", [&] { touch_all(hrmclara::read_safetensors_index(path)); });
  expect_typed_errors("for_each_safetensors_shard", [&] {
    hrmclara::for_each_safetensors_shard(path, [](const std::string&, hrmclara::NamedTensors& tensors) { touch_all(tensors); });
  });
  return 0;
}
