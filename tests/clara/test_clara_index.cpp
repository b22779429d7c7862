// The memory index of compressed documents: round trips, shards, search against a direct torch
// computation of upstream's cosine (ties included), memory mapping, atomic appends, bad input.
#include <hrmclara/clara_index.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/tensor_io.h>

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <fstream>
#include <set>
#include <sstream>

#include "test_util.h"

namespace hrmclara::clara {
namespace {

using nlohmann::ordered_json;
using test::error_of;
using test::ScratchDir;

std::vector<NewDocument> make_docs(const std::string& prefix, int64_t count) {
  std::vector<NewDocument> docs;
  for (int64_t i = 0; i < count; ++i)
    docs.push_back(NewDocument::from_text(prefix + std::to_string(i), "file.pdf#page=" + std::to_string(i + 1),
                                          "text of " + prefix + std::to_string(i)));
  return docs;
}

std::vector<std::string> ids_of(const std::vector<NewDocument>& docs) {
  std::vector<std::string> ids;
  for (const auto& d : docs) ids.push_back(d.id);
  return ids;
}

bool one_line(const std::string& s) { return !s.empty() && s.find('\n') == std::string::npos; }

bool contains(const std::string& haystack, const std::string& needle) { return haystack.find(needle) != std::string::npos; }

std::set<std::string> listing(const std::string& dir) {
  const auto names = list_directory(dir);
  return {names.begin(), names.end()};
}

// Upstream's scores computed directly over the whole index: flatten, F.normalize in the stored
// dtype, float32, one matrix product. [B, N] with N in documents() order.
torch::Tensor direct_scores(const MemoryIndex& index, const torch::Tensor& queries) {
  std::vector<std::string> ids;
  for (const auto& d : index.documents()) ids.push_back(d.id);
  const auto docs = index.rows(ids).reshape({index.size(), -1});
  namespace F = torch::nn::functional;
  const auto opts = F::NormalizeFuncOptions().p(2).dim(-1);
  const auto q = queries.reshape({-1, index.n() * index.hidden()});
  return torch::matmul(F::normalize(q, opts).to(torch::kFloat), F::normalize(docs, opts).to(torch::kFloat).t());
}

// The hits are a correct top-k of `ref`: right length, distinct documents, scores within `tol` of
// the direct ones, ordered by score then document position, nothing left out that scores higher.
void expect_top_k(const MemoryIndex& index, const std::vector<std::vector<SearchHit>>& hits, const torch::Tensor& ref,
                  int64_t top_k, double tol = 1e-6) {
  ASSERT_EQ(static_cast<int64_t>(hits.size()), ref.size(0));
  const auto r = ref.contiguous();
  for (int64_t b = 0; b < ref.size(0); ++b) {
    const auto& h = hits[static_cast<size_t>(b)];
    ASSERT_EQ(static_cast<int64_t>(h.size()), top_k);
    std::set<int64_t> taken;
    for (size_t j = 0; j < h.size(); ++j) {
      ASSERT_GE(h[j].document, 0);
      ASSERT_LT(h[j].document, index.size());
      EXPECT_EQ(h[j].id, index.documents()[static_cast<size_t>(h[j].document)].id);
      EXPECT_TRUE(taken.insert(h[j].document).second) << "document returned twice";
      EXPECT_NEAR(h[j].score, r[b][h[j].document].item<float>(), tol) << "query " << b << " hit " << j;
      if (j > 0) {
        EXPECT_GE(h[j - 1].score, h[j].score) << "not descending";
        if (h[j - 1].score == h[j].score) EXPECT_LT(h[j - 1].document, h[j].document) << "tie out of document order";
      }
    }
    for (int64_t d = 0; d < index.size(); ++d)
      if (!taken.count(d)) EXPECT_LE(r[b][d].item<float>(), h.back().score + tol) << "document " << d << " left out";
  }
}

// ---- SHA-256 ----------------------------------------------------------------------------------------

TEST(ClaraIndex, Sha256KnownVectors) {
  // FIPS 180-4 / NIST examples.
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(sha256_hex("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu"),
            "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
  EXPECT_EQ(sha256_hex(std::string(1000000, 'a')), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  // Padding boundaries (one or two final blocks) and arbitrary bytes, from Python's hashlib.
  const std::vector<std::pair<size_t, std::string>> lengths = {
      {55, "16fa57a0a3423a715d594516339f36189d6b5f93754a9714fef202616a9fabfe"},
      {56, "c37b44e5f1b18554b36966f4f8e08bfbf3164c4b6c10374d12d89850892073c5"},
      {63, "bbba992d2c85af960fb2987a1fd05e0aa82a3db3c740dd8982a9e273b75e36a3"},
      {64, "66bd4633ed6f71c4ecfa4763bf7ba1c8ec7612de9aa6c0578a7b675207c71e0b"},
      {119, "a3ed307b730fa77c07531300c6e4a282330011d4d4caf6bb7b63ae05950f4b66"},
      {120, "8e3b15d9fea7472655aa069620b7f8c2e55ee1499f763200a7515fe826e99d20"}};
  for (const auto& [n, want] : lengths) {
    std::string bytes;
    for (size_t i = 0; i < n; ++i) bytes.push_back(static_cast<char>((i * 7 + 1) % 256));
    EXPECT_EQ(sha256_hex(bytes), want) << n << " bytes";
  }
  EXPECT_EQ(sha256_hex(std::string("\x00\xff\x80 caf\xc3\xa9", 9)),
            "2f3ac2fcf94be7dc95148e9ae992ad730e39b898add1c5d931486933acddacd6");
  EXPECT_EQ(NewDocument::from_text("id", "src", "abc").text_hash, sha256_hex("abc"));
}

// ---- round trips and shards ---------------------------------------------------------------------

TEST(ClaraIndex, RoundTrip) {
  ScratchDir dir;
  for (auto dtype : {torch::kFloat, torch::kBFloat16, torch::kHalf}) {
    const std::string where = dir / dtype_name(dtype);
    torch::manual_seed(1);
    const auto vectors = torch::randn({3, 4, 8}).to(dtype);
    const auto docs = make_docs("doc", 3);
    {
      auto index = MemoryIndex::create(where, 4, 8, dtype);
      EXPECT_EQ(index.size(), 0);
      index.append(docs, vectors);
      EXPECT_EQ(index.size(), 3);
    }
    const auto index = MemoryIndex::open(where);
    EXPECT_EQ(index.n(), 4);
    EXPECT_EQ(index.hidden(), 8);
    EXPECT_EQ(index.dtype(), dtype);
    ASSERT_EQ(index.size(), 3);
    for (int64_t i = 0; i < 3; ++i) {
      const auto& d = index.documents()[static_cast<size_t>(i)];
      EXPECT_EQ(d.id, docs[static_cast<size_t>(i)].id);
      EXPECT_EQ(d.source, docs[static_cast<size_t>(i)].source);
      EXPECT_EQ(d.text_hash, sha256_hex("text of doc" + std::to_string(i)));
      EXPECT_EQ(d.shard, 0);
      EXPECT_EQ(d.row, i);
      EXPECT_TRUE(test::same_tensor(index.get(d.id), vectors[i]));
      EXPECT_TRUE(index.contains(d.text_hash));
      EXPECT_TRUE(index.contains_id(d.id));
    }
    EXPECT_FALSE(index.contains(sha256_hex("some other text")));
    EXPECT_FALSE(index.contains_id("doc3"));
    EXPECT_TRUE(test::same_tensor(index.rows({"doc2", "doc0", "doc2"}), torch::stack({vectors[2], vectors[0], vectors[2]})));
    EXPECT_EQ(index.rows({}).sizes(), (std::vector<int64_t>{0, 4, 8}));
    // index.json says what the header documents.
    const auto j = ordered_json::parse(read_file(where + "/index.json"));
    EXPECT_EQ(j["format"], "hrmclara-memory-index");
    EXPECT_EQ(j["version"], 1);
    EXPECT_EQ(j["n"], 4);
    EXPECT_EQ(j["hidden"], 8);
    EXPECT_EQ(j["dtype"], dtype_name(dtype));
    EXPECT_EQ(j["shards"], ordered_json::parse(R"([{"file": "vectors-00000.safetensors", "rows": 3}])"));
    EXPECT_EQ(j["documents"][1]["source"], "file.pdf#page=2");
    // The shard is a plain safetensors file holding "vectors".
    const auto shard = read_safetensors(where + "/vectors-00000.safetensors");
    ASSERT_EQ(shard.size(), 1u);
    EXPECT_EQ(shard[0].first, "vectors");
    EXPECT_TRUE(test::same_tensor(shard[0].second, vectors));
  }
}

TEST(ClaraIndex, AppendAcrossShards) {
  ScratchDir dir;
  torch::manual_seed(2);
  const auto a = torch::randn({2, 2, 3}), b = torch::randn({1, 2, 3}), c = torch::randn({5, 2, 3});
  {
    auto index = MemoryIndex::create(dir / "idx", 2, 3, torch::kFloat);
    index.append(make_docs("a", 2), a);
    index.append(make_docs("b", 1), b);
    AppendOptions split;
    split.max_rows_per_shard = 2;
    index.append(make_docs("c", 5), c, split);  // shards of 2, 2 and 1 rows
    index.append({}, torch::empty({0, 2, 3}));  // nothing to add, nothing written
    EXPECT_EQ(index.shard_count(), 5);
  }
  EXPECT_EQ(listing(dir / "idx"),
            (std::set<std::string>{"index.json", "vectors-00000.safetensors", "vectors-00001.safetensors",
                                   "vectors-00002.safetensors", "vectors-00003.safetensors", "vectors-00004.safetensors"}));
  const auto index = MemoryIndex::open(dir / "idx");
  ASSERT_EQ(index.size(), 8);
  EXPECT_EQ(index.shard_count(), 5);
  const std::vector<std::pair<int64_t, int64_t>> where = {{0, 0}, {0, 1}, {1, 0}, {2, 0}, {2, 1}, {3, 0}, {3, 1}, {4, 0}};
  const auto all = torch::cat({a, b, c});
  for (size_t i = 0; i < where.size(); ++i) {
    const auto& d = index.documents()[i];
    EXPECT_EQ(std::make_pair(d.shard, d.row), where[i]) << d.id;
    EXPECT_TRUE(test::same_tensor(index.get(d.id), all[static_cast<int64_t>(i)])) << d.id;
  }
  EXPECT_EQ(index.shard_vectors(2).sizes(), (std::vector<int64_t>{2, 2, 3}));
  EXPECT_TRUE(contains(index.shard_file(4), "vectors-00004.safetensors"));
  EXPECT_TRUE(test::same_tensor(index.rows({"c4", "a0", "b0"}), torch::stack({c[4], a[0], b[0]})));
}

TEST(ClaraIndex, ReplaceExistingMovesTheDocument) {
  ScratchDir dir;
  torch::manual_seed(3);
  const auto v = torch::randn({3, 2, 4}), w = torch::randn({1, 2, 4});
  auto index = MemoryIndex::create(dir / "idx", 2, 4, torch::kFloat);
  index.append(make_docs("d", 3), v);
  const std::string old_hash = index.document("d1").text_hash;
  auto what = error_of<UsageError>([&] { index.append({NewDocument::from_text("d1", "new", "new text")}, w); });
  EXPECT_TRUE(contains(what, "'d1'") && contains(what, "already")) << what;
  AppendOptions replace;
  replace.replace_existing = true;
  index.append({NewDocument::from_text("d1", "new", "new text")}, w, replace);
  const auto opened = MemoryIndex::open(dir / "idx");
  {
    for (const MemoryIndex* ix : std::vector<const MemoryIndex*>{&index, &opened}) {
      ASSERT_EQ(ix->size(), 3);
      EXPECT_EQ(ix->documents().back().id, "d1");
      EXPECT_EQ(ix->documents().back().source, "new");
      EXPECT_TRUE(test::same_tensor(ix->get("d1"), w[0]));
      EXPECT_TRUE(test::same_tensor(ix->get("d2"), v[2]));
      EXPECT_FALSE(ix->contains(old_hash));
      EXPECT_TRUE(ix->contains(sha256_hex("new text")));
      // The old row is gone from search: its own vector finds d1 only through the new one.
      const auto hits = ix->search(v[1].reshape({-1}), 3);
      expect_top_k(*ix, hits, direct_scores(*ix, v[1].reshape({1, -1})), 3);
      for (const auto& h : hits[0]) EXPECT_LT(h.score, 0.999f) << h.id;
      EXPECT_EQ(ix->search(w, 1)[0][0].id, "d1");
    }
  }
}

// ---- search -----------------------------------------------------------------------------------------

// Documents in shards of 3, 1, 300 (two search blocks) and 7 rows.
MemoryIndex build_search_index(const std::string& dir, torch::ScalarType dtype, torch::Tensor* all) {
  auto index = MemoryIndex::create(dir, 4, 16, dtype);
  torch::manual_seed(4);
  std::vector<torch::Tensor> parts;
  int64_t next = 0;
  for (int64_t rows : {3, 1, 300, 7}) {
    const auto v = torch::randn({rows, 4, 16}).to(dtype);
    index.append(make_docs("s" + std::to_string(next++) + "-", rows), v);
    parts.push_back(v);
  }
  *all = torch::cat(parts);
  return index;
}

TEST(ClaraIndex, SearchMatchesDirectCosine) {
  ScratchDir dir;
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    torch::Tensor all;
    const auto index = build_search_index(dir / dtype_name(dtype), dtype, &all);
    ASSERT_EQ(index.size(), 311);
    // Queries: random, one near a document of the big shard's second block, in bf16 and float32.
    auto queries = torch::randn({4, 64});
    queries[1] = all[290].reshape({-1}).to(torch::kFloat) * 3 + 0.01 * torch::randn({64});
    for (auto qdtype : {torch::kFloat, torch::kBFloat16}) {
      const auto q = queries.to(qdtype);
      const auto ref = direct_scores(index, q);
      for (int64_t k : {1, 5, 311}) {
        const auto hits = index.search(q, k);
        expect_top_k(index, hits, ref, k);
        EXPECT_EQ(hits[1][0].id, index.documents()[290].id);
        EXPECT_NEAR(hits[1][0].score, 1.0, 1e-2);
      }
      // [n*H] and [B, n, H] give the same as [B, n*H].
      const auto batched = index.search(q, 5);
      const auto single = index.search(q[2], 5);
      const auto shaped = index.search(q.reshape({4, 4, 16}), 5);
      const auto matrix = index.search(q[2].reshape({4, 16}), 5);  // one query as [n, H]
      ASSERT_EQ(single.size(), 1u);
      for (size_t j = 0; j < 5; ++j) {
        EXPECT_EQ(single[0][j].id, batched[2][j].id);
        EXPECT_EQ(single[0][j].score, batched[2][j].score);  // batching changes nothing
        EXPECT_EQ(matrix[0][j].id, single[0][j].id);
        EXPECT_EQ(matrix[0][j].score, single[0][j].score);
        EXPECT_EQ(shaped[3][j].id, batched[3][j].id);
        EXPECT_EQ(shaped[3][j].score, batched[3][j].score);
      }
    }
  }
}

TEST(ClaraIndex, SearchTiesAreExactAndInDocumentOrder) {
  ScratchDir dir;
  torch::manual_seed(5);
  constexpr int64_t kN = 4, kH = 256, kD = kN * kH;
  const auto v = torch::randn({kN, kH});
  auto index = MemoryIndex::create(dir / "idx", kN, kH, torch::kFloat);
  // Copies of v at documents 1 (shard of 3), 3 (shard of 1), 4 (shard of 2) and 267 (second
  // search block of a shard of 300): shard sizes for which an unpadded product of the real
  // size would round differently.
  auto s0 = torch::randn({3, kN, kH});
  s0[1] = v;
  auto s2 = torch::randn({2, kN, kH});
  s2[0] = v;
  auto s3 = torch::randn({300, kN, kH});
  s3[261] = v;
  index.append(make_docs("x", 3), s0);
  index.append(make_docs("y", 1), v.unsqueeze(0));
  index.append(make_docs("w", 2), s2);
  index.append(make_docs("z", 300), s3);
  const auto queries = v.reshape({1, kD}) + 0.5 * torch::randn({8, kD});
  const auto batched = index.search(queries, 4);
  for (int64_t b = 0; b < 8; ++b) {
    for (const auto& hits : {index.search(queries[b], 4)[0], batched[static_cast<size_t>(b)]}) {
      ASSERT_EQ(hits.size(), 4u);
      EXPECT_EQ(hits[0].id, "x1");
      EXPECT_EQ(hits[1].id, "y0");
      EXPECT_EQ(hits[2].id, "w0");
      EXPECT_EQ(hits[3].id, "z261");
      for (size_t j = 1; j < 4; ++j) EXPECT_EQ(hits[j].score, hits[0].score) << "query " << b;  // bit-identical
    }
  }
  expect_top_k(index, batched, direct_scores(index, queries), 4);
  // A zero query scores 0 everywhere: all tie, document order decides. Same for a B > 1 batch.
  const auto zeros = index.search(torch::zeros({2, kD}), 6);
  for (const auto& row : zeros) {
    ASSERT_EQ(row.size(), 6u);
    for (int64_t j = 0; j < 6; ++j) {
      EXPECT_EQ(row[static_cast<size_t>(j)].document, j);
      EXPECT_EQ(row[static_cast<size_t>(j)].score, 0.0f);
    }
  }
  // The same documents in one shard or in many score identically.
  std::vector<std::string> ids;
  for (const auto& d : index.documents()) ids.push_back(d.id);
  const auto vectors = index.rows(ids);
  auto one = MemoryIndex::create(dir / "one", kN, kH, torch::kFloat);
  one.append(make_docs("o", index.size()), vectors);
  const auto random_queries = torch::randn({3, kD});
  const auto many_hits = index.search(random_queries, 20), one_hits = one.search(random_queries, 20);
  for (size_t b = 0; b < 3; ++b)
    for (size_t j = 0; j < 20; ++j) {
      EXPECT_EQ(many_hits[b][j].document, one_hits[b][j].document);
      EXPECT_EQ(many_hits[b][j].score, one_hits[b][j].score);
    }
}

// ---- memory mapping ---------------------------------------------------------------------------------

#ifdef __linux__
double resident_mb() {
  std::ifstream statm("/proc/self/statm");
  long pages = 0, resident = 0;
  statm >> pages >> resident;
  return static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE)) / 1048576.0;
}

// The file mapped at `address` in this process, from /proc/self/maps ("" if none).
std::string mapped_file_at(const void* address) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  const auto a = reinterpret_cast<uintptr_t>(address);
  while (std::getline(maps, line)) {
    std::istringstream in(line);
    std::string range, perms, offset, device, inode, path;
    in >> range >> perms >> offset >> device >> inode >> path;
    const auto dash = range.find('-');
    const uintptr_t begin = std::stoull(range.substr(0, dash), nullptr, 16), end = std::stoull(range.substr(dash + 1), nullptr, 16);
    if (a >= begin && a < end) return path;
  }
  return "";
}
#endif

TEST(ClaraIndex, OpenMapsShardsWithoutReadingThem) {
  ScratchDir dir;
  constexpr int64_t kRows = 1536, kN = 8, kH = 1024;  // 48 MiB of float32
  {
    auto index = MemoryIndex::create(dir / "big", kN, kH, torch::kFloat);
    index.append(make_docs("b", kRows), torch::ones({kRows, kN, kH}));
  }
#ifdef __linux__
  const double before = resident_mb();
#endif
  const auto index = MemoryIndex::open(dir / "big");
#ifdef __linux__
  const double grown = resident_mb() - before;
  EXPECT_LT(grown, 8.0) << "opening a 48 MiB index made " << grown << " MiB resident";
  // The shard's tensor lies in a mapping of the shard file itself.
  EXPECT_EQ(mapped_file_at(index.shard_vectors(0).data_ptr()), index.shard_file(0));
#endif
  // The storage is the file's bytes, not an allocation of the CPU allocator.
  EXPECT_NE(index.shard_vectors(0).storage().data_ptr().get_deleter(), at::getCPUAllocator()->raw_deleter());
  // Lookups are copies: changing one leaves the index as it was.
  auto row = index.get("b7");
  row.zero_();
  EXPECT_TRUE(test::same_tensor(index.get("b7"), torch::ones({kN, kH})));
}

// ---- atomic appends -----------------------------------------------------------------------------

TEST(ClaraIndex, FailedAppendLeavesTheOldIndex) {
  ScratchDir dir;
  const std::string idx = dir / "idx";
  torch::manual_seed(6);
  const auto v = torch::randn({2, 2, 4}), w = torch::randn({3, 2, 4});
  auto index = MemoryIndex::create(idx, 2, 4, torch::kFloat);
  index.append(make_docs("old", 2), v);
  const std::string json_before = read_file(idx + "/index.json");
  const auto files_before = listing(idx);
  const std::string pid = std::to_string(getpid());

  // 1. index.json cannot be replaced (its temp file's name is taken by a directory): the new
  //    shard was written first and is removed again; index.json is untouched.
  make_directories(idx + "/index.json.tmp-" + pid);
  EXPECT_THROW(index.append(make_docs("new", 3), w), IoError);
  remove_tree(idx + "/index.json.tmp-" + pid);
  EXPECT_EQ(read_file(idx + "/index.json"), json_before);
  EXPECT_EQ(listing(idx), files_before);
  EXPECT_EQ(index.size(), 2);  // the object is unchanged too
  EXPECT_FALSE(index.contains_id("new0"));
  EXPECT_EQ(index.search(v[0], 1)[0][0].id, "old0");

  // 2. The shard cannot be written: nothing changes.
  make_directories(idx + "/vectors-00001.safetensors.tmp-" + pid);
  EXPECT_THROW(index.append(make_docs("new", 3), w), IoError);
  remove_tree(idx + "/vectors-00001.safetensors.tmp-" + pid);
  EXPECT_EQ(read_file(idx + "/index.json"), json_before);
  EXPECT_EQ(listing(idx), files_before);
  const auto reopened = MemoryIndex::open(idx);
  EXPECT_EQ(reopened.size(), 2);
  EXPECT_TRUE(test::same_tensor(reopened.get("old1"), v[1]));

  // 3. A crash after writing a shard and before index.json leaves an unreferenced file (here a
  //    broken one): opening ignores it, the next append replaces it.
  test::write_bytes(idx + "/vectors-00001.safetensors", "half a shard");
  EXPECT_EQ(MemoryIndex::open(idx).size(), 2);
  index.append(make_docs("new", 3), w);
  const auto after = MemoryIndex::open(idx);
  ASSERT_EQ(after.size(), 5);
  EXPECT_TRUE(test::same_tensor(after.get("new2"), w[2]));
  EXPECT_EQ(after.document("new2").shard, 1);
}

// ---- bad input ----------------------------------------------------------------------------------

// A good index, then `edit` applied to its index.json.
void write_edited(const std::string& dir, const std::function<void(ordered_json&)>& edit) {
  auto j = ordered_json::parse(read_file(dir + "/index.json"));
  edit(j);
  test::write_bytes(dir + "/index.json", j.dump());
}

TEST(ClaraIndex, BadIndexFilesNameTheProblem) {
  ScratchDir dir;
  const std::string good = dir / "good";
  {
    auto index = MemoryIndex::create(good, 2, 4, torch::kFloat);
    index.append(make_docs("g", 3), torch::randn({3, 2, 4}));
    index.append(make_docs("h", 2), torch::randn({2, 2, 4}));
  }
  int copies = 0;
  auto fresh = [&] {
    const std::string where = dir / ("case" + std::to_string(copies++));
    make_directories(where);
    for (const auto& name : list_directory(good)) copy_file(good + "/" + name, where + "/" + name);
    return where;
  };
  // Each case: the error type and words its message must hold.
  auto expect_format = [&](const std::string& where, const std::vector<std::string>& words) {
    const auto what = error_of<FormatError>([&] { MemoryIndex::open(where); });
    EXPECT_TRUE(one_line(what)) << what;
    for (const auto& w : words) EXPECT_TRUE(contains(what, w)) << "'" << w << "' not in: " << what;
  };

  EXPECT_TRUE(contains(error_of<IoError>([&] { MemoryIndex::open(dir / "nowhere"); }), "nowhere"));
  {
    const auto where = fresh();
    std::remove((where + "/index.json").c_str());
    const auto what = error_of<IoError>([&] { MemoryIndex::open(where); });
    EXPECT_TRUE(one_line(what) && contains(what, where + "/index.json")) << what;
  }
  {
    const auto where = fresh();
    test::write_bytes(where + "/index.json", "{\"format\": ");
    expect_format(where, {where + "/index.json", "malformed JSON"});
  }
  {
    const auto where = fresh();
    write_edited(where, [](ordered_json& j) { j["format"] = "something else"; });
    expect_format(where, {"index.json", "format"});
  }
  {
    const auto where = fresh();
    write_edited(where, [](ordered_json& j) { j["version"] = 2; });
    expect_format(where, {"index.json", "version 2"});
  }
  {
    const auto where = fresh();
    write_edited(where, [](ordered_json& j) { j.erase("hidden"); });
    expect_format(where, {"index.json", "\"hidden\""});
  }
  {
    const auto where = fresh();
    write_edited(where, [](ordered_json& j) { j["dtype"] = "int64"; });
    expect_format(where, {"index.json", "int64"});
  }
  {
    const auto where = fresh();
    write_edited(where, [](ordered_json& j) { j["documents"][4]["row"] = 2; });
    expect_format(where, {"index.json", "documents[4]", "row 2"});
  }
  {
    const auto where = fresh();
    write_edited(where, [](ordered_json& j) { j["documents"][1]["shard"] = 7; });
    expect_format(where, {"index.json", "documents[1]", "shard 7"});
  }
  {
    const auto where = fresh();
    write_edited(where, [](ordered_json& j) { j["documents"][2]["id"] = "g0"; });
    expect_format(where, {"index.json", "'g0'", "twice"});
  }
  {
    const auto where = fresh();
    write_edited(where, [](ordered_json& j) { j["documents"][2]["row"] = 1; });
    expect_format(where, {"index.json", "documents[2]", "row 1"});
  }
  {
    const auto where = fresh();
    write_edited(where, [](ordered_json& j) { j["documents"][0]["text_hash"] = 5; });
    expect_format(where, {"index.json", "documents[0]", "text_hash"});
  }
  {
    const auto where = fresh();
    write_edited(where, [](ordered_json& j) { j["shards"][0]["file"] = "../elsewhere.safetensors"; });
    expect_format(where, {"index.json", "shards[0]"});
  }
  {  // index.json claims more rows than the shard has
    const auto where = fresh();
    write_edited(where, [](ordered_json& j) { j["shards"][1]["rows"] = 3; });
    expect_format(where, {where + "/vectors-00001.safetensors", "[2,2,4]", "[3,2,4]"});
  }
  {  // a shard missing
    const auto where = fresh();
    std::remove((where + "/vectors-00001.safetensors").c_str());
    const auto what = error_of<IoError>([&] { MemoryIndex::open(where); });
    EXPECT_TRUE(one_line(what) && contains(what, where + "/vectors-00001.safetensors")) << what;
  }
  {  // a shard truncated
    const auto where = fresh();
    const std::string shard = where + "/vectors-00000.safetensors";
    const std::string bytes = read_file(shard);
    test::write_bytes(shard, bytes.substr(0, bytes.size() - 16));
    expect_format(where, {shard, "truncated"});
  }
  {  // a shard that is another file
    const auto where = fresh();
    write_safetensors(where + "/vectors-00000.safetensors", {{"weights", torch::zeros({3, 2, 4})}});
    expect_format(where, {where + "/vectors-00000.safetensors", "'vectors'"});
  }
  {  // a shard of another dtype
    const auto where = fresh();
    write_safetensors(where + "/vectors-00000.safetensors", {{"vectors", torch::zeros({3, 2, 4}, torch::kBFloat16)}});
    expect_format(where, {where + "/vectors-00000.safetensors", "bfloat16", "float32"});
  }
  EXPECT_EQ(MemoryIndex::open(good).size(), 5);  // the original was never touched
}

TEST(ClaraIndex, BadAppendsWriteNothing) {
  ScratchDir dir;
  const std::string idx = dir / "idx";
  auto index = MemoryIndex::create(idx, 2, 4, torch::kBFloat16);
  index.append(make_docs("d", 2), torch::randn({2, 2, 4}).to(torch::kBFloat16));
  const std::string json_before = read_file(idx + "/index.json");
  const auto files_before = listing(idx);
  auto unchanged = [&] {
    EXPECT_EQ(read_file(idx + "/index.json"), json_before);
    EXPECT_EQ(listing(idx), files_before);
    EXPECT_EQ(index.size(), 2);
  };
  const auto ok = torch::randn({1, 2, 4}).to(torch::kBFloat16);
  const auto one = make_docs("new", 1);

  auto what = error_of<ShapeError>([&] { index.append(one, torch::randn({1, 3, 4}).to(torch::kBFloat16)); });
  EXPECT_TRUE(one_line(what) && contains(what, "[1,3,4]") && contains(what, "n 2, H 4")) << what;
  what = error_of<ShapeError>([&] { index.append(one, torch::randn({1, 2, 5}).to(torch::kBFloat16)); });
  EXPECT_TRUE(contains(what, "[1,2,5]")) << what;
  what = error_of<ShapeError>([&] { index.append(one, torch::randn({2, 4}).to(torch::kBFloat16)); });
  EXPECT_TRUE(contains(what, "[2,4]")) << what;
  what = error_of<ShapeError>([&] { index.append(one, torch::randn({1, 2, 4})); });
  EXPECT_TRUE(contains(what, "Float") && contains(what, "bfloat16")) << what;
  what = error_of<ShapeError>([&] { index.append(make_docs("new", 2), ok); });
  EXPECT_TRUE(contains(what, "1 rows of vectors for 2 documents")) << what;
  what = error_of<UsageError>([&] { index.append(make_docs("d", 1), ok); });
  EXPECT_TRUE(contains(what, "'d0'") && contains(what, "already")) << what;
  what = error_of<UsageError>([&] {
    index.append({NewDocument{"twin", "", ""}, NewDocument{"twin", "", ""}}, torch::zeros({2, 2, 4}, torch::kBFloat16));
  });
  EXPECT_TRUE(contains(what, "'twin'") && contains(what, "twice")) << what;
  EXPECT_THROW(index.append({NewDocument{"", "", ""}}, ok), UsageError);
  what = error_of<UsageError>([&] { index.append({NewDocument{"latin1", "caf\xe9.pdf", ""}}, ok); });
  EXPECT_TRUE(contains(what, "'latin1'") && contains(what, "UTF-8")) << what;
  auto nan = ok.clone();
  nan[0][1][2] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(index.append(one, nan), NumericError);
  unchanged();
  // Creating over an index, or an index of unsupported layout.
  EXPECT_TRUE(contains(error_of<UsageError>([&] { MemoryIndex::create(idx, 2, 4, torch::kBFloat16); }), "already"));
  EXPECT_THROW(MemoryIndex::create(dir / "ints", 2, 4, torch::kLong), ShapeError);
  EXPECT_THROW(MemoryIndex::create(dir / "empty", 0, 4, torch::kFloat), ShapeError);
  what = error_of<ShapeError>([&] { MemoryIndex::open_or_create(idx, 2, 4, torch::kFloat); });
  EXPECT_TRUE(contains(what, "bfloat16") && contains(what, "float32")) << what;
  EXPECT_EQ(MemoryIndex::open_or_create(idx, 2, 4, torch::kBFloat16).size(), 2);
  EXPECT_EQ(MemoryIndex::open_or_create(dir / "fresh", 2, 4, torch::kFloat).size(), 0);
  unchanged();
}

TEST(ClaraIndex, BadSearchesAndLookups) {
  ScratchDir dir;
  auto index = MemoryIndex::create(dir / "idx", 2, 4, torch::kFloat);
  EXPECT_TRUE(contains(error_of<UsageError>([&] { index.search(torch::randn({8}), 1); }), "0 documents"));
  index.append(make_docs("d", 5), torch::randn({5, 2, 4}));
  auto what = error_of<UsageError>([&] { index.search(torch::randn({8}), 6); });
  EXPECT_TRUE(one_line(what) && contains(what, "top_k 6") && contains(what, "5 documents")) << what;
  EXPECT_THROW(index.search(torch::randn({8}), 0), UsageError);
  EXPECT_EQ(index.search(torch::randn({8}), 5)[0].size(), 5u);
  what = error_of<ShapeError>([&] { index.search(torch::randn({2, 9}), 1); });
  EXPECT_TRUE(contains(what, "[2,9]") && contains(what, "[B, 8]")) << what;
  EXPECT_THROW(index.search(torch::randn({4, 2}), 1), ShapeError);  // [H, n] is not [n, H]
  EXPECT_THROW(index.search(torch::randn({1, 2, 4, 1}), 1), ShapeError);
  EXPECT_EQ(index.search(torch::randn({2, 4}), 1).size(), 1u);
  EXPECT_THROW(index.search(torch::ones({8}, torch::kLong), 1), ShapeError);
  auto nan = torch::randn({8});
  nan[3] = std::numeric_limits<float>::infinity();
  EXPECT_THROW(index.search(nan, 1), NumericError);
  EXPECT_EQ(index.search(torch::randn({0, 8}), 1).size(), 0u);
  what = error_of<UsageError>([&] { index.get("missing"); });
  EXPECT_TRUE(contains(what, "'missing'")) << what;
  EXPECT_THROW(index.rows({"d1", "missing"}), UsageError);
  EXPECT_THROW(index.shard_vectors(1), UsageError);
}

}  // namespace
}  // namespace hrmclara::clara
