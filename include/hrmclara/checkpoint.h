// Checkpoints of every kind behind one call, key mapping between naming schemes, and a strict
// state-dict loader that reports every mismatch at once.
#pragma once

#include <hrmclara/tensor_io.h>


#include <string>
#include <vector>

namespace torch::nn {
class Module;
}

namespace hrmclara {

enum class CheckpointFormat {
  kTorchSave,         // Python torch.save zip (data.pkl)
  kTorchScript,       // TorchScript archive: our own checkpoints (torch::save) or torch.jit.save
  kSafetensors,       // one .safetensors file
  kSafetensorsIndex,  // *.safetensors.index.json with shards beside it
};

// Decides the format from the file's content (not its name). A directory resolves to the
// model.safetensors.index.json or model.safetensors inside it. Throws IoError / FormatError.
CheckpointFormat detect_checkpoint_format(const std::string& path, std::string* resolved_path = nullptr);

// Loads every tensor of any supported checkpoint onto the CPU. For TorchScript archives the
// names are those of named_parameters / named_buffers and tensor attributes, recursively.
NamedTensors load_tensors(const std::string& path);

// ---- key mapping -----------------------------------------------------------------------------

// Removes torch.compile's "_orig_mod." wherever it appears as a path component and then each of
// `prefixes` (e.g. "model.inner.") from the start of every key. Keys without a prefix are kept.
NamedTensors strip_key_prefixes(const NamedTensors& tensors, const std::vector<std::string>& prefixes = {});

// ---- strict loading --------------------------------------------------------------------------

struct StateDictReport {
  std::vector<std::string> missing;      // in the module, not in the state dict
  std::vector<std::string> unexpected;   // in the state dict, not in the module
  std::vector<std::string> wrong_shape;  // "name: checkpoint [a,b] vs model [c,d]"
  bool ok() const { return missing.empty() && unexpected.empty() && wrong_shape.empty(); }
  std::string summary() const;           // one line naming every problem
};

// Compares a state dict with a module's parameters and buffers (by recursive name).
StateDictReport check_state_dict(const torch::nn::Module& module, const NamedTensors& state);

// Copies the state dict into the module (dtype converted to the parameter's, device kept).
// With strict, any mismatch throws ShapeError naming every missing, unexpected and wrongly
// shaped key, and nothing is copied. Without strict, matching keys are copied and the report
// returned.
StateDictReport load_state_dict(torch::nn::Module& module, const NamedTensors& state, bool strict = true,
                                const std::string& source = "state dict");

// The module's parameters and buffers by recursive name, in registration order.
NamedTensors module_state(const torch::nn::Module& module);

// ---- our own format --------------------------------------------------------------------------

// Saves tensors as a TorchScript-compatible archive (the torch::save format; Python reads it with
// torch.jit.load and sees each tensor as an attribute), atomically (temp file + rename).
void save_tensor_archive(const std::string& path, const NamedTensors& tensors);

// Reads such an archive (or any TorchScript archive) back.
NamedTensors load_tensor_archive(const std::string& path);

}  // namespace hrmclara
