# Sourced by the benchmark scripts: the machine they ran on, and the dtypes worth timing on it.

# Prints the CPU, ATen's kernel level and whether bf16 is native, as "<prefix>: ..." lines on stderr.
bench_machine() {  # BUILD_DIR PREFIX
  "$1/bin/hrmclara_info" | sed -n "s/^\(cpu\|aten capability\|native bf16\):/$2: &/p" >&2
}

# Sets the array `dtypes`: $DTYPES when given, else float32 plus bfloat16 where this CPU computes it
# natively (emulated bf16 runs ~100x slower and would time the emulation, not the code).
bench_dtypes() {  # BUILD_DIR PYTHON
  if [ -n "${DTYPES:-}" ]; then
    read -r -a dtypes <<<"$DTYPES"
  elif "$1/bin/hrmclara_info" --json | "$2" -c 'import json, sys; sys.exit(0 if json.load(sys.stdin)["cpu"]["native_bfloat16"] else 1)'; then
    dtypes=(float32 bfloat16)
  else
    dtypes=(float32)
    echo "benchmark: this CPU has no native bf16; timing float32 only (DTYPES=\"float32 bfloat16\" forces both)" >&2
  fi
}
