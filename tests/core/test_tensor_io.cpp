// Tensor and checkpoint I/O against files made by the real producers (torch.save, torch.jit.save,
// safetensors, numpy: tests/scripts/make_io_fixtures.py) and against what torch.load read back.
#include <hrmclara/checkpoint.h>
#include <hrmclara/config.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/tensor_io.h>

#include <torch/torch.h>

#include <map>

#include "test_util.h"

namespace hrmclara {
namespace {

using test::fixture;
using test::ScratchDir;

std::map<std::string, at::Tensor> as_map(const NamedTensors& tensors) {
  std::map<std::string, at::Tensor> out;
  for (const auto& [k, v] : tensors) out[k] = v;
  return out;
}

const std::map<std::string, at::Tensor>& expected() {
  static const auto tensors = as_map(read_safetensors(fixture("io/expected.safetensors")));
  return tensors;
}

// name, dtype, shape of each tensor in the order torch.load / safetensors listed them.
std::vector<std::tuple<std::string, std::string, std::vector<int64_t>>> listing(const std::string& key) {
  std::vector<std::tuple<std::string, std::string, std::vector<int64_t>>> out;
  const Json all = read_json_file(fixture("io/listings.json"));
  for (const auto& row : all.at(key))
    out.emplace_back(row[0].get<std::string>(), row[1].get<std::string>(), row[2].get<std::vector<int64_t>>());
  return out;
}

void expect_matches_listing(const NamedTensors& got, const std::string& key) {
  const auto want = listing(key);
  ASSERT_EQ(got.size(), want.size()) << key;
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].first, std::get<0>(want[i])) << key;
    EXPECT_EQ(dtype_name(got[i].second.scalar_type()), std::get<1>(want[i])) << key << " " << got[i].first;
    EXPECT_EQ(got[i].second.sizes().vec(), std::get<2>(want[i])) << key << " " << got[i].first;
  }
}

void expect_values(const NamedTensors& got, const std::string& prefix) {
  for (const auto& [name, t] : got) {
    auto it = expected().find(prefix + "/" + name);
    ASSERT_NE(it, expected().end()) << prefix << "/" << name;
    EXPECT_TRUE(test::same_tensor(t, it->second)) << prefix << "/" << name;
  }
}

using test::error_of;

// ---- torch.save -------------------------------------------------------------------------------

class TorchSaveTest : public ::testing::TestWithParam<std::string> {};

TEST_P(TorchSaveTest, MatchesTorchLoad) {
  const auto tensors = read_torch_save(fixture("io/" + GetParam()));
  expect_matches_listing(tensors, GetParam());
  expect_values(tensors, GetParam());
}

INSTANTIATE_TEST_SUITE_P(Files, TorchSaveTest,
                         ::testing::Values("state_dict.pt", "single_key.pt", "nested.pt", "dtypes.pt", "views.pt",
                                           "cuda_saved.pt"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (auto& c : n) if (!isalnum(static_cast<unsigned char>(c))) c = '_';
                           return n;
                         });

TEST(TorchSave, UpstreamCheckpointListsAsTorchLoad) {
  expect_matches_listing(read_torch_save(fixture("hrm-reference/step_0")), "step_0");
}

TEST(TorchSave, WriterRoundTripsEveryDtypeAndPythonLoadsIt) {
  ScratchDir dir;
  NamedTensors in = read_torch_save(fixture("io/dtypes.pt"));
  in.emplace_back("view", torch::arange(12, torch::kFloat).view({3, 4}).t());
  in.emplace_back("big", torch::full({70000}, 2.5));
  write_torch_save(dir / "out.pt", in);
  const auto out = read_torch_save(dir / "out.pt");
  test::expect_same_tensors(out, in);
  // Python's torch.load reads every tensor with its dtype, shape and values.
  REQUIRE_PYTHON();
  std::string type;
  const auto py = test::as_python_reads_it(dir / "out.pt", "torch.load(path, weights_only=True)", dir.path(), &type);
  EXPECT_EQ(type, "OrderedDict");
  test::expect_same_tensor_map(py, in);
}

TEST(TorchSave, ViewsShareTheirStorage) {
  auto t = as_map(read_torch_save(fixture("io/views.pt")));
  EXPECT_EQ(t["strided"].strides().vec(), (std::vector<int64_t>{6, 2}));
  EXPECT_EQ(t["slice"].storage_offset(), 4);
  EXPECT_EQ(t["slice"].storage().data(), t["base"].storage().data());
  EXPECT_EQ(t["empty"].numel(), 0);
}

TEST(TorchSave, LegacyFormatIsRefused) {
  const auto what = error_of<FormatError>([] { read_torch_save(fixture("io/legacy.pt")); });
  EXPECT_NE(what.find("legacy"), std::string::npos) << what;
  EXPECT_NE(what.find("legacy.pt"), std::string::npos) << what;
}

TEST(TorchSave, TruncatedAndGarbageFilesGiveFormatErrors) {
  ScratchDir dir;
  const std::string full = read_file(fixture("hrm-reference/step_0"));
  for (size_t keep : {size_t{0}, size_t{10}, full.size() / 2, full.size() - 30}) {
    const std::string path = dir / ("cut" + std::to_string(keep));
    test::write_bytes(path, full.substr(0, keep));
    const auto what = error_of<FormatError>([&] { load_tensors(path); });
    EXPECT_NE(what.find(path), std::string::npos) << what;
  }
  std::string garbage(5000, '\0');
  for (size_t i = 0; i < garbage.size(); ++i) garbage[i] = static_cast<char>((i * 2654435761u) >> 13);
  test::write_bytes(dir / "garbage", garbage);
  EXPECT_NE(error_of<FormatError>([&] { load_tensors(dir / "garbage"); }).find("garbage"), std::string::npos);
  // A zip whose pickle is corrupt: flip bytes inside data.pkl of a copy.
  std::string corrupt = read_file(fixture("io/nested.pt"));
  const auto at = corrupt.find("data.pkl");
  ASSERT_NE(at, std::string::npos);
  for (size_t i = at + 60; i < at + 90; ++i) corrupt[i] = '\x7f';
  test::write_bytes(dir / "corrupt.pt", corrupt);
  EXPECT_NE(error_of<FormatError>([&] { load_tensors(dir / "corrupt.pt"); }).find("corrupt.pt"), std::string::npos);
}

TEST(TorchSave, MissingFileIsAnIoError) {
  EXPECT_THROW(read_torch_save("/nonexistent/ckpt.pt"), IoError);
  EXPECT_THROW(load_tensors("/nonexistent/ckpt.pt"), IoError);
}

// ---- safetensors ------------------------------------------------------------------------------

TEST(Safetensors, ReadsFilesWrittenByTheSafetensorsPackage) {
  std::map<std::string, std::string> meta;
  auto tensors = as_map(read_safetensors(fixture("io/dtypes.safetensors"), &meta));
  EXPECT_EQ(meta["who"], "fixture");
  ASSERT_EQ(tensors.size(), 11u);
  for (const auto& [name, t] : tensors) EXPECT_TRUE(test::same_tensor(t, expected().at("dtypes.pt/" + name))) << name;
}

TEST(Safetensors, RoundTripsEveryDtypeAndMetadata) {
  ScratchDir dir;
  NamedTensors in;
  for (const auto& [name, t] : read_torch_save(fixture("io/dtypes.pt"))) in.emplace_back(name, t);
  in.emplace_back("noncontiguous", torch::arange(12, torch::kFloat).view({3, 4}).t());
  write_safetensors(dir / "x.safetensors", in, {{"k", "v"}});
  std::map<std::string, std::string> meta;
  const auto out = read_safetensors(dir / "x.safetensors", &meta);
  EXPECT_EQ(meta.at("k"), "v");
  test::expect_same_tensors(out, in);
  // The safetensors package reads the same tensors and metadata.
  REQUIRE_PYTHON();
  test::expect_same_tensor_map(test::as_python_reads_it(dir / "x.safetensors", "st.load_file(path)", dir.path()), in);
  const auto r = test::run_python("from safetensors import safe_open; print(safe_open('" + (dir / "x.safetensors") +
                                      "', 'pt').metadata())",
                                  dir.path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "{'k': 'v'}\n");
}

TEST(Safetensors, LoadedTensorsAreCopyOnWrite) {
  ScratchDir dir;
  write_safetensors(dir / "w.safetensors", {{"w", torch::ones({64, 64})}});
  auto first = read_safetensors(dir / "w.safetensors");
  first[0].second.zero_();  // writes to the private mapping, never to the file
  auto second = read_safetensors(dir / "w.safetensors");
  EXPECT_TRUE(test::same_tensor(second[0].second, torch::ones({64, 64})));
}

TEST(Safetensors, ShardedIndexReadsEveryShard) {
  const auto tensors = read_safetensors_index(fixture("clara-reference/model.safetensors.index.json"));
  expect_matches_listing(tensors, "clara-sharded");
  // A directory resolves to its index.
  EXPECT_EQ(load_tensors(fixture("clara-reference")).size(), tensors.size());
}

TEST(Safetensors, BadFilesNameTheProblem) {
  ScratchDir dir;
  write_safetensors(dir / "ok.safetensors", {{"a", torch::randn({100})}, {"b", torch::randn({50})}});
  const std::string good = read_file(dir / "ok.safetensors");
  test::write_bytes(dir / "cut.safetensors", good.substr(0, good.size() - 8));
  auto what = error_of<FormatError>([&] { read_safetensors(dir / "cut.safetensors"); });
  EXPECT_NE(what.find("truncated"), std::string::npos) << what;
  EXPECT_NE(what.find("cut.safetensors"), std::string::npos) << what;
  std::string huge_header = good;
  huge_header[5] = '\x7f';
  test::write_bytes(dir / "header.safetensors", huge_header);
  EXPECT_THROW(read_safetensors(dir / "header.safetensors"), FormatError);
  std::string bad_json = good;
  bad_json[8] = '[';
  bad_json[9] = '!';
  test::write_bytes(dir / "json.safetensors", bad_json);
  EXPECT_THROW(read_safetensors(dir / "json.safetensors"), FormatError);
  test::write_bytes(dir / "tiny.safetensors", "abc");
  EXPECT_THROW(read_safetensors(dir / "tiny.safetensors"), FormatError);
  // An index naming a tensor its shard lacks.
  test::write_bytes(dir / "model.safetensors.index.json",
                    R"({"weight_map": {"a": "ok.safetensors", "zzz": "ok.safetensors"}})");
  what = error_of<FormatError>([&] { read_safetensors_index(dir / "model.safetensors.index.json"); });
  EXPECT_NE(what.find("zzz"), std::string::npos) << what;
  test::write_bytes(dir / "missing.index.json", R"({"weight_map": {"a": "nope.safetensors"}})");
  EXPECT_THROW(read_safetensors_index(dir / "missing.index.json"), IoError);
}

// ---- npy --------------------------------------------------------------------------------------

TEST(Npy, ReadsWhatNumpyWrites) {
  for (const char* name : {"u8.npy", "i32.npy", "i64.npy", "bool.npy", "f32.npy", "scalar.npy"}) {
    const at::Tensor t = read_npy(fixture(std::string("io/") + name));
    EXPECT_TRUE(test::same_tensor(t, expected().at(std::string("npy/") + name))) << name;
  }
}

TEST(Npy, RoundTrips) {
  ScratchDir dir;
  for (const auto& t : {torch::randint(0, 255, {3, 4}, torch::kByte), torch::randint(-9, 9, {5}, torch::kInt),
                        torch::randint(-9, 9, {2, 2, 2}, torch::kLong), torch::randn({4, 1}),
                        torch::rand({3}) > 0.5, torch::tensor(3.0)}) {
    write_npy(dir / "t.npy", t);
    const at::Tensor back = read_npy(dir / "t.npy");
    EXPECT_TRUE(test::same_tensor(back, t)) << t.scalar_type();
  }
}

TEST(Npy, RefusesWhatItCannotRead) {
  EXPECT_NE(error_of<FormatError>([] { read_npy(fixture("io/fortran.npy")); }).find("Fortran"), std::string::npos);
  EXPECT_NE(error_of<FormatError>([] { read_npy(fixture("io/bigendian.npy")); }).find("big-endian"), std::string::npos);
  EXPECT_NE(error_of<FormatError>([] { read_npy(fixture("io/complex.npy")); }).find("c8"), std::string::npos);
  ScratchDir dir;
  const std::string good = read_file(fixture("io/f32.npy"));
  test::write_bytes(dir / "cut.npy", good.substr(0, good.size() - 4));
  EXPECT_NE(error_of<FormatError>([&] { read_npy(dir / "cut.npy"); }).find("truncated"), std::string::npos);
  test::write_bytes(dir / "magic.npy", "PK\x03\x04 not numpy at all");
  EXPECT_THROW(read_npy(dir / "magic.npy"), FormatError);
  EXPECT_THROW(read_npy(dir / "absent.npy"), IoError);
}

// ---- our archives, key mapping, strict loading --------------------------------------------------

struct Toy : torch::nn::Module {
  Toy() {
    fc = register_module("fc", torch::nn::Linear(4, 3));
    norm = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({3})));
    counter = register_buffer("counter", torch::zeros({2}, torch::kLong));
  }
  torch::nn::Linear fc{nullptr};
  torch::nn::LayerNorm norm{nullptr};
  torch::Tensor counter;
};

TEST(TensorArchive, RoundTripsNestedNames) {
  ScratchDir dir;
  NamedTensors in = {{"a.b.c", torch::randn({2, 3})}, {"a.d", torch::arange(5)}, {"top", torch::ones({1}, torch::kBFloat16)}};
  save_tensor_archive(dir / "x.pt", in);
  auto out = as_map(load_tensor_archive(dir / "x.pt"));
  ASSERT_EQ(out.size(), 3u);
  for (const auto& [k, v] : in) EXPECT_TRUE(test::same_tensor(out.at(k), v)) << k;
  EXPECT_EQ(detect_checkpoint_format(dir / "x.pt"), CheckpointFormat::kTorchScript);
}

TEST(TensorArchive, ReadsPythonTorchScript) {
  auto got = load_tensor_archive(fixture("io/scripted.pt"));
  auto want = listing("scripted.pt");
  ASSERT_EQ(got.size(), want.size());
  auto m = as_map(got);
  for (const auto& [name, dtype, shape] : want) {
    ASSERT_TRUE(m.count(name)) << name;
    EXPECT_TRUE(test::same_tensor(m[name], expected().at("scripted.pt/" + name))) << name;
  }
}

TEST(TensorArchive, PythonReadsOurArchive) {
  REQUIRE_PYTHON();
  ScratchDir dir;
  Toy toy;
  NamedTensors state = module_state(toy);
  state.emplace_back("half.precision", torch::randn({3, 2}).to(torch::kBFloat16));
  save_tensor_archive(dir / "toy.pt", state);
  // torch.jit.load sees every tensor, under its dotted name, with dtype, shape and values.
  test::expect_same_tensor_map(
      test::as_python_reads_it(dir / "toy.pt", "dict(torch.jit.load(path).named_buffers())", dir.path()), state);
}

TEST(KeyMapping, StripsCompilePrefixAndGivenPrefixes) {
  const auto raw = read_torch_save(fixture("hrm-reference/step_0"));
  const auto stripped = strip_key_prefixes(raw, {"model.inner."});
  ASSERT_EQ(stripped.size(), raw.size());
  auto m = as_map(stripped);
  EXPECT_TRUE(m.count("H_init"));
  EXPECT_TRUE(m.count("L_level.layers.1.self_attn.qkv_proj.weight"));
  // Without the compile wrapper the result is the same.
  NamedTensors plain = {{"model.inner.H_init", raw[0].second}, {"x._orig_mod.y", raw[0].second}, {"keep_orig_mod.z", raw[0].second}};
  auto p = strip_key_prefixes(plain, {"model.inner."});
  EXPECT_EQ(p[0].first, "H_init");
  EXPECT_EQ(p[1].first, "x.y");
  EXPECT_EQ(p[2].first, "keep_orig_mod.z");
}

TEST(StrictLoad, NamesEveryMismatch) {
  Toy toy;
  NamedTensors state = module_state(toy);
  state.erase(state.begin());                             // drop fc.weight
  state.emplace_back("extra.weight", torch::zeros({1}));  // unexpected
  for (auto& [k, v] : state)
    if (k == "norm.weight") v = torch::zeros({5});        // wrong shape
  const auto what = error_of<ShapeError>([&] { load_state_dict(toy, state, true, "ckpt.pt"); });
  for (const char* s : {"ckpt.pt", "fc.weight", "extra.weight", "norm.weight", "[5]", "[3]"})
    EXPECT_NE(what.find(s), std::string::npos) << s << " not in: " << what;
}

TEST(StrictLoad, CopiesValuesAndConvertsDtype) {
  Toy a, b;
  NamedTensors state;
  for (const auto& [k, v] : module_state(a)) state.emplace_back(k, v.to(torch::kDouble));
  load_state_dict(b, state);
  for (const auto& [k, v] : module_state(b)) {
    EXPECT_EQ(v.scalar_type(), k == "counter" ? torch::kLong : torch::kFloat);
    EXPECT_TRUE(test::same_tensor(v, as_map(module_state(a)).at(k))) << k;
  }
  // Non-strict: matching keys load, the report lists the rest.
  Toy c;
  NamedTensors partial = {{"fc.bias", torch::full({3}, 2.0)}, {"junk", torch::zeros({1})}};
  const auto report = load_state_dict(c, partial, false);
  EXPECT_TRUE(test::same_tensor(c.fc->bias, torch::full({3}, 2.0)));
  EXPECT_EQ(report.unexpected, std::vector<std::string>{"junk"});
  EXPECT_EQ(report.missing.size(), 4u);
}

TEST(Checkpoint, DetectsFormatsByContent) {
  EXPECT_EQ(detect_checkpoint_format(fixture("hrm-reference/step_0")), CheckpointFormat::kTorchSave);
  EXPECT_EQ(detect_checkpoint_format(fixture("io/dtypes.safetensors")), CheckpointFormat::kSafetensors);
  EXPECT_EQ(detect_checkpoint_format(fixture("io/scripted.pt")), CheckpointFormat::kTorchScript);
  EXPECT_EQ(detect_checkpoint_format(fixture("clara-reference")), CheckpointFormat::kSafetensorsIndex);
  EXPECT_THROW(detect_checkpoint_format(fixture("io/f32.npy")), FormatError);
  EXPECT_THROW(detect_checkpoint_format(fixture("io")), IoError);
}

TEST(Files, AtomicWriteKeepsTheOldFileWhenTheWriterFails) {
  ScratchDir dir;
  write_file_atomically(dir / "f", "old");
  EXPECT_THROW(write_atomically(dir / "f",
                                [](const std::string& tmp) {
                                  test::write_bytes(tmp, "half");
                                  throw IoError("disk full");
                                }),
               IoError);
  EXPECT_EQ(read_file(dir / "f"), "old");
  const auto r = test::run_command("ls -A '" + dir.path() + "' | grep -c tmp", dir.path());
  EXPECT_EQ(r.out, "0\n");
}

}  // namespace
}  // namespace hrmclara
