// Tensor helpers for the harnesses that link LibTorch.
#pragma once

#include "fuzz_common.h"

#include <hrmclara/tensor_io.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Logging.h>

namespace hrmclara_fuzz {

// One intra-op thread: the fuzzer runs one input at a time, and threads only add noise. And no C++
// backtraces in LibTorch's errors: read_torch_save takes e.what() of every c10::Error, which would
// symbolize one (dladdr over LibTorch's symbols, milliseconds) for each bad zip.
inline void init_torch() {
  at::set_num_threads(1);
  c10::SetStackTraceFetcher([]() -> std::string { return "(backtrace off in the fuzz harnesses)"; });
}

// Checks that a tensor the library returned lies inside its storage, then reads every byte it can
// reach (see touch_bytes). A view past its storage is a finding even where nothing crashes.
inline void touch_tensor(const std::string& name, const at::Tensor& t) {
  if (!t.defined()) die("tensor '" + name + "' is undefined");
  if (!t.device().is_cpu()) die("tensor '" + name + "' is not on the CPU");
  if (t.numel() == 0) return;
  int64_t lo = 0, hi = 0;  // element offsets of the first and last element reached, from data_ptr
  for (int64_t d = 0; d < t.dim(); ++d) {
    const int64_t size = t.size(d), stride = t.stride(d);
    int64_t span = 0;
    if (__builtin_mul_overflow(size - 1, stride, &span)) die("tensor '" + name + "': extent overflows int64");
    if (span < 0) {
      if (__builtin_add_overflow(lo, span, &lo)) die("tensor '" + name + "': extent overflows int64");
    } else if (__builtin_add_overflow(hi, span, &hi)) {
      die("tensor '" + name + "': extent overflows int64");
    }
  }
  const int64_t item = static_cast<int64_t>(t.element_size());
  const int64_t first = t.storage_offset() + lo, last = t.storage_offset() + hi;
  const int64_t nbytes = static_cast<int64_t>(t.storage().nbytes());
  if (first < 0 || (last + 1) > nbytes / item)
    die("tensor '" + name + "' " + hrmclara::shape_text(t.sizes()) + " reaches elements [" + std::to_string(first) + ", " +
        std::to_string(last) + "] of a storage of " + std::to_string(nbytes) + " bytes");
  const int64_t bytes = (hi - lo + 1) * item;
  if (bytes <= (int64_t{64} << 20))
    touch_bytes(static_cast<const char*>(t.data_ptr()) + lo * item, static_cast<size_t>(bytes));
}

inline void touch_all(const hrmclara::NamedTensors& tensors) {
  for (const auto& [name, t] : tensors) touch_tensor(name, t);
}

}  // namespace hrmclara_fuzz
