// safetensors and .npy, plus the dtype names every tool prints.
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/npy.h>
#include <hrmclara/tensor_io.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <cstring>
#include <fstream>
#include <memory>
#include <set>
#include <unordered_map>

namespace hrmclara {

namespace {

using OrderedJson = nlohmann::ordered_json;

struct DtypeEntry {
  c10::ScalarType type;
  const char* name;         // ckpt_inspect's name
  const char* safetensors;  // safetensors' dtype string
  const char* npy;          // numpy descr without byte-order character
};

const std::vector<DtypeEntry>& dtype_table() {
  static const std::vector<DtypeEntry> table = {
      {c10::kFloat, "float32", "F32", "f4"},     {c10::kDouble, "float64", "F64", "f8"},
      {c10::kBFloat16, "bfloat16", "BF16", ""},  {c10::kHalf, "float16", "F16", "f2"},
      {c10::kLong, "int64", "I64", "i8"},        {c10::kInt, "int32", "I32", "i4"},
      {c10::kShort, "int16", "I16", "i2"},       {c10::kChar, "int8", "I8", "i1"},
      {c10::kByte, "uint8", "U8", "u1"},         {c10::kBool, "bool", "BOOL", "b1"},
      {c10::kFloat8_e4m3fn, "float8_e4m3fn", "F8_E4M3", ""},
      {c10::kFloat8_e5m2, "float8_e5m2", "F8_E5M2", ""},
  };
  return table;
}

const DtypeEntry* find_dtype(c10::ScalarType type) {
  for (const auto& e : dtype_table())
    if (e.type == type) return &e;
  return nullptr;
}

// numel * element size, refusing shapes whose byte count would overflow.
uint64_t checked_nbytes(const std::vector<int64_t>& shape, size_t elem, const std::string& where) {
  uint64_t n = elem;
  for (int64_t d : shape) {
    if (d < 0) throw FormatError(where + ": negative dimension in shape " + shape_text(shape));
    if (d != 0 && n > UINT64_MAX / static_cast<uint64_t>(d)) throw FormatError(where + ": shape " + shape_text(shape) + " overflows");
    n *= static_cast<uint64_t>(d);
  }
  return n;
}

at::Tensor contiguous_cpu(const at::Tensor& t) { return t.detach().to(at::kCPU).contiguous(); }

}  // namespace

std::string dtype_name(c10::ScalarType type) {
  if (const auto* e = find_dtype(type)) return e->name;
  throw FormatError(std::string("unsupported dtype ") + c10::toString(type));
}

c10::ScalarType dtype_from_name(const std::string& name) {
  for (const auto& e : dtype_table())
    if (name == e.name) return e.type;
  throw UsageError("unknown dtype '" + name + "'");
}

std::string shape_text(c10::IntArrayRef shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? "," : "") + std::to_string(shape[i]);
  return out + "]";
}

// ---- safetensors ---------------------------------------------------------------------------

NamedTensors read_safetensors(const std::string& path, std::map<std::string, std::string>* metadata) {
  auto file = std::make_shared<MappedFile>(path);
  const uint64_t size = file->size();
  if (size < 8) throw FormatError(path + ": not a safetensors file (" + std::to_string(size) + " bytes)");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<unsigned char>(file->data()[i]);
  if (header_len == 0 || header_len > size - 8 || header_len > (100ull << 20))
    throw FormatError(path + ": not a safetensors file or truncated (header length " + std::to_string(header_len) +
                      ", file " + std::to_string(size) + " bytes)");
  OrderedJson header;
  try {
    header = OrderedJson::parse(file->data() + 8, file->data() + 8 + header_len);
  } catch (const OrderedJson::exception&) {
    throw FormatError(path + ": safetensors header is not valid JSON");
  }
  if (!header.is_object()) throw FormatError(path + ": safetensors header is not a JSON object");
  const uint64_t data_start = 8 + header_len, data_len = size - data_start;

  struct Entry {
    std::string name;
    c10::ScalarType type;
    std::vector<int64_t> shape;
    uint64_t begin, end;
  };
  std::vector<Entry> entries;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") {
      if (metadata && info.is_object())
        for (const auto& [k, v] : info.items()) (*metadata)[k] = v.is_string() ? v.get<std::string>() : v.dump();
      continue;
    }
    const std::string where = path + ": tensor '" + name + "'";
    try {
      const std::string dt = info.at("dtype").get<std::string>();
      const DtypeEntry* entry = nullptr;
      for (const auto& e : dtype_table())
        if (dt == e.safetensors) entry = &e;
      if (!entry) throw FormatError(where + ": unsupported dtype " + dt);
      for (const char* key : {"shape", "data_offsets"}) {
        const auto& v = info.at(key);
        if (!v.is_array()) throw FormatError(where + ": '" + key + "' is not a list");
        for (const auto& d : v)
          if (!d.is_number_unsigned() || d.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
            throw FormatError(where + ": '" + key + "' holds " + d.dump() + ", not a non-negative integer");
      }
      Entry e{name, entry->type, info.at("shape").get<std::vector<int64_t>>(), 0, 0};
      const auto offsets = info.at("data_offsets").get<std::vector<uint64_t>>();
      if (offsets.size() != 2 || offsets[1] < offsets[0]) throw FormatError(where + ": bad data_offsets");
      e.begin = offsets[0];
      e.end = offsets[1];
      const uint64_t nbytes = checked_nbytes(e.shape, c10::elementSize(e.type), where);
      if (e.end - e.begin != nbytes)
        throw FormatError(where + ": " + std::to_string(e.end - e.begin) + " bytes for shape " + shape_text(e.shape) +
                          " of " + dt);
      if (e.end > data_len)
        throw FormatError(where + ": data ends at byte " + std::to_string(data_start + e.end) + " but the file has " +
                          std::to_string(size) + " (truncated?)");
      entries.push_back(std::move(e));
    } catch (const nlohmann::json::exception&) {
      throw FormatError(where + ": malformed header entry");
    }
  }
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.begin < b.begin; });

  NamedTensors out;
  out.reserve(entries.size());
  for (const auto& e : entries) {
    char* ptr = file->data() + data_start + e.begin;
    const auto options = at::TensorOptions().dtype(e.type);
    const size_t elem = c10::elementSize(e.type);
    at::Tensor t;
    if (reinterpret_cast<uintptr_t>(ptr) % elem == 0) {
      // Zero-copy: the tensor keeps the (copy-on-write) mapping alive.
      t = at::from_blob(ptr, e.shape, [file](void*) {}, options);
    } else {
      t = at::empty(e.shape, options);
      if (e.end > e.begin) std::memcpy(t.data_ptr(), ptr, e.end - e.begin);
    }
    out.emplace_back(e.name, t);
  }
  return out;
}

namespace {

// A `*.safetensors.index.json`: which shard holds each tensor, in the index's order.
struct SafetensorsIndex {
  std::string dir;
  std::vector<std::pair<std::string, std::string>> entries;  // tensor -> shard file, index order
  std::vector<std::string> shards;                           // in order of first mention
};

SafetensorsIndex parse_safetensors_index(const std::string& index_path) {
  OrderedJson index;
  try {
    index = OrderedJson::parse(read_file(index_path, kMaxConfigFileBytes));
  } catch (const OrderedJson::exception&) {
    throw FormatError(index_path + ": malformed JSON");
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    throw FormatError(index_path + ": no weight_map object (not a safetensors index)");
  SafetensorsIndex parsed{parent_directory(index_path), {}, {}};
  for (const auto& [name, shard] : index["weight_map"].items()) {
    if (!shard.is_string()) throw FormatError(index_path + ": weight_map['" + name + "'] is not a file name");
    const std::string file = shard.get<std::string>();
    if (file.find('/') != std::string::npos || file == "..")
      throw FormatError(index_path + ": weight_map['" + name + "'] names a path outside the index's folder");
    if (std::find(parsed.shards.begin(), parsed.shards.end(), file) == parsed.shards.end()) parsed.shards.push_back(file);
    parsed.entries.emplace_back(name, file);
  }
  return parsed;
}

void visit_shards(const SafetensorsIndex& index, const std::string& index_path,
                  const std::function<void(const std::string&, NamedTensors&)>& visit) {
  std::unordered_map<std::string, const std::string*> shard_of;
  for (const auto& [name, file] : index.entries) shard_of[name] = &file;
  for (const auto& shard : index.shards) {
    const std::string path = index.dir + "/" + shard;
    NamedTensors assigned;
    std::set<std::string> present;
    for (auto& [name, t] : read_safetensors(path)) {
      const auto it = shard_of.find(name);
      if (it != shard_of.end() && *it->second == shard) {
        present.insert(name);
        assigned.emplace_back(name, t);
      }
    }
    for (const auto& [name, file] : index.entries)
      if (file == shard && !present.count(name))
        throw FormatError(index_path + ": tensor '" + name + "' is not in shard " + shard);
    visit(path, assigned);
  }
}

}  // namespace

void for_each_safetensors_shard(const std::string& index_path,
                                const std::function<void(const std::string& shard_path, NamedTensors& tensors)>& visit) {
  visit_shards(parse_safetensors_index(index_path), index_path, visit);
}

NamedTensors read_safetensors_index(const std::string& index_path) {
  const auto index = parse_safetensors_index(index_path);
  std::unordered_map<std::string, at::Tensor> found;
  visit_shards(index, index_path, [&](const std::string&, NamedTensors& tensors) {
    for (auto& [name, t] : tensors) found[name] = t;
  });
  NamedTensors out;  // in the index's order, not the shards'
  for (const auto& [name, shard] : index.entries) out.emplace_back(name, found.at(name));
  return out;
}

void write_sparse_safetensors(const std::string& path, const std::vector<std::pair<std::string, std::vector<int64_t>>>& tensors,
                              c10::ScalarType dtype) {
  const auto* entry = find_dtype(dtype);
  if (!entry) throw UsageError(std::string("unsupported dtype ") + c10::toString(dtype));
  nlohmann::ordered_json header;
  uint64_t offset = 0;
  for (const auto& [name, shape] : tensors) {
    uint64_t bytes = c10::elementSize(dtype);
    for (auto d : shape) bytes *= static_cast<uint64_t>(d);
    header[name] = {{"dtype", entry->safetensors}, {"shape", shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  while ((text.size() + 8) % 8) text += ' ';
  std::string prefix(8, '\0');
  for (int i = 0; i < 8; ++i) prefix[static_cast<size_t>(i)] = static_cast<char>((static_cast<uint64_t>(text.size()) >> (8 * i)) & 0xff);
  write_atomically(path, [&](const std::string& tmp) {
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      out << prefix << text;
      if (!out) throw IoError(path + ": cannot write");
    }
    if (::truncate(tmp.c_str(), static_cast<off_t>(8 + text.size() + offset)) != 0)
      throw IoError(path + ": cannot extend to " + std::to_string(8 + text.size() + offset) + " bytes");
  });
}

void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata) {
  OrderedJson header = OrderedJson::object();
  if (!metadata.empty()) {
    OrderedJson meta = OrderedJson::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = meta;
  }
  std::vector<at::Tensor> data;
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    if (!seen.insert(name).second) throw UsageError(path + ": duplicate tensor name '" + name + "'");
    const auto* entry = find_dtype(tensor.scalar_type());
    if (!entry) throw FormatError(path + ": tensor '" + name + "' has unsupported dtype " + c10::toString(tensor.scalar_type()));
    at::Tensor t = contiguous_cpu(tensor);
    const uint64_t nbytes = t.numel() * t.element_size();
    header[name] = {{"dtype", entry->safetensors}, {"shape", t.sizes().vec()}, {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    data.push_back(t);
  }
  std::string head = header.dump();
  head.append((8 - head.size() % 8) % 8, ' ');  // data starts 8-byte aligned
  write_atomically(path, [&](const std::string& tmp) {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw IoError(path + ": cannot write");
    const uint64_t n = head.size();
    char len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<char>((n >> (8 * i)) & 0xff);
    out.write(len, 8);
    out.write(head.data(), static_cast<std::streamsize>(head.size()));
    for (const auto& t : data) out.write(static_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(t.numel() * t.element_size()));
    out.close();
    if (!out) throw IoError(path + ": write failed");
  });
}

// ---- numpy .npy ----------------------------------------------------------------------------

at::Tensor read_npy(const std::string& path) {
  MappedFile file(path);
  const npy::Header h = npy::parse_header(file.data(), file.size(), path);
  npy::require_supported(h, file.size(), path);
  const std::string code = h.descr.substr(1);
  const DtypeEntry* entry = nullptr;
  for (const auto& e : dtype_table())
    if (*e.npy && code == e.npy) entry = &e;
  if (!entry) throw FormatError(path + ": unsupported .npy dtype '" + h.descr + "'");
  const uint64_t nbytes = npy::checked_nbytes(h.shape, h.item_size(), path);
  at::Tensor t = at::empty(h.shape, at::TensorOptions().dtype(entry->type));
  if (nbytes) std::memcpy(t.data_ptr(), file.data() + h.data_offset, nbytes);
  if (entry->type == c10::kBool && t.numel() > 0) {
    // numpy bools are bytes 0/1; anything else is corruption that torch would misread.
    if (at::gt(t.view(c10::kByte), 1).any().item<bool>()) throw FormatError(path + ": bool array holds values other than 0/1");
  }
  return t;
}

void write_npy(const std::string& path, const at::Tensor& tensor) {
  const auto* entry = find_dtype(tensor.scalar_type());
  if (!entry || !*entry->npy) throw FormatError(path + ": dtype " + std::string(c10::toString(tensor.scalar_type())) + " has no .npy form");
  const at::Tensor t = contiguous_cpu(tensor);
  const char order = (std::string(entry->npy).back() == '1') ? '|' : '<';
  npy::write(path, order + std::string(entry->npy), t.sizes().vec(), t.data_ptr(),
             static_cast<uint64_t>(t.numel()) * static_cast<uint64_t>(t.element_size()));
}

}  // namespace hrmclara
