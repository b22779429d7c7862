#!/usr/bin/env python3
"""scripts/mutation_check.py [BUILD_DIR] [--only NAME]: breaks the implementation on purpose, once per
fault the test suites claim to catch, and checks that the named tests fail. Every mutation is
undone afterwards (the file is restored byte for byte, even on Ctrl-C), and the build is brought
back to the real sources at the end.

A mutation is (name, file, text to replace, replacement, test binary, gtest filter). The text must
occur exactly once, so a refactoring that moves the code makes the script say so instead of
silently testing nothing. Besides mutations, it checks the CI guards: a binary that runs no test,
or skips one, exits non-zero.

Needs only a Python 3 and a configured build directory (scripts/build.sh). Each mutation rebuilds
one library file and relinks the library, the tools and the one test binary it runs (one to two
minutes on 2 cores).
"""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MUTATIONS = [
    # Tensor::equal is true across dtypes: round trips must compare dtypes too.
    ("safetensors writer turns bf16 into f32", "src/core/tensor_files.cpp",
     '    const auto* entry = find_dtype(tensor.scalar_type());\n'
     '    if (!entry) throw FormatError(path + ": tensor \'" + name + "\' has unsupported dtype " + c10::toString(tensor.scalar_type()));\n'
     '    at::Tensor t = contiguous_cpu(tensor);\n',
     '    at::Tensor t = contiguous_cpu(tensor.scalar_type() == at::kBFloat16 ? tensor.to(at::kFloat) : tensor);\n'
     '    const auto* entry = find_dtype(t.scalar_type());\n',
     "core_tests", "Safetensors.RoundTripsEveryDtypeAndMetadata"),
    # A null ignore_label_id keeps label 0 as a class.
    ("label 0 ignored although ignore_label_id is null", "src/puzzles/dataset.cpp",
     "if (meta_.ignore_label_id) all_lab.masked_fill_(all_lab.eq(*meta_.ignore_label_id), kIgnoreLabel);",
     "all_lab.masked_fill_(all_lab.eq(meta_.ignore_label_id.value_or(0)), kIgnoreLabel);",
     "hrm_tests", "PuzzleDataset.NullIgnoreLabelKeepsEveryLabel"),
    # Sampling: the temperature must scale the scores before top-k and top-p filter them.
    ("temperature applied after the filters", "src/llm/generation.cpp",
     "  auto scores = logits.to(at::kFloat) / o.temperature;\n",
     "  auto scores = logits.to(at::kFloat);\n",
     "llm_tests", "LlmSampling.*"),
    ("top-p computed before top-k", "src/llm/generation.cpp",
     "  if (o.top_k > 0 && o.top_k < scores.size(-1)) {",
     "  if (o.top_p < 1.0) {\n"
     "    const auto [sorted, order] = scores.sort(-1, false);\n"
     "    auto remove = sorted.softmax(-1).cumsum(-1) <= (1.0 - o.top_p);\n"
     "    remove.select(-1, remove.size(-1) - 1).fill_(false);\n"
     "    scores = scores.masked_fill(remove.scatter(-1, order, remove), neg_inf);\n"
     "  }\n"
     "  if (o.top_k > 0 && o.top_k < scores.size(-1)) {",
     "llm_tests", "LlmSampling.DistributionsAreTransformersWarpersInTheirOrder"),
    ("generation_config.json's top_p ignored", "src/tools/llm_tool.cpp",
     '    read("top_p", o.top_p);\n', "",
     "llm_tests", "LlmToolDecoding.GenerationConfigSetsSamplingAndFlagsOverrideIt"),
    ("--system ignored", "src/tools/llm_tool.cpp",
     '      if (args.has("system")) messages.push_back({"system", args.get("system")});\n', "",
     "llm_tests", "LlmToolDecoding.ChatAndSystemWrapThePromptInTheTemplate"),
    ("tokenize --bos ignored", "src/tools/llm_tool.cpp",
     'const auto ids = tokenizer.encode(args.require("text"), args.has("bos"));',
     'const auto ids = tokenizer.encode(args.require("text"), false);',
     "llm_tests", "LlmTool.TokenizePrintsTheFixtureIds"),
    # Tokenizer expectations come from transformers, so flags the hand-written ones got wrong show.
    ("tokenizer_config's legacy:false ignored", "src/llm/llm_tokenizer.cpp",
     'm.legacy = bool_field(config, "legacy", true, cfg);',
     'm.legacy = true;',
     "llm_tests", "LlmTokenizerAddedTokens.NonLegacyPrefixesOnlyTheStartOfTheText"),
    ("an added token's rstrip ignored", "src/llm/llm_tokenizer.cpp",
     '      if (token.rstrip) pos = whitespace_run_end(text, pos);\n', '',
     "llm_tests", "LlmTokenizerAddedTokens.*"),
    # Checkpoints: a failed save must leave `latest` and the previous checkpoint.
    ("latest written before the checkpoint is complete", "src/train/trainer.cpp",
     "  remove_tree(tmp);\n  make_directories(tmp);\n",
     '  remove_tree(tmp);\n  write_file_atomically(dir + "/latest", name + "\\n");\n  make_directories(tmp);\n',
     "hrm_tests", "Trainer.AFailedSaveKeepsLatestAndThePreviousCheckpoint"),
    ("--max-minutes ignored", "src/train/trainer.cpp",
     "const bool time_up = opt_.max_minutes > 0 && seconds() >= opt_.max_minutes * 60.0;",
     "const bool time_up = false;",
     "hrm_tests", "Trainer.TimeLimitEvaluatesSavesAndStops"),
    ("resume keeps metrics logged after the checkpoint", "src/train/trainer.cpp",
     "      if (rec.value(\"step\", int64_t{0}) <= step_) kept += line + \"\\n\";",
     "      kept += line + \"\\n\";",
     "hrm_tests", "Trainer.StopRequestSavesAndResumeCutsMetricsBack"),
    # Interop: values, not only names.
    ("ckpt_inspect --to-safetensors writes other values", "src/tools/ckpt_inspect.cpp",
     '    if (args.has("to-safetensors")) hrmclara::write_safetensors(args.get("to-safetensors"), tensors);',
     '    for (auto& entry : tensors) entry.second = entry.second.mul(2);\n'
     '    if (args.has("to-safetensors")) hrmclara::write_safetensors(args.get("to-safetensors"), tensors);',
     "core_tests", "CkptInspect.ConvertsToSafetensorsAndReadsOwnArchives"),
    ("TorchScript archive stores bf16 as f32", "src/core/checkpoint.cpp",
     "    tree.add(name, t);", "    tree.add(name, t.to(at::kFloat));",
     "core_tests", "TensorArchive.PythonReadsOurArchive"),
    # ARC: the halting confidence must rank equal votes.
    ("ARC votes ranked by lowest q", "src/puzzles/arc_score.cpp",
     "return a.q_sum / static_cast<double>(a.votes) > b.q_sum / static_cast<double>(b.votes);",
     "return a.q_sum / static_cast<double>(a.votes) < b.q_sum / static_cast<double>(b.votes);",
     "hrm_tests", "HrmTools.ArcRunIsScoredByVotingBackToTasks"),
    ("hrm_eval ignores q_halt when voting", "src/tools/hrm_eval.cpp",
     "preds.data_ptr<int32_t>() + row * preds.size(1), q.data_ptr<double>()[row]);",
     "preds.data_ptr<int32_t>() + row * preds.size(1), 0.0);",
     "hrm_tests", "HrmTools.ArcRunIsScoredByVotingBackToTasks"),
    # Errors of the right family.
    ("a corrupt torch.save zip is a generic error", "src/core/checkpoint.cpp",
     'throw FormatError(target + ": corrupt or truncated zip archive (" + first_line(e.what()) + ")");',
     'throw Error(target + ": corrupt or truncated zip archive (" + first_line(e.what()) + ")");',
     "core_tests", "TorchSave.TruncatedAndGarbageFilesGiveFormatErrors"),
    # HRM parity: small numeric faults, caught at float64 and float32.
    # The no-grad forward normalises in place (float64 here: the plain chain of fused_ops.cpp):
    # doubling its epsilon is caught. (The autograd path runs only in HRM's one gradient step; a
    # tenfold epsilon there moves the gradients by less than Step0Gradients' 1e-4 bound, so it is
    # not listed as caught.)
    ("RMSNorm epsilon doubled (no-grad path)", "src/nn/fused_ops.cpp",
     "  return out.mul_(at::rsqrt(out.pow(2).mean(-1, /*keepdim=*/true) + eps));",
     "  return out.mul_(at::rsqrt(out.pow(2).mean(-1, /*keepdim=*/true) + 2 * eps));",
     "hrm_tests", "HrmParity.TrainOutputsHaltingAndTargetQ"),
    # AdamATan2 on float32 CPU parameters runs the fused kernel.
    ("AdamATan2 second-moment bias correction dropped", "src/nn/fused_ops.cpp",
     "                  static_cast<float>(std::sqrt(1.0 - std::pow(beta2, t))),",
     "                  1.0f,",
     "hrm_tests", "HrmParity.ThreeStepTrainingRunEndsInTheFixtureParameters"),
    # The fused float32 kernels (src/nn/fused_kernels.cpp) against their plain op chains.
    ("fused RMSNorm backward drops its projection term", "src/nn/fused_kernels.cpp",
     "    const Vec m(dot(gr, yr, n) / static_cast<float>(n));",
     "    const Vec m(0.0f);",
     "hrm_tests", "FusedOps.AddRmsNormForwardAndGradients"),
    ("fused RoPE rotates the second half the wrong way", "src/nn/fused_kernels.cpp",
     "    (x2 * Vec::loadu(c + h + j) + x1 * Vec::loadu(s + h + j)).store(out + h + j);",
     "    (x2 * Vec::loadu(c + h + j) - x1 * Vec::loadu(s + h + j)).store(out + h + j);",
     "hrm_tests", "FusedOps.SplitHeadsRopeIsBitwiseThePlainChain:HrmParity.EvalOutputsOfEveryActStep"),
    ("fused softmax backward forgets the scale", "src/nn/fused_kernels.cpp",
     "    for (; j + W <= n; j += W) divide((Vec::loadu(gr + j) - d) * Vec::loadu(yr + j)).store(out + j);",
     "    for (; j + W <= n; j += W) ((Vec::loadu(gr + j) - d) * Vec::loadu(yr + j)).store(out + j);",
     "hrm_tests", "FusedOps.ScaledSoftmaxForwardAndGradients:HrmParity.Step0GradientsOfEveryParameter"),
    ("SignSGD weight decay dropped", "src/train/optimizers.cpp",
     "rows.mul_(1.0 - lr_ * weight_decay_).add_(summed.sign(), -lr_);",
     "rows.add_(summed.sign(), -lr_);",
     "hrm_tests", "HrmParity.ThreeStepTrainingRunEndsInTheFixtureParameters"),
    # CLaRa training as upstream.
    ("cosine_with_min_lr one step early", "src/clara/clara_train.cpp",
     "  const int64_t current = step - 1;\n", "  const int64_t current = step;\n",
     "clara_tests", "ClaraTrain.ScheduleIsTransformersCosineWithMinLr"),
    ("accumulation sums micro-batch means", "src/clara/clara_train.cpp",
     "(r.total_loss / static_cast<double>(batches.size())).backward();", "r.total_loss.backward();",
     "clara_tests", "ClaraTrain.AccumulationAveragesMicroBatchMeansAsUpstream"),
    ("MSE document mean includes the memory slots", "src/clara/clara_model.cpp",
     "const auto doc_w = (is_mem.logical_not() & valid)", "const auto doc_w = (valid)",
     "clara_tests", "ClaraModel.Stage1ForwardAndEveryGradientMatchUpstream"),
    ("keep_answer truncation cuts the answer", "src/clara/clara_data.cpp",
     "      if (options.truncation == ClaraTruncation::kRight) {", "      if (true) {",
     "clara_tests", "ClaraData.KeepAnswerTruncationKeepsAnswerAndEos"),
    # The dtype policy.
    ("auto picks bf16 on a CPU without native bf16", "src/core/device.cpp",
     "    if (caps.fast(want)) return want;",
     "    if (caps.fast(want) || want == c10::kBFloat16) return want;",
     "core_tests", "DtypePolicy.*"),
]


def run(cmd, **kw):
    return subprocess.run(cmd, cwd=kw.pop("cwd", ROOT), capture_output=True, text=True, **kw)


def build(build_dir, target=None):
    # One test binary (and the library and tools it depends on) per mutation; everything at the end.
    r = run(["cmake", "--build", build_dir, "-j", str(os.cpu_count() or 2)] + (["--target", target] if target else []))
    if r.returncode != 0:
        print(r.stdout[-3000:] + r.stderr[-3000:])
    return r.returncode == 0


def main():
    args = [a for a in sys.argv[1:]]
    only = None
    if "--only" in args:
        i = args.index("--only")
        only = args[i + 1]
        del args[i:i + 2]
    build_dir = os.path.abspath(args[0] if args else os.path.join(ROOT, "build"))
    bin_dir = os.path.join(build_dir, "bin")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GTEST_")}
    failures = 0

    # The CI guards first: no test run, and a skipped test, both fail a binary.
    r = run([os.path.join(bin_dir, "core_tests"), "--gtest_filter=NoSuchTest.*"], env=env)
    ok = r.returncode != 0 and "no test ran" in r.stderr
    print(("caught " if ok else "MISSED ") + "a binary that runs no test")
    failures += not ok
    env_skip = dict(env, HRMCLARA_TEST_PYTHON="")
    r = run([os.path.join(bin_dir, "core_tests"), "--gtest_filter=TensorArchive.PythonReadsOurArchive"], env=env_skip)
    ok = r.returncode != 0 and "skipped" in r.stderr
    print(("caught " if ok else "MISSED ") + "a skipped test (no Python)")
    failures += not ok

    for name, rel, old, new, binary, test_filter in MUTATIONS:
        if only and only not in name:
            continue
        path = os.path.join(ROOT, rel)
        with open(path, encoding="utf-8") as f:
            original = f.read()
        if original.count(old) != 1:
            print(f"STALE  {name}: the text to replace occurs {original.count(old)} times in {rel}")
            failures += 1
            continue
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(original.replace(old, new))
            if not build(build_dir, binary):
                print(f"BUILD  {name}: the mutant does not compile")
                failures += 1
                continue
            r = run([os.path.join(bin_dir, binary), "--gtest_brief=1", "--gtest_filter=" + test_filter], env=env)
            caught = r.returncode != 0 and "FAILED" in r.stdout
            print(("caught " if caught else "MISSED ") + f"{name}  ({binary} {test_filter})")
            failures += not caught
        finally:
            with open(path, "w", encoding="utf-8") as f:
                f.write(original)
    if not build(build_dir):
        print("the restored sources do not build")
        failures += 1
    print(f"{failures} mutation(s) missed" if failures else "every mutation was caught")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
