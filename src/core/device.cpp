// The device policy, the CPU's native number formats, the compute-dtype choice and the
// system report (info.h).
#include <hrmclara/device.h>
#include <hrmclara/cli.h>
#include <hrmclara/errors.h>
#include <hrmclara/info.h>
#include <hrmclara/log.h>
#include <hrmclara/tensor_io.h>

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <ATen/cpu/Utils.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <torch/cuda.h>
#include <torch/mps.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <limits>
#include <mutex>
#include <set>
#include <sched.h>
#include <sstream>
#include <thread>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace hrmclara {

namespace {

bool cuda_available() { return torch::cuda::is_available(); }
bool mps_available() { return torch::mps::is_available(); }

int usable_cores() {
#ifdef __linux__
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
#endif
  unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? static_cast<int>(n) : 1;
}

std::string env_upper(const char* name) {
  const char* v = std::getenv(name);
  std::string s = v ? v : "";
  for (auto& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

bool contains(const std::string& text, const char* part) { return text.find(part) != std::string::npos; }

// oneDNN's ISA names, ordered; a limit lets oneDNN use the CPU's bf16 (f16) units when it is at
// or above the first ISA that has them (AVX512_CORE_BF16; AVX512_CORE_FP16 = AVX10_1_512).
bool onednn_limit_allows_bf16(const std::string& limit) {
  return limit.empty() || limit == "ALL" || contains(limit, "BF16") || contains(limit, "FP16") ||
         contains(limit, "AVX10") || contains(limit, "AMX");
}
bool onednn_limit_allows_f16(const std::string& limit) {
  return limit.empty() || limit == "ALL" || contains(limit, "FP16") || contains(limit, "AVX10") || contains(limit, "AMX");
}

CpuInfo read_cpu_info() {
  CpuInfo info;
  info.aten_capability = at::get_cpu_capability();
  info.onednn_isa_limit = env_upper("ONEDNN_MAX_CPU_ISA");
  if (info.onednn_isa_limit.empty()) info.onednn_isa_limit = env_upper("DNNL_MAX_CPU_ISA");
  info.mkl_instructions = env_upper("MKL_ENABLE_INSTRUCTIONS");
  std::set<std::string> present;
  for (const auto& [key, value] : at::cpu::get_cpu_capabilities()) {
    if (key == "cpu_name" && value.isString()) info.name = value.toStringRef();
    else if (key == "architecture" && value.isString()) info.architecture = value.toStringRef();
    else if (value.isBool() && value.toBool()) present.insert(key);
  }
  info.features.assign(present.begin(), present.end());
  auto has = [&](std::initializer_list<const char*> keys) {
    for (const char* k : keys)
      if (present.count(k)) return true;
    return false;
  };
  const bool x86 = has({"avx", "sse2"}) || contains(info.architecture, "x86");
  const bool hw_bf16 = x86 ? has({"avx512_bf16", "amx_bf16"}) : has({"bf16", "arm_bf16", "sve_bf16"});
  const bool hw_f16 = x86 ? has({"avx512_fp16", "amx_fp16"}) : has({"fp16_arith", "arm_fp16", "fp16"});
  const std::string& limit = info.onednn_isa_limit;
  info.native_bfloat16 = hw_bf16 && onednn_limit_allows_bf16(limit);
  info.native_float16 = hw_f16 && onednn_limit_allows_f16(limit);
  if (!hw_bf16)
    info.bfloat16_note = x86 ? "this CPU has no AVX512-BF16 or AMX-BF16 units, so bf16 matmuls are emulated"
                             : "this CPU has no BF16 instructions, so bf16 matmuls are emulated";
  else if (!info.native_bfloat16)
    info.bfloat16_note = "ONEDNN_MAX_CPU_ISA=" + limit + " keeps oneDNN from the CPU's bf16 units";
  if (!hw_f16)
    info.float16_note = x86 ? "this CPU has no AVX512-FP16 or AMX-FP16 units, so f16 matmuls are emulated"
                            : "this CPU has no FP16 arithmetic, so f16 matmuls are emulated";
  else if (!info.native_float16)
    info.float16_note = "ONEDNN_MAX_CPU_ISA=" + limit + " keeps oneDNN from the CPU's f16 units";
  return info;
}

std::string gflops_text(double g) {
  std::ostringstream s;
  s.precision(g < 10 ? 2 : 3);
  s << g;
  return s.str();
}

}  // namespace

const CpuInfo& cpu_info() {
  static const CpuInfo info = read_cpu_info();
  return info;
}

bool DeviceCaps::fast(c10::ScalarType dtype) const {
  if (dtype == c10::kBFloat16) return fast_bfloat16;
  if (dtype == c10::kHalf) return fast_float16;
  if (dtype == c10::kDouble) return float64;
  return true;
}

c10::Device resolve_device(const std::string& spec) {
  if (spec.empty() || spec == "auto") {
    if (mps_available()) return c10::Device(c10::kMPS);
    if (cuda_available()) return c10::Device(c10::kCUDA, 0);
    return c10::Device(c10::kCPU);
  }
  if (spec == "cpu") return c10::Device(c10::kCPU);
  if (spec == "mps") {
    if (!mps_available()) throw DeviceError("--device mps: MPS is not available on this machine");
    return c10::Device(c10::kMPS);
  }
  if (spec == "cuda" || spec.rfind("cuda:", 0) == 0) {
    if (!cuda_available())
      throw DeviceError("--device " + spec + ": CUDA is not available (no GPU, no driver, or a CPU-only build)");
    int index = 0;
    if (spec.size() > 5) {
      try {
        size_t used = 0;
        index = std::stoi(spec.substr(5), &used);
        if (used != spec.size() - 5 || index < 0) throw std::invalid_argument(spec);
      } catch (const std::exception&) {
        throw UsageError("--device " + spec + ": bad CUDA device index");
      }
    }
    const int count = static_cast<int>(torch::cuda::device_count());
    if (index >= count)
      throw DeviceError("--device " + spec + ": only " + std::to_string(count) + " CUDA device(s) present");
    return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
  }
  throw UsageError("--device: unknown device '" + spec + "' (auto, cpu, cuda, cuda:N, mps)");
}

DeviceCaps device_caps(const c10::Device& device) {
  DeviceCaps caps;
  if (device.is_mps()) {
    caps.float64 = false;
    caps.bfloat16 = true;  // MPS has bf16 on macOS 14+; LibTorch raises a clear error otherwise
    caps.fast_bfloat16 = false;  // Apple GPUs before M3 have no bf16 units
    caps.slow_bfloat16_note = "MPS: bf16 is not native on every Apple GPU";
    caps.fast_float16 = true;
  } else if (device.is_cuda()) {
    // Ampere (compute capability 8) and later have bf16 tensor cores; earlier GPUs emulate.
    caps.fast_bfloat16 = at::detail::getCUDAHooks().supportsBFloat16ConvolutionWithCuDNNv8();
    if (!caps.fast_bfloat16) caps.slow_bfloat16_note = "this GPU (compute capability < 8.0) has no bf16 tensor cores";
    caps.fast_float16 = true;
  } else {
    const auto& cpu = cpu_info();
    caps.fast_bfloat16 = cpu.native_bfloat16;
    caps.fast_float16 = cpu.native_float16;
    caps.slow_bfloat16_note = cpu.bfloat16_note;
    caps.slow_float16_note = cpu.float16_note;
  }
  return caps;
}

double matmul_gflops(c10::ScalarType dtype, const c10::Device& device, int64_t n) {
  torch::NoGradGuard no_grad;
  const auto opts = torch::TensorOptions().device(device);
  const auto a = torch::randn({n, n}, opts).to(dtype), b = torch::randn({n, n}, opts).to(dtype);
  auto sync = [&] {
    if (device.is_cuda()) torch::cuda::synchronize();
    if (device.is_mps()) torch::mps::synchronize();
  };
  torch::matmul(a, b);  // warm-up: kernel selection, JIT
  sync();
  double best = 1e30;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    torch::matmul(a, b);
    sync();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return 2.0 * static_cast<double>(n * n * n) / std::max(best, 1e-9) / 1e9;
}

c10::ScalarType resolve_dtype(const std::string& spec, const c10::Device& device, const std::string& declared) {
  static std::mutex mutex;
  static std::set<std::string> said;  // messages already logged by this process
  auto once = [&](const std::string& key) {
    std::lock_guard<std::mutex> lock(mutex);
    return said.insert(key).second;
  };
  auto parse = [](const std::string& name, const std::string& what) {
    if (name == "float32") return c10::kFloat;
    if (name == "bfloat16") return c10::kBFloat16;
    if (name == "float16") return c10::kHalf;
    if (name == "float64") return c10::kDouble;
    throw UsageError(what + ": unknown dtype '" + name + "' (" + kDtypeChoices + ")");
  };
  const DeviceCaps caps = device_caps(device);
  if (spec.empty() || spec == "auto") {
    const bool stated = !declared.empty() && declared != "auto";
    const c10::ScalarType want = stated ? parse(declared, "declared dtype") : c10::kBFloat16;
    if (want == c10::kDouble) return caps.float64 ? c10::kDouble : c10::kFloat;
    if (caps.fast(want)) return want;
    const std::string note = want == c10::kHalf ? caps.slow_float16_note : caps.slow_bfloat16_note;
    if (stated && once("auto:" + declared + ":" + device.str()))
      log_info("dtype auto: float32 on " + device.str() + " (the model states " + declared + ", but " + note + ")");
    return c10::kFloat;
  }
  const c10::ScalarType dtype = parse(spec, "--dtype");
  if (dtype == c10::kDouble && !caps.float64)
    throw DeviceError("--dtype float64: " + device.str() + " has no float64");
  if (!caps.fast(dtype) && once("slow:" + spec + ":" + device.str())) {
    const std::string note = dtype == c10::kHalf ? caps.slow_float16_note : caps.slow_bfloat16_note;
    const double slow = matmul_gflops(dtype, device, 128), f32 = matmul_gflops(c10::kFloat, device, 128);
    log_warn("--dtype " + spec + " on " + device.str() + " is slow: " + note + " (a 128^3 matmul ran at " +
             gflops_text(slow) + " GFLOP/s against " + gflops_text(f32) +
             " in float32); --dtype auto picks float32 here");
  }
  return dtype;
}

int configure_threads(int threads) {
  const int cores = usable_cores();
  if (threads < 0) throw UsageError("--threads " + std::to_string(threads) + ": must be >= 0 (0: every core)");
  const int most = std::max(64, 4 * cores);
  if (threads > most)
    throw UsageError("--threads " + std::to_string(threads) + ": this process may use " + std::to_string(cores) +
                     " cores; at most " + std::to_string(most) + " threads are accepted");
  const int n = threads > 0 ? threads : cores;
  at::set_num_threads(n);
  return at::get_num_threads();
}

void keep_freed_memory() {
#if defined(__GLIBC__)
  // 32 MB is the largest mmap threshold glibc accepts; a fixed one also stops its adjustments.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max());  // trim only above 2 GB free
  mallopt(M_TOP_PAD, 64 << 20);
#endif
}

std::string describe_device(const c10::Device& device) {
  std::string out = device.str();
  if (device.is_cpu()) out += " (" + std::to_string(at::get_num_threads()) + " threads, " + cpu_info().aten_capability + ")";
  return out;
}

// ---- info.h ------------------------------------------------------------------------------------

std::string version() { return HRMCLARA_VERSION; }

std::string version_line() {
  return "hrmclara " + version() + " (torch " + std::string(TORCH_VERSION) + ", CPU " + cpu_info().aten_capability + ")";
}

Json system_info(bool measure) {
  const auto& cpu = cpu_info();
  Json info;
  info["version"] = version();
  info["torch"] = TORCH_VERSION;
#ifdef HRMCLARA_WITH_CUDA
  const bool built_cuda = true;
#else
  const bool built_cuda = false;
#endif
  info["cpu"] = {{"name", cpu.name},
                 {"architecture", cpu.architecture},
                 {"cores", usable_cores()},
                 {"aten_capability", cpu.aten_capability},
                 {"onednn_isa_limit", cpu.onednn_isa_limit},
                 {"mkl_instructions", cpu.mkl_instructions},
                 {"native_bfloat16", cpu.native_bfloat16},
                 {"native_float16", cpu.native_float16},
                 {"bfloat16_note", cpu.bfloat16_note},
                 {"float16_note", cpu.float16_note},
                 {"features", cpu.features}};
  info["blas"] = at::hasMKL() ? first_line(at::get_mkl_version()) : std::string("LibTorch's own (no MKL)");
  info["onednn"] = at::hasMKLDNN() ? first_line(at::get_mkldnn_version()) : std::string("none");
  info["openmp"] = first_line(at::get_openmp_version());
  info["threads"] = at::get_num_threads();
  info["cuda"] = {{"built", built_cuda}, {"available", cuda_available()},
                  {"devices", cuda_available() ? static_cast<int64_t>(torch::cuda::device_count()) : 0}};
  info["mps"] = {{"available", mps_available()}};
  const auto device = resolve_device("auto");
  info["auto_device"] = device.str();
  info["auto_dtype"] = dtype_name(resolve_dtype("auto", device));
  if (measure) {
    Json rates;
    const c10::Device cpu_device(c10::kCPU);
    for (auto dtype : {c10::kFloat, c10::kBFloat16, c10::kHalf})
      rates[dtype_name(dtype)] = std::round(matmul_gflops(dtype, cpu_device, 256) * 10) / 10;
    info["cpu_matmul_gflops_256"] = rates;
  }
  return info;
}

std::string system_info_text(const Json& info) {
  std::ostringstream out;
  auto line = [&](const std::string& key, const std::string& value) {
    std::string k = key + ":";
    if (k.size() < 20) k.resize(20, ' ');
    out << k << " " << value << "\n";
  };
  auto yes = [](bool b) { return std::string(b ? "yes" : "no"); };
  const Json& cpu = info["cpu"];
  line("hrmclara", info["version"].get<std::string>());
  line("torch", info["torch"].get<std::string>());
  line("cpu", cpu["name"].get<std::string>() + " (" + cpu["architecture"].get<std::string>() + ", " +
                  std::to_string(cpu["cores"].get<int>()) + " cores)");
  line("aten capability", cpu["aten_capability"].get<std::string>());
  if (!cpu["onednn_isa_limit"].get<std::string>().empty()) line("oneDNN ISA limit", cpu["onednn_isa_limit"].get<std::string>());
  if (!cpu["mkl_instructions"].get<std::string>().empty()) line("MKL instructions", cpu["mkl_instructions"].get<std::string>());
  std::string features;
  for (const auto& f : cpu["features"]) features += (features.empty() ? "" : " ") + f.get<std::string>();
  line("cpu features", features);
  line("native bf16", yes(cpu["native_bfloat16"].get<bool>()) +
                          (cpu["bfloat16_note"].get<std::string>().empty() ? "" : " (" + cpu["bfloat16_note"].get<std::string>() + ")"));
  line("native f16", yes(cpu["native_float16"].get<bool>()) +
                         (cpu["float16_note"].get<std::string>().empty() ? "" : " (" + cpu["float16_note"].get<std::string>() + ")"));
  line("blas", info["blas"].get<std::string>());
  line("oneDNN", info["onednn"].get<std::string>());
  line("openmp", info["openmp"].get<std::string>());
  line("threads", std::to_string(info["threads"].get<int>()));
  line("cuda", std::string(info["cuda"]["built"].get<bool>() ? "built" : "not built") + ", " +
                   (info["cuda"]["available"].get<bool>() ? std::to_string(info["cuda"]["devices"].get<int64_t>()) + " device(s)"
                                                          : std::string("no device")));
  line("mps", info["mps"]["available"].get<bool>() ? "available" : "not available");
  line("auto device", info["auto_device"].get<std::string>());
  line("auto dtype", info["auto_dtype"].get<std::string>());
  if (info.contains("cpu_matmul_gflops_256")) {
    std::string rates;
    for (const auto& [k, v] : info["cpu_matmul_gflops_256"].items())
      rates += (rates.empty() ? "" : ", ") + k + " " + gflops_text(v.get<double>());
    line("cpu matmul GFLOP/s", rates + " (256^3)");
  }
  return out.str();
}

}  // namespace hrmclara
