// Autoregressive decoding: greedy or sampled (temperature, top-k, top-p), EOS stop, batched
// left-padded prompts, with or without the KV cache.
#include <hrmclara/errors.h>
#include <hrmclara/llm.h>
#include <hrmclara/tensor_io.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/InferenceMode.h>

#include <chrono>
#include <cmath>
#include <limits>

namespace hrmclara {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

void require_finite_logits(const DecoderLM& model, const at::Tensor& logits, const std::string& what) {
  if (at::isfinite(logits).all().item<bool>()) return;
  for (const auto& [name, weight] : model.named_weights())
    if (!at::isfinite(weight).all().item<bool>()) throw NumericError("weight '" + name + "' holds NaN or Inf");
  throw NumericError(what + ": the logits hold NaN or Inf");
}

void validate_generation_options(const GenerationOptions& o) {
  if (o.max_new_tokens < 0 || o.max_new_tokens > kMaxNewTokens)
    throw UsageError("max_new_tokens must be in [0, " + std::to_string(kMaxNewTokens) + "]");
  if (o.do_sample) {
    if (!(o.temperature > 0 && o.temperature < INFINITY)) throw UsageError("temperature must be positive and finite");
    if (o.top_k < 0) throw UsageError("top_k must not be negative");
    if (!(o.top_p > 0 && o.top_p <= 1)) throw UsageError("top_p must be in (0, 1]");
  }
}

namespace {

// transformers' generate positions for a left-padded batch: cumsum(mask) - 1, pads at 1.
at::Tensor generate_positions(const at::Tensor& mask) { return (mask.cumsum(1) - 1).masked_fill(mask.eq(0), 1); }

GenerationResult run_generation(const DecoderLM& model, const at::Tensor& prompt_ids, const at::Tensor& prompt_embeds,
                                const at::Tensor& attention_mask, const GenerationOptions& o) {
  validate_generation_options(o);
  c10::InferenceMode inference;
  const auto& c = model.config();
  const auto device = model.device();
  // dtypes and the hidden size are the forward's to check; B and T are needed here.
  const auto& prompt = prompt_ids.defined() ? prompt_ids : prompt_embeds;
  if (prompt.dim() != (prompt_ids.defined() ? 2 : 3))
    throw ShapeError(std::string(prompt_ids.defined() ? "input_ids must be [B, T]" : "inputs_embeds must be [B, T, H]") +
                     ", got " + shape_text(prompt.sizes()));
  const int64_t B = prompt.size(0), T = prompt.size(1), N = o.max_new_tokens;
  if (T == 0) throw ShapeError("the prompt is empty");
  at::Tensor mask = attention_mask.defined() ? attention_mask.to(device, at::kLong)
                                             : at::ones({B, T}, at::TensorOptions().dtype(at::kLong).device(device));
  if (mask.sizes() != at::IntArrayRef({B, T}))
    throw ShapeError("attention_mask must have the prompt's shape [" + std::to_string(B) + ", " + std::to_string(T) + "]");

  const std::vector<int64_t> eos = o.eos_token_ids.empty() ? c.eos_token_ids : o.eos_token_ids;
  const int64_t pad = o.pad_token_id >= 0 ? o.pad_token_id : c.pad_token_id >= 0 ? c.pad_token_id : eos.empty() ? 0 : eos[0];
  const auto eos_ids = at::tensor(eos, at::kLong);

  GenerationResult r;
  r.tokens = at::full({B, N}, pad, at::kLong);
  r.lengths.assign(B, 0);
  if (N == 0) return r;
  auto finished = at::zeros({B}, at::kBool);
  auto lengths = at::zeros({B}, at::kLong);
  auto generator = at::make_generator<at::CPUGeneratorImpl>(o.seed);

  at::Tensor positions = generate_positions(mask);
  KvCache cache;
  if (o.use_cache) cache = model.new_cache(B, T + N);
  at::Tensor ids = prompt_ids.defined() ? prompt_ids.to(device) : at::Tensor();
  at::Tensor embeds = prompt_embeds.defined() ? prompt_embeds.to(device, model.dtype()) : at::Tensor();

  LlmForwardOptions last_only;
  last_only.last_position_only = true;
  last_only.adapter = o.adapter;
  auto t0 = std::chrono::steady_clock::now();
  LlmForwardInput first;
  first.input_ids = ids;
  first.inputs_embeds = embeds;
  first.attention_mask = mask;
  first.position_ids = positions;
  at::Tensor logits = model.forward(first, o.use_cache ? &cache : nullptr, last_only).logits.select(1, 0);
  require_finite_logits(model, logits, "the prompt");

  for (int64_t step = 0; step < N; ++step) {
    if (step > 0) require_finite_logits(model, logits, "generation step " + std::to_string(step));
    at::Tensor next = select_next_tokens(logits, o, generator);  // [B] on CPU
    next = at::where(finished, at::full_like(next, pad), next);
    r.tokens.select(1, step).copy_(next);
    lengths.add_(finished.logical_not());
    if (o.stop_at_eos) finished = finished.logical_or(at::isin(next, eos_ids));
    r.steps = step + 1;
    if (step == 0) {
      r.prefill_seconds = seconds_since(t0);
      t0 = std::chrono::steady_clock::now();
    }
    const bool go_on = !o.on_step || o.on_step(step, next);
    if (!go_on || step + 1 == N || finished.all().item<bool>()) break;

    const auto next_dev = next.to(device).unsqueeze(1);
    const auto ones = at::ones({B, 1}, mask.options());
    if (o.use_cache) {
      LlmForwardInput in;
      in.input_ids = next_dev;
      in.attention_mask = ones;
      in.position_ids = positions.select(1, positions.size(1) - 1).unsqueeze(1) + 1;
      positions = in.position_ids;
      logits = model.forward(in, &cache, last_only).logits.select(1, 0);
    } else {
      // Recompute the whole sequence, as transformers does without a cache.
      mask = at::cat({mask, ones}, 1);
      LlmForwardInput in;
      if (ids.defined()) {
        ids = at::cat({ids, next_dev}, 1);
        in.input_ids = ids;
      } else {
        embeds = at::cat({embeds, model.embed(next_dev)}, 1);
        in.inputs_embeds = embeds;
      }
      in.attention_mask = mask;
      in.position_ids = generate_positions(mask);
      logits = model.forward(in, nullptr, last_only).logits.select(1, 0);
    }
  }
  if (r.steps > 1) r.decode_seconds = seconds_since(t0);
  r.lengths.assign(lengths.data_ptr<int64_t>(), lengths.data_ptr<int64_t>() + B);
  return r;
}

}  // namespace

at::Tensor sampling_probabilities(const at::Tensor& logits, const GenerationOptions& o) {
  // transformers' warper order: temperature, top-k, top-p.
  auto scores = logits.to(at::kFloat) / o.temperature;
  const double neg_inf = -std::numeric_limits<double>::infinity();
  if (o.top_k > 0 && o.top_k < scores.size(-1)) {
    const auto kth = std::get<0>(scores.topk(o.top_k, -1)).narrow(-1, o.top_k - 1, 1);
    scores = scores.masked_fill(scores < kth, neg_inf);
  }
  if (o.top_p < 1.0) {
    // Drop the least likely tokens whose cumulative probability stays within 1 - top_p; the most
    // likely token always survives.
    const auto [sorted, order] = scores.sort(-1, /*descending=*/false);
    auto remove = sorted.softmax(-1).cumsum(-1) <= (1.0 - o.top_p);
    remove.select(-1, remove.size(-1) - 1).fill_(false);
    scores = scores.masked_fill(remove.scatter(-1, order, remove), neg_inf);
  }
  return scores.softmax(-1);
}

at::Tensor select_next_tokens(const at::Tensor& logits, const GenerationOptions& o, at::Generator& generator) {
  if (!o.do_sample) return logits.argmax(-1).to(at::kCPU);
  const auto probs = sampling_probabilities(logits, o).to(at::kCPU);
  return at::multinomial(probs, 1, /*replacement=*/false, generator).squeeze(-1);
}

GenerationResult generate(const DecoderLM& model, const at::Tensor& input_ids, const at::Tensor& attention_mask,
                          const GenerationOptions& options) {
  return run_generation(model, input_ids, at::Tensor(), attention_mask, options);
}

GenerationResult generate_from_embeds(const DecoderLM& model, const at::Tensor& inputs_embeds,
                                      const at::Tensor& attention_mask, const GenerationOptions& options) {
  return run_generation(model, at::Tensor(), inputs_embeds, attention_mask, options);
}

}  // namespace hrmclara
