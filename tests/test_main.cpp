// main() of every test binary: GoogleTest, plus the guards that keep a green run meaningful.
// - A binary that ran no test fails (a stray GTEST_FILTER, a typo in --gtest_filter, an empty
//   suite), where GoogleTest alone would exit 0.
// - A skipped test fails the binary unless HRMCLARA_ALLOW_SKIPS=1: CI installs everything the
//   tests need, so a skip there means a missing dependency, not an optional one.
// - The last line is "<binary>: N passed, N failed, N skipped", which scripts/test.sh adds up.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace {

// Names the skipped tests with their messages, since --gtest_brief hides them. The message is kept
// in OnTestPartResult and printed in OnTestEnd: GoogleTest holds its UnitTest lock while it reports
// a part result, so asking it for the current test there (current_test_info) deadlocks.
class SkipReporter : public testing::EmptyTestEventListener {
 public:
  void OnTestPartResult(const testing::TestPartResult& result) override {
    if (result.skipped()) message_ = result.message();
  }
  void OnTestEnd(const testing::TestInfo& info) override {
    if (info.result()->Skipped())
      std::fprintf(stderr, "SKIPPED %s.%s: %s\n", info.test_suite_name(), info.name(), message_.c_str());
    message_.clear();
  }

 private:
  std::string message_;
};

}  // namespace

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  testing::UnitTest::GetInstance()->listeners().Append(new SkipReporter);
  const int status = RUN_ALL_TESTS();
  const auto* unit = testing::UnitTest::GetInstance();
  std::string name = argv[0];
  name = name.substr(name.find_last_of('/') + 1);
  const int ran = unit->test_to_run_count(), skipped = unit->skipped_test_count();
  std::printf("%s: %d passed, %d failed, %d skipped\n", name.c_str(), unit->successful_test_count(),
              unit->failed_test_count(), skipped);
  if (ran == 0) {
    const char* filter = std::getenv("GTEST_FILTER");
    std::fprintf(stderr, "%s: error: no test ran (%d registered; GTEST_FILTER=%s)\n", name.c_str(),
                 unit->total_test_count(), filter ? filter : "unset");
    return 1;
  }
  const char* allow = std::getenv("HRMCLARA_ALLOW_SKIPS");
  if (skipped > 0 && !(allow && std::string(allow) == "1")) {
    std::fprintf(stderr, "%s: error: %d test(s) skipped (set HRMCLARA_ALLOW_SKIPS=1 to accept skips)\n", name.c_str(),
                 skipped);
    return 1;
  }
  return status;
}
