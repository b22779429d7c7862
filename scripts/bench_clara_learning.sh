#!/usr/bin/env bash
# CLaRa learning benchmark (not a test): does stage-1 compression training learn on this machine?
#  1. A PDF is made from this repository's own documentation (scripts/make_text_pdf.py).
#  2. clara_prepare cuts it into chunks of DOC_TOKENS tokens and writes stage-1 rows whose target
#     is the chunk itself (reconstruction through upstream's paraphrase prompts); 10 % of the chunks
#     are held out.
#  3. For two compression rates, a small Mistral (models/llm/tiny-clara.json, random weights: there
#     is no pretrained base on these machines, so the base is trained too, train_base=true) learns
#     stage 1 for MINUTES each, with evaluations on the held-out chunks: the share of target tokens
#     the decoder predicts from the n memory vectors (token_accuracy), against the same model with
#     the memory vectors zeroed (token_accuracy_zero_memory: what it guesses without the document).
# Usage: scripts/bench_clara_learning.sh [MINUTES_PER_RATE (9)] [BUILD_DIR (build)]
# Environment: RATES ("4 16"), DOC_TOKENS (64), OUT (runs/clara-learning-<time>), THREADS (0).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
minutes="${1:-9}"
build="${2:-build}"
rates="${RATES:-4 16}"
doc_tokens="${DOC_TOKENS:-64}"
threads="${THREADS:-0}"
out="${OUT:-runs/clara-learning-$(date +%Y%m%d-%H%M%S)}"
for t in clara_prepare clara_train llm_tool hrmclara_info; do
  [ -x "$build/bin/$t" ] || { echo "bench_clara_learning: $build/bin/$t is not built (run scripts/build.sh $build)" >&2; exit 2; }
done
mkdir -p "$out"
"$build/bin/hrmclara_info" | sed -n 's/^\(cpu\|aten capability\|native bf16\):/machine: &/p'

# 1-2. Text we own -> PDF -> chunks and stage-1 rows.
docs=(README.md third_party/README.md tests/fixtures/*/README.md models/llm/*.json)
for h in include/hrmclara/*.h; do docs+=("$h"); done
# Our docs name CLaRa's control tokens (<ENC>, <MEM3>, ...), which clara_prepare refuses in document
# text (the tokenizer would read them as the tokens themselves): write them as [ENC], [MEM3], ...
mkdir -p "$out/text"
texts=()
for f in "${docs[@]}"; do
  t="$out/text/$(echo "$f" | tr / _).txt"
  sed -E 's/<(SEP|ENC|AE|MEM[0-9]+)>/[\1]/g' "$f" > "$t"
  texts+=("$t")
done
/usr/bin/python3 scripts/make_text_pdf.py "$out/corpus.pdf" "${texts[@]}"
"$build/bin/llm_tool" init --config models/llm/tiny-clara.json --tokenizer tests/fixtures/clara-reference --out "$out/tokenizer-base"
"$build/bin/clara_prepare" --base "$out/tokenizer-base" --input "$out/corpus.pdf" --out "$out/chunks.jsonl" \
  --doc-max-length "$doc_tokens" --stage1-rows "$out/rows.jsonl" --log-level warn
total=$(wc -l < "$out/rows.jsonl")
held=$(( total / 10 ))
head -n $(( total - held )) "$out/rows.jsonl" > "$out/train.jsonl"
tail -n "$held" "$out/rows.jsonl" > "$out/eval.jsonl"
echo "chunks: $total ($(( total - held )) for training, $held held out), $doc_tokens tokens each at most"

# 3. One run per compression rate.
for rate in $rates; do
  run="$out/cr$rate"
  "$build/bin/llm_tool" init --config models/llm/tiny-clara.json --tokenizer tests/fixtures/clara-reference --out "$run-base" --seed 1
  "$build/bin/clara_train" --stage stage1 --base "$run-base" --data "$out/train.jsonl" --eval-data "$out/eval.jsonl" --out "$run" \
    --max-minutes "$minutes" --no-progress --threads "$threads" --log-level warn \
    doc_max_length="$doc_tokens" compr_rate="$rate" lora_r=8 lora_dropout=0.0 train_base=true dec_max_len=512 \
    train_batch_size=16 micro_batch_size=16 epochs=1000 lr=1e-3 lr_scheduler=linear_warmup warmup_ratio=0.0005 \
    eval_every_steps=100 eval_max_examples=256 eval_max_new_tokens=0 checkpoint_every_steps=0 keep_checkpoints=1 \
    dtype=float32 > "$run.log" 2>&1 || { echo "clara_train failed, see $run.log" >&2; tail -n 5 "$run.log" >&2; exit 1; }
done

# 4. The curves.
/usr/bin/python3 - "$out" "$doc_tokens" $rates <<'PY'
import json, sys
out, doc_tokens, rates = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
summary = {}
for rate in rates:
    rows = [json.loads(l) for l in open(f"{out}/cr{rate}/metrics.jsonl") if l.strip()]
    evals = [r for r in rows if "eval/token_accuracy" in r]
    n = doc_tokens // int(rate)
    print(f"\ncompression rate {rate}: {n} memory vectors for {doc_tokens} tokens")
    print(f"{'minutes':>8} {'step':>6} {'train loss':>10} {'eval loss':>9} {'token acc':>9} {'acc, memory zeroed':>18}")
    last_train = {}
    for r in rows:
        if "train/loss" in r:
            last_train[r["step"]] = r["train/loss"]
        if "eval/token_accuracy" in r:
            tl = last_train.get(r["step"], float("nan"))
            print(f"{r['elapsed_s']/60:8.2f} {r['step']:6d} {tl:10.3f} {r['eval/loss']:9.3f} {r['eval/token_accuracy']:9.3f} "
                  f"{r['eval/token_accuracy_zero_memory']:18.3f}")
    final = evals[-1] if evals else {}
    summary[f"cr{rate}"] = {"memory_vectors": n, "steps": final.get("step"),
                            "token_accuracy": final.get("eval/token_accuracy"),
                            "token_accuracy_zero_memory": final.get("eval/token_accuracy_zero_memory")}
print(json.dumps(summary))
PY
