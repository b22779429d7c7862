# Sourced by the scripts: where the set-up's Python (with torch) lives. One fixed place outside
# the repository, so every clone (CI's fresh ones too) reuses the same installation.
HRMCLARA_PREFIX="${HRMCLARA_PREFIX:-/opt/hrmclara}"
HRMCLARA_VENV="${HRMCLARA_VENV:-$HRMCLARA_PREFIX/venv}"
HRMCLARA_PYTHON="${HRMCLARA_PYTHON:-$HRMCLARA_VENV/bin/python}"
HRMCLARA_TORCH_VERSION="${HRMCLARA_TORCH_VERSION:-2.11.0}"
export HRMCLARA_PREFIX HRMCLARA_VENV HRMCLARA_PYTHON HRMCLARA_TORCH_VERSION
