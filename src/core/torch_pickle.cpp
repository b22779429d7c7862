// Reader for Python's torch.save zip format. LibTorch's own torch::pickle_load rejects
// OrderedDicts and single-key dicts (what upstream checkpoints are), so this is a small
// unpickler of our own over LibTorch's zip reader: it understands the opcodes pickle protocols
// 2-5 use for containers, numbers and strings, torch's tensor rebuild functions and typed
// storages, and treats any other object as an opaque leaf.
#include <hrmclara/cli.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/tensor_io.h>

#include <ATen/ATen.h>
#include <caffe2/serialize/inline_container.h>

#include <zlib.h>

#include <cstring>
#include <algorithm>
#include <fstream>
#include <memory>
#include <unordered_map>

namespace hrmclara {

namespace {

// Every value lives in the unpickler's arena and refers to its children by plain pointers, so a
// pickle that nests a million levels deep or refers to itself through the memo is neither torn down
// recursively (a stack overflow) nor leaked through a reference cycle; flatten() bounds the walk.
struct Value;
using ValuePtr = Value*;

struct Value {
  enum class Kind { kNone, kBool, kInt, kFloat, kString, kBytes, kTuple, kList, kDict, kTensor, kGlobal, kStorage, kObject };
  Kind kind = Kind::kNone;
  bool boolean = false;
  bool on_path = false;  // set while flatten() is inside this value: a second visit is a cycle
  int64_t integer = 0;
  double real = 0;
  std::string text;  // string, bytes, global "module.name", object's class name
  std::vector<ValuePtr> items;
  std::vector<std::pair<ValuePtr, ValuePtr>> entries;
  at::Tensor tensor;  // tensors; storages as a flat 1-D tensor of their dtype
};

// Bounds that no torch.save state dict comes near (a 7B model's has a few hundred tensors, each a
// handful of pickle objects, nested three levels deep), and that keep a hostile pickle's memory
// and stack in check.
constexpr size_t kMaxPickleObjects = 4'000'000;
constexpr int kMaxPickleDepth = 200;

// Legacy typed-storage class names (torch.FloatStorage, ...) as torch.save still writes them.
bool storage_dtype(const std::string& name, c10::ScalarType* type) {
  static const std::unordered_map<std::string, c10::ScalarType> table = {
      {"torch.FloatStorage", c10::kFloat},       {"torch.DoubleStorage", c10::kDouble},
      {"torch.HalfStorage", c10::kHalf},         {"torch.BFloat16Storage", c10::kBFloat16},
      {"torch.LongStorage", c10::kLong},         {"torch.IntStorage", c10::kInt},
      {"torch.ShortStorage", c10::kShort},       {"torch.CharStorage", c10::kChar},
      {"torch.ByteStorage", c10::kByte},         {"torch.BoolStorage", c10::kBool},
      {"torch.ComplexFloatStorage", c10::kComplexFloat}, {"torch.ComplexDoubleStorage", c10::kComplexDouble},
      {"torch.UntypedStorage", c10::kByte},      {"torch.Float8_e4m3fnStorage", c10::kFloat8_e4m3fn},
      {"torch.Float8_e5m2Storage", c10::kFloat8_e5m2},
  };
  auto it = table.find(name);
  if (it == table.end()) return false;
  *type = it->second;
  return true;
}

// CRC-32 of every record, from the zip's central directory. LibTorch's reader (miniz built without
// its CRC checks) hands back a record's bytes unverified, so a flipped byte in a weight would load;
// read_torch_save checks each record it uses against these. Records are keyed by their name below
// the archive's top folder ("data.pkl", "data/0"), as PyTorchStreamReader names them.
std::unordered_map<std::string, uint32_t> zip_record_crcs(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(path + ": cannot open");
  in.seekg(0, std::ios::end);
  const uint64_t file_size = static_cast<uint64_t>(in.tellg());
  auto read_at = [&](uint64_t offset, uint64_t n) {
    if (offset > file_size || n > file_size - offset) throw FormatError(path + ": zip directory points outside the file");
    std::string buf(n, '\0');
    in.seekg(static_cast<std::streamoff>(offset));
    in.read(buf.data(), static_cast<std::streamsize>(n));
    if (static_cast<uint64_t>(in.gcount()) != n) throw FormatError(path + ": zip directory truncated");
    return buf;
  };
  auto le = [](const std::string& b, size_t at, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= static_cast<uint64_t>(static_cast<unsigned char>(b[at + i])) << (8 * i);
    return v;
  };
  // End-of-central-directory record: the last 22 bytes plus a comment of up to 65535.
  const uint64_t tail_size = std::min<uint64_t>(file_size, 22 + 65535);
  const std::string tail = read_at(file_size - tail_size, tail_size);
  size_t eocd = std::string::npos;
  for (size_t i = tail.size() >= 22 ? tail.size() - 22 + 1 : 0; i-- > 0;)
    if (le(tail, i, 4) == 0x06054b50) { eocd = i; break; }
  if (eocd == std::string::npos) throw FormatError(path + ": no zip end-of-central-directory record");
  uint64_t entries = le(tail, eocd + 10, 2), cd_size = le(tail, eocd + 12, 4), cd_offset = le(tail, eocd + 16, 4);
  if (entries == 0xffff || cd_size == 0xffffffff || cd_offset == 0xffffffff) {
    // ZIP64: the locator sits just before the classic record and points at the ZIP64 record.
    const uint64_t eocd_at = file_size - tail_size + eocd;
    if (eocd_at < 20) throw FormatError(path + ": ZIP64 locator missing");
    const std::string locator = read_at(eocd_at - 20, 20);
    if (le(locator, 0, 4) != 0x07064b50) throw FormatError(path + ": ZIP64 locator missing");
    const std::string z64 = read_at(le(locator, 8, 8), 56);
    if (le(z64, 0, 4) != 0x06064b50) throw FormatError(path + ": bad ZIP64 end-of-central-directory record");
    entries = le(z64, 32, 8);
    cd_size = le(z64, 40, 8);
    cd_offset = le(z64, 48, 8);
  }
  if (cd_size > (uint64_t{1} << 32)) throw FormatError(path + ": zip central directory of " + std::to_string(cd_size) + " bytes");
  const std::string cd = read_at(cd_offset, cd_size);
  std::unordered_map<std::string, uint32_t> crcs;
  size_t at = 0;
  for (uint64_t e = 0; e < entries; ++e) {
    if (at + 46 > cd.size() || le(cd, at, 4) != 0x02014b50) throw FormatError(path + ": corrupt zip central directory");
    const size_t name_len = le(cd, at + 28, 2), extra_len = le(cd, at + 30, 2), comment_len = le(cd, at + 32, 2);
    if (at + 46 + name_len + extra_len + comment_len > cd.size()) throw FormatError(path + ": corrupt zip central directory");
    std::string name = cd.substr(at + 46, name_len);
    const auto slash = name.find('/');
    crcs[slash == std::string::npos ? name : name.substr(slash + 1)] = static_cast<uint32_t>(le(cd, at + 16, 4));
    at += 46 + name_len + extra_len + comment_len;
  }
  return crcs;
}

void check_crc(const std::string& path, const std::unordered_map<std::string, uint32_t>& crcs, const std::string& record,
               const void* data, size_t size) {
  auto it = crcs.find(record);
  if (it == crcs.end()) throw FormatError(path + ": record " + record + " is not in the zip directory");
  uLong crc = crc32(0L, Z_NULL, 0);
  const auto* p = static_cast<const Bytef*>(data);
  for (size_t done = 0; done < size;) {  // zlib takes 32-bit lengths
    const uInt n = static_cast<uInt>(std::min<size_t>(size - done, 1u << 30));
    crc = crc32(crc, p + done, n);
    done += n;
  }
  if (static_cast<uint32_t>(crc) != it->second)
    throw FormatError(path + ": record " + record + " fails its CRC-32 check (the file is corrupt)");
}

class Unpickler {
 public:
  Unpickler(std::string path, const std::string& pickle, caffe2::serialize::PyTorchStreamReader& zip,
            const std::unordered_map<std::string, uint32_t>& crcs)
      : path_(std::move(path)), data_(pickle), zip_(zip), crcs_(crcs) {}

  ValuePtr load() {
    while (true) {
      const uint8_t op = byte();
      switch (op) {
        case 0x80: byte(); break;             // PROTO
        case 0x95: bytes(8); break;           // FRAME (length is advisory)
        case '.': {                           // STOP
          if (stack_.size() != 1) fail("bad stack at STOP");
          return stack_.back();
        }
        case '(': marks_.push_back(stack_.size()); break;  // MARK
        case 'N': push(make(Value::Kind::kNone)); break;
        case 0x88: push_bool(true); break;    // NEWTRUE
        case 0x89: push_bool(false); break;   // NEWFALSE
        case 'J': push_int(static_cast<int32_t>(le(4))); break;  // BININT
        case 'K': push_int(static_cast<int64_t>(le(1))); break;  // BININT1
        case 'M': push_int(static_cast<int64_t>(le(2))); break;  // BININT2
        case 0x8a: push_int(long_int(le(1))); break;             // LONG1
        case 0x8b: push_int(long_int(le(4))); break;             // LONG4
        case 'G': {                                              // BINFLOAT, big-endian double
          uint64_t bits = 0;
          for (int i = 0; i < 8; ++i) bits = (bits << 8) | byte();
          auto v = make(Value::Kind::kFloat);
          std::memcpy(&v->real, &bits, 8);
          push(v);
          break;
        }
        case 'X': push_string(Value::Kind::kString, le(4)); break;    // BINUNICODE
        case 0x8c: push_string(Value::Kind::kString, le(1)); break;   // SHORT_BINUNICODE
        case 0x8d: push_string(Value::Kind::kString, le(8)); break;   // BINUNICODE8
        case 'T': push_string(Value::Kind::kString, le(4)); break;    // BINSTRING (py2)
        case 'U': push_string(Value::Kind::kString, le(1)); break;    // SHORT_BINSTRING (py2)
        case 'B': push_string(Value::Kind::kBytes, le(4)); break;     // BINBYTES
        case 'C': push_string(Value::Kind::kBytes, le(1)); break;     // SHORT_BINBYTES
        case 0x8e: push_string(Value::Kind::kBytes, le(8)); break;    // BINBYTES8
        case ')': push(make(Value::Kind::kTuple)); break;             // EMPTY_TUPLE
        case ']': push(make(Value::Kind::kList)); break;              // EMPTY_LIST
        case '}': push(make(Value::Kind::kDict)); break;              // EMPTY_DICT
        case 't': {                                                   // TUPLE
          auto v = make(Value::Kind::kTuple);
          v->items = pop_mark();
          push(v);
          break;
        }
        case 0x85: case 0x86: case 0x87: {  // TUPLE1..3
          const size_t n = op - 0x84;
          auto v = make(Value::Kind::kTuple);
          v->items = pop_n(n);
          push(v);
          break;
        }
        case 'l': {  // LIST
          auto v = make(Value::Kind::kList);
          v->items = pop_mark();
          push(v);
          break;
        }
        case 'a': {  // APPEND
          auto item = pop();
          list_target("APPEND")->items.push_back(item);
          break;
        }
        case 'e': {  // APPENDS
          auto items = pop_mark();
          auto& target = list_target("APPENDS")->items;
          target.insert(target.end(), items.begin(), items.end());
          break;
        }
        case 'd': {  // DICT
          auto v = make(Value::Kind::kDict);
          set_items(*v, pop_mark());
          push(v);
          break;
        }
        case 's': {  // SETITEM
          auto value = pop(), key = pop();
          dict_target("SETITEM")->entries.emplace_back(key, value);
          break;
        }
        case 'u': {  // SETITEMS
          auto items = pop_mark();
          set_items(*dict_target("SETITEMS"), items);
          break;
        }
        case 'q': memo_[le(1)] = top(); break;   // BINPUT
        case 'r': memo_[le(4)] = top(); break;   // LONG_BINPUT
        case 0x94: memo_[memo_.size()] = top(); break;  // MEMOIZE
        case 'h': push(memo(le(1))); break;      // BINGET
        case 'j': push(memo(le(4))); break;      // LONG_BINGET
        case 'c': {                              // GLOBAL "module\nname\n"
          std::string module = line(), name = line();
          push_global(module + "." + name);
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          auto name = pop(), module = pop();
          push_global(module->text + "." + name->text);
          break;
        }
        case 'Q': {  // BINPERSID
          push(persistent_load(pop()));
          break;
        }
        case 'R': {  // REDUCE
          auto args = pop(), callable = pop();
          push(reduce(callable, args));
          break;
        }
        case 0x81: {  // NEWOBJ cls.__new__(cls, *args)
          pop();  // the arguments: an object's state is not needed for tensors
          auto cls = pop();
          auto v = make(Value::Kind::kObject);
          v->text = cls->text;
          push(v);
          break;
        }
        case 'b': {  // BUILD: object state (e.g. OrderedDict._metadata); not needed for tensors
          pop();
          if (stack_.empty()) fail("BUILD on an empty stack");
          break;
        }
        case '0': pop(); break;  // POP
        case '2': push(top()); break;  // DUP
        case '1': pop_mark(); break;   // POP_MARK
        default: {
          char hex[8];
          std::snprintf(hex, sizeof(hex), "0x%02x", op);
          fail(std::string("unsupported pickle opcode ") + hex);
        }
      }
    }
  }

 public:
  size_t objects() const { return arena_.size(); }

 private:
  ValuePtr make(Value::Kind kind) {
    if (arena_.size() >= kMaxPickleObjects)
      fail("more than " + std::to_string(kMaxPickleObjects) + " objects (not a state dict)");
    arena_.push_back(std::make_unique<Value>());
    arena_.back()->kind = kind;
    return arena_.back().get();
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw FormatError(path_ + ": data.pkl at byte " + std::to_string(pos_) + ": " + what);
  }
  uint8_t byte() {
    if (pos_ >= data_.size()) fail("unexpected end of pickle");
    return static_cast<uint8_t>(data_[pos_++]);
  }
  std::string bytes(uint64_t n) {
    if (n > data_.size() - pos_) fail("unexpected end of pickle");
    std::string out = data_.substr(pos_, n);
    pos_ += n;
    return out;
  }
  uint64_t le(int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= static_cast<uint64_t>(byte()) << (8 * i);
    return v;
  }
  // Two's-complement little-endian integer of n bytes.
  int64_t long_int(uint64_t n) {
    if (n > 8) fail("integer wider than 64 bits");
    uint64_t v = 0;
    for (uint64_t i = 0; i < n; ++i) v |= static_cast<uint64_t>(byte()) << (8 * i);
    if (n > 0 && n < 8 && (v >> (8 * n - 1)) & 1) v |= ~0ull << (8 * n);
    return static_cast<int64_t>(v);
  }
  std::string line() {
    auto end = data_.find('\n', pos_);
    if (end == std::string::npos) fail("unterminated GLOBAL");
    std::string out = data_.substr(pos_, end - pos_);
    pos_ = end + 1;
    return out;
  }
  void push(ValuePtr v) { stack_.push_back(std::move(v)); }
  void push_bool(bool b) {
    auto v = make(Value::Kind::kBool);
    v->boolean = b;
    push(v);
  }
  void push_int(int64_t i) {
    auto v = make(Value::Kind::kInt);
    v->integer = i;
    push(v);
  }
  void push_string(Value::Kind kind, uint64_t n) {
    auto v = make(kind);
    v->text = bytes(n);
    push(v);
  }
  void push_global(const std::string& name) {
    auto v = make(Value::Kind::kGlobal);
    v->text = name;
    push(v);
  }
  ValuePtr pop() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back())) fail("stack underflow");
    auto v = stack_.back();
    stack_.pop_back();
    return v;
  }
  ValuePtr top() {
    if (stack_.empty()) fail("stack underflow");
    return stack_.back();
  }
  std::vector<ValuePtr> pop_n(size_t n) {
    if (stack_.size() < n) fail("stack underflow");
    std::vector<ValuePtr> out(stack_.end() - static_cast<std::ptrdiff_t>(n), stack_.end());
    stack_.resize(stack_.size() - n);
    return out;
  }
  std::vector<ValuePtr> pop_mark() {
    if (marks_.empty()) fail("no MARK");
    const size_t m = marks_.back();
    marks_.pop_back();
    if (m > stack_.size()) fail("bad MARK");
    std::vector<ValuePtr> out(stack_.begin() + static_cast<std::ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return out;
  }
  ValuePtr memo(uint64_t key) {
    auto it = memo_.find(key);
    if (it == memo_.end()) fail("memo key " + std::to_string(key) + " not found");
    return it->second;
  }
  Value* list_target(const char* op) {
    auto t = top();
    if (t->kind != Value::Kind::kList) fail(std::string(op) + " on a non-list");
    return t;
  }
  Value* dict_target(const char* op) {
    auto t = top();
    if (t->kind != Value::Kind::kDict) fail(std::string(op) + " on a non-dict");
    return t;
  }
  void set_items(Value& dict, const std::vector<ValuePtr>& items) {
    if (items.size() % 2) fail("odd number of dict items");
    for (size_t i = 0; i < items.size(); i += 2) dict.entries.emplace_back(items[i], items[i + 1]);
  }

  std::vector<int64_t> int_tuple(const ValuePtr& v, const char* what) {
    if (v->kind != Value::Kind::kTuple && v->kind != Value::Kind::kList) fail(std::string(what) + " is not a tuple");
    std::vector<int64_t> out;
    for (const auto& item : v->items) {
      if (item->kind != Value::Kind::kInt) fail(std::string(what) + " holds a non-integer");
      out.push_back(item->integer);
    }
    return out;
  }

  // ('storage', storage_type, key, location, numel): the tensor data lives in the zip record
  // data/<key>; every view of one storage shares it.
  ValuePtr persistent_load(const ValuePtr& pid) {
    if (pid->kind != Value::Kind::kTuple || pid->items.size() < 5 || pid->items[0]->text != "storage")
      fail("unsupported persistent id");
    const auto& type_v = pid->items[1];
    const std::string key = pid->items[2]->text;
    const int64_t numel = pid->items[4]->integer;
    c10::ScalarType type;
    if (type_v->kind != Value::Kind::kGlobal || !storage_dtype(type_v->text, &type))
      fail("unsupported storage type " + type_v->text);
    auto cached = storages_.find(key);
    if (cached != storages_.end()) return cached->second;
    const std::string record = "data/" + key;
    if (!zip_.hasRecord(record)) fail("storage record " + record + " is missing from the archive");
    at::DataPtr data;
    size_t size = 0;
    try {
      std::tie(data, size) = zip_.getRecord(record);
    } catch (const std::exception& e) {
      throw FormatError(path_ + ": cannot read " + record + ": " + first_line(e.what()));
    }
    check_crc(path_, crcs_, record, data.get(), size);
    if (pid->items[4]->kind != Value::Kind::kInt || numel < 0 ||
        static_cast<uint64_t>(numel) > size / c10::elementSize(type))
      fail("storage " + key + " has " + std::to_string(size) + " bytes, too few for " + std::to_string(numel) +
           " elements of " + c10::toString(type));
    // The tensor takes over the record's buffer instead of copying it.
    auto holder = std::make_shared<at::DataPtr>(std::move(data));
    at::Tensor flat = at::from_blob(holder->get(), {numel}, [holder](void*) {}, at::TensorOptions().dtype(type));
    auto v = make(Value::Kind::kStorage);
    v->tensor = flat;
    storages_[key] = v;
    return v;
  }

  ValuePtr rebuild_tensor(const std::vector<ValuePtr>& a) {
    if (a.size() < 4 || a[0]->kind != Value::Kind::kStorage || a[1]->kind != Value::Kind::kInt)
      fail("malformed tensor record");
    const at::Tensor& storage = a[0]->tensor;
    const int64_t offset = a[1]->integer;
    const auto size = int_tuple(a[2], "tensor size"), stride = int_tuple(a[3], "tensor stride");
    if (size.size() != stride.size()) fail("tensor size and stride differ in rank");
    // The furthest element the view touches must lie inside the storage.
    // Overflow-checked: a hostile size must not wrap around into a small, passing number.
    int64_t last = offset, numel = 1;
    bool empty = false, overflow = false, broadcast = false;
    for (size_t i = 0; i < size.size(); ++i) {
      if (size[i] < 0 || stride[i] < 0) fail("negative tensor size or stride");
      if (size[i] == 0) empty = true;
      int64_t reach = 0;
      overflow |= __builtin_mul_overflow(size[i] == 0 ? 0 : size[i] - 1, stride[i], &reach);
      overflow |= __builtin_add_overflow(last, reach, &last);
      overflow |= __builtin_mul_overflow(numel, size[i], &numel);
      broadcast |= stride[i] == 0 && size[i] > 1;
    }
    if (overflow) fail("tensor size or stride out of range");
    if (offset < 0 || (!empty && last >= storage.numel()))
      fail("tensor view exceeds its storage (" + std::to_string(storage.numel()) + " elements)");
    // A stride-0 view could otherwise name 2^60 elements of a one-element storage.
    if (broadcast && numel > storage.numel())
      fail("broadcast tensor view of " + std::to_string(numel) + " elements over a storage of " +
           std::to_string(storage.numel()));
    auto v = make(Value::Kind::kTensor);
    v->tensor = empty ? at::empty(size, storage.options()) : storage.as_strided(size, stride, offset);
    return v;
  }

  ValuePtr reduce(const ValuePtr& callable, const ValuePtr& args) {
    if (callable->kind != Value::Kind::kGlobal) fail("REDUCE of a non-global");
    const std::string& name = callable->text;
    const auto& a = args->items;
    if (name == "collections.OrderedDict" || name == "builtins.dict") return make(Value::Kind::kDict);
    if (name == "torch._utils._rebuild_tensor_v2" || name == "torch._utils._rebuild_tensor") return rebuild_tensor(a);
    if (name == "torch._utils._rebuild_parameter" || name == "torch._utils._rebuild_parameter_with_state") {
      if (a.empty() || a[0]->kind != Value::Kind::kTensor) fail("malformed parameter record");
      return a[0];
    }
    // LibTorch's own pickler (torch::pickle_save) wraps typed containers in restore_type_tag(value, type).
    if (name == "torch.jit._pickle.restore_type_tag") {
      if (a.empty()) fail("malformed restore_type_tag");
      return a[0];
    }
    if (name == "torch.Size" || name == "builtins.tuple") {
      auto v = make(Value::Kind::kTuple);
      if (!a.empty()) v->items = a[0]->items;
      return v;
    }
    if (name.rfind("torch._utils._rebuild_", 0) == 0 || name == "torch._tensor._rebuild_from_type_v2")
      fail("unsupported tensor kind " + name + " (sparse, quantized and subclass tensors are not read)");
    auto v = make(Value::Kind::kObject);  // anything else: an opaque leaf
    v->text = name;
    return v;
  }

  std::vector<std::unique_ptr<Value>> arena_;  // owns every value; declared first, destroyed last
  std::string path_;
  const std::string& data_;
  caffe2::serialize::PyTorchStreamReader& zip_;
  const std::unordered_map<std::string, uint32_t>& crcs_;
  size_t pos_ = 0;
  std::vector<ValuePtr> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, ValuePtr> memo_;
  std::unordered_map<std::string, ValuePtr> storages_;
};

std::string key_text(const Value& key) {
  switch (key.kind) {
    case Value::Kind::kString: return key.text;
    case Value::Kind::kInt: return std::to_string(key.integer);
    case Value::Kind::kBool: return key.boolean ? "True" : "False";
    default: return "?";
  }
}

// Walks the unpickled object to its tensors, named by their path of keys. A value met again on its
// own path is a cycle (a list that contains itself); the depth bound stops a chain of a million
// nested lists before the stack does; the visit budget stops a small pickle whose shared
// sub-objects (memo references) multiply into exponentially many paths.
struct Flattener {
  const std::string& path;
  size_t budget;
  NamedTensors& out;

  [[noreturn]] void fail(const std::string& where, const std::string& what) const {
    throw FormatError(path + ": data.pkl: " + what + (where.empty() ? "" : " (at '" + where + "')"));
  }

  void walk(Value* v, const std::string& prefix, int depth) {
    if (depth > kMaxPickleDepth) fail(prefix.substr(0, 200), "nested more than " + std::to_string(kMaxPickleDepth) + " levels deep");
    if (budget-- == 0) fail(prefix.substr(0, 200), "shares objects in more places than a state dict does");
    auto child = [&](const std::string& k) { return prefix.empty() ? k : prefix + "." + k; };
    const bool container = v->kind == Value::Kind::kDict || v->kind == Value::Kind::kList || v->kind == Value::Kind::kTuple;
    if (container && v->on_path) fail(prefix.substr(0, 200), "an object contains itself");
    v->on_path = true;
    switch (v->kind) {
      case Value::Kind::kTensor: out.emplace_back(prefix.empty() ? "tensor" : prefix, v->tensor); break;
      case Value::Kind::kDict:
        for (const auto& [k, item] : v->entries) walk(item, child(key_text(*k)), depth + 1);
        break;
      case Value::Kind::kList:
      case Value::Kind::kTuple:
        for (size_t i = 0; i < v->items.size(); ++i) walk(v->items[i], child(std::to_string(i)), depth + 1);
        break;
      default: break;  // numbers, strings, opaque objects: not tensors
    }
    v->on_path = false;
  }
};

}  // namespace

NamedTensors read_torch_save(const std::string& path) {
  require_regular_file(path);
  {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw IoError(path + ": cannot open");
    char magic[2] = {0, 0};
    in.read(magic, 2);
    if (in.gcount() == 2 && static_cast<unsigned char>(magic[0]) == 0x80)
      throw FormatError(path + ": legacy (non-zip) torch.save format; re-save it with torch >= 1.6");
  }
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> zip;
  std::unordered_map<std::string, uint32_t> crcs;
  std::string pickle;
  try {
    zip = std::make_unique<caffe2::serialize::PyTorchStreamReader>(path);
    if (!zip->hasRecord("data.pkl")) throw FormatError(path + ": zip archive without data.pkl (not a torch.save file)");
    if (zip->hasRecord("byteorder")) {
      auto [ptr, n] = zip->getRecord("byteorder");
      if (std::string(static_cast<const char*>(ptr.get()), n) != "little")
        throw FormatError(path + ": big-endian torch.save files are not supported");
    }
    crcs = zip_record_crcs(path);
    auto [ptr, n] = zip->getRecord("data.pkl");
    check_crc(path, crcs, "data.pkl", ptr.get(), n);
    pickle.assign(static_cast<const char*>(ptr.get()), n);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw FormatError(path + ": not a readable torch.save archive (" + first_line(e.what()) + ")");
  }
  Unpickler unpickler(path, pickle, *zip, crcs);
  Value* root = unpickler.load();
  NamedTensors out;
  Flattener flattener{path, 4 * unpickler.objects() + 1024, out};
  flattener.walk(root, "", 0);
  return out;
}

namespace {

// The pieces of a protocol-2 pickle that torch.save's state dicts use.
class PickleWriter {
 public:
  PickleWriter() { out_ += "\x80\x02"; }
  void global(const std::string& module, const std::string& name) { out_ += "c" + module + "\n" + name + "\n"; }
  void mark() { out_ += '('; }
  void tuple() { out_ += 't'; }
  void empty_tuple() { out_ += ')'; }
  void empty_dict() { out_ += '}'; }
  void reduce() { out_ += 'R'; }
  void setitems() { out_ += 'u'; }
  void binpersid() { out_ += 'Q'; }
  void boolean(bool b) { out_ += b ? '\x88' : '\x89'; }
  void stop() { out_ += '.'; }
  void string(const std::string& s) {
    out_ += 'X';
    le(s.size(), 4);
    out_ += s;
  }
  void integer(int64_t v) {
    if (v >= 0 && v < 256) {
      out_ += 'K';
      le(static_cast<uint64_t>(v), 1);
    } else if (v >= 0 && v < 65536) {
      out_ += 'M';
      le(static_cast<uint64_t>(v), 2);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      out_ += 'J';
      le(static_cast<uint32_t>(static_cast<int32_t>(v)), 4);
    } else {
      out_ += '\x8a';
      le(8, 1);
      le(static_cast<uint64_t>(v), 8);
    }
  }
  const std::string& bytes() const { return out_; }

 private:
  void le(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out_ += static_cast<char>((v >> (8 * i)) & 0xff);
  }
  std::string out_;
};

const char* storage_class(c10::ScalarType type) {
  switch (type) {
    case c10::kFloat: return "FloatStorage";
    case c10::kDouble: return "DoubleStorage";
    case c10::kHalf: return "HalfStorage";
    case c10::kBFloat16: return "BFloat16Storage";
    case c10::kLong: return "LongStorage";
    case c10::kInt: return "IntStorage";
    case c10::kShort: return "ShortStorage";
    case c10::kChar: return "CharStorage";
    case c10::kByte: return "ByteStorage";
    case c10::kBool: return "BoolStorage";
    default: return nullptr;
  }
}

}  // namespace

namespace {

// Pickles one tensor as torch.save does (_rebuild_tensor_v2 over a persistent storage id) and
// queues its storage.
void pickle_tensor(PickleWriter& pk, const std::string& path, const std::string& name, const at::Tensor& tensor,
                   std::vector<at::Tensor>& storages) {
  const char* cls = storage_class(tensor.scalar_type());
  if (!cls) throw FormatError(path + ": tensor '" + name + "' has a dtype torch.save files cannot hold here");
  at::Tensor t = tensor.detach().to(at::kCPU).contiguous();
  pk.global("torch._utils", "_rebuild_tensor_v2");
  pk.mark();
  {
    pk.mark();  // persistent id ('storage', torch.<Type>Storage, key, 'cpu', numel)
    pk.string("storage");
    pk.global("torch", cls);
    pk.string(std::to_string(storages.size()));
    pk.string("cpu");
    pk.integer(t.numel());
    pk.tuple();
    pk.binpersid();
    pk.integer(0);  // storage offset
    pk.mark();
    for (int64_t d : t.sizes()) pk.integer(d);
    pk.tuple();
    pk.mark();
    for (int64_t st : t.strides()) pk.integer(st);
    pk.tuple();
    pk.boolean(false);  // requires_grad
    pk.global("collections", "OrderedDict");  // backward hooks
    pk.empty_tuple();
    pk.reduce();
  }
  pk.tuple();
  pk.reduce();
  storages.push_back(t);
}

// An OrderedDict (state dicts) or a plain dict of name -> tensor.
void pickle_tensor_dict(PickleWriter& pk, const std::string& path, const NamedTensors& tensors, bool ordered,
                        std::vector<at::Tensor>& storages) {
  if (ordered) {
    pk.global("collections", "OrderedDict");
    pk.empty_tuple();
    pk.reduce();
  } else {
    pk.empty_dict();
  }
  pk.mark();
  for (const auto& [name, tensor] : tensors) {
    pk.string(name);
    pickle_tensor(pk, path, name, tensor, storages);
  }
  pk.setitems();
}

void write_pickle_archive(const std::string& path, const PickleWriter& pk, const std::vector<at::Tensor>& storages) {
  write_atomically(path, [&](const std::string& tmp) {
    try {
      caffe2::serialize::PyTorchStreamWriter writer(tmp);
      writer.writeRecord("data.pkl", pk.bytes().data(), pk.bytes().size());
      writer.writeRecord("byteorder", "little", 6);
      for (size_t i = 0; i < storages.size(); ++i)
        writer.writeRecord("data/" + std::to_string(i), storages[i].data_ptr(),
                           static_cast<size_t>(storages[i].numel()) * storages[i].element_size());
      writer.writeEndOfFile();
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      throw IoError(path + ": cannot write (" + first_line(e.what()) + ")");
    }
  });
}

}  // namespace

void write_torch_save(const std::string& path, const NamedTensors& tensors) {
  PickleWriter pk;
  std::vector<at::Tensor> storages;
  pickle_tensor_dict(pk, path, tensors, /*ordered=*/true, storages);
  pk.stop();
  write_pickle_archive(path, pk, storages);
}

void write_torch_save_groups(const std::string& path, const std::vector<std::pair<std::string, NamedTensors>>& groups) {
  PickleWriter pk;
  std::vector<at::Tensor> storages;
  pk.empty_dict();
  pk.mark();
  for (const auto& [group, tensors] : groups) {
    pk.string(group);
    pickle_tensor_dict(pk, path, tensors, /*ordered=*/false, storages);
  }
  pk.setitems();
  pk.stop();
  write_pickle_archive(path, pk, storages);
}

}  // namespace hrmclara
