#!/usr/bin/env bash
# scripts/fuzz.sh SECONDS [TARGET...]: builds the libFuzzer harnesses of fuzz/ (clang, with
# AddressSanitizer and UndefinedBehaviorSanitizer; incrementally, in their own build directory) and
# runs each TARGET (default: all of them) for SECONDS, at most HRMCLARA_FUZZ_JOBS at a time. Prints
# one line per target -- executions, executions per second, corpus size, and "ok" or the crash
# reproducer -- and exits non-zero when any target found a crash, a leak, a timeout, an
# out-of-memory or an untyped exception, or when a reproducer committed in fuzz/regressions/TARGET/
# (replayed first, one by one) still fails.
#
# Environment:
#   HRMCLARA_FUZZ_BUILD    build directory (default build-fuzz/): bin/fuzz_TARGET, and under fuzz/:
#                          seeds/, dict/, corpus/ (grows across runs), crashes/TARGET/ (this run's
#                          reproducers), logs/TARGET.log
#   HRMCLARA_FUZZ_JOBS     targets run at once (default: the number of CPUs)
#   HRMCLARA_FUZZ_MAX_LEN  largest input in bytes (default 65536)
#   HRMCLARA_FUZZ_CC, HRMCLARA_FUZZ_CXX   compilers (default clang, clang++)
#   HRMCLARA_FUZZ_ARGS     extra libFuzzer flags for every target; e.g. "-fork=1 -ignore_crashes=1
#                          -ignore_ooms=1 -ignore_timeouts=1" keeps fuzzing after a finding and
#                          collects every reproducer (the line then counts them)
# A finding: build-fuzz/bin/fuzz_TARGET FILE reproduces it (add -runs=100 to repeat; gdb works too).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage() { echo "usage: scripts/fuzz.sh SECONDS [TARGET...]" >&2; exit 2; }
[ $# -ge 1 ] || usage
seconds="$1"
shift
[[ "$seconds" =~ ^[0-9]+$ ]] && [ "$seconds" -gt 0 ] || usage
# shellcheck source=scripts/env.sh
source "$here/scripts/env.sh"

build_dir="${HRMCLARA_FUZZ_BUILD:-build-fuzz}"
case "$build_dir" in /*) ;; *) build_dir="$here/$build_dir" ;; esac
jobs="${HRMCLARA_FUZZ_JOBS:-$(nproc 2>/dev/null || echo 2)}"
max_len="${HRMCLARA_FUZZ_MAX_LEN:-65536}"
cc="${HRMCLARA_FUZZ_CC:-clang}"
cxx="${HRMCLARA_FUZZ_CXX:-clang++}"
say() { printf 'fuzz: %s\n' "$*"; }
die() { printf 'fuzz: %s\n' "$*" >&2; exit 1; }

command -v "$cxx" >/dev/null 2>&1 || die "$cxx not found: the fuzz targets need clang with libFuzzer (scripts/setup.sh installs clang and libclang-rt-dev)"
python="$HRMCLARA_PYTHON"
[ -x "$python" ] || python="$(command -v python3)" || die "python3 not found (fuzz/seeds.py writes the seed corpora)"

# ---- configure (once) and build -----------------------------------------------------------------
if [ ! -f "$build_dir/CMakeCache.txt" ]; then
  torch_prefix="$("$HRMCLARA_PYTHON" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')" ||
    die "torch not importable by $HRMCLARA_PYTHON; run scripts/setup.sh first"
  generator=()
  if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
  say "configuring $build_dir ($cxx)"
  mkdir -p "$build_dir"
  CC="$cc" CXX="$cxx" cmake -S "$here" -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Debug \
    -DHRMCLARA_FUZZ=ON -DHRMCLARA_BUILD_TESTS=OFF -DHRMCLARA_CUDA=OFF \
    -DCMAKE_PREFIX_PATH="$torch_prefix" -DHRMCLARA_PYTHON="$HRMCLARA_PYTHON" >"$build_dir/configure.log" 2>&1 ||
    { cat "$build_dir/configure.log" >&2; rm -f "$build_dir/CMakeCache.txt"; die "configure failed"; }
fi
list="$build_dir/fuzz/targets.txt"
[ -f "$list" ] || die "$list missing: is $build_dir configured with -DHRMCLARA_FUZZ=ON?"
mapfile -t all < "$list"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
for t in "${targets[@]}"; do
  printf '%s\n' "${all[@]}" | grep -qx -- "$t" || die "unknown target '$t' (targets: ${all[*]})"
done

start=$(date +%s)
build_targets=()
for t in "${targets[@]}"; do build_targets+=("fuzz_$t"); done
cmake --build "$build_dir" -j "$jobs" --target "${build_targets[@]}" >"$build_dir/fuzz/build.log" 2>&1 ||
  { tail -n 60 "$build_dir/fuzz/build.log" >&2; die "build failed (log: $build_dir/fuzz/build.log)"; }
say "built ${#targets[@]} targets in $(( $(date +%s) - start )) s"

"$python" "$here/fuzz/seeds.py" "$build_dir/fuzz" "${targets[@]}" || die "fuzz/seeds.py failed"

# ---- run ------------------------------------------------------------------------------------------
out="$build_dir/fuzz"
mkdir -p "$out/logs"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$here/fuzz/lsan.supp:print_suppressions=0}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

run_one() {
  local t="$1" corpus="$out/corpus/$t" crashes="$out/crashes/$t/" log="$out/logs/$t.log"
  rm -rf "$crashes"  # this run's reproducers only
  mkdir -p "$corpus" "$crashes"
  local dirs=("$corpus" "$out/seeds/$t")
  # The harnesses' scratch files (fuzz_common.h's WorkDir: $TMPDIR), removed afterwards: a crashed
  # process, and with -fork every crashed child, leaves its work directory behind.
  local scratch
  scratch="$(mktemp -d /dev/shm/hrmclara-fuzz-"$t".XXXXXX 2>/dev/null || mktemp -d)"
  # The committed reproducers, each on its own (libFuzzer runs the files it is given once).
  : > "$out/logs/$t.regressions"
  local f
  for f in "$here/fuzz/regressions/$t"/*; do
    [ -f "$f" ] || continue
    TMPDIR="$scratch" timeout -k 10 300 "$build_dir/bin/fuzz_$t" -timeout=10 -rss_limit_mb=2048 "$f" >"$out/logs/$t.regression.log" 2>&1 ||
      { echo "fuzz/regressions/$t/$(basename "$f")" >> "$out/logs/$t.regressions";
        cat "$out/logs/$t.regression.log" >> "$out/logs/$t.regressions.log"; }
  done
  local dict=() target_args=()
  [ -s "$out/dict/$t.dict" ] && dict=(-dict="$out/dict/$t.dict")
  # These read whole torch.save files: most mutants are not zips, and LibTorch's zip reader leaks a
  # little on each (fuzz/lsan.supp), so libFuzzer would scan for leaks after every input, 15x
  # slower. The unpickler's own leaks are looked for by torch_pickle, whose zips are sound.
  case "$t" in torch_save | clara_adapters) target_args=(-detect_leaks=0) ;; esac
  local rc=0
  # shellcheck disable=SC2086
  TMPDIR="$scratch" timeout -k 10 $((seconds * 3 + 300)) "$build_dir/bin/fuzz_$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -max_len="$max_len" -print_final_stats=1 -artifact_prefix="$crashes" "${dict[@]}" "${target_args[@]}" ${HRMCLARA_FUZZ_ARGS:-} \
    "${dirs[@]}" >"$log" 2>&1 || rc=$?
  rm -rf "$scratch"
  echo "$rc" > "$out/logs/$t.rc"
}

start=$(date +%s)
running=0
for t in "${targets[@]}"; do
  rm -f "$out/logs/$t.rc" "$out/logs/$t.regressions.log"
  run_one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait || true

failed=0
for t in "${targets[@]}"; do
  log="$out/logs/$t.log"
  rc="$(cat "$out/logs/$t.rc" 2>/dev/null || echo 1)"
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1 || true)"
  rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1 || true)"
  corp="$( (grep -o 'corp: [0-9]*/[0-9a-zA-Z]*' "$log" || true) | tail -n 1 | sed 's/corp: //')"
  if [ -z "$execs" ]; then  # -fork=N mode: "#RUNS: cov: .. corp: N exec/s N ..."
    line="$( (grep -E '^#[0-9]+: cov:' "$log" || true) | tail -n 1)"
    execs="$(sed -n 's/^#\([0-9]*\):.*/\1/p' <<< "$line")"
    rate="$(sed -n 's/.* exec\/s \([0-9]*\).*/\1/p' <<< "$line")"
    corp="$(sed -n 's/.* corp: \([0-9]*\) .*/\1/p' <<< "$line")"
  fi
  artifacts="$(find "$out/crashes/$t" -type f | wc -l)"  # more than one with -fork=N -ignore_crashes=1
  if [ "$rc" = 0 ] && [ "$artifacts" = 0 ]; then
    status=ok
  else
    failed=$((failed + 1))
    artifact="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)"
    [ -n "$artifact" ] || artifact="$(find "$out/crashes/$t" -type f | sort | head -n 1)"
    [ "$artifacts" -gt 1 ] && artifact="$artifacts reproducers in $out/crashes/$t, e.g. $artifact"
    why=""
    for pattern in '^==hrmclara-fuzz== FINDING: ' '^SUMMARY: ' ': runtime error: ' '^==[0-9]+== ?ERROR: '; do
      why="$(grep -m 1 -E "$pattern" "$log" | cut -c 1-200 || true)"
      [ -z "$why" ] || break
    done
    [ "$rc" = 124 ] || [ "$rc" = 137 ] && why="${why:-the run itself hung (killed after $((seconds * 3 + 300)) s)}"
    status="CRASH ${artifact:-(no reproducer written)}${why:+ -- $why}"
  fi
  regressions="$(wc -l < "$out/logs/$t.regressions" 2>/dev/null || echo 0)"
  if [ "$regressions" -gt 0 ]; then
    [ "$status" = ok ] && failed=$((failed + 1))
    status="$status; $regressions reproducer(s) still fail: $(tr '\n' ' ' < "$out/logs/$t.regressions")(log: $out/logs/$t.regressions.log)"
  fi
  printf 'fuzz: %-20s execs %-9s exec/s %-7s corpus %-14s %s\n' "$t" "${execs:-?}" "${rate:-?}" "${corp:-?}" "$status"
done
say "${#targets[@]} targets, ${seconds} s each, $(( $(date +%s) - start )) s in all; logs in $out/logs"
if [ "$failed" -gt 0 ]; then
  say "$failed target(s) found a problem; reproducers under $out/crashes (run: $build_dir/bin/fuzz_TARGET FILE)"
  exit 1
fi
