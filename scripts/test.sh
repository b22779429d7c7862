#!/usr/bin/env bash
# scripts/test.sh [BUILD_DIR]: builds every target (scripts/build.sh) and runs all test suites, each
# natively and with other CPUs' kernels forced (AVX2-only, and scalar: tests/CMakeLists.txt), then
# prints the totals. Fails when a suite runs no test or skips one (HRMCLARA_ALLOW_SKIPS=1 accepts
# skips, for machines without the set-up's Python). Then runs every fuzz harness briefly
# (scripts/fuzz.sh; HRMCLARA_FUZZ_SECONDS per target, default 10, 0 skips it), which fails the
# command when one finds a crash or a committed reproducer in fuzz/regressions/ still crashes.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${1:-build}"
case "$build_dir" in /*) ;; *) build_dir="$here/$build_dir" ;; esac
"$here/scripts/build.sh" "$build_dir"
cd "$build_dir"
# A GoogleTest variable left in the environment (a filter, a repeat count) would change what runs.
for v in $(env | sed -n 's/^\(GTEST_[A-Z_]*\)=.*/\1/p'); do unset "$v"; done
# The kernel sets are forced per test by CTest; inherited ones would hide the native run.
unset ATEN_CPU_CAPABILITY MKL_ENABLE_INSTRUCTIONS ONEDNN_MAX_CPU_ISA DNNL_MAX_CPU_ISA
status=0
ctest --output-on-failure --no-tests=error --timeout 900 || status=$?
# Each test binary ends with "<binary>: N passed, N failed, N skipped"; add them up.
log="$build_dir/Testing/Temporary/LastTest.log"
if [ -f "$log" ]; then
  awk '/^[A-Za-z_]+: [0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$/ { runs++; p += $2; f += $4; s += $6 }
       END { printf "test suites: %d runs (natively and with forced kernel sets)\ntotal: %d passed, %d failed, %d skipped\n", runs, p, f, s }' "$log"
fi

# A short fuzz run of every reader (clang + libFuzzer, build directory BUILD_DIR-fuzz).
fuzz_seconds="${HRMCLARA_FUZZ_SECONDS:-10}"
if [ "$fuzz_seconds" != 0 ]; then
  if [ "$(uname -s)" = Linux ]; then
    HRMCLARA_FUZZ_BUILD="${HRMCLARA_FUZZ_BUILD:-$build_dir-fuzz}" "$here/scripts/fuzz.sh" "$fuzz_seconds" || status=1
  else
    echo "fuzz: skipped (the harnesses need clang's libFuzzer on Linux)"
  fi
fi
exit "$status"
