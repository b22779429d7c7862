// CLaRa (apple/ml-clara): one frozen decoder LLM with three named LoRA adapters. The compressor
// (encoder_adapter) turns a document into n memory vectors, the query reasoner
// (query_reasoner_adapter) turns a question into n vectors scored against documents by cosine,
// and the generator (decoder_adapter) answers from memory vectors spliced into its prompt.
// Numerics, names and checkpoint layouts follow upstream modeling_clara.py with transformers
// 4.56.2 and peft 0.17.1 (tests/fixtures/clara-train, made by running that code).
#pragma once

#include <hrmclara/clara_config.h>
#include <hrmclara/llm.h>
#include <hrmclara/llm_tokenizer.h>
#include <hrmclara/lora.h>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace hrmclara::clara {

struct ClaraLoadOptions {
  c10::ScalarType dtype = c10::kFloat;
  c10::Device device = c10::Device(c10::kCPU);
  // Overrides of the checkpoint's config, as upstream's from_pretrained kwargs (empty: keep).
  std::string training_stage;
  std::optional<bool> pure_inference;
  std::optional<int64_t> generation_top_k, doc_max_length;
  // key=value overrides of any ClaraConfig field (compr_rate=8, lora_r=4, ...), applied last.
  std::vector<std::string> config_overrides;
  // Values of freshly created adapters, by PEFT runtime name
  // ("model.layers.0.self_attn.q_proj.lora_A.decoder_adapter.weight"), instead of drawing them.
  NamedTensors fresh_adapter_values;
  uint64_t seed = 0;  // for fresh adapters drawn with PEFT's initialisation
};

// A micro-batch as tensors (int64), as upstream's collate makes it (clara_data.h builds it).
struct ClaraTensors {
  at::Tensor enc_ids, enc_mask;      // [docs, doc_max_length + 3 + n]
  at::Tensor dec_ids, dec_mask;      // [B, T]
  at::Tensor labels;                 // [B, T], -100 where not supervised
  at::Tensor query_ids, query_mask;  // stage 2: [B, Lq]
  int64_t docs_per_row = 1;          // documents per decoder row (k in stages 1 / 1_2, N in stage 2)
};

struct StageOutput {
  at::Tensor loss;        // cross entropy over supervised tokens (mean)
  at::Tensor mse;         // compressor MSE (no grad in stage 2)
  at::Tensor total_loss;  // loss + mse_weight * mse
  at::Tensor memory;      // [docs, n, H] compressed documents
  at::Tensor splice_index;      // [rows * n, 2] (row, position) overwritten by memory vectors
  at::Tensor target_index;      // [targets, 2] (row, t): logit t predicts labels[row, t + 1]
  at::Tensor logits_at_targets; // float32 [targets, V]
  at::Tensor scores, topk_idx;  // stage 2: cosine scores [B, N] and selected documents [B, k]
};

struct ClaraAnswer {
  std::vector<std::string> texts;
  at::Tensor output_ids;  // [B, max_new_tokens] int64, pad after EOS
  std::vector<int64_t> lengths;  // tokens generated per row, its EOS included
  at::Tensor topk_idx;    // end-to-end only: [B, k]
  at::Tensor scores;      // end-to-end only: [B, N]
  double prefill_seconds = 0, decode_seconds = 0;  // the decoder's prompt forward, and every later step
  int64_t decode_steps = 0;
};

class ClaraModel {
 public:
  // A new CLaRa on the base model in `base_dir` (config.json, safetensors, tokenizer.model), as
  // upstream's CLaRa(config) builds it: the tokenizer gets <MEM0..n-1>, <AE>, <ENC>, <SEP> with
  // pad = bos; the embeddings are resized to it (transformers' initialisation of the new rows);
  // the stage's adapters are created with PEFT's initialisation (or `fresh_adapter_values`).
  static ClaraModel create(const std::string& base_dir, ClaraConfig config, const ClaraLoadOptions& options = {});

  // A checkpoint: upstream's layout (config.json of model_type CLaRa, or clara_config.json;
  // adapters.pth; decoder_first_last_layers.pth) or ours (clara.safetensors + clara_config.json),
  // on the base in `base_dir` (upstream configs name a hub id or a path on the authors' machines;
  // the base is always given). Loading follows upstream's stage semantics; load_report() says
  // what was done in one line.
  static ClaraModel load(const std::string& checkpoint_dir, const std::string& base_dir,
                         const ClaraLoadOptions& options = {});

  ClaraModel(ClaraModel&&) noexcept;
  ClaraModel& operator=(ClaraModel&&) noexcept;
  ~ClaraModel();

  const ClaraConfig& config() const;
  const LlmTokenizer& tokenizer() const;
  const DecoderLM& base() const;
  DecoderLM& base();
  const std::string& load_report() const;
  int64_t mem_tokens() const { return config().mem_tokens(); }
  std::vector<int64_t> mem_token_ids() const;
  int64_t sep_id() const;
  int64_t enc_id() const;

  bool has_adapter(const std::string& name) const;
  LoraAdapter& adapter(const std::string& name);
  const LoraAdapter& adapter(const std::string& name) const;
  std::vector<std::string> adapter_names() const;  // upstream's order: decoder, encoder, query reasoner
  // Adds or replaces an adapter (its shapes must fit the base).
  void set_adapter(LoraAdapter adapter);
  // A fresh adapter with this model's LoRA config (PEFT initialisation from `generator`, or the
  // given runtime-named values).
  LoraAdapter new_adapter(const std::string& name, uint64_t seed, const NamedTensors& values = {}) const;

  // The memory tokens' embedding rows [n, H]: a separate tensor so that stage 1 trains these rows
  // alone (upstream trains the whole matrix with a hook that zeroes every other row's gradient).
  at::Tensor& mem_embeddings();
  const at::Tensor& mem_embeddings() const;

  // The trainable tensors of a stage by PEFT runtime name (adapters) and
  // "model.embed_tokens.weight[mem]" (the memory rows, stage 1), with requires_grad set on them
  // and off on everything else: stage1 = both adapters + memory rows, stage1_2 = both adapters,
  // stage2 = decoder + query reasoner.
  NamedTensors prepare_training(const std::string& stage);

  // ---- forward pieces ----
  // Token embeddings with the memory rows from mem_embeddings().
  at::Tensor embed(const at::Tensor& ids) const;
  // The compressor on encoder inputs [docs, L]: the final-norm states at the memory positions
  // [docs, n, H] and the MSE between each document's mean memory state and mean other state.
  std::pair<at::Tensor, at::Tensor> compress_tokens(const at::Tensor& ids, const at::Tensor& mask,
                                                    const std::string& adapter_name, bool train) const;
  // Decoder input embeddings with memory [rows * k, n, H] spliced into the <MEM0..n-1> slots of
  // every row (k slots per row); `index` receives the (row, position) pairs written.
  at::Tensor splice(const at::Tensor& dec_ids, const at::Tensor& memory, at::Tensor* index = nullptr) const;
  // Cosine scores [B, N] of query vectors [B, n, H] against documents [B, N, n, H].
  static at::Tensor cosine_scores(const at::Tensor& queries, const at::Tensor& docs);
  // upstream's differentiable_topk: straight-through top-k with temperature tau. Returns the
  // selection weights Z [B, k, N] (one-hot forward values, softmax gradients) and the indices [B, k].
  static std::pair<at::Tensor, at::Tensor> differentiable_topk(const at::Tensor& scores, int64_t k, double tau = 0.02);

  // One training micro-batch of `stage` (upstream's forward + the trainer's loss): stage1 and
  // stage1_2 compress with the encoder adapter (with gradient) and answer with the decoder;
  // stage2 compresses under no_grad, encodes the queries with the query reasoner and splices the
  // straight-through top-k documents. `mse_weight` is 0.1 with --mse_loss (stages 1 and 1_2).
  // `zero_memory` replaces every spliced memory vector by zeros: the decoder then sees no document,
  // the baseline a compressor must beat.
  StageOutput stage_forward(const std::string& stage, const ClaraTensors& batch, double mse_weight, bool train,
                            bool zero_memory = false) const;

  // ---- inference (eval, no grad) ----
  // Compresses documents [docs] into [docs, n, H] in batches of `batch_size`.
  at::Tensor compress(const std::vector<std::string>& documents, int64_t batch_size = 8) const;
  // Answers each question from its k compressed documents (memory [B * k, n, H], k per question),
  // with the standard prompt: upstream's generate_from_compressed_documents_and_questions.
  ClaraAnswer answer(const std::vector<std::string>& questions, const at::Tensor& memory, const GenerationOptions& options) const;
  // End to end: the query reasoner scores each question's candidates (memory [B * N, n, H]),
  // the top generation_top_k are spliced, the decoder answers (upstream generate_from_questions).
  ClaraAnswer answer_end_to_end(const std::vector<std::string>& questions, const at::Tensor& candidates, int64_t top_k,
                                const GenerationOptions& options) const;
  // Generates from rendered prompts (their <MEM0..n-1><SEP> slots filled from memory [B * k, n, H],
  // k slots per prompt) with the decoder adapter: what answer() and paraphrase() run.
  ClaraAnswer generate_from_prompts(const std::vector<std::string>& prompts, const at::Tensor& memory,
                                    const GenerationOptions& options) const;
  // Query vectors [B, n, H] of questions (the query reasoner; the encoder when there is none).
  at::Tensor encode_queries(const std::vector<std::string>& questions) const;
  // The Base model's paraphrase of each group of documents (upstream generate_from_paraphrase):
  // template `template_index` of the 13 (or a seeded random one when negative).
  ClaraAnswer paraphrase(const at::Tensor& memory, int64_t docs_per_prompt, int template_index,
                         const GenerationOptions& options) const;

  // ---- checkpoints ----
  // Upstream's layout, which upstream's CLaRa.from_pretrained reads: adapters.pth (a dict of
  // adapter name to PEFT state dict), decoder_first_last_layers.pth (embed_tokens and lm_head with
  // the trained memory rows), config.json (model_type CLaRa). Atomic per file.
  void save_upstream(const std::string& dir) const;
  // Ours: clara.safetensors ("<adapter>/<PEFT key>", "model.embed_tokens.weight", "lm_head.weight")
  // + clara_config.json.
  void save(const std::string& dir) const;
  // embed_tokens (with the current memory rows) and lm_head, as decoder_first_last_layers.pth holds them.
  NamedTensors first_last_layers() const;

 private:
  struct Impl;
  explicit ClaraModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace hrmclara::clara
