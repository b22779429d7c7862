#!/usr/bin/env bash
# scripts/test.sh [BUILD_DIR]: builds every target (scripts/build.sh) and runs all test suites.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${1:-build}"
case "$build_dir" in /*) ;; *) build_dir="$here/$build_dir" ;; esac
"$here/scripts/build.sh" "$build_dir"
cd "$build_dir"
ctest --output-on-failure --timeout 900
