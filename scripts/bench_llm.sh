#!/usr/bin/env bash
# LLM throughput benchmark (not a test): runs llm_bench and, when transformers is importable, the
# Python reference scripts/bench_llm_reference.py over the same matrix, and prints their JSON lines
# (reference lines carry "implementation": "transformers <version>").
#   models: tests/fixtures/clara-reference (tiny Mistral, prompt 64 / new 16 and 128 / 32) and
#           models/llm/synthetic-100m.json (random weights, prompt 128 / new 32)
#   dtypes: float32, and bfloat16 where this CPU computes it natively (hrmclara_info says so;
#           DTYPES="float32 bfloat16" forces both: emulated bf16 runs ~100x slower)
# Usage: scripts/bench_llm.sh [BUILD_DIR]   (default build, relative to the repository root)
# Environment: PYTHON (default /opt/hrmclara/venv/bin/python, else python3), REPEATS (default 3),
#   THREADS (default 0: every usable core), EXTRA_ARGS (added to both tools, e.g. "--batch 4").
# Run it on an otherwise idle machine: the numbers are wall-clock throughputs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
build="${1:-build}"
repeats="${REPEATS:-3}"
threads="${THREADS:-0}"
read -r -a extra <<<"${EXTRA_ARGS:-}"
bench="$build/bin/llm_bench"
[ -x "$bench" ] || { echo "bench_llm: $bench is not built (run scripts/build.sh $build)" >&2; exit 2; }

python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x /opt/hrmclara/venv/bin/python ]; then python=/opt/hrmclara/venv/bin/python; else python=python3; fi
fi
reference=1
if ! "$python" -c 'import torch, transformers' >/dev/null 2>&1; then
  reference=0
  echo "bench_llm: transformers is not importable by $python; running llm_bench only" \
       "(install it for benchmarking: $python -m pip install 'transformers==4.56.2')" >&2
fi

fixture=tests/fixtures/clara-reference
synthetic=models/llm/synthetic-100m.json
# source-flag source prompt-tokens new-tokens
cases=(
  "--model $fixture 64 16"
  "--model $fixture 128 32"
  "--config $synthetic 128 32"
)

# shellcheck source=scripts/bench_common.sh
source scripts/bench_common.sh
bench_machine "$build" bench_llm
bench_dtypes "$build" "$python"
for dtype in "${dtypes[@]}"; do
  for c in "${cases[@]}"; do
    read -r flag src prompt new <<<"$c"
    args=("$flag" "$src" --dtype "$dtype" --prompt-tokens "$prompt" --new-tokens "$new" --repeats "$repeats"
          --threads "$threads" "${extra[@]}")
    "$bench" "${args[@]}" --log-level warn
    if [ "$reference" = 1 ]; then
      "$python" scripts/bench_llm_reference.py "${args[@]}"
    fi
  done
done
