// Data-parallel training across processes: what torchrun's environment says about this process,
// and the few collectives the (torch-free) Trainer needs. The tensor collectives and the process
// group itself are in process_group.h.
#pragma once

#include <string>
#include <vector>

namespace hrmclara {

// torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT;
// TORCHELASTIC_USE_AGENT_STORE when torchrun itself serves the rendezvous store). Without RANK and
// WORLD_SIZE the process runs alone (world_size 1) and nothing changes.
struct DistEnv {
  int rank = 0, world_size = 1;
  int local_rank = 0, local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  bool agent_store = false;  // torchrun serves the store: every rank, 0 included, is a client

  // Reads the environment; ConfigError naming the variable for a malformed or inconsistent value
  // (RANK outside [0, WORLD_SIZE), a port outside 1-65535, ...).
  static DistEnv from_env();
  bool active() const { return world_size > 1; }
};

// The collectives of the training loop: agreeing on when to stop, barriers around checkpoints,
// comparing configs. Every rank must make the same calls in the same order.
class Collective {
 public:
  virtual ~Collective() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  virtual void barrier() = 0;
  // Element-wise maximum over ranks (every rank gets the result).
  virtual std::vector<double> max(const std::vector<double>& values) = 0;
  // Every rank's text, in rank order.
  virtual std::vector<std::string> all_gather(const std::string& text) = 0;
};

// Throws ConfigError unless every rank has the same `text` (a config), naming the first rank and
// the first JSON key that differ when `text` is JSON.
void require_same_on_all_ranks(Collective& collective, const std::string& text, const std::string& what);

}  // namespace hrmclara
