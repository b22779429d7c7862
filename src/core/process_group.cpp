// ProcessGroup (include/hrmclara/process_group.h) on LibTorch's c10d: a TCPStore rendezvous and
// ProcessGroupGloo (CPU) or ProcessGroupNCCL (CUDA builds).
//
// The torch wheel ships c10d's headers but not gloo's, which ProcessGroupGloo.hpp includes: they
// come from Debian's libgloo-dev, an older gloo than the one compiled into libtorch_cpu. That is
// sound only for what this file does: the process group and its Options hold gloo objects through
// pointers (their sizes match libtorch's allocations), Options::create_default builds the devices
// inside libtorch, and nothing here touches a gloo type (gloo::Context and the rendezvous store
// differ between the two versions). Keep it that way: this is the one file that includes the
// header, it never includes anything else of gloo, and it catches errors as std::exception.
#include <hrmclara/cli.h>
#include <hrmclara/device.h>
#include <hrmclara/log.h>
#include <hrmclara/process_group.h>

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef HRMCLARA_WITH_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef HRMCLARA_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstring>
#include <map>

namespace hrmclara {

namespace {

using Clock = std::chrono::steady_clock;

// Runs a collective and waits for it; any failure becomes one DistributedError line.
template <typename F>
void run_collective(const char* what, double& seconds, F&& f) {
  const auto t0 = Clock::now();
  try {
    auto work = f();
    work->wait();
  } catch (const std::exception& e) {
    throw DistributedError(std::string(what) + " failed (another rank died, hung past the timeout, or the network failed): " +
                           first_line(e.what()));
  }
  seconds += std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace

struct ProcessGroup::Impl {
  DistEnv env;
  std::string backend;
  c10::Device device{c10::kCPU};
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> group;
  double seconds = 0.0;
};

ProcessGroup::ProcessGroup(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ProcessGroup::~ProcessGroup() = default;

std::unique_ptr<ProcessGroup> ProcessGroup::create(const DistEnv& env, const std::string& backend_spec, const c10::Device& device,
                                                   std::chrono::milliseconds timeout) {
  std::string backend = backend_spec;
  if (backend == "auto") backend = device.is_cuda() ? "nccl" : "gloo";
  if (backend != "gloo" && backend != "nccl") throw UsageError("--dist-backend must be auto, gloo or nccl, not '" + backend_spec + "'");
  if (backend == "nccl" && !device.is_cuda()) throw UsageError("--dist-backend nccl needs a CUDA device (this run uses " + device.str() + ")");
#ifndef HRMCLARA_WITH_GLOO
  if (backend == "gloo") throw DeviceError("--dist-backend gloo: this build has no Gloo (install libgloo-dev's headers and reconfigure)");
#endif
#ifndef HRMCLARA_WITH_NCCL
  if (backend == "nccl") throw DeviceError("--dist-backend nccl: this build has no CUDA (configure against a CUDA torch wheel with nvcc)");
#endif
  auto impl = std::make_unique<Impl>();
  impl->env = env;
  impl->backend = backend;
  impl->device = device;
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(env.master_port);
    // Under torchrun its agent already serves the store: every rank connects as a client.
    so.isServer = env.rank == 0 && !env.agent_store;
    so.numWorkers = env.world_size;
    so.waitWorkers = true;  // each client registers inside the wait: needed on every rank
    so.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
    impl->store = c10::make_intrusive<c10d::PrefixStore>("hrmclara", tcp);
  } catch (const std::exception& e) {
    throw DistributedError("rendezvous at " + env.master_addr + ":" + std::to_string(env.master_port) + " (rank " +
                           std::to_string(env.rank) + " of " + std::to_string(env.world_size) + ") failed: " + first_line(e.what()));
  }
  try {
    if (backend == "gloo") {
#ifdef HRMCLARA_WITH_GLOO
      auto options = c10d::ProcessGroupGloo::Options::create_default(timeout);
      impl->group = c10::make_intrusive<c10d::ProcessGroupGloo>(impl->store, env.rank, env.world_size, options);
#endif
    } else {
#ifdef HRMCLARA_WITH_NCCL
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = timeout;
      auto nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(impl->store, env.rank, env.world_size, options);
      nccl->setBoundDeviceId(device);
      impl->group = nccl;
#endif
    }
  } catch (const std::exception& e) {
    throw DistributedError("creating the " + backend + " process group (rank " + std::to_string(env.rank) + " of " +
                           std::to_string(env.world_size) + ") failed: " + first_line(e.what()));
  }
  log_info("distributed: rank " + std::to_string(env.rank) + " of " + std::to_string(env.world_size) + " (" + backend + ", " +
           device.str() + ")");
  return std::unique_ptr<ProcessGroup>(new ProcessGroup(std::move(impl)));
}

int ProcessGroup::rank() const { return impl_->env.rank; }
int ProcessGroup::world_size() const { return impl_->env.world_size; }
const std::string& ProcessGroup::backend() const { return impl_->backend; }
double ProcessGroup::seconds_in_collectives() const { return impl_->seconds; }

void ProcessGroup::barrier() {
  // An all-reduce of one value: a barrier that goes through the same transport and timeout as
  // every other collective (c10d's barrier op is not implemented by every backend the same way).
  auto t = at::zeros({1}, at::TensorOptions().dtype(at::kFloat).device(impl_->device));
  std::vector<at::Tensor> v{t};
  run_collective("barrier", impl_->seconds, [&] { return impl_->group->allreduce(v); });
}

std::vector<double> ProcessGroup::max(const std::vector<double>& values) {
  if (values.empty()) return {};
  auto t = at::tensor(values, at::TensorOptions().dtype(at::kDouble)).to(impl_->device);
  std::vector<at::Tensor> v{t};
  c10d::AllreduceOptions o;
  o.reduceOp = c10d::ReduceOp::MAX;
  run_collective("all-reduce (max)", impl_->seconds, [&] { return impl_->group->allreduce(v, o); });
  const auto host = v[0].cpu();
  return std::vector<double>(host.data_ptr<double>(), host.data_ptr<double>() + host.numel());
}

std::vector<std::string> ProcessGroup::all_gather(const std::string& text) {
  // Lengths first, then the bytes padded to the longest.
  const auto lengths = all_gather_cat(at::tensor({static_cast<int64_t>(text.size())}, at::kLong).to(impl_->device)).cpu();
  int64_t longest = 0;
  for (int64_t r = 0; r < lengths.numel(); ++r) longest = std::max(longest, lengths[r].item<int64_t>());
  auto bytes = at::zeros({std::max<int64_t>(longest, 1)}, at::kByte);
  std::memcpy(bytes.data_ptr<uint8_t>(), text.data(), text.size());
  const auto all = all_gather_cat(bytes.to(impl_->device)).cpu().view({world_size(), -1});
  std::vector<std::string> out;
  for (int64_t r = 0; r < world_size(); ++r)
    out.emplace_back(reinterpret_cast<const char*>(all[r].data_ptr<uint8_t>()), static_cast<size_t>(lengths[r].item<int64_t>()));
  return out;
}

void ProcessGroup::all_reduce_sum(const std::vector<at::Tensor>& tensors, int64_t bucket_bytes) {
  // Buckets of one dtype and device, each flattened into one contiguous buffer: one collective per
  // bucket instead of one per tensor.
  std::map<std::pair<int, std::string>, std::vector<at::Tensor>> groups;
  for (const auto& t : tensors)
    if (t.defined()) groups[{static_cast<int>(t.scalar_type()), t.device().str()}].push_back(t);
  for (auto& [key, group] : groups) {
    size_t i = 0;
    while (i < group.size()) {
      std::vector<at::Tensor> bucket;
      int64_t bytes = 0;
      while (i < group.size() && (bucket.empty() || bytes + group[i].nbytes() <= static_cast<size_t>(bucket_bytes))) {
        bytes += static_cast<int64_t>(group[i].nbytes());
        bucket.push_back(group[i++]);
      }
      std::vector<at::Tensor> flat_parts;
      for (const auto& t : bucket) flat_parts.push_back(t.reshape({-1}));
      std::vector<at::Tensor> flat{at::cat(flat_parts)};
      run_collective("gradient all-reduce", impl_->seconds, [&] { return impl_->group->allreduce(flat); });
      int64_t offset = 0;
      for (auto& t : bucket) {
        const int64_t n = t.numel();
        t.copy_(flat[0].narrow(0, offset, n).view(t.sizes()));
        offset += n;
      }
    }
  }
}

void ProcessGroup::all_reduce_sum(std::map<std::string, double>& values) {
  std::vector<double> flat;
  for (const auto& [k, v] : values) flat.push_back(v);
  if (flat.empty()) return;
  auto t = at::tensor(flat, at::TensorOptions().dtype(at::kDouble)).to(impl_->device);
  all_reduce_sum(std::vector<at::Tensor>{t});
  const auto host = t.cpu();
  int64_t i = 0;
  for (auto& [k, v] : values) v = host[i++].item<double>();
}

at::Tensor ProcessGroup::all_gather_cat(const at::Tensor& t) {
  auto input = t.contiguous();
  std::vector<at::Tensor> in{input};
  std::vector<std::vector<at::Tensor>> out(1);
  for (int r = 0; r < world_size(); ++r) out[0].push_back(at::empty_like(input));
  run_collective("all-gather", impl_->seconds, [&] { return impl_->group->allgather(out, in); });
  return at::cat(out[0], 0);
}

void ProcessGroup::broadcast(const std::vector<at::Tensor>& tensors, int root) {
  for (const auto& t : tensors) {
    std::vector<at::Tensor> v{t};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    run_collective("broadcast", impl_->seconds, [&] { return impl_->group->broadcast(v, o); });
  }
}

std::unique_ptr<ProcessGroup> join_distributed_run(const ArgParser& args, c10::Device& device) {
  const double timeout_s = args.get_double("dist-timeout-s");
  if (!(timeout_s > 0)) throw UsageError("--dist-timeout-s must be positive");
  const auto env = DistEnv::from_env();
  if (!env.active()) return nullptr;
  if (!args.has("out") && !args.has("resume")) throw UsageError("a distributed run needs --out RUNDIR (the same on every rank)");
  if (device.is_cuda() && (args.get("device") == "auto" || args.get("device") == "cuda"))
    device = resolve_device("cuda:" + std::to_string(env.local_rank));
  if (env.rank != 0 && !args.has("log-level")) set_log_level("warn");  // rank 0 reports for all
  return ProcessGroup::create(env, args.get("dist-backend"), device, std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000)));
}

}  // namespace hrmclara
