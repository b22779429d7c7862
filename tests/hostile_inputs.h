// Hostile inputs shared by the hardening tests (tests/core/test_hardening.cpp) and the per-tool error
// contract (tests/tools/test_error_contract.cpp): each is built in the test, never committed.
#pragma once

#include <caffe2/serialize/inline_container.h>

#include <string>

namespace hrmclara::test {

// A torch.save archive whose data.pkl is `pickle`, written with torch's own zip writer, so that
// only the pickle is hostile.
inline void write_pickle_archive(const std::string& path, const std::string& pickle) {
  caffe2::serialize::PyTorchStreamWriter writer(path);
  writer.writeRecord("data.pkl", pickle.data(), pickle.size());
  writer.writeRecord("byteorder", "little", 6);
  writer.writeEndOfFile();
}

// Nine levels of nine aliases of the level below: 9^9 = 387 million values from 400 bytes of YAML.
inline std::string yaml_alias_bomb() {
  std::string yaml = "a0: &a0 [x, x, x, x, x, x, x, x, x]\n";
  for (int i = 1; i <= 8; ++i) {
    const std::string prev = "*a" + std::to_string(i - 1);
    yaml += "a" + std::to_string(i) + ": &a" + std::to_string(i) + " [" + prev;
    for (int k = 1; k < 9; ++k) yaml += ", " + prev;
    yaml += "]\n";
  }
  return yaml;
}

}  // namespace hrmclara::test
