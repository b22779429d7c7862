// Config, flags, device policy, the SentencePiece plugin and the ckpt_inspect tool.
#include <hrmclara/checkpoint.h>
#include <hrmclara/cli.h>
#include <hrmclara/config.h>
#include <hrmclara/device.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/info.h>
#include <hrmclara/tokenizer.h>

#include <ATen/Version.h>
#include <torch/torch.h>

#include <sched.h>
#include <thread>

#include "test_util.h"

namespace hrmclara {
namespace {

using test::fixture;
using test::ScratchDir;

// ---- config -----------------------------------------------------------------------------------

Json schema() {
  return Json::parse(R"({"lr": 1e-4, "epochs": 10, "name": "run", "flag": false,
                         "arch": {"hidden_size": 512, "loss": {"loss_type": "softmax"}},
                         "extra": {}, "optional": null})");
}

TEST(Config, MergeAcceptsKnownKeysAndRejectsUnknownByName) {
  const Json merged = merge_config(schema(), Json::parse(R"({"lr": 3, "arch": {"hidden_size": 64}})"), "cfg.json");
  EXPECT_EQ(merged["lr"].get<double>(), 3.0);  // an integer where a float is expected
  EXPECT_EQ(merged["arch"]["hidden_size"], 64);
  EXPECT_EQ(merged["arch"]["loss"]["loss_type"], "softmax");  // untouched default kept
  try {
    merge_config(schema(), Json::parse(R"({"arch": {"hiden_size": 64}})"), "cfg.json");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("'arch.hiden_size'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("cfg.json"), std::string::npos) << e.what();
  }
  EXPECT_THROW(merge_config(schema(), Json::parse(R"({"epochs": 1.5})"), "x"), ConfigError);
  EXPECT_THROW(merge_config(schema(), Json::parse(R"({"name": 3})"), "x"), ConfigError);
  // Free-form objects and null (optional) defaults take anything.
  EXPECT_EQ(merge_config(schema(), Json::parse(R"({"extra": {"k": [1]}, "optional": "s"})"), "x")["extra"]["k"][0], 1);
}

TEST(Config, DottedOverrides) {
  const Json c = apply_overrides(schema(), {"arch.hidden_size=128", "lr=0.5", "name=my run", "flag=true",
                                            "arch.loss.loss_type=stablemax_cross_entropy"});
  EXPECT_EQ(c["arch"]["hidden_size"], 128);
  EXPECT_EQ(c["lr"].get<double>(), 0.5);
  EXPECT_EQ(c["name"], "my run");
  EXPECT_EQ(c["flag"], true);
  EXPECT_EQ(config_at(c, "arch.loss.loss_type"), "stablemax_cross_entropy");
  EXPECT_THROW(apply_overrides(schema(), {"arch.depth=3"}), ConfigError);
  EXPECT_THROW(apply_overrides(schema(), {"epochs=many"}), ConfigError);
  EXPECT_THROW(apply_overrides(schema(), {"novalue"}), UsageError);
  EXPECT_THROW(config_at(schema(), "arch.nothing"), ConfigError);
}

TEST(Config, ReadsUpstreamYaml) {
  const Json c = read_yaml_file(fixture("hrm-reference/all_config.yaml"));
  EXPECT_EQ(c["arch"]["hidden_size"], 64);
  EXPECT_TRUE(c["arch"]["hidden_size"].is_number_integer());
  EXPECT_DOUBLE_EQ(c["lr"].get<double>(), 1e-4);
  EXPECT_EQ(c["arch"]["loss"]["name"], "losses@ACTLossHead");
  EXPECT_EQ(c["checkpoint_every_eval"], true);
  EXPECT_TRUE(c["eval_save_outputs"].is_array());
  EXPECT_DOUBLE_EQ(c["arch"]["halt_exploration_prob"].get<double>(), 0.0);
}

TEST(Config, MalformedFilesNameFileAndPlace) {
  ScratchDir dir;
  test::write_bytes(dir / "bad.json", "{\n  \"a\": 1,\n  \"b\": ]\n}");
  try {
    read_json_file(dir / "bad.json");
    FAIL();
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("bad.json"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("line 3"), std::string::npos) << e.what();
  }
  test::write_bytes(dir / "bad.yaml", "a: [1, 2\nb: {");
  EXPECT_THROW(read_yaml_file(dir / "bad.yaml"), FormatError);
  EXPECT_THROW(read_json_file(dir / "absent.json"), IoError);
  write_json_file(dir / "ok.json", schema());
  EXPECT_EQ(read_json_file(dir / "ok.json"), schema());
}

// ---- flags ------------------------------------------------------------------------------------

std::vector<char*> argv_of(std::vector<std::string>& args) {
  std::vector<char*> out;
  for (auto& a : args) out.push_back(a.data());
  return out;
}

TEST(ArgParser, ParsesOptionsFlagsAndPositionals) {
  ArgParser p("tool", "[options]");
  p.option("out", "where").flag("grads", "").option("steps", "", "4").common_options();
  std::vector<std::string> args = {"tool", "--out", "x.st", "--grads", "--steps=7", "lr=3", "--log-level", "warn"};
  auto argv = argv_of(args);
  ASSERT_TRUE(p.parse(static_cast<int>(argv.size()), argv.data()));
  EXPECT_EQ(p.get("out"), "x.st");
  EXPECT_TRUE(p.has("grads"));
  EXPECT_EQ(p.get_int("steps"), 7);
  EXPECT_EQ(p.get("device"), "auto");
  EXPECT_EQ(p.positionals(), std::vector<std::string>{"lr=3"});
  EXPECT_THROW(p.require("nothing"), UsageError);
}

TEST(ArgParser, RejectsBadInput) {
  auto parse = [](std::vector<std::string> args) {
    ArgParser p("tool", "");
    p.option("steps", "", "1").flag("f", "");
    auto argv = argv_of(args);
    p.parse(static_cast<int>(argv.size()), argv.data(), 0);
    return p.get_int("steps");
  };
  EXPECT_THROW(parse({"tool", "--bogus"}), UsageError);
  EXPECT_THROW(parse({"tool", "--steps"}), UsageError);
  EXPECT_THROW(parse({"tool", "--f=1"}), UsageError);
  EXPECT_THROW(parse({"tool", "stray"}), UsageError);
  EXPECT_THROW(parse({"tool", "--steps", "3x"}), UsageError);
  EXPECT_EQ(parse({"tool", "--steps", "-2"}), -2);
}

TEST(RunMain, MapsErrorsToOneLineAndExitCodes) {
  testing::internal::CaptureStderr();
  const int code = run_main("tool", [] () -> int { throw FormatError("f.bin: truncated\nsecond line"); });
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_EQ(code, static_cast<int>(ExitCode::kFormat));
  EXPECT_EQ(err, "tool: error: f.bin: truncated\n");
  testing::internal::CaptureStderr();
  EXPECT_EQ(run_main("tool", [] () -> int { throw std::runtime_error("boom"); }), 1);
  testing::internal::GetCapturedStderr();
  EXPECT_EQ(run_main("tool", [] { return 0; }), 0);
}

// ---- device policy ----------------------------------------------------------------------------

TEST(Device, AutoPicksMpsThenCudaThenCpu) {
  const auto d = resolve_device("auto");
  if (torch::mps::is_available()) EXPECT_TRUE(d.is_mps());
  else if (torch::cuda::is_available()) EXPECT_TRUE(d.is_cuda());
  else EXPECT_TRUE(d.is_cpu());
  EXPECT_TRUE(resolve_device("cpu").is_cpu());
}

TEST(Device, AbsentOrUnknownDevicesAreClearErrors) {
  if (!torch::cuda::is_available()) {
    try {
      resolve_device("cuda");
      FAIL();
    } catch (const DeviceError& e) {
      EXPECT_NE(std::string(e.what()).find("CUDA is not available"), std::string::npos);
    }
  } else {
    EXPECT_THROW(resolve_device("cuda:999"), DeviceError);
  }
  if (!torch::mps::is_available()) EXPECT_THROW(resolve_device("mps"), DeviceError);
  EXPECT_THROW(resolve_device("tpu"), UsageError);
  EXPECT_THROW(resolve_device("cuda:x"), Error);
}

TEST(Device, CapabilitiesAndThreads) {
  EXPECT_FALSE(device_caps(c10::Device(c10::kMPS)).float64);
  EXPECT_EQ(device_caps(c10::Device(c10::kMPS)).widest_float(), c10::kFloat);
  EXPECT_TRUE(device_caps(c10::Device(c10::kCPU)).float64);
  EXPECT_EQ(device_caps(c10::Device(c10::kCPU)).widest_float(), c10::kDouble);
  const int all = configure_threads(0);
  EXPECT_GE(all, 1);
  cpu_set_t set;
  CPU_ZERO(&set);
  ASSERT_EQ(sched_getaffinity(0, sizeof(set), &set), 0);
  EXPECT_EQ(all, CPU_COUNT(&set));  // every core this process may run on
  EXPECT_EQ(configure_threads(1), 1);
  configure_threads(all);
  EXPECT_NE(describe_device(c10::Device(c10::kCPU)).find("threads"), std::string::npos);
}

TEST(Device, ThreadCountsAreChecked) {
  EXPECT_THROW(configure_threads(-1), UsageError);
  EXPECT_THROW(configure_threads(100000), UsageError);
  EXPECT_EQ(configure_threads(3), 3);  // more threads than cores is allowed, within reason
  configure_threads(0);
}

// ---- dtype policy -----------------------------------------------------------------------------

TEST(DtypePolicy, AutoPicksBf16OnlyWhereTheCpuHasIt) {
  const c10::Device cpu(c10::kCPU);
  const auto& info = cpu_info();
  const auto fast = info.native_bfloat16 ? c10::kBFloat16 : c10::kFloat;
  EXPECT_EQ(resolve_dtype("auto", cpu), fast);
  EXPECT_EQ(resolve_dtype("auto", cpu, "auto"), fast);
  EXPECT_EQ(resolve_dtype("auto", cpu, "bfloat16"), fast);
  EXPECT_EQ(resolve_dtype("auto", cpu, "float16"), info.native_float16 ? c10::kHalf : c10::kFloat);
  EXPECT_EQ(resolve_dtype("auto", cpu, "float32"), c10::kFloat);  // a float32 model stays float32
  EXPECT_EQ(resolve_dtype("auto", cpu, "float64"), c10::kDouble);
  EXPECT_EQ(resolve_dtype("auto", c10::Device(c10::kMPS), "float64"), c10::kFloat);  // MPS has none
  EXPECT_EQ(resolve_dtype("auto", c10::Device(c10::kMPS)), c10::kFloat);
  // Explicit choices are kept, slow or not; float64 where there is none is an error.
  EXPECT_EQ(resolve_dtype("bfloat16", cpu), c10::kBFloat16);
  EXPECT_EQ(resolve_dtype("float32", cpu, "bfloat16"), c10::kFloat);
  EXPECT_THROW(resolve_dtype("float64", c10::Device(c10::kMPS)), DeviceError);
  EXPECT_THROW(resolve_dtype("fp8", cpu), UsageError);
  // Native means both the hardware units and oneDNN's permission to use them.
  const bool hw = [&] {
    for (const auto& f : info.features)
      if (f == "avx512_bf16" || f == "amx_bf16" || f == "bf16") return true;
    return false;
  }();
  const std::string limit = info.onednn_isa_limit;
  const bool limited = limit == "AVX2" || limit == "SSE41" || limit == "AVX512_CORE";
  EXPECT_EQ(info.native_bfloat16, hw && !limited) << "features and ONEDNN_MAX_CPU_ISA=" << limit;
  EXPECT_EQ(info.bfloat16_note.empty(), info.native_bfloat16);
}

TEST(DtypePolicy, ToolsFallBackToFloat32AndWarnOnAnExplicitSlowChoice) {
  ScratchDir dir;
  // A copy of the HRM fixture whose config states bfloat16.
  for (const char* f : {"step_0", "dataset.json"}) test::write_bytes(dir / f, test::read_bytes(fixture(std::string("hrm-reference/") + f)));
  std::string yaml = test::read_bytes(fixture("hrm-reference/all_config.yaml"));
  yaml.replace(yaml.find("forward_dtype: float32"), 22, "forward_dtype: bfloat16");
  test::write_bytes(dir / "all_config.yaml", yaml);
  const std::string infer = test::tool("hrm_infer") + " --checkpoint " + (dir / "step_0") + " --batch " +
                            fixture("hrm-reference/batch.safetensors") + " --steps 1 --device cpu --out " + (dir / "o.st");
  // An AVX2-only CPU, as far as oneDNN is concerned: auto runs float32 and says why.
  auto r = test::run_command("ONEDNN_MAX_CPU_ISA=AVX2 " + infer, dir.path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("dtype auto: float32 on cpu (the model states bfloat16"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("is slow"), std::string::npos) << r.err;
  // Asked for explicitly, bf16 runs, with one warning that carries the measured rates.
  r = test::run_command("ONEDNN_MAX_CPU_ISA=AVX2 " + infer + " --dtype bfloat16", dir.path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string warning = "--dtype bfloat16 on cpu is slow: ";
  const auto warned = r.err.find(warning);
  ASSERT_NE(warned, std::string::npos) << r.err;
  EXPECT_NE(r.err.find("GFLOP/s against ", warned), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find(warning, warned + warning.size()), std::string::npos) << "warned twice: " << r.err;
  // Where bf16 is native, auto keeps the stated bfloat16 and says nothing.
  if (cpu_info().native_bfloat16 && cpu_info().onednn_isa_limit.empty()) {
    r = test::run_command(infer, dir.path());
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.err.find("dtype auto"), std::string::npos) << r.err;
  }
  r = test::run_command(infer + " --dtype float16", dir.path());
  EXPECT_EQ(r.exit_code, 5) << r.err;  // HRM has no float16 path
}

// ---- the machine the suites run on ----------------------------------------------------------------

// scripts/test.sh runs every suite natively and with other CPUs' kernels forced (tests/CMakeLists.txt):
// this checks that each forcing took effect, so a "passes with AVX2 kernels" claim is true.
TEST(TestEnvironment, ForcedKernelsTakeEffect) {
  auto upper = [](std::string s) {
    for (auto& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return s;
  };
  const auto& info = cpu_info();
  const char* set = std::getenv("HRMCLARA_KERNEL_SET");
  std::cout << "[ kernels  ] set " << (set ? set : "native") << ": " << version_line() << std::endl;
  const bool x86 = info.architecture.find("x86") != std::string::npos;
  if (const char* aten = std::getenv("ATEN_CPU_CAPABILITY"); aten && x86)
    EXPECT_EQ(at::get_cpu_capability(), upper(aten));
  if (const char* isa = std::getenv("ONEDNN_MAX_CPU_ISA")) {
    EXPECT_EQ(info.onednn_isa_limit, upper(isa));
    if (upper(isa) == "AVX2" || upper(isa) == "SSE41") {
      EXPECT_FALSE(info.native_bfloat16);
      EXPECT_EQ(resolve_dtype("auto", c10::Device(c10::kCPU)), c10::kFloat);
    }
  }
  if (const char* mkl = std::getenv("MKL_ENABLE_INSTRUCTIONS"); mkl && at::hasMKL()) {
    // MKL names the instruction set it dispatched to in its verbose banner.
    ScratchDir dir;
    const auto r = test::run_command("MKL_VERBOSE=1 " + test::tool("hrmclara_info") + " --measure", dir.path());
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto at = r.out.find("MKL_VERBOSE oneMKL");
    ASSERT_NE(at, std::string::npos) << r.out;
    const auto banner = r.out.substr(at, 400);
    // On other vendors' CPUs (AMD's) MKL takes its generic code path ("Intel(R) Architecture
    // processors", with kernels of its own choosing) and names no instruction set: there the forced
    // set covers ATen's and oneDNN's kernels, and this says so rather than claim MKL's.
    if (banner.find("Intel(R) Architecture processors") != std::string::npos) {
      std::cout << "[ kernels  ] MKL: generic code path on this CPU; MKL_ENABLE_INSTRUCTIONS=" << mkl
                << " is not in effect for MKL here" << std::endl;
    } else {
      const std::string want =
          upper(mkl) == "AVX2" ? "(Intel(R) AVX2)" : upper(mkl) == "SSE4_2" ? "(Intel(R) SSE4.2)" : upper(mkl);
      EXPECT_NE(banner.find(want), std::string::npos) << banner;
    }
  }
  if (!set) {
    EXPECT_EQ(std::getenv("ATEN_CPU_CAPABILITY"), nullptr) << "the native run must not inherit forced kernels";
    EXPECT_EQ(std::getenv("ONEDNN_MAX_CPU_ISA"), nullptr) << "the native run must not inherit forced kernels";
  }
}

TEST(Info, ReportAndVersionFlags) {
  ScratchDir dir;
  auto r = test::run_command(test::tool("hrmclara_info") + " --json", dir.path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Json info = Json::parse(r.out);
  EXPECT_EQ(info["version"], version());
  EXPECT_EQ(info["torch"], TORCH_VERSION);
  EXPECT_EQ(info["cpu"]["aten_capability"], at::get_cpu_capability());
  EXPECT_EQ(info["cpu"]["native_bfloat16"], cpu_info().native_bfloat16);
  EXPECT_EQ(info["threads"], at::get_num_threads());
  EXPECT_EQ(info["cuda"]["available"], torch::cuda::is_available());
  EXPECT_EQ(info["auto_dtype"], cpu_info().native_bfloat16 || torch::cuda::is_available() ? "bfloat16" : "float32");
  r = test::run_command(test::tool("hrmclara_info"), dir.path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto line = r.out.find("\naten capability: ");
  ASSERT_NE(line, std::string::npos) << r.out;
  EXPECT_EQ(r.out.substr(line, r.out.find('\n', line + 1) - line).find(at::get_cpu_capability()) != std::string::npos, true) << r.out;
  EXPECT_NE(r.out.find("native bf16:"), std::string::npos) << r.out;
  // Every tool answers --version, and --version --verbose with the report.
  for (const char* tool : {"hrm_train", "hrm_infer", "llm_tool", "ckpt_inspect"}) {
    r = test::run_command(test::tool(tool) + " --version", dir.path());
    EXPECT_EQ(r.exit_code, 0) << tool;
    EXPECT_EQ(r.out, std::string(tool) + ": " + version_line() + "\n") << tool;
  }
  r = test::run_command(test::tool("hrm_eval") + " --version --verbose", dir.path());
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("blas:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("native f16:"), std::string::npos) << r.out;
}

// ---- SentencePiece plugin ---------------------------------------------------------------------

TEST(SentencePiece, IdsPiecesAndDecodeMatchPython) {
  // torch is already loaded in this process: this is the case the plugin exists for.
  ASSERT_GT(torch::ones({2}).sum().item<float>(), 1.0f);
  SentencePiece sp(fixture("clara-reference/tokenizer.model"));
  const Json expected = read_json_file(fixture("clara-reference/tokenizer_expected.json"));
  EXPECT_EQ(sp.vocab_size(), expected["spm_vocab_size"].get<int>());
  EXPECT_EQ(sp.unk_id(), 0);
  EXPECT_EQ(sp.bos_id(), 1);
  EXPECT_EQ(sp.eos_id(), 2);
  int cases = 0;
  for (const auto& c : expected["cases"]) {
    const std::string text = c["text"];
    EXPECT_EQ(sp.encode(text), c["spm_ids"].get<std::vector<int>>()) << text;
    EXPECT_EQ(sp.encode_pieces(text), c["spm_pieces"].get<std::vector<std::string>>()) << text;
    EXPECT_EQ(sp.decode(c["spm_ids"].get<std::vector<int>>()), c["spm_decode"].get<std::string>()) << text;
    ++cases;
  }
  EXPECT_GT(cases, 10);
  EXPECT_EQ(sp.id_to_piece(1), "<s>");
  EXPECT_EQ(sp.piece_to_id("<s>"), 1);
  EXPECT_EQ(sp.piece_to_id("no-such-piece-anywhere"), sp.unk_id());
  EXPECT_THROW(sp.id_to_piece(100000), UsageError);
  EXPECT_THROW(sp.decode({-1}), UsageError);
}

TEST(SentencePiece, BadModelFilesAreErrors) {
  EXPECT_THROW(SentencePiece("/nonexistent/tokenizer.model"), IoError);
  ScratchDir dir;
  test::write_bytes(dir / "bad.model", "this is not a protobuf");
  EXPECT_THROW(SentencePiece(dir / "bad.model"), FormatError);
}

// ---- ckpt_inspect -----------------------------------------------------------------------------

std::string expected_listing(const std::string& key) {
  std::vector<std::string> lines;
  const Json all = read_json_file(fixture("io/listings.json"));
  for (const auto& row : all.at(key)) {
    std::string shape = "[";
    for (size_t i = 0; i < row[2].size(); ++i) shape += (i ? "," : "") + std::to_string(row[2][i].get<int64_t>());
    lines.push_back(row[0].get<std::string>() + "\t" + row[1].get<std::string>() + "\t" + shape + "]");
  }
  std::sort(lines.begin(), lines.end());
  std::string out;
  for (const auto& l : lines) out += l + "\n";
  return out;
}

TEST(CkptInspect, ListsTorchSaveAndShardedCheckpointsAsPythonDoes) {
  ScratchDir dir;
  auto r = test::run_command(test::tool("ckpt_inspect") + " " + fixture("hrm-reference/step_0"), dir.path());
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, expected_listing("step_0"));
  r = test::run_command(test::tool("ckpt_inspect") + " " + fixture("clara-reference"), dir.path());
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, expected_listing("clara-sharded"));
  r = test::run_command(test::tool("ckpt_inspect") + " " + fixture("clara-reference/model.safetensors.index.json"), dir.path());
  EXPECT_EQ(r.out, expected_listing("clara-sharded"));
  r = test::run_command(test::tool("ckpt_inspect") + " " + fixture("io/nested.pt"), dir.path());
  EXPECT_EQ(r.out, expected_listing("nested.pt"));
}

TEST(CkptInspect, ConvertsToSafetensorsAndReadsOwnArchives) {
  ScratchDir dir;
  auto r = test::run_command(test::tool("ckpt_inspect") + " " + fixture("hrm-reference/step_0") + " --to-safetensors " +
                                 (dir / "step0.safetensors"),
                             dir.path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto back = test::run_command(test::tool("ckpt_inspect") + " " + (dir / "step0.safetensors"), dir.path());
  EXPECT_EQ(back.out, r.out);
  const auto original = read_torch_save(fixture("hrm-reference/step_0"));
  const auto converted = read_safetensors(dir / "step0.safetensors");
  std::map<std::string, at::Tensor> converted_by_name(converted.begin(), converted.end());
  test::expect_same_tensor_map(converted_by_name, original);  // names, dtypes, shapes and values
  save_tensor_archive(dir / "ours.pt", converted);
  auto ours = test::run_command(test::tool("ckpt_inspect") + " " + (dir / "ours.pt"), dir.path());
  EXPECT_EQ(ours.out, r.out);
}

TEST(CkptInspect, BadInputGivesOneLineAndNonZeroExit) {
  ScratchDir dir;
  const std::string full = read_file(fixture("hrm-reference/step_0"));
  test::write_bytes(dir / "truncated", full.substr(0, full.size() / 3));
  test::write_bytes(dir / "garbage", std::string(300, 'x'));
  test::write_bytes(dir / "empty", "");
  const std::string st = read_file(fixture("io/dtypes.safetensors"));
  test::write_bytes(dir / "cut.safetensors", st.substr(0, st.size() - 5));
  for (const char* name : {"truncated", "garbage", "empty", "cut.safetensors", "absent"}) {
    const auto r = test::run_command(test::tool("ckpt_inspect") + " " + (dir / name), dir.path());
    EXPECT_NE(r.exit_code, 0) << name;
    EXPECT_EQ(test::count_lines(r.err), 1) << name << ": " << r.err;
    EXPECT_NE(r.err.find(dir / name), std::string::npos) << r.err;
    EXPECT_EQ(r.out, "") << name;
  }
  auto r = test::run_command(test::tool("ckpt_inspect") + " --bogus x", dir.path());
  EXPECT_EQ(r.exit_code, static_cast<int>(ExitCode::kUsage));
  r = test::run_command(test::tool("ckpt_inspect"), dir.path());
  EXPECT_EQ(r.exit_code, static_cast<int>(ExitCode::kUsage));
}

}  // namespace
}  // namespace hrmclara
