#!/usr/bin/env bash
# scripts/setup.sh: installs everything hrmclara's build, tests and fixture scripts need.
#   Debian 12 / Ubuntu (as root, or with sudo): Debian's C++ libraries and tools (clang and its
#   libFuzzer for scripts/fuzz.sh among them), then PyPI's
#   torch (with numpy, safetensors, sentencepiece for the fixture scripts) into a virtual
#   environment at $HRMCLARA_VENV (default /opt/hrmclara/venv), outside the repository so every
#   clone reuses it.
#   macOS: prints (or with --run, runs) the Homebrew + pip route.
# Idempotent: a second run checks what is there and installs nothing (a few seconds).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/env.sh
source "$here/scripts/env.sh"

say() { printf 'setup: %s\n' "$*"; }

if [ "$(uname -s)" = "Darwin" ]; then
  steps=(
    "brew install cmake ninja pkg-config sentencepiece nlohmann-json spdlog googletest yaml-cpp poppler cpp-httplib python@3.12"
    "python3.12 -m venv $HRMCLARA_VENV"
    "$HRMCLARA_VENV/bin/pip install torch==$HRMCLARA_TORCH_VERSION numpy safetensors sentencepiece"
  )
  if [ "${1:-}" = "--run" ]; then
    for s in "${steps[@]}"; do say "$s"; eval "$s"; done
  else
    say "on macOS, run these (or: scripts/setup.sh --run); the build then uses MPS when available:"
    for s in "${steps[@]}"; do printf '  %s\n' "$s"; done
  fi
  exit 0
fi

# ---- Debian packages --------------------------------------------------------------------------
debs=(
  g++ cmake ninja-build pkg-config git ca-certificates
  python3 python3-venv python3-pip python3-numpy
  libsentencepiece-dev sentencepiece python3-sentencepiece
  nlohmann-json3-dev libspdlog-dev libfmt-dev libgtest-dev libyaml-cpp-dev
  libpoppler-cpp-dev zlib1g-dev
  libcpp-httplib-dev curl  # hrmclara_serve; curl for its tests
  libgloo-dev              # declarations for LibTorch's own Gloo process group (src/core/process_group.cpp)
  chromium                 # tests/serve/browser_test.sh: the web page in a real (headless) browser
  clang libclang-rt-dev  # scripts/fuzz.sh: clang with libFuzzer and the sanitizer runtimes (Debian 12: clang 14)
)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
  fi
  say "installing Debian packages: ${missing[*]}"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "Debian packages present"
fi

# ---- torch from PyPI --------------------------------------------------------------------------
have_torch="$("$HRMCLARA_PYTHON" -c 'import torch, numpy, safetensors, sentencepiece; print(torch.__version__.split("+")[0])' 2>/dev/null || true)"
if [ "$have_torch" != "$HRMCLARA_TORCH_VERSION" ]; then
  if [ ! -x "$HRMCLARA_PYTHON" ]; then
    mkdir -p "$(dirname "$HRMCLARA_VENV")" 2>/dev/null || sudo mkdir -p "$(dirname "$HRMCLARA_VENV")"
    say "creating virtual environment $HRMCLARA_VENV"
    /usr/bin/python3 -m venv "$HRMCLARA_VENV"
  fi
  say "installing torch==$HRMCLARA_TORCH_VERSION numpy safetensors sentencepiece from PyPI (a few minutes the first time)"
  "$HRMCLARA_VENV/bin/pip" install -q --disable-pip-version-check \
    "torch==$HRMCLARA_TORCH_VERSION" numpy safetensors sentencepiece
else
  say "torch $have_torch present in $HRMCLARA_VENV"
fi
"$HRMCLARA_PYTHON" -c 'import torch; print("setup: torch", torch.__version__, "cmake prefix", torch.utils.cmake_prefix_path)'
