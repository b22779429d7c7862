// ClaraPipeline (include/hrmclara/clara_pipeline.h): a CLaRa model and its memory index behind a
// torch-free API, with answers streamed as text.
#include <hrmclara/clara.h>
#include <hrmclara/clara_data.h>
#include <hrmclara/clara_index.h>
#include <hrmclara/clara_pipeline.h>
#include <hrmclara/device.h>
#include <hrmclara/errors.h>
#include <hrmclara/llm_config.h>
#include <hrmclara/tensor_io.h>

#include <torch/torch.h>

#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <shared_mutex>

namespace hrmclara {

namespace {

bool blank(const std::string& s) { return s.find_first_not_of(" \t\r\n") == std::string::npos; }

// The text a stream may send so far: `decoded` minus what was sent, held back while the decoder
// shows an incomplete UTF-8 character (U+FFFD at the end) or the text is not an extension of what
// was sent (a merge changed earlier characters; the final answer settles it).
std::string stream_piece(const std::string& decoded, const std::string& sent) {
  static const std::string kReplacement = "\xEF\xBF\xBD";
  if (decoded.size() <= sent.size() || decoded.compare(0, sent.size(), sent) != 0) return "";
  if (decoded.size() >= 3 && decoded.compare(decoded.size() - 3, 3, kReplacement) == 0) return "";
  return decoded.substr(sent.size());
}

// Documents a compressor may take: not blank, and free of CLaRa's control-token text (which would
// shift the memory slots). UsageError naming documents[i].
void check_documents(const std::vector<std::string>& documents) {
  for (size_t i = 0; i < documents.size(); ++i) {
    if (blank(documents[i])) throw UsageError("documents[" + std::to_string(i) + "] is empty");
    const auto control = find_clara_control_text(documents[i]);
    if (!control.empty())
      throw UsageError("documents[" + std::to_string(i) + "] contains the CLaRa control token text '" + control + "'");
  }
}

}  // namespace

struct ClaraPipeline::Impl {
  std::optional<clara::ClaraModel> model;
  c10::Device device{c10::kCPU};
  ClaraPipelineInfo info;
  std::optional<clara::MemoryIndex> index;
  std::map<std::string, ClaraDocumentRecord> texts;  // from documents_jsonl and add_documents
  mutable std::mutex model_mutex;                    // one model call at a time
  mutable std::shared_mutex index_mutex;             // index and texts: shared to read, exclusive to add

  RetrievedPassage passage(const std::string& id, double score) const {
    RetrievedPassage p;
    p.id = id;
    p.score = score;
    if (index && index->contains_id(id)) p.source = index->document(id).source;
    const auto it = texts.find(id);
    if (it != texts.end()) {
      p.text = it->second.text;
      if (p.source.empty()) p.source = it->second.source;
    }
    return p;
  }

  // Search under the caller's shared index lock.
  std::vector<RetrievedPassage> search_locked(const std::string& question, int64_t k) const {
    at::Tensor queries;
    {
      std::lock_guard<std::mutex> lock(model_mutex);
      torch::InferenceMode inference;
      queries = model->encode_queries({question}).to(at::kCPU);
    }
    std::vector<RetrievedPassage> out;
    const auto hits = index->search(queries, k);  // (kept: a loop over search(...)[0] would dangle)
    for (const auto& hit : hits[0]) out.push_back(passage(hit.id, hit.score));
    return out;
  }
};

ClaraPipeline::ClaraPipeline(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ClaraPipeline::ClaraPipeline(ClaraPipeline&&) noexcept = default;
ClaraPipeline& ClaraPipeline::operator=(ClaraPipeline&&) noexcept = default;
ClaraPipeline::~ClaraPipeline() = default;

ClaraPipeline ClaraPipeline::load(const std::string& checkpoint_dir, const std::string& base_dir,
                                  const ClaraPipelineOptions& options) {
  if (options.threads < 0) throw UsageError("threads must be >= 0");
  if (options.create_index && options.index_dir.empty()) throw UsageError("create_index needs an index_dir");
  if (options.threads > 0) configure_threads(options.threads);
  auto impl = std::make_unique<Impl>();
  impl->device = resolve_device(options.device);
  clara::ClaraLoadOptions o;
  o.device = impl->device;
  o.dtype = resolve_dtype(options.dtype, impl->device, LlmConfig::load(base_dir + "/config.json").torch_dtype);
  o.pure_inference = true;  // inference uses every adapter the checkpoint holds
  impl->model.emplace(clara::ClaraModel::load(checkpoint_dir, base_dir, o));
  const auto& m = *impl->model;
  const int64_t n = m.mem_tokens(), H = m.base().config().hidden_size;
  if (!options.index_dir.empty()) {
    impl->index.emplace(options.create_index ? clara::MemoryIndex::open_or_create(options.index_dir, n, H, m.base().dtype())
                                             : clara::MemoryIndex::open(options.index_dir));
    if (impl->index->n() != n || impl->index->hidden() != H)
      throw ShapeError(options.index_dir + ": vectors of n " + std::to_string(impl->index->n()) + ", hidden " +
                       std::to_string(impl->index->hidden()) + " do not fit this model (n " + std::to_string(n) +
                       ", hidden " + std::to_string(H) + ")");
  }
  if (!options.documents_jsonl.empty())
    for (auto& d : read_clara_documents(options.documents_jsonl)) impl->texts[d.id] = d;

  auto& info = impl->info;
  info.device = impl->device.str();
  info.dtype = dtype_name(m.base().dtype());
  info.load_report = m.load_report();
  info.memory_tokens = n;
  info.hidden_size = H;
  info.generation_top_k = m.config().generation_top_k;
  info.max_new_tokens = m.config().max_new_tokens;
  info.has_query_reasoner = m.has_adapter("query_reasoner_adapter");
  info.adapters = m.adapter_names();
  return ClaraPipeline(std::move(impl));
}

const ClaraPipelineInfo& ClaraPipeline::info() const { return impl_->info; }

std::vector<std::vector<float>> ClaraPipeline::compress(const std::vector<std::string>& documents) const {
  if (documents.empty()) return {};
  check_documents(documents);
  at::Tensor memory;
  {
    std::lock_guard<std::mutex> lock(impl_->model_mutex);
    torch::InferenceMode inference;
    memory = impl_->model->compress(documents).to(at::kCPU, at::kFloat).contiguous();
  }
  std::vector<std::vector<float>> out;
  const int64_t row = memory.size(1) * memory.size(2);
  const float* p = memory.data_ptr<float>();
  for (int64_t d = 0; d < memory.size(0); ++d) out.emplace_back(p + d * row, p + (d + 1) * row);
  return out;
}

bool ClaraPipeline::has_index() const { return impl_->index.has_value(); }

int64_t ClaraPipeline::index_size() const {
  std::shared_lock<std::shared_mutex> lock(impl_->index_mutex);
  return impl_->index ? impl_->index->size() : 0;
}

std::vector<RetrievedPassage> ClaraPipeline::index_documents() const {
  std::shared_lock<std::shared_mutex> lock(impl_->index_mutex);
  std::vector<RetrievedPassage> out;
  if (impl_->index)
    for (const auto& d : impl_->index->documents()) out.push_back(impl_->passage(d.id, 0.0));
  return out;
}

int64_t ClaraPipeline::add_documents(const std::vector<ClaraDocument>& documents, bool replace) {
  if (!impl_->index) throw UsageError("add_documents: the pipeline has no index (give index_dir)");
  std::unique_lock<std::shared_mutex> lock(impl_->index_mutex);
  auto& index = *impl_->index;
  std::vector<std::string> texts;
  std::vector<clara::NewDocument> entries;
  std::set<std::string> ids;
  for (size_t i = 0; i < documents.size(); ++i) {
    const auto& d = documents[i];
    const std::string where = "documents[" + std::to_string(i) + "]";
    if (d.id.empty()) throw UsageError(where + ".id is empty");
    if (!ids.insert(d.id).second) throw UsageError(where + ".id '" + d.id + "' is given twice");
    if (blank(d.text)) throw UsageError(where + ".text is empty");
    auto entry = clara::NewDocument::from_text(d.id, d.source, d.text);
    if (index.contains_id(d.id)) {
      if (index.document(d.id).text_hash == entry.text_hash) continue;  // already compressed from this text
      if (!replace) throw UsageError(where + ".id '" + d.id + "' is in the index with another text (replace it explicitly)");
    }
    texts.push_back(d.text);
    entries.push_back(std::move(entry));
  }
  if (entries.empty()) return 0;
  at::Tensor memory;
  {
    std::lock_guard<std::mutex> model_lock(impl_->model_mutex);
    torch::InferenceMode inference;
    memory = impl_->model->compress(texts).to(at::kCPU);
  }
  clara::AppendOptions ao;
  ao.replace_existing = replace;
  index.append(entries, memory, ao);
  for (const auto& d : documents) impl_->texts[d.id] = ClaraDocumentRecord{d.id, d.source, d.text};
  return static_cast<int64_t>(entries.size());
}

std::vector<RetrievedPassage> ClaraPipeline::search(const std::string& question, int64_t k) const {
  if (!impl_->index) throw UsageError("search: the pipeline has no index");
  if (blank(question)) throw UsageError("question is empty");
  std::shared_lock<std::shared_mutex> lock(impl_->index_mutex);
  if (k < 1 || k > impl_->index->size())
    throw UsageError("top_k " + std::to_string(k) + " is outside [1, " + std::to_string(impl_->index->size()) +
                     "] (the index's documents)");
  return impl_->search_locked(question, k);
}

int64_t ClaraPipeline::documents_spliced(const ClaraQuestion& q) const {
  if (!q.documents.empty()) return static_cast<int64_t>(q.documents.size());
  if (!q.index_ids.empty()) return static_cast<int64_t>(q.index_ids.size());
  return q.top_k > 0 ? q.top_k : impl_->info.generation_top_k;
}

void ClaraPipeline::validate(const ClaraQuestion& q) const {
  if (blank(q.question)) throw UsageError("question is empty");
  const int sources = (q.documents.empty() ? 0 : 1) + (q.index_ids.empty() ? 0 : 1) + (q.retrieve ? 1 : 0);
  if (sources != 1) throw UsageError("documents: give exactly one of documents, ids and retrieve");
  if (q.top_k < 0) throw UsageError("top_k must be >= 0");
  if (q.top_k > 0 && !q.retrieve) throw UsageError("top_k: only with retrieve");
  check_documents(q.documents);
  if (!q.index_ids.empty() || q.retrieve) {
    if (!impl_->index) throw UsageError(std::string(q.retrieve ? "retrieve" : "ids") + ": the server has no index");
    std::shared_lock<std::shared_mutex> lock(impl_->index_mutex);
    for (size_t i = 0; i < q.index_ids.size(); ++i)
      if (!impl_->index->contains_id(q.index_ids[i]))
        throw UsageError("ids[" + std::to_string(i) + "] = '" + q.index_ids[i] + "' is not in the index");
    if (q.retrieve && documents_spliced(q) > impl_->index->size())
      throw UsageError("top_k " + std::to_string(documents_spliced(q)) + " exceeds the index's " +
                       std::to_string(impl_->index->size()) + " documents");
  }
}

ClaraReply ClaraPipeline::answer(const ClaraQuestion& question, const ClaraGeneration& generation, const TextSink& sink) const {
  return answer_batch({question}, generation, {sink})[0];
}

std::vector<ClaraReply> ClaraPipeline::answer_batch(const std::vector<ClaraQuestion>& questions,
                                                    const ClaraGeneration& generation,
                                                    const std::vector<TextSink>& sinks) const {
  if (questions.empty()) return {};
  if (!sinks.empty() && sinks.size() != questions.size())
    throw UsageError("answer_batch: " + std::to_string(sinks.size()) + " sinks for " + std::to_string(questions.size()) + " questions");
  for (const auto& q : questions) validate(q);
  const int64_t k = documents_spliced(questions[0]);
  for (const auto& q : questions)
    if (documents_spliced(q) != k) throw UsageError("answer_batch: every question must splice the same number of documents");
  if (generation.max_new_tokens < 0) throw UsageError("max_new_tokens must be >= 0");

  const auto& model = *impl_->model;
  std::vector<ClaraReply> replies(questions.size());
  std::vector<at::Tensor> memories;
  std::vector<std::string> texts;
  for (size_t i = 0; i < questions.size(); ++i) {
    const auto& q = questions[i];
    if (!q.documents.empty()) {
      std::lock_guard<std::mutex> lock(impl_->model_mutex);
      torch::InferenceMode inference;
      memories.push_back(model.compress(q.documents).to(at::kCPU));
    } else {
      std::shared_lock<std::shared_mutex> lock(impl_->index_mutex);
      std::vector<std::string> ids = q.index_ids;
      if (q.retrieve) {
        replies[i].passages = impl_->search_locked(q.question, k);
        for (const auto& p : replies[i].passages) ids.push_back(p.id);
      }
      memories.push_back(impl_->index->rows(ids));
    }
    texts.push_back(q.question);
  }

  GenerationOptions o;
  o.max_new_tokens = generation.max_new_tokens > 0 ? generation.max_new_tokens : model.config().max_new_tokens;
  o.do_sample = generation.sample;
  o.temperature = generation.temperature;
  o.top_p = generation.top_p;
  o.top_k = generation.top_k;
  o.seed = generation.seed;
  validate_generation_options(o);

  // Streaming: each row's ids so far are decoded after every step and the new text sent.
  const size_t B = questions.size();
  std::vector<std::vector<int>> ids(B);
  std::vector<std::string> sent(B);
  std::vector<bool> listening(B, false);
  for (size_t i = 0; i < B && !sinks.empty(); ++i) listening[i] = static_cast<bool>(sinks[i]);
  const bool streaming = std::any_of(listening.begin(), listening.end(), [](bool b) { return b; });
  const auto& tok = model.tokenizer();
  if (streaming)
    o.on_step = [&](int64_t, const at::Tensor& tokens) {
      const auto* t = tokens.data_ptr<int64_t>();
      bool any = false;
      for (size_t i = 0; i < B; ++i) {
        if (!listening[i]) continue;
        ids[i].push_back(static_cast<int>(t[i]));
        const auto piece = stream_piece(tok.decode(ids[i], /*skip_special_tokens=*/true), sent[i]);
        if (!piece.empty()) {
          sent[i] += piece;
          if (!sinks[i](piece)) listening[i] = false;
        }
        any = any || listening[i];
      }
      return any;
    };

  clara::ClaraAnswer ans;
  {
    std::lock_guard<std::mutex> lock(impl_->model_mutex);
    torch::InferenceMode inference;
    const auto memory = at::cat(memories, 0).to(impl_->device, model.base().dtype());
    ans = model.answer(texts, memory, o);
  }
  for (size_t i = 0; i < B; ++i) {
    replies[i].answer = ans.texts[i];
    if (listening[i]) {
      // The rest of the answer (what the stream held back), when the final text extends what was sent.
      const auto rest = ans.texts[i].size() > sent[i].size() && ans.texts[i].compare(0, sent[i].size(), sent[i]) == 0
                            ? ans.texts[i].substr(sent[i].size())
                            : std::string();
      if (!rest.empty()) sinks[i](rest);
    }
    replies[i].generated_tokens = i < ans.lengths.size() ? ans.lengths[i] : 0;
    replies[i].prefill_seconds = ans.prefill_seconds;
    replies[i].decode_seconds = ans.decode_seconds;
  }
  return replies;
}

}  // namespace hrmclara
