// Tensor files: safetensors (read, write, sharded indexes), .npy (read, write) and the zip
// format that Python's torch.save writes (read). Every reader throws IoError or FormatError
// whose message names the file and what is wrong; none of them aborts on bad input.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace hrmclara {

// A named collection of tensors in insertion order (state dicts keep their order). Nested
// dicts are flattened with '.' between keys.
using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// The names ckpt_inspect prints: float32, float64, bfloat16, float16, int64, int32, int16, int8,
// uint8, bool. Throws FormatError for other types.
std::string dtype_name(c10::ScalarType type);
c10::ScalarType dtype_from_name(const std::string& name);

// "[d0,d1,...]", the shape spelling of ckpt_inspect and of every error message.
std::string shape_text(c10::IntArrayRef shape);

// ---- safetensors ----------------------------------------------------------------------------

// Reads a .safetensors file. The file is memory-mapped (copy-on-write) and tensors whose data is
// suitably aligned share the mapping instead of being copied, so a multi-GB file costs no
// second copy in RAM. `metadata` receives the optional "__metadata__" string map.
NamedTensors read_safetensors(const std::string& path,
                              std::map<std::string, std::string>* metadata = nullptr);

// Reads every shard named by a `*.safetensors.index.json` (weight_map), in the index's order.
NamedTensors read_safetensors_index(const std::string& index_path);

// Reads the shards of an index one at a time, in the order the index first names them, and hands
// each shard's tensors that the index assigns to it to `visit` before the next shard is mapped.
// A caller that converts or copies the tensors thus keeps only one shard mapped at a time.
// Throws FormatError for a tensor the index assigns to a shard that lacks it.
void for_each_safetensors_shard(const std::string& index_path,
                                const std::function<void(const std::string& shard_path, NamedTensors& tensors)>& visit);

// Writes tensors (any device; contiguous CPU copies are made as needed) atomically.
void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// ---- numpy .npy ------------------------------------------------------------------------------

// Reads a C-order little-endian .npy of uint8, int8, int16, int32, int64, bool, float32 or
// float64 (format versions 1-3).
at::Tensor read_npy(const std::string& path);

// Writes a tensor as .npy (version 1.0), atomically.
void write_npy(const std::string& path, const at::Tensor& tensor);

// ---- torch.save ------------------------------------------------------------------------------

// Reads a file written by Python's torch.save (zip format): OrderedDict or dict state dicts,
// single-key and nested dicts, lists and tuples of tensors, any dtype ckpt_inspect names,
// views (storage offsets and strides kept), tensors saved from CUDA or MPS (loaded onto CPU).
// Non-tensor leaves (numbers, strings, None) are skipped; nested containers are flattened with
// '.' (list indices become keys "0", "1", ...).
NamedTensors read_torch_save(const std::string& path);

// Writes tensors as Python's torch.save writes a state dict: a zip whose data.pkl holds a
// collections.OrderedDict of name -> tensor (pickle protocol 2, one storage per tensor), so that
// torch.load(path) -- weights_only=True included -- returns an OrderedDict. Atomic.
void write_torch_save(const std::string& path, const NamedTensors& tensors);
// A safetensors file whose data region is a hole (a sparse file): the header is real, every value
// reads as zero and takes no disk. For testing and benchmarking the loading of large checkpoints
// without writing them. Atomic.
void write_sparse_safetensors(const std::string& path, const std::vector<std::pair<std::string, std::vector<int64_t>>>& tensors,
                              c10::ScalarType dtype);

// torch.save of a dict of dicts ({group: {name: tensor}}), e.g. CLaRa's adapters.pth (a dict of
// adapter name to PEFT state dict). read_torch_save flattens it back to "group.name".
void write_torch_save_groups(const std::string& path, const std::vector<std::pair<std::string, NamedTensors>>& groups);

}  // namespace hrmclara
