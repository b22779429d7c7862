// One device policy for every tool: `auto` picks MPS, then CUDA, then CPU; an explicit choice
// that is absent is an error. Numerics code asks DeviceCaps what a device can do instead of
// testing its type, and tools pick their compute dtype through resolve_dtype, so that no default
// lands on a dtype the device only emulates (bf16 matmuls on a CPU without AVX512-BF16/AMX run
// about 100x slower than float32).
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <string>
#include <vector>

namespace hrmclara {

// What this CPU computes natively, as cpuinfo (through ATen) reports it, narrowed by the variables
// that make LibTorch imitate an older CPU: ATEN_CPU_CAPABILITY (ATen's kernels),
// ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA (oneDNN's, which run the bf16/f16 matmuls) and
// MKL_ENABLE_INSTRUCTIONS (MKL's float32 GEMM).
struct CpuInfo {
  std::string name;             // "Intel Xeon", as cpuinfo names it
  std::string architecture;     // x86_64, arm64
  std::string aten_capability;  // ATen's kernels in use: AVX512, AVX2, DEFAULT, SVE256, ...
  std::string onednn_isa_limit; // ONEDNN_MAX_CPU_ISA when set, else empty
  std::string mkl_instructions; // MKL_ENABLE_INSTRUCTIONS when set, else empty
  std::vector<std::string> features;  // ISA extensions present (avx2, avx512_bf16, amx_bf16, ...)
  bool native_bfloat16 = false;  // bf16 dot products in hardware, and oneDNN allowed to use them
  bool native_float16 = false;   // likewise for f16 (AVX512-FP16, AMX-FP16, Arm FP16 arithmetic)
  // Why bf16 / f16 are not native, for messages ("AVX2 only: no AVX512-BF16 or AMX-BF16").
  std::string bfloat16_note, float16_note;
};
const CpuInfo& cpu_info();

struct DeviceCaps {
  bool float64 = true;   // MPS has no float64
  bool bfloat16 = true;  // supported at all
  bool fast_bfloat16 = false;  // at least as fast as float32 (native bf16 units)
  bool fast_float16 = false;
  std::string slow_bfloat16_note, slow_float16_note;  // why not fast, when not
  // The widest float type the device computes in: float64 where it exists, else float32.
  c10::ScalarType widest_float() const { return float64 ? c10::kDouble : c10::kFloat; }
  bool fast(c10::ScalarType dtype) const;
};

// Parses "auto", "cpu", "cuda", "cuda:N" or "mps" and checks that the device is present.
// Throws UsageError for an unknown name and DeviceError for an absent device.
c10::Device resolve_device(const std::string& spec);

// What the device supports.
DeviceCaps device_caps(const c10::Device& device);

// The compute dtype for a `--dtype` value: float32, bfloat16, float16, float64, or auto.
// - auto: `declared` (the dtype the model or config states; empty or "auto" when it states none,
//   which means bfloat16) where the device computes it fast, otherwise float32 (logged once at
//   info level when it overrides a declared dtype). float64 becomes float32 where the device has
//   none (MPS).
// - an explicit dtype is used as given; when the device only emulates it, a warning says so once
//   per process, with a measured matmul rate against float32.
// Throws UsageError for other names and DeviceError for float64 on MPS.
c10::ScalarType resolve_dtype(const std::string& spec, const c10::Device& device, const std::string& declared = "");

// The names --dtype accepts, for help texts.
inline constexpr const char* kDtypeChoices = "auto|float32|bfloat16|float16|float64";

// Measured matmul throughput (GFLOP/s) of an n x n x n product in `dtype` on `device`, best of a
// few runs after a warm-up; for messages and benchmarks, never for decisions.
double matmul_gflops(c10::ScalarType dtype, const c10::Device& device, int64_t n = 256);

// Sets LibTorch's intra-op thread count: `threads` > 0 as given, otherwise every core the
// process may use (some LibTorch builds default to one thread). Throws UsageError for a negative
// count or one far above the cores present.
int configure_threads(int threads = 0);

// Makes glibc's malloc keep freed tensor memory in the process. By default it returns large freed
// blocks to the kernel (blocks above a threshold that grows only up to 32 MB are mmap'd; the top of
// the heap is trimmed), so a training loop that frees and re-allocates its activations every step
// page-faults on all of them again (~37 MB of fresh pages per step of models/hrm/bench-2core.json,
// several % of the step). After this call blocks up to 32 MB come from the heap, which is not trimmed
// (below 2 GB free): the resident size stays at the peak. Process-wide, so it is for tools (hrm_train,
// hrm_bench) to call at start-up, not for the library; a no-op without glibc.
void keep_freed_memory();

// "cpu", "cuda:0", "mps" plus the thread count on CPU, for logs and benchmark output.
std::string describe_device(const c10::Device& device);

}  // namespace hrmclara
