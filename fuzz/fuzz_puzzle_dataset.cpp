// puzzles::PuzzleDataset (src/puzzles/dataset.cpp): a split directory in upstream's layout, then what the
// trainer does with it (gather, TrainSampler, sequential_batches). The input is several files
// (fuzz_common.h's split_parts):
//   dataset.json, then all__{inputs,labels,puzzle_identifiers,puzzle_indices,group_indices}.npy,
//   then the same five for a second set "b".
// Seeds: small valid datasets and the fixture's dataset.json (fuzz/seeds.py).
#include "fuzz_tensor.h"

#include <hrmclara/puzzle_dataset.h>

#include <sys/stat.h>

namespace {
std::string g_dir;
const char* const kArrays[] = {"inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices"};
}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  hrmclara_fuzz::init_torch();
  g_dir = hrmclara_fuzz::WorkDir::get().file("split");
  ::mkdir(g_dir.c_str(), 0755);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace hrmclara_fuzz;
  const auto parts = split_parts(data, size, 11);
  write_part(parts, 0, g_dir + "/dataset.json");
  size_t i = 1;
  for (const char* set : {"all", "b"})
    for (const char* array : kArrays) write_part(parts, i++, g_dir + "/" + set + "__" + array + ".npy");

  expect_typed_errors("PuzzleDataset", [&] {
    hrmclara::puzzles::PuzzleDataset ds(g_dir);
    const int64_t n = ds.num_examples();
    (void)ds.num_groups();
    (void)ds.metadata().to_json();
    // The test order, and the batches it gives (bounded: a big dataset is not more interesting).
    const auto batches = hrmclara::puzzles::sequential_batches(ds, 4);
    for (size_t b = 0; b < batches.size() && b < 8; ++b) (void)ds.gather(batches[b], 4);
    // The training order of the first two iterations.
    hrmclara::puzzles::TrainSampler sampler(ds, 4, 2, 1234);
    for (int64_t it = 0; it < 2; ++it) {
      const int64_t count = sampler.batches_in_iteration(it);
      for (int64_t b = 0; b < count && b < 8; ++b) {
        const auto ids = sampler.batch_at({it, b});
        if (!ids) die("TrainSampler: batch " + std::to_string(b) + " of " + std::to_string(count) + " is missing");
        for (int64_t e : *ids)
          if (e < 0 || e >= n) die("TrainSampler: example id " + std::to_string(e) + " outside [0, " + std::to_string(n) + ")");
        (void)ds.gather(*ids, 4);
      }
    }
  });
  return 0;
}
