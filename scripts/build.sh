#!/usr/bin/env bash
# scripts/build.sh [BUILD_DIR]: configures a Release build against the set-up's torch and builds
# every target into BUILD_DIR (default build/). Extra CMake options may be given in
# HRMCLARA_CMAKE_ARGS (e.g. "-DHRMCLARA_CUDA=OFF").
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${1:-build}"
case "$build_dir" in /*) ;; *) build_dir="$here/$build_dir" ;; esac
# shellcheck source=scripts/env.sh
source "$here/scripts/env.sh"

torch_prefix="$("$HRMCLARA_PYTHON" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')" || {
  echo "build.sh: torch not importable by $HRMCLARA_PYTHON; run scripts/setup.sh first" >&2; exit 1; }
generator=()
if command -v ninja >/dev/null 2>&1 && [ ! -f "$build_dir/Makefile" ]; then generator=(-G Ninja); fi
jobs="${HRMCLARA_JOBS:-$(nproc 2>/dev/null || sysctl -n hw.ncpu)}"
# shellcheck disable=SC2086
cmake -S "$here" -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$torch_prefix" -DHRMCLARA_PYTHON="$HRMCLARA_PYTHON" ${HRMCLARA_CMAKE_ARGS:-}
cmake --build "$build_dir" -j "$jobs"
