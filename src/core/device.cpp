#include <hrmclara/device.h>
#include <hrmclara/errors.h>

#include <ATen/Parallel.h>
#include <ATen/Context.h>
#include <torch/cuda.h>
#include <torch/mps.h>

#include <sched.h>
#include <thread>

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

}  // namespace

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
  } else if (device.is_cuda()) {
    caps.float64 = true;
    caps.bfloat16 = true;  // compute capability < 8 emulates bf16 matmuls; correct, just slower
  }
  return caps;
}

int configure_threads(int threads) {
  const int n = threads > 0 ? threads : usable_cores();
  at::set_num_threads(n);
  return at::get_num_threads();
}

std::string describe_device(const c10::Device& device) {
  std::string out = device.str();
  if (device.is_cpu()) out += " (" + std::to_string(at::get_num_threads()) + " threads)";
  return out;
}

}  // namespace hrmclara
