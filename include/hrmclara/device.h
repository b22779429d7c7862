// One device policy for every tool: `auto` picks MPS, then CUDA, then CPU; an explicit choice
// that is absent is an error. Numerics code asks DeviceCaps what a device can do instead of
// testing its type.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <string>

namespace hrmclara {

struct DeviceCaps {
  bool float64 = true;   // MPS has no float64
  bool bfloat16 = true;
  // The widest float type the device computes in: float64 where it exists, else float32.
  c10::ScalarType widest_float() const { return float64 ? c10::kDouble : c10::kFloat; }
};

// Parses "auto", "cpu", "cuda", "cuda:N" or "mps" and checks that the device is present.
// Throws UsageError for an unknown name and DeviceError for an absent device.
c10::Device resolve_device(const std::string& spec);

// What the device supports.
DeviceCaps device_caps(const c10::Device& device);

// Sets LibTorch's intra-op thread count: `threads` > 0 as given, otherwise every core the
// process may use (some LibTorch builds default to one thread).
int configure_threads(int threads = 0);

// "cpu", "cuda:0", "mps" plus the thread count on CPU, for logs and benchmark output.
std::string describe_device(const c10::Device& device);

}  // namespace hrmclara
