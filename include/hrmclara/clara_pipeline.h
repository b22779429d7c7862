// The embedding API for CLaRa: load a base model and a CLaRa checkpoint, compress documents into
// memory vectors, keep them in a memory index, search it, and answer questions from documents,
// index entries or end to end (the query reasoner retrieves, the decoder answers), optionally
// streaming the answer's text as it is generated. No torch types: a caller needs this header and
// libhrmclara, nothing of LibTorch.
//
//   auto clara = hrmclara::ClaraPipeline::load("ckpt/stage2", "bases/mistral-7b");
//   auto reply = clara.answer({"Who wrote Hamlet?", {"Hamlet is a tragedy by Shakespeare."}});
//
// Thread safety: every const member may be called from any number of threads at once; the model
// runs one call at a time (calls take turns), the index is read under a shared lock and
// add_documents() takes it exclusively.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace hrmclara {

struct ClaraPipelineOptions {
  std::string device = "auto";  // auto (MPS, then CUDA, then CPU), cpu, cuda, cuda:N, mps
  std::string dtype = "auto";   // auto: the base's torch_dtype where the device runs it natively, else float32
  // A memory index directory (clara_index.h) to search and answer from; with create_index it is
  // created when missing (add_documents fills it).
  std::string index_dir;
  bool create_index = false;
  // Documents JSONL ({"id", "text", "source"?} per line, what clara_infer compress reads): the texts
  // of the index's documents, so that retrieved passages come back with their text.
  std::string documents_jsonl;
  int threads = 0;  // intra-op threads (0: LibTorch's default)
};

struct ClaraDocument {
  std::string id, source, text;
};

struct RetrievedPassage {
  std::string id, source;
  std::string text;     // empty when the pipeline does not know the text (no documents_jsonl)
  double score = 0.0;   // cosine similarity of the query and document memory vectors
};

struct ClaraQuestion {
  std::string question;
  // Where the answer's memory comes from; exactly one of:
  std::vector<std::string> documents;  // texts, compressed now
  std::vector<std::string> index_ids;  // documents of the index, by id, in prompt order
  bool retrieve = false;               // end to end: the top_k index documents by the query reasoner
  int64_t top_k = 0;                   // retrieve: documents spliced (0: the checkpoint's generation_top_k)
};

struct ClaraGeneration {
  int64_t max_new_tokens = 0;  // 0: the checkpoint's max_new_tokens
  bool sample = false;         // false: greedy
  double temperature = 1.0, top_p = 1.0;
  int64_t top_k = 0;  // sampling: keep the K most likely tokens (0 = all)
  uint64_t seed = 0;
  bool operator==(const ClaraGeneration& o) const {
    return max_new_tokens == o.max_new_tokens && sample == o.sample && temperature == o.temperature && top_p == o.top_p &&
           top_k == o.top_k && seed == o.seed;
  }
};

struct ClaraReply {
  std::string answer;
  std::vector<RetrievedPassage> passages;  // retrieve: the documents spliced, best first
  int64_t generated_tokens = 0;
  double prefill_seconds = 0.0, decode_seconds = 0.0;
};

// Receives each new piece of an answer's text as it is generated; returning false stops that
// answer (the others of a batch go on).
using TextSink = std::function<bool(const std::string& piece)>;

struct ClaraPipelineInfo {
  std::string device, dtype;
  std::string load_report;       // how the checkpoint was loaded, one line
  int64_t memory_tokens = 0;     // n: vectors per document
  int64_t hidden_size = 0;
  int64_t generation_top_k = 0;  // the checkpoint's default k
  int64_t max_new_tokens = 0;    // the checkpoint's default answer length
  bool has_query_reasoner = false;
  std::vector<std::string> adapters;
};

class ClaraPipeline {
 public:
  // `checkpoint_dir`: upstream's layout or ours (clara.h); `base_dir`: the base model (config.json,
  // safetensors, tokenizer.model). Errors (errors.h) name the file and what is wrong.
  static ClaraPipeline load(const std::string& checkpoint_dir, const std::string& base_dir,
                            const ClaraPipelineOptions& options = {});

  ClaraPipeline(ClaraPipeline&&) noexcept;
  ClaraPipeline& operator=(ClaraPipeline&&) noexcept;
  ~ClaraPipeline();

  const ClaraPipelineInfo& info() const;

  // The compressor's memory vectors of each document, n * hidden floats row by row.
  std::vector<std::vector<float>> compress(const std::vector<std::string>& documents) const;

  // ---- the index ----
  bool has_index() const;
  int64_t index_size() const;
  std::vector<RetrievedPassage> index_documents() const;  // every document (score 0), in index order
  // Compresses and appends documents; one whose id is there with the same text is skipped, one
  // with another text is refused (UsageError) unless `replace`. Returns how many were compressed.
  int64_t add_documents(const std::vector<ClaraDocument>& documents, bool replace = false);
  // The k index documents whose memory is closest to the question's query vectors.
  std::vector<RetrievedPassage> search(const std::string& question, int64_t k) const;

  // ---- answers ----
  // Throws UsageError naming the field for a question that cannot be answered as given (no or
  // several memory sources, unknown ids, retrieve without an index, k out of range, empty text).
  void validate(const ClaraQuestion& question) const;
  ClaraReply answer(const ClaraQuestion& question, const ClaraGeneration& generation = {},
                    const TextSink& sink = nullptr) const;
  // Several questions in one decoder batch (the server's batching): every question must splice the
  // same number of documents. sinks may be empty or hold one (possibly empty) sink per question.
  std::vector<ClaraReply> answer_batch(const std::vector<ClaraQuestion>& questions, const ClaraGeneration& generation = {},
                                       const std::vector<TextSink>& sinks = {}) const;
  // The number of documents a question splices (what answer_batch groups by).
  int64_t documents_spliced(const ClaraQuestion& question) const;

 private:
  struct Impl;
  explicit ClaraPipeline(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace hrmclara
