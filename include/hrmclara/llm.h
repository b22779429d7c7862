// The decoder-only LLM that CLaRa runs on: Mistral / Llama (and Qwen2's q/k/v biases) configured
// from a Hugging Face config.json and loaded from HF safetensors (single file or sharded with an
// index) under HF tensor names. Numerics follow transformers' Mistral/Llama: RMSNorm in float32,
// rotate-half RoPE at the given position ids, grouped-query attention with causal + key-padding
// masks (softmax in float32), SiLU-gated MLP, tied or untied lm_head.
#pragma once

#include <hrmclara/llm_config.h>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace hrmclara {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;


// Per-layer key/value cache for incremental decoding. Keys are stored after RoPE. The buffers are
// allocated once for `capacity` positions; the key-padding mask grows with them.
struct KvCache {
  std::vector<at::Tensor> keys, values;  // per layer [B, kv_heads, capacity, head_dim]
  at::Tensor key_mask;                    // [B, capacity] bool: position holds a real token
  int64_t length = 0;                     // positions filled
  int64_t capacity() const;
};

struct LlmForwardInput {
  at::Tensor input_ids;       // int64 [B, T], or
  at::Tensor inputs_embeds;   // [B, T, H] (any float type; cast to the model dtype)
  at::Tensor attention_mask;  // optional int/bool [B, T] (or [B, cache + T] with a cache): 0 = padding
  at::Tensor position_ids;    // optional int64 [B, T]; default cache.length + 0..T-1
};

class LoraAdapter;

struct LlmForwardOptions {
  bool logits = true;             // compute the lm_head
  bool last_position_only = false;  // logits for the last position only ([B, 1, V])
  bool all_hidden_states = false;   // also return the embedding output and every layer's output
  // The LoRA adapter this forward runs with (lora.h); null: the model as its weights are (the
  // base, or base + the merged adapter). An adapter merged into the weights (merge_adapter) is
  // taken out again for a forward that names another one.
  const LoraAdapter* adapter = nullptr;
  bool lora_dropout = false;  // apply the adapter's dropout (training forwards)
};

struct LlmForwardOutput {
  at::Tensor logits;       // float32 [B, T, V] (or [B, 1, V])
  at::Tensor hidden_last;  // model dtype [B, T, H]: output of the final norm
  // With all_hidden_states: [embeddings, layer 0 output, ..., layer L-2 output, final-norm output]
  // as transformers' output_hidden_states returns them.
  std::vector<at::Tensor> hidden_states;
};

struct LlmLoadOptions {
  c10::ScalarType dtype = c10::kFloat;  // float32, bfloat16 or float16
  c10::Device device = c10::Device(c10::kCPU);
};

class DecoderLM {
 public:
  // Loads `model_dir`/config.json and model.safetensors or model.safetensors.index.json. Shards
  // are memory-mapped and read one at a time; on CPU, tensors already stored in the requested
  // dtype keep pointing into the mapping (no copy in RAM), so a 7B bf16 model costs its page
  // cache and nothing more. Throws FormatError naming the file and tensor for missing, extra or
  // misshaped weights.
  static DecoderLM load(const std::string& model_dir, const LlmLoadOptions& options = {});
  // Every weight's Hugging Face name and shape for `config`, in model order (what load expects).
  static std::vector<std::pair<std::string, std::vector<int64_t>>> weight_shapes(const LlmConfig& config);
  // A model with random weights (normal, std 0.02; norms 1), for tests and benchmarks.
  static DecoderLM random(const LlmConfig& config, const LlmLoadOptions& options = {}, uint64_t seed = 0);

  DecoderLM(DecoderLM&&) noexcept;
  DecoderLM& operator=(DecoderLM&&) noexcept;
  ~DecoderLM();

  const LlmConfig& config() const;
  c10::ScalarType dtype() const;
  c10::Device device() const;

  LlmForwardOutput forward(const LlmForwardInput& input, KvCache* cache = nullptr,
                           const LlmForwardOptions& options = {}) const;

  // Token embeddings [B, T, H] in the model dtype.
  at::Tensor embed(const at::Tensor& input_ids) const;

  // A cache for `batch` sequences of up to `capacity` positions.
  KvCache new_cache(int64_t batch, int64_t capacity) const;

  // Grows (or shrinks) embed_tokens and lm_head to `new_vocab_size` rows. New rows are drawn,
  // as transformers does, from a normal with the old rows' mean and 1e-9 times their covariance
  // (the mean itself when that covariance is not positive definite). Tied heads stay tied.
  void resize_token_embeddings(int64_t new_vocab_size, uint64_t seed = 0);

  // Adds `adapter`'s scaling * B @ A into the projection weights (PEFT's merge, computed in
  // float32), so forwards with it, or with no adapter, run at the base model's speed. Only one
  // adapter is merged at a time; unmerge_adapter subtracts it again. A forward with another
  // adapter stays correct up to rounding: it subtracts the merged one's term.
  void merge_adapter(const LoraAdapter& adapter);
  void unmerge_adapter();
  // The merged adapter's name; empty when none is.
  std::string merged_adapter() const;

  // float32 logits of final-norm hidden states [..., H] (the lm_head alone).
  at::Tensor lm_head_logits(const at::Tensor& hidden) const;

  // Every weight under its Hugging Face name, in model order (views, not copies).
  NamedTensors named_weights() const;
  // Replaces one weight (same shape; cast to the model's dtype and device). Throws UsageError for
  // an unknown name and FormatError for a wrong shape. Used to load CLaRa's embed/lm_head.
  void set_weight(const std::string& hf_name, const at::Tensor& value);
  at::Tensor weight(const std::string& hf_name) const;

 private:
  struct Impl;
  explicit DecoderLM(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Writes a model directory for `config` whose safetensors shards are sparse files (every weight
// zero, no disk used; see write_sparse_safetensors), with config.json and the shard index: a
// full-size checkpoint (7B and more) for testing and benchmarking loading. Layers are spread over
// `shards` files.
void write_sparse_llm_checkpoint(const std::string& dir, const LlmConfig& config, c10::ScalarType dtype, int shards = 3);

// Writes a model directory for `config` with random weights (DecoderLM::random's: normal, std
// 0.02; norms 1) in `dtype`, config.json (its torch_dtype set), and the tokenizer files of
// `tokenizer_dir` (tokenizer.model and, when present, tokenizer_config.json, special_tokens_map.json):
// a base to train from scratch or to benchmark with.
void write_random_llm(const std::string& dir, LlmConfig config, c10::ScalarType dtype, uint64_t seed,
                      const std::string& tokenizer_dir);

// ---- generation -----------------------------------------------------------------------------

struct GenerationOptions {
  int64_t max_new_tokens = 128;
  bool do_sample = false;       // false: greedy (argmax)
  double temperature = 1.0;     // sampling only; applied first
  int64_t top_k = 0;            // sampling only; 0 = off; applied second
  double top_p = 1.0;           // sampling only; 1 = off; applied third (nucleus)
  uint64_t seed = 0;            // sampling draws from a CPU generator seeded with this
  bool stop_at_eos = true;      // a row stops at its first EOS; generation ends when all have
  std::vector<int64_t> eos_token_ids;  // empty: the config's
  int64_t pad_token_id = -1;    // written after a row has stopped; -1: the config's pad, else EOS
  bool use_cache = true;        // false: recompute the whole sequence every step
  const LoraAdapter* adapter = nullptr;  // the LoRA adapter every step runs with (lora.h)
  // Called after every step with that step's tokens [B] (CPU int64; pad for stopped rows), e.g.
  // to stream text. Returning false ends generation after this step.
  std::function<bool(int64_t step, const at::Tensor& tokens)> on_step;
};

// Throws NumericError when `logits` hold NaN or Inf, naming the first of the model's weights that
// holds one (a corrupt checkpoint) or else `what` (an overflow, or non-finite input embeddings).
// Only the error path scans the weights.
void require_finite_logits(const DecoderLM& model, const at::Tensor& logits, const std::string& what);

// The most tokens one generate() call may add per row (the KV cache is sized for them up front).
constexpr int64_t kMaxNewTokens = int64_t{1} << 20;
// Throws UsageError for settings generate() refuses: max_new_tokens outside [0, kMaxNewTokens];
// when sampling, a temperature that is not positive and finite, a negative top_k, top_p outside
// (0, 1]. Tools call it before loading a model.
void validate_generation_options(const GenerationOptions& options);


struct GenerationResult {
  at::Tensor tokens;  // int64 [B, max_new_tokens] on CPU; pad after a row's EOS
  std::vector<int64_t> lengths;  // tokens generated per row, its EOS included
  int64_t steps = 0;             // decoding steps run
  double prefill_seconds = 0;    // the prompt's forward
  double decode_seconds = 0;     // every later step
};

// Generates from left-padded `input_ids` [B, T] with `attention_mask` [B, T] (both int64; an
// undefined mask means no padding). Positions follow transformers' generate: cumsum(mask) - 1,
// pads at 1. Cached and uncached decoding produce the same tokens up to float rounding.
GenerationResult generate(const DecoderLM& model, const at::Tensor& input_ids, const at::Tensor& attention_mask,
                          const GenerationOptions& options);
// The same from prompt embeddings [B, T, H] (CLaRa splices compressed documents into them).
GenerationResult generate_from_embeds(const DecoderLM& model, const at::Tensor& inputs_embeds,
                                      const at::Tensor& attention_mask, const GenerationOptions& options);

// The distribution sampled decoding draws from: float32 probabilities [B, V] after transformers'
// warpers in their order (temperature, then top-k, then top-p; filtered tokens get 0).
at::Tensor sampling_probabilities(const at::Tensor& logits, const GenerationOptions& options);

// Picks next tokens [B] from last-position logits [B, V] under `options` (greedy or sampled).
at::Tensor select_next_tokens(const at::Tensor& logits, const GenerationOptions& options, at::Generator& generator);

}  // namespace hrmclara
