// HRM parity against tests/fixtures/hrm-reference, made by running upstream sapientinc/HRM (see its
// README): eval and train outputs of every ACT step, step-0 gradients, and a three-step training
// run with SignSGD + AdamATan2.
//
// Two sources of error are kept apart, so that every bound holds on any CPU (AVX-512, AVX2, or
// ATen's scalar kernels; MKL's and oneDNN's code paths), which scripts/test.sh checks by running
// the suites with each forced:
// - The fixture's own float32 rounding. Our float64 forward computes the reference's math to
//   ~1e-13 on every CPU, so its distance to the fixture is a fixed number: measured 2.1e-6
//   (ACT step 0), 4.6e-6, 2.2e-5, 2.8e-5 (step 3), identical under all three kernel sets.
// - Our float32 rounding, which depends on the kernels' summation order and compounds through
//   the recurrence (each ACT step runs 12 post-norm blocks on the previous step's state): against
//   our float64 forward, measured 2.4e-6, 5.3e-6, 4.0e-5, 6.3e-5 with AVX-512 kernels and up to
//   6.8e-5 at step 3 with scalar ones. (Upstream itself, re-run with torch 2.11, moves by 9e-5
//   at step 3 against its torch-1.13 fixture.)
// Both grow by ~2-5x per ACT step, so the bounds are base * 3^k: fixture_rounding(k) = 5e-6 * 3^k
// for float64 vs fixture, our_rounding(k) = 1e-5 * 3^k for float32 vs float64, and their sum for
// float32 vs fixture. A real fault (a missing norm, a wrong scale, a cast in the wrong place)
// moves step 0 by 1e-3 or more. All relative to the largest magnitude of the expected tensor.
// - losses and metrics 1e-6: sums of float64 per-token losses; measured 1e-7 at most.
// - gradients 1e-4 as the fixture README states; measured 3.6e-6 at most.
// - the three-step training run: see that test (sign-based updates need a different check).
// bf16 runs are compared with the float32 ground truth, so their bounds are those of bf16
// rounding (8 mantissa bits) through 12 post-norm blocks per step; stated in that test.
#include <hrmclara/checkpoint.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/hrm.h>
#include <hrmclara/optim.h>
#include <hrmclara/tensor_io.h>

#include <torch/torch.h>

#include <cmath>
#include <functional>
#include <map>

#include "test_util.h"

namespace hrmclara::hrm {
namespace {

using test::fixture;
using test::rel_error;
using test::ScratchDir;

const std::string kCheckpoint = fixture("hrm-reference/step_0");

const std::map<std::string, torch::Tensor>& expected() {
  static const auto m = [] {
    std::map<std::string, torch::Tensor> out;
    for (auto& [k, v] : read_safetensors(fixture("hrm-reference/expected.safetensors"))) out[k] = v;
    return out;
  }();
  return m;
}

Batch fixture_batch() {
  std::map<std::string, torch::Tensor> t;
  for (auto& [k, v] : read_safetensors(fixture("hrm-reference/batch.safetensors"))) t[k] = v;
  return Batch{t["inputs"], t["labels"], t["puzzle_identifiers"]};
}

HrmModel load_model(const std::string& dtype = "float32") {
  HrmConfig config = upstream_config(kCheckpoint, "", 6);
  config.forward_dtype = dtype;
  HrmModel model(config);
  load_hrm_weights(*model, kCheckpoint);
  return model;
}


double fixture_rounding(int64_t act_step) { return 5e-6 * std::pow(3.0, static_cast<double>(act_step)); }
double our_rounding(int64_t act_step) { return 1e-5 * std::pow(3.0, static_cast<double>(act_step)); }

#define EXPECT_CLOSE(got, key, tol)                                                         \
  do {                                                                                      \
    if (!expected().count(key)) {                                                           \
      ADD_FAILURE() << "not in the fixture: " << (key);                                     \
      break;                                                                                \
    }                                                                                       \
    const double err_ = rel_error((got), expected().at(key));                               \
    EXPECT_LE(err_, (tol)) << (key) << " relative error " << err_;                          \
  } while (0)

struct StepOutputs {
  torch::Tensor logits, q_halt, q_continue, target_q, z_H;
};

// Runs `steps` ACT steps; per step checks outputs against the fixture within `output_tol(k)`, and
// loss, metrics and halting exactly as the fixture. Returns each step's outputs.
std::vector<StepOutputs> check_steps(HrmModelImpl& model, const std::string& mode, int steps,
                                     const std::function<double(int64_t)>& output_tol) {
  const Batch batch = fixture_batch();
  Carry carry = model.initial_carry(batch);
  torch::NoGradGuard no_grad;
  std::vector<StepOutputs> all;
  for (int k = 0; k < steps; ++k) {
    auto [next, out] = model.forward(carry, batch);
    const auto result = act_loss(model.config(), next, out);
    const std::string p = mode + "." + std::to_string(k) + ".";
    const double tol = output_tol(k);
    EXPECT_CLOSE(out.logits, p + "logits", tol);
    EXPECT_CLOSE(out.q_halt_logits, p + "q_halt_logits", tol);
    EXPECT_CLOSE(out.q_continue_logits, p + "q_continue_logits", tol);
    if (mode == "train") {
      EXPECT_CLOSE(out.target_q_continue, p + "target_q_continue", tol);
      EXPECT_CLOSE(next.z_H, p + "z_H", tol);
      EXPECT_TRUE(test::same_tensor(next.steps, expected().at(p + "steps"))) << p;
    } else {
      EXPECT_FALSE(out.target_q_continue.defined());
    }
    EXPECT_TRUE(test::same_tensor(next.halted, expected().at(p + "halted"))) << p << next.halted;
    EXPECT_CLOSE(result.loss, p + "loss", 1e-6);
    int metrics = 0;
    for (const auto& [name, value] : result.metrics) {
      const std::string key = p + "metric." + name;
      if (!expected().count(key)) {
        ADD_FAILURE() << "not in the fixture: " << key;
        continue;
      }
      // Counts are exact; losses as the loss.
      const double err = std::abs(value.item<double>() - expected().at(key).item<double>());
      EXPECT_LE(err, 1e-6 * std::max(1.0, std::abs(expected().at(key).item<double>()))) << key;
      ++metrics;
    }
    EXPECT_EQ(metrics, mode == "train" ? 8 : 7) << p;
    all.push_back({out.logits, out.q_halt_logits, out.q_continue_logits, out.target_q_continue, next.z_H});
    carry = next;
  }
  return all;
}

// float64 (the reference's math) vs the fixture, float32 vs the fixture, and float32 vs float64.
void check_every_act_step(const std::string& mode) {
  auto f64 = load_model("float64");
  auto f32 = load_model("float32");
  f64->train(mode == "train");
  f32->train(mode == "train");
  EXPECT_EQ(f64->H_init.scalar_type(), torch::kDouble);
  const auto exact = check_steps(*f64, mode, 4, fixture_rounding);
  EXPECT_EQ(exact[0].logits.scalar_type(), torch::kDouble);
  const auto ours = check_steps(*f32, mode, 4, [](int64_t k) { return fixture_rounding(k) + our_rounding(k); });
  for (int64_t k = 0; k < 4; ++k) {
    const auto& a = ours[static_cast<size_t>(k)];
    const auto& b = exact[static_cast<size_t>(k)];
    const std::string p = mode + "." + std::to_string(k) + ".";
    EXPECT_LE(rel_error(a.logits, b.logits), our_rounding(k)) << p << "logits, float32 vs float64";
    EXPECT_LE(rel_error(a.q_halt, b.q_halt), our_rounding(k)) << p << "q_halt_logits, float32 vs float64";
    EXPECT_LE(rel_error(a.q_continue, b.q_continue), our_rounding(k)) << p << "q_continue_logits, float32 vs float64";
    if (mode == "train") EXPECT_LE(rel_error(a.z_H, b.z_H), our_rounding(k)) << p << "z_H, float32 vs float64";
  }
}

TEST(HrmParity, EvalOutputsOfEveryActStep) { check_every_act_step("eval"); }

TEST(HrmParity, TrainOutputsHaltingAndTargetQ) { check_every_act_step("train"); }

// The Q target's pass computes only position 0 of the last H block: its Q logits must be those of
// the whole inner forward (float64: the same math; float32: the GEMMs on B rows may round apart).
TEST(HrmModel, QTargetPassEqualsTheWholeInnerForward) {
  for (const std::string dtype : {"float64", "float32"}) {
    auto model = load_model(dtype);
    model->train();
    {
      torch::NoGradGuard no_grad;
      torch::manual_seed(3);
      model->q_head->weight.normal_(0.0, 0.1);  // (upstream's zero init makes Q blind to z_H)
    }
    const auto batch = fixture_batch();
    auto [carry, first] = model->forward(model->initial_carry(batch), batch);  // a carry off its init
    torch::NoGradGuard no_grad;
    const auto [zh, zl, logits, q_halt, q_continue] = model->inner_forward(carry.z_H, carry.z_L, carry.current);
    const auto [q_halt2, q_continue2] = model->next_q(carry.z_H, carry.z_L, carry.current);
    const double tol = dtype == "float64" ? 1e-12 : 1e-5;
    ASSERT_EQ(q_halt2.sizes(), q_halt.sizes());
    EXPECT_LT(rel_error(q_halt2, q_halt), tol) << dtype;
    EXPECT_LT(rel_error(q_continue2, q_continue), tol) << dtype;
    EXPECT_GT((q_halt - q_halt.mean()).abs().max().item<double>(), 1e-3) << "the Q logits should vary over the batch";
  }
}

TEST(HrmParity, Step0GradientsOfEveryParameter) {
  auto model = load_model();
  model->train();
  const Batch batch = fixture_batch();
  auto [next, out] = model->forward(model->initial_carry(batch), batch);
  act_loss(model->config(), next, out).loss.backward();
  int checked = 0;
  for (const auto& item : model->named_parameters(true)) {
    ASSERT_TRUE(item.value().grad().defined()) << item.key();
    EXPECT_CLOSE(item.value().grad(), "grad.model.inner." + item.key(), 1e-4);
    ++checked;
  }
  EXPECT_CLOSE(model->puzzle_emb->local_weights.grad(), "grad.model.inner.puzzle_emb.local_weights", 1e-4);
  int expected_grads = 0;
  for (const auto& [k, v] : expected()) expected_grads += k.rfind("grad.", 0) == 0;
  EXPECT_EQ(checked + 1, expected_grads);
}

// The fixture's short run: three ACT steps on the fixture batch, each followed by backward of
// loss / batch, SignSGD (lr 1e-2, wd 0.1) and AdamATan2 (lr 1e-3, betas (0.9, 0.95), wd 0.1).
// Returns the three losses; `seen`, when given, receives the gradient each optimizer applied at
// each update: dense parameters by name, and "puzzle_emb.weights" as the per-row sums SignSGD takes
// the sign of (rows of the batch's identifiers, in sorted identifier order).
using SeenGradients = std::vector<std::map<std::string, torch::Tensor>>;
std::vector<double> run_three_training_steps(HrmModelImpl& model, const Batch& batch, SeenGradients* seen = nullptr) {
  AdamATan2 adam(model.dense_parameters(), {1e-3, 0.9, 0.95, 0.1});
  SparseSignSGD sign(model.puzzle_emb->weights, model.puzzle_emb->local_weights, model.puzzle_emb->local_ids, 1e-2, 0.1);
  Carry carry = model.initial_carry(batch);
  std::vector<double> losses;
  for (int k = 0; k < 3; ++k) {
    auto [next, out] = model.forward(carry, batch);
    auto result = act_loss(model.config(), next, out);
    losses.push_back(result.loss.item<double>());
    (result.loss / static_cast<double>(batch.size())).backward();
    if (seen) {
      std::map<std::string, torch::Tensor> g;
      for (const auto& [name, p] : model.dense_parameters()) g[name] = p.grad().detach().clone();
      const auto ids = model.puzzle_emb->local_ids.to(torch::kLong);
      const auto local = model.puzzle_emb->local_weights.grad();
      const auto [unique, inverse, counts] = torch::_unique2(ids, /*sorted=*/true, /*return_inverse=*/true);
      g["puzzle_emb.weights"] = torch::zeros({unique.size(0), local.size(1)}, local.options())
                                    .index_add_(0, inverse, local);
      g["puzzle_emb.rows"] = unique;
      seen->push_back(std::move(g));
    }
    sign.step();
    sign.zero_grad();
    adam.step();
    adam.zero_grad();
    carry = next;
  }
  return losses;
}

TEST(HrmParity, ThreeStepTrainingRunEndsInTheFixtureParameters) {
  // The fixture's script recorded train.* (4 ACT steps, each with a backward of the full loss,
  // parameter gradients cleared before each backward) and then started the three-step run without
  // clearing gradients. So the first update saw, on top of step 0's gradient: for every parameter
  // the gradient of recording step 3, and for the puzzle embedding's local rows (a buffer, which
  // the parameter clearing never reached) the sum over recording steps 0..3. Reproducing that
  // reproduces the run; the clean recipe (losses 18.1113, 17.6757) does not, and a Python port of
  // upstream gives the same clean numbers as we do.
  //
  // Both optimizers are sign-based where it matters here: SignSGD always, and AdamATan2's first
  // update is lr/(1-b1) * atan2(0.1 g, |g|), the same full step for every g != 0. So an element
  // whose gradient is at rounding level (a few 1e-6 of the tensor's largest, or exactly zero in
  // one implementation and 1e-12 in the other) moves a full step in a direction the kernels
  // choose, not the math, and "every element within 1e-4 after three updates" would depend on
  // the BLAS. The check therefore splits elements by the gradients our replay applied:
  // - clear: |g| > kClear = 1e-3 x the tensor's largest |g| at all three updates (below). Their
  //   sign is the reference's on any CPU, so they must end within 1e-4 of the fixture (relative
  //   to the tensor's largest value; measured 1.7e-5 to 1.9e-5 on AVX-512, AVX2 and scalar kernels);
  // - small: the rest (small gradients, some at rounding level). At most 10 % of the elements may
  //   be such (measured 7.4 %), and at most 0.1 % of all elements (264) may end away from the
  //   fixture (measured: one element, on each of the three kernel sets), each by no more than the
  //   optimizer's total step.
  auto model = load_model();
  model->train();
  const Batch batch = fixture_batch();
  {
    Carry carry = model->initial_carry(batch);
    for (int k = 0; k < 4; ++k) {
      for (auto& p : model->parameters()) p.mutable_grad() = torch::Tensor();
      auto [next, out] = model->forward(carry, batch);
      act_loss(model->config(), next, out).loss.backward();
      carry = next;
    }
  }
  SeenGradients seen;
  const auto losses = run_three_training_steps(*model, batch, &seen);
  // Our float32 gradients differ from float64 replays of the same run by at most 4.2e-5 of a
  // tensor's largest element (measured at every update, with AVX-512 and with scalar kernels);
  // the reference's differ by a similar amount, so signs can disagree only below ~1e-4. Above
  // 1e-3, AdamATan2's scale-free steps also keep the float32 error of the step itself small.
  const double kClear = 1e-3;
  // The losses before each update: step 0 is the fixture's state, later ones follow updates in
  // which only rounding-level elements can differ (measured 4e-8 relative).
  for (int k = 0; k < 3; ++k)
    EXPECT_CLOSE(torch::tensor(losses[k], torch::kDouble), "trainstep." + std::to_string(k) + ".loss", 1e-6);

  const auto state = module_state(*model);
  int64_t total = 0, small_gradient = 0, away = 0;
  double worst_clear_all = 0;
  int checked = 0;
  for (const auto& [name, t] : state) {
    const std::string key = "trainstep.final.model.inner." + name;
    ASSERT_TRUE(expected().count(key)) << key;
    const auto want = expected().at(key).to(torch::kDouble);
    const auto got = t.detach().to(torch::kDouble);
    ++checked;
    if (name == "H_init" || name == "L_init") {  // never trained
      EXPECT_TRUE(test::same_tensor(got, want)) << name;
      continue;
    }
    ASSERT_TRUE(seen[0].count(name)) << name << " received no gradient";
    // Which elements had a clear gradient at every update, as a mask over the tensor.
    torch::Tensor clear;
    double max_step = 0;  // the largest total movement the optimizer can give one element
    for (int k = 0; k < 3; ++k) {
      auto g = seen[static_cast<size_t>(k)].at(name).to(torch::kDouble);
      if (name == "puzzle_emb.weights") {
        // Scatter the per-row sums onto the rows they update; other rows get no update.
        const auto rows = seen[static_cast<size_t>(k)].at("puzzle_emb.rows");
        g = torch::zeros_like(want).index_copy_(0, rows, g);
        const auto updated = torch::zeros_like(want, torch::kBool).index_fill_(0, rows, true);
        const auto c = (g.abs() > kClear * g.abs().max()) | ~updated;
        clear = k == 0 ? c : clear & c;
        max_step += 1e-2;
      } else {
        const auto c = g.abs() > kClear * g.abs().max();
        clear = k == 0 ? c : clear & c;
        max_step += 1e-3 / (1.0 - std::pow(0.9, k + 1)) * M_PI / 2;
      }
    }
    const auto diff = (got - want).abs();
    const double scale = want.abs().max().item<double>();
    const double worst_clear = torch::where(clear, diff, torch::zeros_like(diff)).max().item<double>() / scale;
    EXPECT_LE(worst_clear, 1e-4) << key << ": elements with a clear gradient";
    worst_clear_all = std::max(worst_clear_all, worst_clear);
    EXPECT_LE(diff.max().item<double>(), 2 * max_step + 1e-4 * scale) << key << ": more than the optimizer can move";
    total += want.numel();
    small_gradient += (~clear).sum().item<int64_t>();
    away += (diff > 1e-4 * scale).sum().item<int64_t>();
  }
  EXPECT_EQ(checked, [] {
    int n = 0;
    for (const auto& [k, v] : expected()) n += k.rfind("trainstep.final.", 0) == 0;
    return n;
  }());
  const double small_share = static_cast<double>(small_gradient) / static_cast<double>(total);
  const double away_share = static_cast<double>(away) / static_cast<double>(total);
  std::cout << "[ measured ] " << total << " elements: " << small_share * 100 << " % with a small gradient, "
            << away << " away from the fixture; clear elements within " << worst_clear_all << std::endl;
  EXPECT_LE(small_share, 0.10);
  EXPECT_LE(away_share, 0.001);
}

TEST(HrmParity, CleanTrainingRunLowersTheLoss) {
  // The recipe the trainer uses (gradients cleared): step 0 equals the fixture, and the loss falls.
  auto model = load_model();
  model->train();
  const Batch batch = fixture_batch();
  const auto losses = run_three_training_steps(*model, batch);
  EXPECT_CLOSE(torch::tensor(losses[0], torch::kDouble), "trainstep.0.loss", 1e-6);
  EXPECT_LT(losses[1], losses[0]);
  EXPECT_LT(losses[2], losses[1]);
}

TEST(Optimizers, AdamAtan2MatchesItsFormulaInFloat64) {
  torch::manual_seed(3);
  auto p = torch::randn({5, 7}).requires_grad_(true);
  auto ref = p.detach().to(torch::kDouble).clone();
  auto m = torch::zeros_like(ref), v = torch::zeros_like(ref);
  const double lr = 3e-3, b1 = 0.9, b2 = 0.95, wd = 0.1;
  AdamATan2 adam({{"p", p}}, {lr, b1, b2, wd});
  for (int t = 1; t <= 5; ++t) {
    auto g = torch::randn({5, 7}) * (t == 3 ? 0.0 : 1.0);  // a zero gradient: atan2(0, 0) = 0, no NaN
    p.mutable_grad() = g.clone();
    adam.step();
    adam.zero_grad();
    auto gd = g.to(torch::kDouble);
    ref = ref * (1 - lr * wd);
    m = m + (1 - b1) * (gd - m);
    v = v + (1 - b2) * (gd * gd - v);
    ref = ref - lr / (1 - std::pow(b1, t)) * torch::atan2(m, v.sqrt() / std::sqrt(1 - std::pow(b2, t)));
    EXPECT_LE((p.detach().to(torch::kDouble) - ref).abs().max().item<double>(), 1e-6) << "step " << t;
  }
  // Parameters without a gradient are not touched, not even decayed.
  auto q = torch::ones({3}).requires_grad_(true);
  AdamATan2 idle({{"q", q}}, {lr, b1, b2, wd});
  idle.step();
  EXPECT_TRUE(test::same_tensor(q, torch::ones({3})));
}

TEST(Optimizers, AdamAtan2StateRestoresExactly) {
  torch::manual_seed(4);
  auto a = torch::randn({4, 4}).requires_grad_(true);
  auto b = a.detach().clone().requires_grad_(true);
  AdamATan2 first({{"w", a}}, {1e-2, 0.9, 0.95, 0.1});
  std::vector<torch::Tensor> grads;
  for (int i = 0; i < 4; ++i) grads.push_back(torch::randn({4, 4}));
  for (int i = 0; i < 2; ++i) {
    a.mutable_grad() = grads[i].clone();
    first.step();
  }
  AdamATan2 second({{"w", b}}, {1e-2, 0.9, 0.95, 0.1});
  {
    torch::NoGradGuard no_grad;
    b.copy_(a);
  }
  second.load_state(first.state());
  for (int i = 2; i < 4; ++i) {
    a.mutable_grad() = grads[i].clone();
    b.mutable_grad() = grads[i].clone();
    first.step();
    second.step();
  }
  EXPECT_TRUE(test::same_tensor(a, b));
  NamedTensors bad = first.state();
  bad[0].second = torch::zeros({2});
  EXPECT_THROW(second.load_state(bad), ShapeError);
}

TEST(Optimizers, SignSgdUpdatesOnlyTheBatchRowsBySummedSign) {
  auto weights = torch::ones({5, 2});
  auto local = torch::zeros({4, 2}).requires_grad_(true);
  auto ids = torch::tensor({3, 1, 3, 0}, torch::kInt);
  SparseSignSGD opt(weights, local, ids, 0.1, 0.5);
  // Row 3 appears twice: gradients (+1, -2) and (+2, +1) sum to (+3, -1).
  local.mutable_grad() = torch::tensor({{1.f, -2.f}, {0.f, 4.f}, {2.f, 1.f}, {-1.f, 0.f}});
  opt.step();
  const double decay = 1 - 0.1 * 0.5;
  auto want = torch::ones({5, 2});
  want[3] = torch::tensor({decay - 0.1, decay + 0.1});
  want[1] = torch::tensor({decay, decay - 0.1});  // sign(0) = 0: decayed only
  want[0] = torch::tensor({decay + 0.1, decay});
  EXPECT_TRUE(torch::allclose(weights, want, 0, 1e-7)) << weights;
}

TEST(HrmParity, Bfloat16RunsStayNearTheFloat32Reference) {
  // bf16 keeps 8 mantissa bits (relative rounding 2^-9 = 2e-3 per op); through the 12 post-norm
  // blocks of one ACT step the logits drift by a few percent of their range (measured 4.1e-2,
  // argmax agreement 98.6 %, loss 4.5e-4). Bounds at about 2.5x that, far below what a wrong cast
  // or a missing norm gives (order 1): 1e-1 on step-0 logits, argmax equal on >= 95 % of tokens,
  // loss within 1 %.
  auto model = load_model("bfloat16");
  model->eval();
  EXPECT_EQ(model->H_init.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(model->embed_tokens->embedding_weight.scalar_type(), torch::kFloat);  // f32 parameters
  const Batch batch = fixture_batch();
  torch::NoGradGuard no_grad;
  auto [next, out] = model->forward(model->initial_carry(batch), batch);
  EXPECT_EQ(out.logits.scalar_type(), torch::kBFloat16);
  const auto& want = expected().at("eval.0.logits");
  const double err = rel_error(out.logits, want);
  const double agree = (out.logits.argmax(-1) == want.argmax(-1)).to(torch::kDouble).mean().item<double>();
  const auto result = act_loss(model->config(), next, out);
  const double loss_err = std::abs(result.loss.item<double>() / expected().at("eval.0.loss").item<double>() - 1.0);
  std::cout << "[ measured ] bf16 step-0 logits rel " << err << ", argmax agreement " << agree << ", loss rel " << loss_err
            << std::endl;
  EXPECT_LE(err, 1e-1);
  EXPECT_GE(agree, 0.95);
  EXPECT_LE(loss_err, 1e-2);
  // Training in bf16: gradients flow and are finite.
  model->train();
  torch::GradMode::set_enabled(true);
  auto [n2, o2] = model->forward(model->initial_carry(batch), batch);
  act_loss(model->config(), n2, o2).loss.backward();
  for (const auto& item : model->named_parameters(true)) {
    ASSERT_TRUE(item.value().grad().defined()) << item.key();
    EXPECT_TRUE(torch::isfinite(item.value().grad()).all().item<bool>()) << item.key();
  }
  torch::GradMode::set_enabled(false);
}

TEST(HrmLoss, StablemaxFloat32PathMatchesFloat64) {
  // MPS has no float64; the float32 path must agree with the float64 one.
  const auto logits = expected().at("eval.0.logits") * 3.0;
  auto labels = fixture_batch().labels.clone();
  labels.index_put_({0, torch::indexing::Slice(0, 10)}, kIgnoreLabel);
  const auto f64 = stablemax_cross_entropy(logits, labels, torch::kDouble);
  const auto f32 = stablemax_cross_entropy(logits, labels, torch::kFloat);
  EXPECT_EQ(f32.scalar_type(), torch::kFloat);
  EXPECT_LE(rel_error(f32, f64), 1e-6);
  EXPECT_EQ(f64.index({0, torch::indexing::Slice(0, 10)}).abs().sum().item<double>(), 0.0);
  // And it is a proper log-probability: equals -log(s(x_label) / sum s(x)).
  const auto x = logits.to(torch::kDouble);
  const auto s = torch::where(x < 0, 1.0 / (1.0 - x), x + 1.0);
  const double manual = -std::log((s[1][5][labels[1][5].item<int64_t>()] / s[1][5].sum()).item<double>());
  EXPECT_NEAR(f64[1][5].item<double>(), manual, 1e-12);
}

TEST(HrmLoss, SoftmaxCrossEntropyIgnoresLabel) {
  const auto logits = torch::randn({2, 3, 5});
  auto labels = torch::randint(0, 5, {2, 3}, torch::kInt);
  labels[0][1] = kIgnoreLabel;
  const auto ce = softmax_cross_entropy(logits, labels);
  EXPECT_EQ(ce[0][1].item<float>(), 0.0f);
  EXPECT_NEAR(ce[1][2].item<float>(), -torch::log_softmax(logits[1][2], 0)[labels[1][2].item<int>()].item<float>(), 1e-6);
}

// ---- checkpoints -------------------------------------------------------------------------------

TEST(HrmCheckpoint, LoadsWithAndWithoutCompilePrefix) {
  ScratchDir dir;
  // Same weights under "model.inner.*" (a run with DISABLE_COMPILE), as safetensors.
  auto raw = read_torch_save(kCheckpoint);
  write_safetensors(dir / "step_0", strip_key_prefixes(raw));
  test::write_bytes(dir / "all_config.yaml", read_file(fixture("hrm-reference/all_config.yaml")));
  test::write_bytes(dir / "dataset.json", read_file(fixture("hrm-reference/dataset.json")));
  HrmModel a = load_model();
  HrmModel b(upstream_config(dir / "step_0", "", 6));
  load_hrm_weights(*b, dir / "step_0");
  test::expect_same_tensors(module_state(*b), module_state(*a));
}

TEST(HrmCheckpoint, PuzzleEmbeddingRowsMustMatchTheDataset) {
  ScratchDir dir;
  auto meta = read_json_file(fixture("hrm-reference/dataset.json"));
  meta["num_puzzle_identifiers"] = 9;
  write_json_file(dir / "dataset.json", meta);
  HrmModel model(upstream_config(kCheckpoint, dir / "dataset.json", 6));
  try {
    load_hrm_weights(*model, kCheckpoint);
    FAIL() << "no error";
  } catch (const ShapeError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("puzzle_emb.weights has 7 rows"), std::string::npos) << what;
    EXPECT_NE(what.find("num_puzzle_identifiers = 9"), std::string::npos) << what;
  }
  EXPECT_THROW(upstream_config(dir / "nothing_here", "", 6), IoError);
}

TEST(HrmCheckpoint, OwnFormatAndUpstreamExportRoundTrip) {
  ScratchDir dir;
  auto model = load_model();
  save_hrm_checkpoint(*model, dir / "ckpt");
  const auto config = checkpoint_config(dir / "ckpt", "", 6);
  EXPECT_EQ(config.arch_json(), model->config().arch_json());
  HrmModel back(config);
  load_hrm_weights(*back, dir / "ckpt");
  export_upstream_state_dict(*back, dir / "exported");
  const auto exported = read_torch_save(dir / "exported");
  const auto original = read_torch_save(kCheckpoint);
  ASSERT_EQ(exported.size(), original.size());
  std::map<std::string, torch::Tensor> by_name(exported.begin(), exported.end());
  for (const auto& [name, t] : original) {
    const std::string key = name.substr(std::string("_orig_mod.").size());
    ASSERT_TRUE(by_name.count(key)) << key;
    EXPECT_TRUE(test::same_tensor(by_name[key], t)) << key;
  }
  // Python's torch.load gives the OrderedDict upstream's load_state_dict takes, with every value.
  REQUIRE_PYTHON();
  std::string type;
  const auto py = test::as_python_reads_it(dir / "exported", "torch.load(path, weights_only=True)", dir.path(), &type);
  EXPECT_EQ(type, "OrderedDict");
  test::expect_same_tensor_map(py, exported);
  test::expect_same_tensor_map(py, strip_key_prefixes(original, {}));
}

// ---- hrm_infer (the contract) -------------------------------------------------------------------

// Gradients 1e-4; outputs of ACT step k (names "<mode>.<k>.<output>") float32 vs fixture as above.
double contract_tolerance(const std::string& name) {
  if (name.rfind("grad.", 0) == 0) return 1e-4;
  const auto dot = name.find('.');
  const int64_t k = std::stoll(name.substr(dot + 1, name.find('.', dot + 1) - dot - 1));
  return fixture_rounding(k) + our_rounding(k);
}

TEST(HrmInfer, ReproducesTheFixtureThroughItsContract) {
  ScratchDir dir;
  const std::string base = test::tool("hrm_infer") + " --checkpoint " + kCheckpoint + " --batch " +
                           fixture("hrm-reference/batch.safetensors") + " --device cpu";
  auto r = test::run_command(base + " --mode train --grads --out " + (dir / "train.st"), dir.path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = test::run_command(base + " --mode eval --steps 4 --out " + (dir / "eval.st"), dir.path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  int compared = 0;
  for (const auto& file : {dir / "train.st", dir / "eval.st"})
    for (const auto& [name, t] : read_safetensors(file)) {
      if (!expected().count(name)) continue;
      const auto& want = expected().at(name);
      EXPECT_EQ(t.scalar_type(), want.scalar_type()) << name;
      if (want.is_floating_point()) EXPECT_LE(rel_error(t, want), contract_tolerance(name)) << name;
      else EXPECT_TRUE(test::same_tensor(t, want)) << name;
      ++compared;
    }
  int fixture_outputs = 0;
  for (const auto& [k, v] : expected()) fixture_outputs += k.rfind("trainstep.", 0) != 0;
  EXPECT_EQ(compared, fixture_outputs);
  // Bad input: one line, non-zero.
  r = test::run_command(base + " --mode eval --grads --out " + (dir / "x.st"), dir.path());
  EXPECT_EQ(r.exit_code, 2);
  test::write_bytes(dir / "bad.st", "garbage");
  r = test::run_command(test::tool("hrm_infer") + " --checkpoint " + kCheckpoint + " --batch " + (dir / "bad.st") +
                            " --out " + (dir / "y.st"),
                        dir.path());
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(test::count_lines(r.err), 1) << r.err;
}

}  // namespace
}  // namespace hrmclara::hrm
