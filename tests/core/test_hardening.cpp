// Regression tests for the bad-input campaign (issue 13): every hostile input is built here, in the
// test, and must end in a typed error naming the file, not a crash, a hang or unbounded memory.
#include "hostile_inputs.h"
#include "test_util.h"

#include <hrmclara/config.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/llm_tokenizer.h>
#include <hrmclara/npy.h>
#include <hrmclara/tensor_io.h>

#include <sys/stat.h>
#include <torch/torch.h>
#include <unistd.h>

namespace hrmclara {
namespace {

using test::fixture;
using test::ScratchDir;

std::string repeat(const std::string& s, size_t n) {
  std::string out;
  out.reserve(s.size() * n);
  for (size_t i = 0; i < n; ++i) out += s;
  return out;
}

std::string pickle_error(const std::string& pickle) {
  ScratchDir dir;
  test::write_pickle_archive(dir / "bad.pt", pickle);
  return test::error_of<FormatError>([&] { read_torch_save(dir / "bad.pt"); });
}

TEST(HostilePickles, DeepNestingIsRefusedNotAStackOverflow) {
  const std::string proto = "\x80\x02";
  // 50,000 nested lists (EMPTY_LIST x N, APPEND x N-1): this crashed the process in teardown.
  auto message = pickle_error(proto + repeat("]", 50000) + repeat("a", 49999) + ".");
  EXPECT_NE(message.find("bad.pt: data.pkl: nested more than 200 levels deep"), std::string::npos) << message;
  // One APPEND more empties the stack: an error at that opcode, and no recursive teardown.
  message = pickle_error(proto + repeat("]", 50000) + repeat("a", 50000) + ".");
  EXPECT_NE(message.find("stack underflow"), std::string::npos) << message;
  // A million nested one-tuples.
  message = pickle_error(proto + ")" + repeat("\x85", 1000000) + ".");
  EXPECT_NE(message.find("nested more than 200 levels deep"), std::string::npos) << message;
  // 200 levels are fine (a state dict has three).
  ScratchDir dir;
  test::write_pickle_archive(dir / "ok.pt", proto + repeat("]", 150) + repeat("a", 149) + ".");
  EXPECT_TRUE(read_torch_save(dir / "ok.pt").empty());
}

TEST(HostilePickles, SelfReferenceThroughTheMemoIsRefused) {
  // PROTO 2, EMPTY_LIST, BINPUT 0, BINGET 0, APPEND, STOP: a list that contains itself.
  auto message = pickle_error(std::string("\x80\x02]q\x00h\x00" "a.", 9));
  EXPECT_NE(message.find("an object contains itself"), std::string::npos) << message;
  // A dict holding itself under key 1.
  message = pickle_error(std::string("\x80\x02}q\x00K\x01h\x00s.", 11));
  EXPECT_NE(message.find("an object contains itself"), std::string::npos) << message;
}

TEST(HostilePickles, SharedObjectsThatMultiplyPathsAreBounded) {
  // L0 = []; L(i) = [L(i-1), L(i-1)] through the memo: 60 levels are 2^60 paths in 200 bytes.
  std::string p = "\x80\x02]q";
  p += '\0';
  p += "0";  // POP
  for (int i = 1; i <= 60; ++i) {
    p += "](h";
    p += static_cast<char>(i - 1);
    p += "h";
    p += static_cast<char>(i - 1);
    p += "eq";
    p += static_cast<char>(i);
    p += "0";
  }
  p += "h";
  p += static_cast<char>(60);
  p += ".";
  const auto message = pickle_error(p);
  EXPECT_NE(message.find("shares objects in more places than a state dict does"), std::string::npos) << message;
}

TEST(HostilePickles, TruncatedAndUnknownOpcodesNameTheByte) {
  auto message = pickle_error("\x80\x02]");
  EXPECT_NE(message.find("unexpected end of pickle"), std::string::npos) << message;
  message = pickle_error("\x80\x02\xff.");
  EXPECT_NE(message.find("unsupported pickle opcode 0xff"), std::string::npos) << message;
}

TEST(ZipRecords, AFlippedByteInAWeightFailsItsCrc) {
  ScratchDir dir;
  const auto weights = torch::arange(1000, torch::kFloat);
  write_torch_save(dir / "good.pt", {{"w", weights}});
  EXPECT_TRUE(test::same_tensor(read_torch_save(dir / "good.pt").at(0).second, weights));
  // The float 500.0f (0x43FA0000, little-endian) lies in the storage record: flip one of its bits.
  std::string bytes = test::read_bytes(dir / "good.pt");
  const auto at = bytes.find(std::string("\x00\x00\xfa\x43", 4));
  ASSERT_NE(at, std::string::npos);
  bytes[at + 1] ^= 0x01;
  test::write_bytes(dir / "flipped.pt", bytes);
  const auto message = test::error_of<FormatError>([&] { read_torch_save(dir / "flipped.pt"); });
  EXPECT_NE(message.find("flipped.pt: record data/0 fails its CRC-32 check"), std::string::npos) << message;
  // Python's torch.save files pass the same check (fixtures written by torch 2.x).
  EXPECT_FALSE(read_torch_save(fixture("io/state_dict.pt")).empty());
}

TEST(ZipRecords, AFlippedByteInThePickleFailsItsCrc) {
  ScratchDir dir;
  write_torch_save(dir / "good.pt", {{"a_rather_long_tensor_name", torch::ones({2})}});
  std::string bytes = test::read_bytes(dir / "good.pt");
  const auto at = bytes.find("a_rather_long_tensor_name");
  ASSERT_NE(at, std::string::npos);
  bytes[at] = 'b';
  test::write_bytes(dir / "renamed.pt", bytes);
  const auto message = test::error_of<FormatError>([&] { read_torch_save(dir / "renamed.pt"); });
  EXPECT_NE(message.find("record data.pkl fails its CRC-32 check"), std::string::npos) << message;
}

TEST(HostileYaml, AnAliasBombIsRefusedQuickly) {
  ScratchDir dir;
  // Nine levels of nine aliases: 9^9 = 387 million values from a file of 400 bytes.
  const std::string yaml = test::yaml_alias_bomb();
  test::write_bytes(dir / "all_config.yaml", yaml);
  const auto message = test::error_of<FormatError>([&] { read_yaml_file(dir / "all_config.yaml"); });
  EXPECT_NE(message.find("all_config.yaml: YAML expands to more than 1000000 values"), std::string::npos) << message;
  // Aliases themselves are fine: upstream's configs do not use them, but YAML allows them.
  test::write_bytes(dir / "ok.yaml", "base: &b {lr: 0.1}\ncopy: *b\n");
  EXPECT_EQ(read_yaml_file(dir / "ok.yaml")["copy"]["lr"].get<double>(), 0.1);
  // Deep nesting.
  test::write_bytes(dir / "deep.yaml", repeat("[", 150) + repeat("]", 150) + "\n");
  EXPECT_NE(test::error_of<FormatError>([&] { read_yaml_file(dir / "deep.yaml"); }).find("deep.yaml"), std::string::npos);
}

// Every reader refuses a FIFO (open() would block forever), a device such as /dev/zero (a read
// without end) and a directory, naming the file, before it opens it.
TEST(SpecialFiles, FifosDevicesAndDirectoriesAreRefusedByEveryReader) {
  ScratchDir dir;
  ASSERT_EQ(::mkfifo((dir / "fifo").c_str(), 0600), 0);
  ASSERT_EQ(::symlink("/dev/zero", (dir / "zero").c_str()), 0);
  ::mkdir((dir / "folder").c_str(), 0700);
  const std::vector<std::pair<std::string, std::function<void(const std::string&)>>> readers = {
      {"read_file", [](const std::string& p) { read_file(p); }},
      {"read_json_file", [](const std::string& p) { read_json_file(p); }},
      {"read_yaml_file", [](const std::string& p) { read_yaml_file(p); }},
      {"read_torch_save", [](const std::string& p) { read_torch_save(p); }},
      {"read_safetensors", [](const std::string& p) { read_safetensors(p); }},
      {"read_safetensors_index", [](const std::string& p) { read_safetensors_index(p); }},
      {"read_npy", [](const std::string& p) { read_npy(p); }},
      {"MappedFile", [](const std::string& p) { MappedFile f(p); }},
  };
  const std::vector<std::pair<std::string, std::string>> specials = {
      {"fifo", "is a FIFO"}, {"zero", "is a device"}, {"folder", "is a directory"}};
  for (const auto& [name, read] : readers)
    for (const auto& [file, what] : specials) {
      const auto message = test::error_of<IoError>([&, read = read] { read(dir / file); });
      EXPECT_NE(message.find(dir / file + ": " + what), std::string::npos) << name << " on " << file << ": " << message;
    }
  // A tokenizer directory whose tokenizer.model is a directory.
  ::mkdir((dir / "tok").c_str(), 0700);
  ::mkdir((dir / "tok/tokenizer.model").c_str(), 0700);
  const auto message = test::error_of<IoError>([&] { LlmTokenizer t(dir / "tok"); });
  EXPECT_NE(message.find("tokenizer.model: is a directory"), std::string::npos) << message;
}

TEST(SpecialFiles, ConfigsLargerThanTheirCapAreRefusedBeforeReading) {
  ScratchDir dir;
  // A sparse file: 300 MB that take no disk.
  {
    std::ofstream out(dir / "huge.json", std::ios::binary);
    out.seekp((std::streamoff{300} << 20) - 1);
    out.put('\n');
  }
  const auto message = test::error_of<IoError>([&] { read_json_file(dir / "huge.json"); });
  EXPECT_NE(message.find("huge.json: 314572800 bytes, more than the 268435456"), std::string::npos) << message;
}

TEST(Tokenizer, IdsTheTokenizerLacksDecodeToNothingInsteadOfAborting) {
  // The fixture model has 647 embedding rows, its tokenizer 640 SentencePiece pieces: greedy chat
  // generation emitted id 641 and llm_tool stopped mid-answer.
  LlmTokenizer tokenizer(fixture("clara-reference"));
  ASSERT_EQ(tokenizer.vocab_size(), 640);
  const int hello = tokenizer.encode("hello").at(0);
  EXPECT_FALSE(tokenizer.has_token(641));
  EXPECT_TRUE(tokenizer.has_token(hello));
  EXPECT_EQ(tokenizer.decode({hello, 641, hello}), tokenizer.decode({hello, hello}));
  EXPECT_EQ(tokenizer.decode({641}, /*skip_special_tokens=*/true), "");
  EXPECT_THROW(tokenizer.id_to_token(641), UsageError);
}

}  // namespace
}  // namespace hrmclara
