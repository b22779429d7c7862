#!/usr/bin/env bash
# scripts/serve_load.sh [BUILD_DIR]: load and soak test of hrmclara_serve's POST /v1/hrm/solve.
#
# Builds nothing: BUILD_DIR (default build/, or $BUILD_DIR) must hold bin/hrmclara_serve and
# bin/hrmclara_load. Starts hrmclara_serve --hrm tests/fixtures/sudoku-trm on a free loopback port,
# runs hrmclara_load at each of $CONCURRENCY (default 1,8,64; $REQUESTS requests per level, with the
# sequential baseline), then a soak of $SOAK_SECONDS (default 300) at $SOAK_CONCURRENCY (default 8)
# while sampling the server's VmRSS every $RSS_INTERVAL (default 5) seconds: the samples, then the
# first, last and largest, and the growth from the first minute to the last (mean of each). Then
# SIGTERM, and the server must exit 0. Every reply of every run is checked by hrmclara_load against
# a direct library solve.
#
# Other settings: PUZZLES (64), CLUES (50), SERVE_ARGS (extra server flags), LOAD_ARGS (extra
# hrmclara_load flags), SERVE_BIN and LOAD_BIN (other binaries than BUILD_DIR's, e.g. to compare
# a patched server). Exit status: 0 pass; 1 a run failed (a lost, wrong or non-200 reply) or the
# server did not start or exit cleanly; 2 usage.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${1:-${BUILD_DIR:-build}}"
case "$build_dir" in /*) ;; *) build_dir="$here/$build_dir" ;; esac
SERVE_BIN="${SERVE_BIN:-$build_dir/bin/hrmclara_serve}"
LOAD_BIN="${LOAD_BIN:-$build_dir/bin/hrmclara_load}"
CKPT="${CKPT:-$here/tests/fixtures/sudoku-trm}"
CONCURRENCY="${CONCURRENCY:-1,8,64}"
REQUESTS="${REQUESTS:-2000}"
PUZZLES="${PUZZLES:-64}"
CLUES="${CLUES:-50}"
SOAK_SECONDS="${SOAK_SECONDS:-300}"
SOAK_CONCURRENCY="${SOAK_CONCURRENCY:-8}"
RSS_INTERVAL="${RSS_INTERVAL:-5}"
SERVE_ARGS="${SERVE_ARGS:-}"
LOAD_ARGS="${LOAD_ARGS:-}"

for b in "$SERVE_BIN" "$LOAD_BIN"; do
  [[ -x $b ]] || { echo "serve_load.sh: $b is missing; build it first (ninja -C $build_dir hrmclara_serve hrmclara_load)" >&2; exit 2; }
done
[[ $SOAK_SECONDS =~ ^[0-9]+$ && $RSS_INTERVAL =~ ^[1-9][0-9]*$ ]] || { echo "serve_load.sh: SOAK_SECONDS and RSS_INTERVAL must be whole seconds" >&2; exit 2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/hrmclara_serve_load.XXXXXX")
SERVER_PID=
LOAD_PID=
# shellcheck disable=SC2317  # called by the trap
cleanup() {
  local rc=$?
  if [[ -n $LOAD_PID ]] && kill -0 "$LOAD_PID" 2>/dev/null; then kill -TERM "$LOAD_PID" 2>/dev/null || true; wait "$LOAD_PID" 2>/dev/null || true; fi
  if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
  echo "serve_load.sh: FAIL: $*"
  if [[ -s $WORK/server.log ]]; then echo "--- server log (last 20 lines) ---"; tail -n 20 "$WORK/server.log"; fi
  exit 1
}

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || true; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# ---- start the server ----------------------------------------------------------------------------
# shellcheck disable=SC2086
"$SERVE_BIN" --hrm "$CKPT" --host 127.0.0.1 --port 0 $SERVE_ARGS >"$WORK/server.out" 2>"$WORK/server.log" &
SERVER_PID=$!
URL=
for _ in $(seq 1200); do  # 120 s
  URL=$(sed -n 's|^hrmclara_serve: listening on \(http://[^ ]*\)/$|\1|p' "$WORK/server.out" | head -n 1)
  [[ -n $URL ]] && break
  kill -0 "$SERVER_PID" 2>/dev/null || fail "the server exited before listening"
  sleep 0.1
done
[[ -n $URL ]] || fail "the server printed no 'listening on' line within 120 s"
echo "serve_load.sh: server pid $SERVER_PID at $URL (RSS $(mib "$(rss_kb "$SERVER_PID")") MiB), flags: ${SERVE_ARGS:-(defaults)}"

status=0
# ---- the levels ---------------------------------------------------------------------------------
echo "==== load: concurrency $CONCURRENCY, $REQUESTS requests per level"
# shellcheck disable=SC2086
"$LOAD_BIN" --url "$URL" --checkpoint "$CKPT" --concurrency "$CONCURRENCY" --requests "$REQUESTS" \
  --puzzles "$PUZZLES" --clues "$CLUES" --sequential-baseline $LOAD_ARGS || { echo "serve_load.sh: the load run failed"; status=1; }
kill -0 "$SERVER_PID" 2>/dev/null || fail "the server died during the load run"

# ---- the soak -----------------------------------------------------------------------------------
if (( SOAK_SECONDS > 0 )); then
  echo "==== soak: $SOAK_SECONDS s at concurrency $SOAK_CONCURRENCY, server VmRSS every $RSS_INTERVAL s"
  echo "before the soak: $(mib "$(rss_kb "$SERVER_PID")") MiB"
  # shellcheck disable=SC2086
  "$LOAD_BIN" --url "$URL" --checkpoint "$CKPT" --concurrency "$SOAK_CONCURRENCY" --seconds "$SOAK_SECONDS" \
    --puzzles "$PUZZLES" --clues "$CLUES" --warmup 0 $LOAD_ARGS >"$WORK/soak.out" 2>"$WORK/soak.err" &
  LOAD_PID=$!
  # Sampling starts when the level does (after the client's own reference solves).
  for _ in $(seq 1200); do
    grep -q "concurrency $SOAK_CONCURRENCY\.\.\." "$WORK/soak.err" 2>/dev/null && break
    kill -0 "$LOAD_PID" 2>/dev/null || break
    sleep 0.1
  done
  : >"$WORK/rss.txt"
  t0=$(date +%s.%N)
  next=0
  while kill -0 "$LOAD_PID" 2>/dev/null; do
    now=$(date +%s.%N)
    t=$(awk -v a="$now" -v b="$t0" 'BEGIN { printf "%.0f", a - b }')
    if (( t >= next )); then
      kb=$(rss_kb "$SERVER_PID")
      [[ -n $kb ]] || fail "the server died during the soak"
      echo "$t $kb" >>"$WORK/rss.txt"
      echo "  t=${t}s rss=$(mib "$kb") MiB"
      next=$(( next + RSS_INTERVAL ))
    fi
    sleep 0.2
  done
  soak_rc=0
  wait "$LOAD_PID" || soak_rc=$?
  LOAD_PID=
  kb=$(rss_kb "$SERVER_PID")
  [[ -n $kb ]] || fail "the server died during the soak"
  t=$(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN { printf "%.0f", a - b }')
  echo "$t $kb" >>"$WORK/rss.txt"
  echo "  t=${t}s rss=$(mib "$kb") MiB (after the soak)"
  cat "$WORK/soak.out"
  if (( soak_rc != 0 )); then echo "serve_load.sh: the soak run failed (exit $soak_rc)"; cat "$WORK/soak.err"; status=1; fi
  awk -v T="$t" '
    { t[NR] = $1; k[NR] = $2; if ($2 > max) max = $2 }
    END {
      n = NR
      for (i = 1; i <= n; i++) {
        if (t[i] <= 60) { f += k[i]; nf++ }
        if (t[i] >= T - 60) { l += k[i]; nl++ }
      }
      printf "soak RSS: %d samples; first %.1f MiB, last %.1f MiB, max %.1f MiB\n", n, k[1] / 1024, k[n] / 1024, max / 1024
      printf "soak RSS: first minute mean %.1f MiB (%d samples), last minute mean %.1f MiB (%d samples), growth %+.1f MiB (%+.2f%%)%s\n",
             f / nf / 1024, nf, l / nl / 1024, nl, (l / nl - f / nf) / 1024, 100 * (l / nl - f / nf) / (f / nf),
             (T < 120 ? " [the soak is shorter than 2 minutes: the two minutes overlap]" : "")
      printf "{\"soak_seconds\": %d, \"rss_mib\": {\"first\": %.1f, \"last\": %.1f, \"max\": %.1f, \"first_minute_mean\": %.1f, \"last_minute_mean\": %.1f, \"growth\": %.1f}}\n",
             T, k[1] / 1024, k[n] / 1024, max / 1024, f / nf / 1024, l / nl / 1024, (l / nl - f / nf) / 1024
    }' "$WORK/rss.txt"
fi

# ---- SIGTERM: the server drains and exits 0 -----------------------------------------------------
kill -TERM "$SERVER_PID"
server_rc=
for _ in $(seq 600); do  # 60 s
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then server_rc=0; wait "$SERVER_PID" || server_rc=$?; break; fi
  sleep 0.1
done
[[ -n $server_rc ]] || fail "the server did not exit within 60 s of SIGTERM"
SERVER_PID=
if (( server_rc != 0 )); then fail "the server exited $server_rc after SIGTERM (expected 0)"; fi
echo "serve_load.sh: the server exited 0 after SIGTERM"
if (( status != 0 )); then echo "serve_load.sh: FAIL"; else echo "serve_load.sh: ok"; fi
exit "$status"
