// LibTorch's own c10d process group (Gloo on CPU, NCCL on CUDA) behind the collectives training
// needs: bucketed gradient all-reduce, all-gather, broadcast, plus the Trainer's Collective. The
// rendezvous is a c10d::TCPStore at MASTER_ADDR:MASTER_PORT (torchrun's own store when it serves
// one). Errors (a rank gone, a timeout) surface as DistributedError naming the operation.
#pragma once

#include <hrmclara/distributed.h>
#include <hrmclara/errors.h>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace hrmclara {

class ProcessGroup : public Collective {
 public:
  // backend: auto (NCCL for a CUDA device, else Gloo), gloo or nccl. `timeout` bounds every
  // collective and the rendezvous: a rank that dies or hangs makes the others fail after it.
  static std::unique_ptr<ProcessGroup> create(const DistEnv& env, const std::string& backend, const c10::Device& device,
                                              std::chrono::milliseconds timeout);
  ~ProcessGroup() override;

  int rank() const override;
  int world_size() const override;
  const std::string& backend() const;
  void barrier() override;
  std::vector<double> max(const std::vector<double>& values) override;
  std::vector<std::string> all_gather(const std::string& text) override;

  // Sums every tensor over ranks in place. Tensors of one dtype and device go through one
  // flattened bucket of at most `bucket_bytes` per collective call.
  void all_reduce_sum(const std::vector<at::Tensor>& tensors, int64_t bucket_bytes = int64_t{25} << 20);
  // Sums named scalars (metrics) over ranks in one collective; every rank must pass the same keys.
  void all_reduce_sum(std::map<std::string, double>& values);
  // Every rank's `t` (same shape on all ranks) concatenated along dim 0, in rank order.
  at::Tensor all_gather_cat(const at::Tensor& t);
  // Rank `root`'s values into every rank's tensors.
  void broadcast(const std::vector<at::Tensor>& tensors, int root = 0);

  // Seconds spent inside collectives since creation (the communication figure of the benchmarks).
  double seconds_in_collectives() const;

 private:
  struct Impl;
  explicit ProcessGroup(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class ArgParser;

// For the trainers' mains, after parsing (args with common_options and distributed_options): when
// torchrun's environment names several processes, requires --out or --resume (one run directory for
// all), moves a CUDA `device` given as auto or cuda to cuda:LOCAL_RANK, leaves ranks > 0 at log
// level warn (unless --log-level says otherwise) and creates the process group. Null otherwise.
std::unique_ptr<ProcessGroup> join_distributed_run(const ArgParser& args, c10::Device& device);

}  // namespace hrmclara
