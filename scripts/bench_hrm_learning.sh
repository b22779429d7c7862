#!/usr/bin/env bash
# Learning benchmark (not a test): trains hrm_train's default preset (or the given overrides) for a
# fixed wall-clock budget and prints held-out exact accuracy over time, read from the run's
# metrics.jsonl. Usage: scripts/bench_hrm_learning.sh [MINUTES] [hrm_train args or key=value ...]
# Environment: BUILD_DIR (default build), OUT (run directory, default runs/learning-<time>).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-15}"
[ $# -gt 0 ] && shift
build="${BUILD_DIR:-build}"
out="${OUT:-runs/learning-$(date +%Y%m%d-%H%M%S)}"
[ -x "$build/bin/hrm_train" ] || { echo "bench_hrm_learning: $build/bin/hrm_train is not built (run scripts/build.sh)" >&2; exit 2; }

"$build/bin/hrm_train" --out "$out" --max-minutes "$minutes" --no-progress "$@" >"$out.log" 2>&1 || {
  echo "bench_hrm_learning: hrm_train failed, see $out.log" >&2; tail -n 5 "$out.log" >&2; exit 1; }

"$build/bin/hrmclara_info" | sed -n 's/^\(cpu\|aten capability\|native bf16\):/machine: &/p'
/usr/bin/python3 - "$out/metrics.jsonl" "$minutes" <<'PY'
import json, sys
path, budget = sys.argv[1], float(sys.argv[2])
rows = [json.loads(l) for l in open(path) if l.strip()]
evals = [r for r in rows if "eval/exact_accuracy" in r]
print(f"{'minutes':>8} {'step':>6} {'eval exact':>10} {'eval cell acc':>13}")
for r in evals:
    print(f"{r['elapsed_s']/60:8.2f} {r['step']:6d} {r['eval/exact_accuracy']:10.3f} {r['eval/accuracy']:13.3f}")
best = max((r["eval/exact_accuracy"] for r in evals), default=0.0)
final = evals[-1]["eval/exact_accuracy"] if evals else 0.0
print(json.dumps({"budget_minutes": budget, "final_eval_exact_accuracy": final, "best_eval_exact_accuracy": best,
                  "evaluations": len(evals), "run_dir": path.rsplit("/", 1)[0]}))
PY
