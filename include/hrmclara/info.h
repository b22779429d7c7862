// What this build runs on: version, LibTorch, BLAS, CPU capability, native low-precision types,
// accelerators. Printed by hrmclara_info and `<tool> --version --verbose`, and recorded by the
// benchmarks, so a timing or a failure report always says where it came from.
#pragma once

#include <hrmclara/config.h>

#include <string>

namespace hrmclara {

// "0.1.0".
std::string version();

// version, torch, cpu {name, architecture, aten_capability, features, native_bfloat16, ...},
// blas, threads, cuda, mps. With `measure`, also matmul GFLOP/s per dtype on the CPU (about a
// second on a CPU that emulates bf16).
Json system_info(bool measure = false);

// system_info as aligned "key: value" lines.
std::string system_info_text(const Json& info);

// The line `<tool> --version` prints: "hrmclara 0.1.0 (torch 2.11.0, CPU AVX512)".
std::string version_line();

}  // namespace hrmclara
