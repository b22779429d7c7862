// The memory index of compressed documents (see include/hrmclara/clara_index.h) and SHA-256.
#include <hrmclara/clara_index.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/tensor_io.h>

#include <ATen/ATen.h>
#include <torch/nn/functional/normalization.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cstdio>
#include <set>
#include <unordered_map>
#include <unordered_set>

namespace hrmclara {

// ---- SHA-256 -----------------------------------------------------------------------------------

namespace {

// The largest x with x^power <= value (exact integer root by bisection).
uint64_t integer_root(unsigned __int128 value, int power) {
  uint64_t lo = 0, hi = uint64_t{1} << 40;
  while (lo < hi) {
    const uint64_t mid = lo + (hi - lo + 1) / 2;
    unsigned __int128 p = 1;
    for (int i = 0; i < power; ++i) p *= mid;
    if (p <= value)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

struct Sha256Constants {
  std::array<uint32_t, 64> k{};
  std::array<uint32_t, 8> h0{};
  Sha256Constants() {
    // FIPS 180-4: the first 32 bits of the fractional parts of the cube roots of the first 64
    // primes (K) and of the square roots of the first 8 (initial hash), computed exactly.
    std::vector<uint64_t> primes;
    for (uint64_t c = 2; primes.size() < 64; ++c) {
      bool prime = true;
      for (uint64_t p : primes) prime = prime && c % p != 0;
      if (prime) primes.push_back(c);
    }
    for (size_t i = 0; i < 64; ++i)
      k[i] = static_cast<uint32_t>(integer_root(static_cast<unsigned __int128>(primes[i]) << 96, 3));
    for (size_t i = 0; i < 8; ++i)
      h0[i] = static_cast<uint32_t>(integer_root(static_cast<unsigned __int128>(primes[i]) << 64, 2));
  }
};

const Sha256Constants& sha256_constants() {
  static const Sha256Constants constants;
  return constants;
}

uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

void sha256_block(std::array<uint32_t, 8>& state, const unsigned char* block, const std::array<uint32_t, 64>& k) {
  std::array<uint32_t, 64> w{};
  for (int t = 0; t < 16; ++t)
    w[t] = (uint32_t{block[4 * t]} << 24) | (uint32_t{block[4 * t + 1]} << 16) | (uint32_t{block[4 * t + 2]} << 8) |
           uint32_t{block[4 * t + 3]};
  for (int t = 16; t < 64; ++t) {
    const uint32_t s0 = rotr(w[t - 15], 7) ^ rotr(w[t - 15], 18) ^ (w[t - 15] >> 3);
    const uint32_t s1 = rotr(w[t - 2], 17) ^ rotr(w[t - 2], 19) ^ (w[t - 2] >> 10);
    w[t] = w[t - 16] + s0 + w[t - 7] + s1;
  }
  uint32_t a = state[0], b = state[1], c = state[2], d = state[3], e = state[4], f = state[5], g = state[6],
           h = state[7];
  for (int t = 0; t < 64; ++t) {
    const uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[t] + w[t];
    const uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
    h = g;
    g = f;
    f = e;
    e = d + t1;
    d = c;
    c = b;
    b = a;
    a = t1 + t2;
  }
  state[0] += a, state[1] += b, state[2] += c, state[3] += d;
  state[4] += e, state[5] += f, state[6] += g, state[7] += h;
}

}  // namespace

std::string sha256_hex(std::string_view bytes) {
  const auto& constants = sha256_constants();
  std::array<uint32_t, 8> state = constants.h0;
  const auto* data = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t full = bytes.size() / 64 * 64;
  for (size_t offset = 0; offset < full; offset += 64) sha256_block(state, data + offset, constants.k);
  // The tail, 0x80, zeros up to 56 mod 64, then the length in bits (big-endian, 64 bits).
  std::vector<unsigned char> tail(data + full, data + bytes.size());
  tail.push_back(0x80);
  while (tail.size() % 64 != 56) tail.push_back(0);
  const uint64_t bits = static_cast<uint64_t>(bytes.size()) * 8;
  for (int i = 7; i >= 0; --i) tail.push_back(static_cast<unsigned char>(bits >> (8 * i)));
  for (size_t offset = 0; offset < tail.size(); offset += 64) sha256_block(state, tail.data() + offset, constants.k);
  static const char* digits = "0123456789abcdef";
  std::string hex;
  for (uint32_t word : state)
    for (int shift = 28; shift >= 0; shift -= 4) hex.push_back(digits[(word >> shift) & 0xF]);
  return hex;
}

}  // namespace hrmclara

namespace hrmclara::clara {
namespace {

using Json = nlohmann::ordered_json;

constexpr const char* kFormatName = "hrmclara-memory-index";
constexpr const char* kIndexFile = "index.json";

bool supported_dtype(c10::ScalarType t) { return t == c10::kFloat || t == c10::kBFloat16 || t == c10::kHalf; }

std::string shard_name(int64_t number) {
  char name[64];
  std::snprintf(name, sizeof(name), "vectors-%05lld.safetensors", static_cast<long long>(number));
  return name;
}

// One line: control characters and newlines in caller-given text would break error messages.
std::string shown(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += (static_cast<unsigned char>(c) < 0x20) ? '?' : c;
  return out + "'";
}

}  // namespace

NewDocument NewDocument::from_text(std::string id, std::string source, std::string_view text) {
  return {std::move(id), std::move(source), sha256_hex(text)};
}

struct MemoryIndex::State {
  std::string dir;
  int64_t n = 0, hidden = 0;
  c10::ScalarType dtype = c10::kFloat;
  struct Shard {
    std::string file;   // name inside dir
    std::string path;   // dir + "/" + file
    int64_t rows = 0;
    at::Tensor vectors;  // mapped [rows, n, H]
  };
  std::vector<Shard> shards;
  std::vector<IndexedDocument> docs;                    // sorted by (shard, row)
  std::unordered_map<std::string, int64_t> by_id;       // id -> position in docs
  std::unordered_multiset<std::string> hashes;

  // Reads and checks index.json and maps every shard.
  static std::unique_ptr<State> read(const std::string& dir);

  std::string index_path() const { return dir + "/" + kIndexFile; }
  std::string path_of(const std::string& file) const { return dir + "/" + file; }

  void rebuild_lookups() {
    by_id.clear();
    hashes.clear();
    for (size_t i = 0; i < docs.size(); ++i) {
      by_id.emplace(docs[i].id, static_cast<int64_t>(i));
      hashes.insert(docs[i].text_hash);
    }
  }

  std::string index_json() const {
    Json j = Json::object();
    j["format"] = kFormatName;
    j["version"] = kFormatVersion;
    j["n"] = n;
    j["hidden"] = hidden;
    j["dtype"] = dtype_name(dtype);
    Json shard_list = Json::array();
    for (const auto& s : shards) shard_list.push_back({{"file", s.file}, {"rows", s.rows}});
    j["shards"] = shard_list;
    Json doc_list = Json::array();
    for (const auto& d : docs)
      doc_list.push_back({{"id", d.id}, {"source", d.source}, {"text_hash", d.text_hash}, {"shard", d.shard}, {"row", d.row}});
    j["documents"] = doc_list;
    return j.dump(1) + "\n";
  }

  // Maps one shard and checks it holds exactly what index.json claims.
  at::Tensor map_shard(const std::string& file, int64_t rows) const {
    const std::string path = path_of(file);
    const NamedTensors tensors = read_safetensors(path);
    const at::Tensor* vectors = nullptr;
    for (const auto& [name, t] : tensors)
      if (name == "vectors") vectors = &t;
    if (!vectors) throw FormatError(path + ": no tensor 'vectors' (not a memory-index shard)");
    const std::vector<int64_t> want = {rows, n, hidden};
    if (vectors->sizes().vec() != want || vectors->scalar_type() != dtype)
      throw FormatError(path + ": 'vectors' is " + shape_text(vectors->sizes()) + " " + dtype_name(vectors->scalar_type()) +
                        " but " + index_path() + " says " + shape_text(want) + " " + dtype_name(dtype));
    return *vectors;
  }

  // The row of a document, as a view into its shard's mapping.
  at::Tensor row_view(const IndexedDocument& d) const { return shards[static_cast<size_t>(d.shard)].vectors[d.row]; }

  const IndexedDocument& find(const std::string& id) const {
    const auto it = by_id.find(id);
    if (it == by_id.end()) throw UsageError(dir + ": no document with id " + shown(id));
    return docs[static_cast<size_t>(it->second)];
  }
};

namespace {

// ---- reading index.json ---------------------------------------------------------------------------

const Json& field(const Json& obj, const char* name, const std::string& where, const std::string& path) {
  if (!obj.is_object() || !obj.contains(name)) throw FormatError(path + ": " + where + "has no \"" + name + "\"");
  return obj[name];
}

int64_t int_field(const Json& obj, const char* name, const std::string& where, const std::string& path, int64_t min) {
  const Json& v = field(obj, name, where, path);
  if (!v.is_number_integer() || v.get<int64_t>() < min)
    throw FormatError(path + ": " + where + "\"" + name + "\" must be an integer >= " + std::to_string(min) + " (got " +
                      v.dump() + ")");
  return v.get<int64_t>();
}

std::string string_field(const Json& obj, const char* name, const std::string& where, const std::string& path) {
  const Json& v = field(obj, name, where, path);
  if (!v.is_string()) throw FormatError(path + ": " + where + "\"" + name + "\" must be a string");
  return v.get<std::string>();
}

}  // namespace

std::unique_ptr<MemoryIndex::State> MemoryIndex::State::read(const std::string& dir) {
  auto state = std::make_unique<State>();
  state->dir = dir;
  const std::string path = state->index_path();
  if (!is_directory(dir)) throw IoError(dir + ": no such index directory");
  if (!file_exists(path)) throw IoError(path + ": missing (not a memory index)");
  Json j;
  try {
    j = Json::parse(read_file(path, kMaxConfigFileBytes));
  } catch (const Json::exception&) {
    throw FormatError(path + ": malformed JSON");
  }
  if (!j.is_object()) throw FormatError(path + ": not a JSON object");
  if (!j.contains("format") || j["format"] != kFormatName)
    throw FormatError(path + ": \"format\" is not \"" + std::string(kFormatName) + "\"");
  const int64_t version = int_field(j, "version", "", path, 1);
  if (version != MemoryIndex::kFormatVersion)
    throw FormatError(path + ": format version " + std::to_string(version) + " (this build reads version " +
                      std::to_string(MemoryIndex::kFormatVersion) + ")");
  state->n = int_field(j, "n", "", path, 1);
  state->hidden = int_field(j, "hidden", "", path, 1);
  const std::string dtype = string_field(j, "dtype", "", path);
  bool known = false;
  for (auto t : {c10::kFloat, c10::kBFloat16, c10::kHalf})
    if (dtype == dtype_name(t)) state->dtype = t, known = true;
  if (!known) throw FormatError(path + ": \"dtype\" " + shown(dtype) + " is not float32, bfloat16 or float16");

  const Json& shards = field(j, "shards", "", path);
  if (!shards.is_array()) throw FormatError(path + ": \"shards\" is not an array");
  std::set<std::string> files;
  for (size_t i = 0; i < shards.size(); ++i) {
    const std::string where = "shards[" + std::to_string(i) + "] ";
    Shard s;
    s.file = string_field(shards[i], "file", where, path);
    if (s.file.empty() || s.file.find('/') != std::string::npos || s.file == "." || s.file == "..")
      throw FormatError(path + ": " + where + "names " + shown(s.file) + ", not a file in the index directory");
    if (!files.insert(s.file).second) throw FormatError(path + ": " + where + "repeats " + shown(s.file));
    s.rows = int_field(shards[i], "rows", where, path, 1);
    state->shards.push_back(std::move(s));
  }

  const Json& docs = field(j, "documents", "", path);
  if (!docs.is_array()) throw FormatError(path + ": \"documents\" is not an array");
  std::set<std::pair<int64_t, int64_t>> used;
  for (size_t i = 0; i < docs.size(); ++i) {
    const std::string where = "documents[" + std::to_string(i) + "] ";
    IndexedDocument d;
    d.id = string_field(docs[i], "id", where, path);
    d.source = string_field(docs[i], "source", where, path);
    d.text_hash = string_field(docs[i], "text_hash", where, path);
    d.shard = int_field(docs[i], "shard", where, path, 0);
    d.row = int_field(docs[i], "row", where, path, 0);
    if (d.id.empty()) throw FormatError(path + ": " + where + "has an empty id");
    if (d.shard >= static_cast<int64_t>(state->shards.size()))
      throw FormatError(path + ": " + where + "names shard " + std::to_string(d.shard) + " of " +
                        std::to_string(state->shards.size()));
    if (d.row >= state->shards[static_cast<size_t>(d.shard)].rows)
      throw FormatError(path + ": " + where + "names row " + std::to_string(d.row) + " of shard " +
                        std::to_string(d.shard) + ", which has " +
                        std::to_string(state->shards[static_cast<size_t>(d.shard)].rows));
    if (!used.insert({d.shard, d.row}).second)
      throw FormatError(path + ": " + where + "shares shard " + std::to_string(d.shard) + " row " +
                        std::to_string(d.row) + " with another document");
    state->docs.push_back(std::move(d));
  }
  std::stable_sort(state->docs.begin(), state->docs.end(), [](const IndexedDocument& a, const IndexedDocument& b) {
    return std::make_pair(a.shard, a.row) < std::make_pair(b.shard, b.row);
  });
  state->rebuild_lookups();
  if (state->by_id.size() != state->docs.size()) {
    std::set<std::string> seen;
    for (const auto& d : state->docs)
      if (!seen.insert(d.id).second) throw FormatError(path + ": id " + shown(d.id) + " appears twice");
  }
  for (auto& s : state->shards) {
    s.path = state->path_of(s.file);
    s.vectors = state->map_shard(s.file, s.rows);
  }
  return state;
}

namespace {

void check_layout(int64_t n, int64_t hidden, c10::ScalarType dtype, const std::string& dir) {
  if (n < 1 || hidden < 1)
    throw ShapeError(dir + ": a memory index needs n >= 1 and hidden >= 1 (got n " + std::to_string(n) + ", hidden " +
                     std::to_string(hidden) + ")");
  if (!supported_dtype(dtype))
    throw ShapeError(dir + ": a memory index holds float32, bfloat16 or float16 vectors, not " +
                     std::string(c10::toString(dtype)));
}

}  // namespace

// ---- MemoryIndex --------------------------------------------------------------------------------

MemoryIndex::MemoryIndex(std::unique_ptr<State> state) : state_(std::move(state)) {}
MemoryIndex::MemoryIndex(MemoryIndex&&) noexcept = default;
MemoryIndex& MemoryIndex::operator=(MemoryIndex&&) noexcept = default;
MemoryIndex::~MemoryIndex() = default;

MemoryIndex MemoryIndex::create(const std::string& dir, int64_t n, int64_t hidden, c10::ScalarType dtype) {
  check_layout(n, hidden, dtype, dir);
  auto state = std::make_unique<State>();
  state->dir = dir;
  state->n = n;
  state->hidden = hidden;
  state->dtype = dtype;
  if (file_exists(state->index_path())) throw UsageError(dir + ": already holds a memory index (index.json)");
  make_directories(dir);
  write_file_atomically(state->index_path(), state->index_json());
  return MemoryIndex(std::move(state));
}

MemoryIndex MemoryIndex::open(const std::string& dir) { return MemoryIndex(State::read(dir)); }

MemoryIndex MemoryIndex::open_or_create(const std::string& dir, int64_t n, int64_t hidden, c10::ScalarType dtype) {
  if (!file_exists(dir + "/" + kIndexFile)) return create(dir, n, hidden, dtype);
  MemoryIndex index = open(dir);
  if (index.n() != n || index.hidden() != hidden || index.dtype() != dtype)
    throw ShapeError(dir + ": the index holds [n " + std::to_string(index.n()) + ", H " + std::to_string(index.hidden()) +
                     "] " + dtype_name(index.dtype()) + " vectors, not [n " + std::to_string(n) + ", H " +
                     std::to_string(hidden) + "] " + (supported_dtype(dtype) ? dtype_name(dtype) : c10::toString(dtype)));
  return index;
}

const std::string& MemoryIndex::directory() const { return state_->dir; }
int64_t MemoryIndex::n() const { return state_->n; }
int64_t MemoryIndex::hidden() const { return state_->hidden; }
c10::ScalarType MemoryIndex::dtype() const { return state_->dtype; }
int64_t MemoryIndex::size() const { return static_cast<int64_t>(state_->docs.size()); }
const std::vector<IndexedDocument>& MemoryIndex::documents() const { return state_->docs; }
bool MemoryIndex::contains_id(const std::string& id) const { return state_->by_id.count(id) > 0; }
bool MemoryIndex::contains(const std::string& text_hash) const { return state_->hashes.count(text_hash) > 0; }
const IndexedDocument& MemoryIndex::document(const std::string& id) const { return state_->find(id); }
int64_t MemoryIndex::shard_count() const { return static_cast<int64_t>(state_->shards.size()); }

namespace {
void check_shard(int64_t shard, int64_t count, const std::string& dir) {
  if (shard < 0 || shard >= count)
    throw UsageError(dir + ": no shard " + std::to_string(shard) + " (the index has " + std::to_string(count) + ")");
}
}  // namespace

const std::string& MemoryIndex::shard_file(int64_t shard) const {
  check_shard(shard, shard_count(), state_->dir);
  return state_->shards[static_cast<size_t>(shard)].path;
}

const at::Tensor& MemoryIndex::shard_vectors(int64_t shard) const {
  check_shard(shard, shard_count(), state_->dir);
  return state_->shards[static_cast<size_t>(shard)].vectors;
}

at::Tensor MemoryIndex::get(const std::string& id) const { return state_->row_view(state_->find(id)).clone(); }

at::Tensor MemoryIndex::rows(const std::vector<std::string>& ids) const {
  at::Tensor out = at::empty({static_cast<int64_t>(ids.size()), state_->n, state_->hidden}, at::TensorOptions().dtype(state_->dtype));
  for (size_t i = 0; i < ids.size(); ++i) out[static_cast<int64_t>(i)].copy_(state_->row_view(state_->find(ids[i])));
  return out;
}

void MemoryIndex::append(const std::vector<NewDocument>& docs, const at::Tensor& vectors, const AppendOptions& options) {
  State& s = *state_;
  const std::string where = s.dir + ": append";
  if (!vectors.defined()) throw ShapeError(where + ": no vectors given");
  const std::vector<int64_t> want = {static_cast<int64_t>(docs.size()), s.n, s.hidden};
  if (vectors.dim() != 3 || vectors.size(1) != s.n || vectors.size(2) != s.hidden)
    throw ShapeError(where + ": vectors are " + shape_text(vectors.sizes()) + " but the index holds [docs, n " +
                     std::to_string(s.n) + ", H " + std::to_string(s.hidden) + "]");
  if (vectors.size(0) != want[0])
    throw ShapeError(where + ": " + std::to_string(vectors.size(0)) + " rows of vectors for " +
                     std::to_string(docs.size()) + " documents");
  if (vectors.scalar_type() != s.dtype)
    throw ShapeError(where + ": vectors are " + std::string(c10::toString(vectors.scalar_type())) +
                     " but the index holds " + dtype_name(s.dtype));
  if (options.max_rows_per_shard < 0) throw UsageError(where + ": max_rows_per_shard must be >= 0");
  std::unordered_set<std::string> batch;
  for (const auto& d : docs) {
    if (d.id.empty()) throw UsageError(where + ": a document has an empty id");
    if (!batch.insert(d.id).second) throw UsageError(where + ": id " + shown(d.id) + " is given twice");
    if (!options.replace_existing && s.by_id.count(d.id))
      throw UsageError(where + ": id " + shown(d.id) + " is already in the index (replace_existing to replace it)");
    try {  // index.json is JSON: its strings must be UTF-8
      (void)Json::array({d.id, d.source, d.text_hash}).dump();
    } catch (const nlohmann::json::type_error&) {
      throw UsageError(where + ": document " + shown(d.id) + " has an id, source or text_hash that is not UTF-8");
    }
  }
  if (docs.empty()) return;
  const at::Tensor data = vectors.detach().to(at::kCPU).contiguous();
  if (!at::isfinite(data).all().item<bool>()) throw NumericError(where + ": vectors hold NaN or Inf");

  // The next state: new shards under names index.json does not use (a leftover of an append that
  // never finished is unreferenced and may be overwritten), replaced documents moved to the end.
  const int64_t count = want[0];
  const int64_t per_shard = options.max_rows_per_shard > 0 ? options.max_rows_per_shard : count;
  State next;
  next.dir = s.dir;
  next.n = s.n;
  next.hidden = s.hidden;
  next.dtype = s.dtype;
  next.shards = s.shards;
  std::set<std::string> used;
  for (const auto& sh : s.shards) used.insert(sh.file);
  int64_t number = static_cast<int64_t>(s.shards.size());
  for (int64_t begin = 0; begin < count; begin += per_shard) {
    while (used.count(shard_name(number))) ++number;
    State::Shard sh;
    sh.file = shard_name(number++);
    sh.path = s.path_of(sh.file);
    sh.rows = std::min(per_shard, count - begin);
    next.shards.push_back(std::move(sh));
  }
  const size_t first_new = s.shards.size();
  std::unordered_set<std::string> replaced;
  for (const auto& d : docs)
    if (s.by_id.count(d.id)) replaced.insert(d.id);
  next.docs.reserve(s.docs.size() + docs.size());
  for (const auto& d : s.docs)
    if (!replaced.count(d.id)) next.docs.push_back(d);
  for (int64_t i = 0; i < count; ++i) {
    const auto& d = docs[static_cast<size_t>(i)];
    next.docs.push_back({d.id, d.source, d.text_hash, static_cast<int64_t>(first_new) + i / per_shard, i % per_shard});
  }

  auto write_shards = [&] {
    int64_t begin = 0;
    for (size_t i = first_new; i < next.shards.size(); ++i) {
      auto& sh = next.shards[i];
      write_safetensors(sh.path, {{"vectors", data.narrow(0, begin, sh.rows)}}, {{"format", kFormatName}});
      sh.vectors = next.map_shard(sh.file, sh.rows);  // from now on served from the file
      begin += sh.rows;
    }
  };
  auto write_index = [&] { write_file_atomically(next.index_path(), next.index_json()); };
  try {
    // Shards first, each atomically, then index.json atomically: index.json never names a shard
    // that is not complete.
    write_shards();
    write_index();
  } catch (...) {
    for (size_t i = first_new; i < next.shards.size(); ++i) {
      next.shards[i].vectors.reset();
      std::remove(next.shards[i].path.c_str());
    }
    throw;
  }
  next.rebuild_lookups();
  s = std::move(next);
}

// ---- search ---------------------------------------------------------------------------------------

std::vector<std::vector<SearchHit>> MemoryIndex::search(const at::Tensor& queries, int64_t top_k) const {
  const State& s = *state_;
  const int64_t d_flat = s.n * s.hidden;
  const int64_t docs = size();
  if (top_k < 1) throw UsageError(s.dir + ": search top_k must be at least 1 (got " + std::to_string(top_k) + ")");
  if (top_k > docs)
    throw UsageError(s.dir + ": search top_k " + std::to_string(top_k) + " is larger than the index (" +
                     std::to_string(docs) + " documents)");
  if (!queries.defined() || !at::isFloatingType(queries.scalar_type()))
    throw ShapeError(s.dir + ": search queries must be a floating-point tensor");
  at::Tensor q;
  if (queries.dim() == 1 && queries.size(0) == d_flat)
    q = queries.reshape({1, d_flat});
  else if (queries.dim() == 2 && queries.size(1) == d_flat)
    q = queries;
  else if (queries.dim() == 2 && queries.size(0) == s.n && queries.size(1) == s.hidden)  // one [n, H]
    q = queries.reshape({1, d_flat});
  else if (queries.dim() == 3 && queries.size(1) == s.n && queries.size(2) == s.hidden)
    q = queries.reshape({queries.size(0), d_flat});
  else
    throw ShapeError(s.dir + ": search queries are " + shape_text(queries.sizes()) + "; expected [n*H] = [" +
                     std::to_string(d_flat) + "], [n, H] = [" + std::to_string(s.n) + ", " + std::to_string(s.hidden) +
                     "], [B, " + std::to_string(d_flat) + "] or [B, " + std::to_string(s.n) + ", " +
                     std::to_string(s.hidden) + "]");
  q = q.detach();
  if (!at::isfinite(q).all().item<bool>()) throw NumericError(s.dir + ": search query holds NaN or Inf");
  const int64_t batch = q.size(0);
  std::vector<std::vector<SearchHit>> results(static_cast<size_t>(batch));
  if (batch == 0) return results;

  namespace F = torch::nn::functional;
  const auto normalize = F::NormalizeFuncOptions().p(2).dim(-1);
  const auto device = q.device();
  const at::Tensor q_unit = F::normalize(q, normalize).to(at::kDouble);  // [B, D]
  const auto long_options = at::TensorOptions().dtype(at::kLong).device(device);

  // Live rows of each shard, ascending (replaced documents leave dead rows behind), with their
  // positions in documents().
  std::vector<std::vector<int64_t>> live_rows(s.shards.size()), live_pos(s.shards.size());
  for (size_t i = 0; i < s.docs.size(); ++i) {
    live_rows[static_cast<size_t>(s.docs[i].shard)].push_back(s.docs[i].row);
    live_pos[static_cast<size_t>(s.docs[i].shard)].push_back(static_cast<int64_t>(i));
  }
  auto long_tensor = [&](std::vector<int64_t>::const_iterator begin, std::vector<int64_t>::const_iterator end) {
    return at::tensor(at::ArrayRef<int64_t>(&*begin, static_cast<size_t>(end - begin)), at::TensorOptions().dtype(at::kLong))
        .to(device);
  };

  at::Tensor best_scores = at::empty({batch, 0}, at::TensorOptions().dtype(at::kFloat).device(device));
  at::Tensor best_pos = at::empty({batch, 0}, long_options);
  const int64_t block = kSearchBlockRows;
  for (size_t si = 0; si < s.shards.size(); ++si) {
    if (live_rows[si].empty()) continue;
    const at::Tensor flat = s.shards[si].vectors.reshape({s.shards[si].rows, d_flat});
    const auto& shard_rows = live_rows[si];
    for (int64_t begin = 0; begin < s.shards[si].rows; begin += block) {
      const int64_t rows = std::min(block, s.shards[si].rows - begin);
      // Live rows of this block, as indices into it, and their positions.
      const auto lo = std::lower_bound(shard_rows.begin(), shard_rows.end(), begin);
      const auto hi = std::lower_bound(lo, shard_rows.end(), begin + rows);
      if (lo == hi) continue;
      const at::Tensor local = long_tensor(lo, hi) - begin;
      const auto first = live_pos[si].cbegin() + (lo - shard_rows.begin());
      const at::Tensor positions = long_tensor(first, first + (hi - lo));
      // Normalized in the stored dtype as upstream (row by row: the same values whatever the
      // block), multiplied in float64 and rounded to float32. A float32 product would round each
      // sum differently depending on the product's shape and the column (BLAS kernels tile by
      // size), so identical documents in different shards would not tie.
      at::Tensor unit = F::normalize(flat.narrow(0, begin, rows).to(device), normalize);
      if (hi - lo < rows) unit = unit.index_select(0, local);
      const at::Tensor scores = at::matmul(q_unit, unit.to(at::kDouble).t()).to(at::kFloat);  // [B, live]
      // Candidates so far come first and sit earlier in documents(): a stable sort keeps ties in
      // document order.
      const at::Tensor all_scores = at::cat({best_scores, scores}, 1);
      const at::Tensor all_pos = at::cat({best_pos, positions.unsqueeze(0).expand({batch, positions.size(0)})}, 1);
      const auto sorted = at::sort(all_scores, /*stable=*/true, /*dim=*/1, /*descending=*/true);
      const int64_t keep = std::min<int64_t>(top_k, all_scores.size(1));
      const at::Tensor order = std::get<1>(sorted).narrow(1, 0, keep);
      best_scores = std::get<0>(sorted).narrow(1, 0, keep).contiguous();
      best_pos = all_pos.gather(1, order).contiguous();
    }
  }
  const at::Tensor scores_cpu = best_scores.to(at::kCPU).contiguous();
  const at::Tensor pos_cpu = best_pos.to(at::kCPU).contiguous();
  const float* sp = scores_cpu.data_ptr<float>();
  const int64_t* pp = pos_cpu.data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b) {
    auto& hits = results[static_cast<size_t>(b)];
    for (int64_t j = 0; j < top_k; ++j) {
      const int64_t pos = pp[b * top_k + j];
      hits.push_back({s.docs[static_cast<size_t>(pos)].id, sp[b * top_k + j], pos});
    }
  }
  return results;
}

}  // namespace hrmclara::clara
