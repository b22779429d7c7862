// Format detection, loading any checkpoint as named tensors, key mapping, strict state-dict
// loading, and our own TorchScript-compatible tensor archives.
#include <hrmclara/checkpoint.h>
#include <hrmclara/cli.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>

#include <torch/script.h>
#include <torch/serialize.h>
#include <torch/torch.h>

#include <fstream>
#include <map>
#include <set>

namespace hrmclara {

namespace {

std::string head_bytes(const std::string& path, size_t n) {
  require_regular_file(path);
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(path + ": cannot open");
  std::string out(n, '\0');
  in.read(out.data(), static_cast<std::streamsize>(n));
  out.resize(static_cast<size_t>(in.gcount()));
  return out;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Writes nested OutputArchives, one level per '.'-separated key component, so Python sees a
// module tree whose named_parameters() are the original dotted names.
struct ArchiveTree {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  std::vector<std::string> child_order;
  std::map<std::string, ArchiveTree> children;
  void add(const std::string& name, const at::Tensor& t) {
    auto dot = name.find('.');
    if (dot == std::string::npos) {
      tensors.emplace_back(name, t);
      return;
    }
    const std::string head = name.substr(0, dot);
    if (!children.count(head)) child_order.push_back(head);
    children[head].add(name.substr(dot + 1), t);
  }
  void write(torch::serialize::OutputArchive& archive) const {
    for (const auto& [name, t] : tensors) archive.write(name, t.detach().to(at::kCPU), /*is_buffer=*/true);
    for (const auto& name : child_order) {
      torch::serialize::OutputArchive child;
      children.at(name).write(child);
      archive.write(name, child);
    }
  }
};

}  // namespace

CheckpointFormat detect_checkpoint_format(const std::string& path, std::string* resolved_path) {
  std::string target = path;
  if (is_directory(path)) {
    if (file_exists(path + "/model.safetensors.index.json")) target = path + "/model.safetensors.index.json";
    else if (file_exists(path + "/model.safetensors")) target = path + "/model.safetensors";
    else throw IoError(path + ": directory holds neither model.safetensors nor model.safetensors.index.json");
  }
  if (!file_exists(target)) throw IoError(target + ": no such file");
  if (resolved_path) *resolved_path = target;
  const std::string head = head_bytes(target, 16);
  if (head.size() >= 2 && head[0] == 'P' && head[1] == 'K') {
    // A zip: torch.save writes <name>/data.pkl, TorchScript writes <name>/constants.pkl + code/.
    try {
      caffe2::serialize::PyTorchStreamReader zip(target);
      // TorchScript archives hold a data.pkl too, so look for their constants first.
      if (zip.hasRecord("constants.pkl")) return CheckpointFormat::kTorchScript;
      if (zip.hasRecord("data.pkl")) return CheckpointFormat::kTorchSave;
    } catch (const std::exception& e) {
      throw FormatError(target + ": corrupt or truncated zip archive (" + first_line(e.what()) + ")");
    }
    throw FormatError(target + ": zip archive that is neither a torch.save file nor a TorchScript archive");
  }
  if (ends_with(target, ".json")) return CheckpointFormat::kSafetensorsIndex;
  if (head.size() >= 9) {
    // safetensors: 8-byte little-endian header length, then '{'.
    if (head[8] == '{') return CheckpointFormat::kSafetensors;
  }
  if (!head.empty() && static_cast<unsigned char>(head[0]) == 0x80)
    throw FormatError(target + ": legacy (non-zip) torch.save format; re-save it with torch >= 1.6");
  throw FormatError(target + ": unrecognised checkpoint format (expected torch.save zip, TorchScript, safetensors or an index)");
}

NamedTensors load_tensors(const std::string& path) {
  std::string target;
  switch (detect_checkpoint_format(path, &target)) {
    case CheckpointFormat::kTorchSave: return read_torch_save(target);
    case CheckpointFormat::kTorchScript: return load_tensor_archive(target);
    case CheckpointFormat::kSafetensors: return read_safetensors(target);
    case CheckpointFormat::kSafetensorsIndex: return read_safetensors_index(target);
  }
  throw FormatError(path + ": unrecognised checkpoint format");
}

NamedTensors strip_key_prefixes(const NamedTensors& tensors, const std::vector<std::string>& prefixes) {
  NamedTensors out;
  out.reserve(tensors.size());
  static const std::string compiled = "_orig_mod.";
  for (const auto& [name, t] : tensors) {
    std::string key = name;
    // torch.compile wraps modules as <parent>._orig_mod.<child>: drop every such component.
    for (size_t at = key.find(compiled); at != std::string::npos; at = key.find(compiled, at)) {
      if (at == 0 || key[at - 1] == '.') key.erase(at, compiled.size());
      else at += compiled.size();
    }
    for (const auto& prefix : prefixes)
      if (!prefix.empty() && key.rfind(prefix, 0) == 0) {
        key = key.substr(prefix.size());
        break;
      }
    out.emplace_back(key, t);
  }
  return out;
}

std::string StateDictReport::summary() const {
  std::string out;
  auto add = [&](const char* label, const std::vector<std::string>& items) {
    if (items.empty()) return;
    out += (out.empty() ? "" : "; ") + std::string(label) + " (" + std::to_string(items.size()) + "): ";
    for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + items[i];
  };
  add("missing keys", missing);
  add("unexpected keys", unexpected);
  add("wrong shapes", wrong_shape);
  return out.empty() ? "ok" : out;
}

NamedTensors module_state(const torch::nn::Module& module) {
  NamedTensors out;
  for (const auto& item : module.named_parameters(true)) out.emplace_back(item.key(), item.value());
  for (const auto& item : module.named_buffers(true)) out.emplace_back(item.key(), item.value());
  return out;
}

StateDictReport check_state_dict(const torch::nn::Module& module, const NamedTensors& state) {
  StateDictReport report;
  std::map<std::string, at::Tensor> given;
  for (const auto& [name, t] : state) given[name] = t;
  std::set<std::string> known;
  for (const auto& [name, param] : module_state(module)) {
    known.insert(name);
    auto it = given.find(name);
    if (it == given.end()) report.missing.push_back(name);
    else if (it->second.sizes() != param.sizes())
      report.wrong_shape.push_back(name + ": checkpoint " + shape_text(it->second.sizes()) + " vs model " + shape_text(param.sizes()));
  }
  for (const auto& [name, t] : state)
    if (!known.count(name)) report.unexpected.push_back(name);
  return report;
}

StateDictReport load_state_dict(torch::nn::Module& module, const NamedTensors& state, bool strict, const std::string& source) {
  StateDictReport report = check_state_dict(module, state);
  if (strict && !report.ok()) throw ShapeError(source + ": state dict does not fit the model: " + report.summary());
  std::map<std::string, at::Tensor> given;
  for (const auto& [name, t] : state) given[name] = t;
  torch::NoGradGuard no_grad;
  for (auto& [name, param] : module_state(module)) {
    auto it = given.find(name);
    if (it == given.end() || it->second.sizes() != param.sizes()) continue;
    param.copy_(it->second);
  }
  return report;
}

void save_tensor_archive(const std::string& path, const NamedTensors& tensors) {
  ArchiveTree tree;
  std::set<std::string> seen;
  for (const auto& [name, t] : tensors) {
    if (name.empty() || name.front() == '.' || name.back() == '.' || name.find("..") != std::string::npos)
      throw UsageError(path + ": bad tensor name '" + name + "'");
    if (!seen.insert(name).second) throw UsageError(path + ": duplicate tensor name '" + name + "'");
    tree.add(name, t);
  }
  write_atomically(path, [&](const std::string& tmp) {
    torch::serialize::OutputArchive archive;
    tree.write(archive);
    archive.save_to(tmp);
  });
}

NamedTensors load_tensor_archive(const std::string& path) {
  torch::jit::Module module;
  try {
    module = torch::jit::load(path, torch::kCPU);
  } catch (const std::exception& e) {
    throw FormatError(path + ": not a readable TorchScript archive (" + first_line(e.what()) + ")");
  }
  NamedTensors out;
  for (const auto& attr : module.named_attributes(/*recurse=*/true))
    if (attr.value.isTensor()) out.emplace_back(attr.name, attr.value.toTensor());
  return out;
}

}  // namespace hrmclara
