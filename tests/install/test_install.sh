#!/usr/bin/env bash
# tests/install/test_install.sh BUILD_DIR SOURCE_DIR: installs the build into a scratch prefix
# (cmake --install), builds examples/ against that installed package (find_package(hrmclara), not
# the build tree), checks that the examples link the installed library, and runs both on the test
# fixtures: the Sudoku example must solve its puzzle, the CLaRa one must answer.
set -euo pipefail
build="$1"
src="$2"
work="$(mktemp -d "${TMPDIR:-/tmp}/hrmclara-install-XXXXXX")"
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

cmake --install "$build" --prefix "$work/prefix" >"$work/install.log" 2>&1 || { tail -n 5 "$work/install.log" >&2; fail "cmake --install failed"; }
for f in include/hrmclara/hrm_solver.h include/hrmclara/clara_pipeline.h lib/cmake/hrmclara/hrmclaraConfig.cmake \
         lib/cmake/hrmclara/hrmclaraConfigVersion.cmake bin/hrmclara_serve bin/hrm_train; do
  [ -e "$work/prefix/$f" ] || fail "the install lacks $f"
done
ls "$work/prefix"/lib*/libhrmclara.* >/dev/null 2>&1 || fail "the install lacks libhrmclara"
ls "$work/prefix"/lib*/libhrmclara_spm.* >/dev/null 2>&1 || fail "the install lacks the SentencePiece plugin"

generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
cmake -S "$src/examples" -B "$work/examples" "${generator[@]}" -DCMAKE_PREFIX_PATH="$work/prefix" \
  >"$work/configure.log" 2>&1 || { tail -n 20 "$work/configure.log" >&2; fail "configuring examples/ against the installed package failed"; }
cmake --build "$work/examples" >"$work/build.log" 2>&1 || { tail -n 30 "$work/build.log" >&2; fail "building examples/ failed"; }

# The examples resolve libhrmclara from the installed prefix, not from the build tree.
lib_line="$(ldd "$work/examples/solve_sudoku" | grep 'libhrmclara\.' || true)"
case "$lib_line" in
  *"$work/prefix/"*) ;;
  *) fail "solve_sudoku does not link the installed libhrmclara: $lib_line" ;;
esac
# The installed tools run from the prefix as well.
"$work/prefix/bin/hrmclara_serve" --version >/dev/null || fail "the installed hrmclara_serve does not run"

out="$("$work/examples/solve_sudoku" "$src/tests/fixtures/sudoku-trm")" || fail "solve_sudoku did not solve its puzzle: $out"
echo "$out" | grep -q "solved" || fail "solve_sudoku printed no verdict: $out"
out="$("$work/examples/ask_clara" "$src/tests/fixtures/clara-train/ckpt_stage2" "$src/tests/fixtures/clara-reference" \
        "Who wrote Hamlet?" "Hamlet is a tragedy by William Shakespeare.")" || fail "ask_clara failed: $out"
echo "$out" | grep -q "tokens, 4 memory vectors per document" || fail "ask_clara printed no answer summary: $out"
echo "install: ok (find_package(hrmclara) from $work/prefix; solve_sudoku solved its puzzle; ask_clara answered)"
