#!/usr/bin/env bash
# CLaRa benchmark (not a test): clara_bench and, where transformers + peft are importable, the same
# work in Python (scripts/bench_clara_reference.py), back to back with the same threads, on
# models/llm/synthetic-100m.json (112M parameters, random weights) with the CLaRa fixture's
# tokenizer; then the resident memory of a Mistral-7B-shaped CLaRa with three adapters.
# Prints JSON lines; the machine's CPU capability is in each of ours.
# Usage: scripts/bench_clara.sh [BUILD_DIR]
# Environment: PYTHON (default /opt/hrmclara/venv/bin/python), THREADS (0: all cores), REPEATS (3),
#   DTYPES (default: float32, plus bfloat16 where the CPU has it natively).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
build="${1:-build}"
threads="${THREADS:-0}"
repeats="${REPEATS:-3}"
bench="$build/bin/clara_bench"
[ -x "$bench" ] || { echo "bench_clara: $bench is not built (run scripts/build.sh $build)" >&2; exit 2; }
python="${PYTHON:-/opt/hrmclara/venv/bin/python}"
[ -x "$python" ] || python=python3
reference=1
"$python" -c 'import torch, transformers, peft' >/dev/null 2>&1 || {
  reference=0
  echo "bench_clara: transformers + peft not importable by $python; timing clara_bench only" \
       "(for the comparison: $python -m pip install transformers==4.56.2 peft==0.17.1)" >&2; }
# shellcheck source=scripts/bench_common.sh
source scripts/bench_common.sh
bench_machine "$build" bench_clara
bench_dtypes "$build" "$python"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
config=models/llm/synthetic-100m.json
tokenizer=tests/fixtures/clara-reference
for dtype in "${dtypes[@]}"; do
  args=(--dtype "$dtype" --threads "$threads" --repeats "$repeats")
  "$bench" --config "$config" --tokenizer "$tokenizer" --work-dir "$work" "${args[@]}" --log-level warn
  if [ "$reference" = 1 ]; then
    "$python" scripts/bench_clara_reference.py --config "$config" --tokenizer "$tokenizer" "${args[@]}" 2>/dev/null
  fi
done
"$bench" --memory-7b --tokenizer "$tokenizer" --work-dir "$work" --threads "$threads" --log-level warn
