#!/usr/bin/env bash
# HRM/TRM train-step speed against upstream (not a test): our hrm_bench --mode train and upstream's
# Python model doing the same step (scripts/bench_hrm_upstream.py), alternated A/B/A/B for ROUNDS
# rounds on the same config and threads; prints each round, both medians and the ratio upstream/ours.
# Run it on a quiet machine: the two sides share the cores with nothing else.
# Each round also records hrm_bench's FLOP floor (the step's matmul FLOPs at this machine's measured
# GEMM rate): upstream's time over that floor is the most any implementation that runs the same
# matmuls at that rate could gain over upstream, so it shows what a ratio goal asks of ours.
# One measurement per run is the mean ms per timed step (hrm_bench's definition); the medians are
# over the rounds. Upstream runs eagerly with exact f32 attention (HRM) / its own SDPA call (TRM);
# ours with its default --attention exact.
# Usage: scripts/bench_hrm_speed.sh [ROUNDS (3)] [STEPS (10)]
# Environment: HRMCLARA_UPSTREAM_HRM (required for ARCH=hrm) / HRMCLARA_UPSTREAM_TRM (for ARCH=trm):
#   directories with the upstream code (sapientinc/HRM, SamsungSAILMontreal/TinyRecursiveModels);
#   ARCH (hrm), CONFIG (models/hrm/bench-2core.json), THREADS (2), WARMUP (2), BUILD_DIR (build),
#   PYTHON (the set-up's Python; it needs pydantic, and einops for TRM), OURS_ARGS (extra hrm_bench
#   arguments, e.g. what selects a TRM model on our side).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rounds="${1:-3}"
steps="${2:-10}"
arch="${ARCH:-hrm}"
config="${CONFIG:-models/hrm/bench-2core.json}"
threads="${THREADS:-2}"
warmup="${WARMUP:-2}"
build="${BUILD_DIR:-build}"
# shellcheck source=scripts/env.sh
source scripts/env.sh
python="${PYTHON:-$HRMCLARA_PYTHON}"

case "$arch" in
  hrm) upstream_var=HRMCLARA_UPSTREAM_HRM ;;
  trm) upstream_var=HRMCLARA_UPSTREAM_TRM ;;
  *) echo "bench_hrm_speed: ARCH must be hrm or trm, not '$arch'" >&2; exit 2 ;;
esac
upstream_dir="${!upstream_var:-}"
[ -n "$upstream_dir" ] || { echo "bench_hrm_speed: set $upstream_var to a checkout of upstream ${arch^^} (the directory with its models/)" >&2; exit 2; }
[ -d "$upstream_dir/models" ] || { echo "bench_hrm_speed: $upstream_var=$upstream_dir has no models/ directory" >&2; exit 2; }
[ -x "$build/bin/hrm_bench" ] || { echo "bench_hrm_speed: $build/bin/hrm_bench is not built (run scripts/build.sh $build)" >&2; exit 2; }
[ -x "$python" ] || { echo "bench_hrm_speed: no Python at $python (set PYTHON)" >&2; exit 2; }
[[ "$rounds" =~ ^[1-9][0-9]*$ && "$steps" =~ ^[1-9][0-9]*$ ]] || { echo "bench_hrm_speed: ROUNDS and STEPS must be positive integers" >&2; exit 2; }

upstream_args=(--arch "$arch" "--upstream-$arch" "$upstream_dir" --config "$config" --steps "$steps" --warmup "$warmup" --threads "$threads")
read -r -a ours_extra <<<"${OURS_ARGS:-}"
ours_args=(--config "$config" --mode train --steps "$steps" --warmup "$warmup" --threads "$threads" --device cpu "${ours_extra[@]}")

"$build/bin/hrmclara_info" | grep -m1 '^cpu:' || true
echo "config $config, arch $arch, $threads threads, $steps timed steps after $warmup, $rounds rounds"

# field JSON_LINE KEY: prints one number from a JSON line.
field() { "$python" -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
last_json() { grep '^{' | tail -n 1; }

ours=()
upstream=()
floor=()
for ((r = 1; r <= rounds; r++)); do
  a="$("$build/bin/hrm_bench" "${ours_args[@]}" | last_json)" || { echo "bench_hrm_speed: hrm_bench failed" >&2; exit 1; }
  b="$("$python" scripts/bench_hrm_upstream.py "${upstream_args[@]}" | last_json)" || { echo "bench_hrm_speed: bench_hrm_upstream.py failed" >&2; exit 1; }
  ours+=("$(field "$a" ms_per_step)")
  upstream+=("$(field "$b" ms_per_step_mean)")
  floor+=("$(field "$a" floor_ms)")
  echo "round $r: ours ${ours[-1]} ms/step, upstream ${upstream[-1]} ms/step, floor ${floor[-1]} ms/step"
done

"$python" - "$arch" "${#ours[@]}" "${ours[@]}" "${upstream[@]}" "${floor[@]}" <<'PY'
import json, statistics, sys
arch, n = sys.argv[1], int(sys.argv[2])
ours = [float(x) for x in sys.argv[3:3 + n]]
upstream = [float(x) for x in sys.argv[3 + n:3 + 2 * n]]
floor = [float(x) for x in sys.argv[3 + 2 * n:3 + 3 * n]]
mo, mu, mf = statistics.median(ours), statistics.median(upstream), statistics.median(floor)
# Per round, so that a slow minute moves both sides of the quotient.
up_over_floor = statistics.median(u / f for u, f in zip(upstream, floor))
ours_over_floor = statistics.median(o / f for o, f in zip(ours, floor))
print(f"ours (hrm_bench, C++):  median {mo:.1f} ms/step ({ours_over_floor:.3f}x the floor)")
print(f"upstream (Python):      median {mu:.1f} ms/step ({up_over_floor:.3f}x the floor)")
print(f"FLOP floor:             median {mf:.1f} ms/step")
print(f"ratio upstream/ours:    {mu / mo:.2f} (at most {up_over_floor:.2f} for a step at the floor)")
print(json.dumps({"arch": arch, "rounds": n, "ours_ms_per_step_median": round(mo, 3),
                  "upstream_ms_per_step_median": round(mu, 3), "floor_ms_median": round(mf, 3),
                  "ours_over_floor_median": round(ours_over_floor, 4),
                  "upstream_over_floor_median": round(up_over_floor, 4),
                  "ratio_upstream_over_ours": round(mu / mo, 3)}))
PY
