// torchrun's environment and the config check across ranks (see distributed.h).
#include <hrmclara/config.h>
#include <hrmclara/distributed.h>
#include <hrmclara/errors.h>

#include <cstdlib>

namespace hrmclara {

namespace {

bool env_set(const char* name) {
  const char* v = std::getenv(name);
  return v && *v;
}

int env_int(const char* name, int fallback, int lo, int hi) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  try {
    size_t used = 0;
    const long x = std::stol(v, &used);
    if (used != std::string(v).size() || x < lo || x > hi) throw std::invalid_argument(v);
    return static_cast<int>(x);
  } catch (const std::exception&) {
    throw ConfigError(std::string("environment variable ") + name + "='" + v + "' must be an integer in [" + std::to_string(lo) +
                      ", " + std::to_string(hi) + "]");
  }
}

// The first key path where two JSON values differ ("" when equal).
std::string first_difference(const Json& a, const Json& b, const std::string& path) {
  if (a.is_object() && b.is_object()) {
    for (const auto& [k, v] : a.items()) {
      const std::string p = path.empty() ? k : path + "." + k;
      if (!b.contains(k)) return p;
      const auto d = first_difference(v, b[k], p);
      if (!d.empty()) return d;
    }
    for (const auto& [k, v] : b.items())
      if (!a.contains(k)) return path.empty() ? k : path + "." + k;
    return "";
  }
  return a == b ? "" : (path.empty() ? "(the whole value)" : path);
}

}  // namespace

DistEnv DistEnv::from_env() {
  DistEnv e;
  const bool has_rank = env_set("RANK"), has_world = env_set("WORLD_SIZE");
  if (has_rank != has_world) throw ConfigError("environment: RANK and WORLD_SIZE go together (set both, as torchrun does, or neither)");
  if (!has_rank) return e;
  e.world_size = env_int("WORLD_SIZE", 1, 1, 1 << 20);
  e.rank = env_int("RANK", 0, 0, e.world_size - 1);
  e.local_world_size = env_int("LOCAL_WORLD_SIZE", e.world_size, 1, e.world_size);
  e.local_rank = env_int("LOCAL_RANK", e.rank % e.local_world_size, 0, e.local_world_size - 1);
  if (env_set("MASTER_ADDR")) e.master_addr = std::getenv("MASTER_ADDR");
  e.master_port = env_int("MASTER_PORT", 29500, 1, 65535);
  const char* agent = std::getenv("TORCHELASTIC_USE_AGENT_STORE");
  e.agent_store = agent && std::string(agent) == "True";
  return e;
}

void require_same_on_all_ranks(Collective& collective, const std::string& text, const std::string& what) {
  const auto all = collective.all_gather(text);
  for (size_t r = 1; r < all.size(); ++r) {
    if (all[r] == all[0]) continue;
    std::string where;
    try {
      where = first_difference(Json::parse(all[0]), Json::parse(all[r]), "");
    } catch (const Json::exception&) {
    }
    throw ConfigError("rank " + std::to_string(r) + "'s " + what + " differs from rank 0's" +
                      (where.empty() ? std::string() : " (first at '" + where + "')") +
                      "; every rank must start with the same config");
  }
}

}  // namespace hrmclara
