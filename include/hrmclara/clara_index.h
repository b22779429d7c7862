// A memory index: a corpus compressed once by CLaRa's compressor into n memory vectors of size H
// per document, kept on disk, then looked up and searched many times without recompressing.
//
// On disk an index is a directory:
//   index.json                 {"format": "hrmclara-memory-index", "version": 1, "n", "hidden",
//                               "dtype" ("float32" | "bfloat16" | "float16"),
//                               "shards": [{"file", "rows"}, ...],
//                               "documents": [{"id", "source", "text_hash", "shard", "row"}, ...]}
//   vectors-00000.safetensors  one tensor "vectors" [rows, n, H] of that dtype, per append
//   vectors-00001.safetensors  ...
// Opening maps every shard read-only (copy-on-write mmap, see tensor_io.h): no vector is read into
// RAM until a lookup or search touches it. An append writes its shard(s) first, each atomically
// (temp file + rename), and then rewrites index.json atomically: a crash at any point leaves the
// previous index.json, which names only complete shards (a shard written by an append that never
// finished is unreferenced, ignored, and overwritten by the next append). One process appends at a
// time; readers of an index that is being appended to keep seeing the version they opened.
//
// Search scores are upstream's stage-2 cosine (modeling_clara.py): each document's n x H matrix and
// the query are flattened to n*H and L2-normalized in their own dtype (F.normalize, eps 1e-12); the
// dot products are accumulated in float64 and rounded to float32 (upstream multiplies in float32:
// the scores agree to float32 rounding, ~1e-7). The float64 product makes a document's score
// independent of the shape of the product it was computed in -- BLAS rounds float32 sums
// differently by matrix size and column position -- so sharding, block boundaries and batching do
// not change results, and identical documents tie (unless float64 noise straddles a float32
// rounding boundary, a chance of about 1e-9 per pair). Documents are scored in blocks of
// kSearchBlockRows rows, one shard at a time: no tensor larger than a block (in float64: 8 * rows
// * n * H bytes) is made, whatever the index size. Hits are ordered by score, descending, then by
// position in documents() (older first).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace hrmclara {

// SHA-256 (FIPS 180-4) of `bytes` as 64 lowercase hex digits.
std::string sha256_hex(std::string_view bytes);

}  // namespace hrmclara

namespace hrmclara::clara {

// A document of the index, as index.json lists it.
struct IndexedDocument {
  std::string id;         // unique within the index
  std::string source;     // anything the caller gave: file and page, URL, ...
  std::string text_hash;  // what contains() looks up; sha256_hex(text) by convention
  int64_t shard = 0;      // position of its shard in index.json's "shards"
  int64_t row = 0;        // row in that shard's "vectors"
};

// A document to append (its vectors come separately, one [n, H] row each).
struct NewDocument {
  std::string id, source, text_hash;
  // text_hash = sha256_hex(text).
  static NewDocument from_text(std::string id, std::string source, std::string_view text);
};

struct AppendOptions {
  // An id already in the index is refused (UsageError), or, with this set, given the new vectors:
  // its old row stays in its shard, unreferenced, and the document moves to the end of documents().
  bool replace_existing = false;
  // Split one append into shards of at most this many rows (0: one shard per append).
  int64_t max_rows_per_shard = 0;
};

struct SearchHit {
  std::string id;
  float score = 0.0f;    // cosine similarity in [-1, 1], float32
  int64_t document = 0;  // position in documents()
};

class MemoryIndex {
 public:
  static constexpr int kFormatVersion = 1;
  static constexpr int64_t kSearchBlockRows = 256;  // documents scored per matrix product

  // Makes `dir` (and its parents) and writes an empty index there. UsageError if `dir` already
  // holds an index.json; ShapeError for n or hidden < 1 or a dtype other than float32, bfloat16 or
  // float16.
  static MemoryIndex create(const std::string& dir, int64_t n, int64_t hidden, c10::ScalarType dtype);
  // Opens an index and checks it: index.json well-formed (FormatError naming it and the field),
  // every shard present (IoError naming the file) and holding "vectors" of exactly the shape and
  // dtype index.json claims (FormatError naming the shard), every document pointing at a distinct
  // existing row, ids unique.
  static MemoryIndex open(const std::string& dir);
  // open() when `dir` holds an index.json (ShapeError unless its n, hidden and dtype are these),
  // create() otherwise.
  static MemoryIndex open_or_create(const std::string& dir, int64_t n, int64_t hidden, c10::ScalarType dtype);

  MemoryIndex(MemoryIndex&&) noexcept;
  MemoryIndex& operator=(MemoryIndex&&) noexcept;
  ~MemoryIndex();

  const std::string& directory() const;
  int64_t n() const;
  int64_t hidden() const;
  c10::ScalarType dtype() const;
  int64_t size() const;  // number of documents
  const std::vector<IndexedDocument>& documents() const;  // in (shard, row) order

  bool contains_id(const std::string& id) const;
  bool contains(const std::string& text_hash) const;  // some document has this text_hash
  const IndexedDocument& document(const std::string& id) const;  // UsageError naming an unknown id

  // The vectors of one document, [n, H] in the index's dtype (a copy, on CPU).
  at::Tensor get(const std::string& id) const;
  // The vectors of several documents in the order given, [k, n, H] (a copy, on CPU).
  at::Tensor rows(const std::vector<std::string>& ids) const;

  int64_t shard_count() const;
  const std::string& shard_file(int64_t shard) const;  // full path
  // The memory-mapped [rows, n, H] of one shard, rows of replaced documents included. Not a copy:
  // treat it as read-only (writes go to this process's private mapping, never to the file, but
  // later lookups in this process would see them).
  const at::Tensor& shard_vectors(int64_t shard) const;

  // Appends documents with their vectors [docs.size(), n, H] (any device; the index's dtype; finite
  // values). Refused, with nothing written: another n, H or dtype (ShapeError naming both), a
  // count that differs from docs.size() (ShapeError), an empty or repeated id, or one already in
  // the index without replace_existing (UsageError naming it), a NaN or Inf (NumericError).
  void append(const std::vector<NewDocument>& docs, const at::Tensor& vectors, const AppendOptions& options = {});

  // The top_k documents for each query, best first. queries: one as [n*H] or [n, H], or B as
  // [B, n*H] or [B, n, H] (with n = 1, [1, H] is both: one query either way); any floating dtype
  // and device (scores are computed on the query's device). Throws UsageError for
  // top_k < 1 or top_k > size() (naming both), ShapeError for another shape, NumericError for a
  // non-finite query.
  std::vector<std::vector<SearchHit>> search(const at::Tensor& queries, int64_t top_k) const;

 private:
  struct State;
  explicit MemoryIndex(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace hrmclara::clara
