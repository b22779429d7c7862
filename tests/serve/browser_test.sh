#!/usr/bin/env bash
# Real-browser test of hrmclara_serve's web page (GET /).
#
#   browser_test.sh SERVE_BIN CHECKPOINT_DIR [SCREENSHOT.png]
#
# Starts SERVE_BIN --hrm CHECKPOINT_DIR on a free loopback port, takes a puzzle from
# POST /v1/sudoku/generate and the reference answer from POST /v1/hrm/solve (curl), then loads
# /?puzzle=<puzzle>&solve=1 in headless Chromium, which fills the board and runs the page's own
# Solve code. Chromium's --virtual-time-budget holds the dump until the page's fetches have
# answered (virtual time does not advance while a request is in flight), so --dump-dom prints the
# DOM after the solve. The dump must show <body data-state="solved">, #solution equal to the API's
# "solution", the 81 inputs cell-0..cell-80 showing those digits (their value attributes) and
# #steps equal to the API's "steps". With SCREENSHOT.png it also saves a 1280x1000 screenshot of
# the solved page.
#
# Exit status: 0 pass, 1 failure (one line saying why), 2 usage, 77 skip (no chromium or curl).
# Needs bash, curl, grep, sed and chromium only.
set -euo pipefail

usage() { echo "usage: $0 SERVE_BIN CHECKPOINT_DIR [SCREENSHOT.png]" >&2; exit 2; }
[[ $# -eq 2 || $# -eq 3 ]] || usage
SERVE_BIN=$1
CKPT=$2
SHOT=${3:-}

CHROMIUM=${CHROMIUM:-}
if [[ -z $CHROMIUM ]]; then
  for c in chromium chromium-browser; do
    if command -v "$c" >/dev/null 2>&1; then CHROMIUM=$(command -v "$c"); break; fi
  done
fi
if [[ -z $CHROMIUM ]]; then echo "SKIP: chromium is not installed"; exit 77; fi
if ! command -v curl >/dev/null 2>&1; then echo "SKIP: curl is not installed"; exit 77; fi
[[ -x $SERVE_BIN ]] || { echo "FAIL: $SERVE_BIN is not an executable"; exit 1; }
[[ -e $CKPT ]] || { echo "FAIL: checkpoint $CKPT does not exist"; exit 1; }
if [[ -n $SHOT && $SHOT != /* ]]; then SHOT=$PWD/$SHOT; fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/hrmclara_browser.XXXXXX")
SERVER_PID=
cleanup() {
  local rc=$?
  if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
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
  echo "FAIL: $*"
  if [[ -s $WORK/server.log ]]; then echo "--- server log (last 15 lines) ---"; tail -n 15 "$WORK/server.log"; fi
  exit 1
}

CURL=(curl -sS --noproxy '*' --max-time 60)

# ---- start the server on a free port --------------------------------------------------------
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
PORT=
for attempt in 1 2 3 4 5; do
  p=$(( 20000 + (RANDOM * 7 + attempt * 131) % 40000 ))
  port_busy "$p" && continue
  "$SERVE_BIN" --hrm "$CKPT" --port "$p" --host 127.0.0.1 >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  up=
  for _ in $(seq 600); do                      # 60 s
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
    if "${CURL[@]}" --max-time 2 -o /dev/null -f "http://127.0.0.1:$p/healthz" 2>/dev/null; then up=1; break; fi
    sleep 0.1
  done
  if [[ -n $up ]]; then PORT=$p; break; fi
  if kill -0 "$SERVER_PID" 2>/dev/null; then fail "the server did not answer /healthz within 60 s"; fi
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
  # A port taken between the check and the bind: try another one; any other exit is a failure.
  grep -qiE 'in use|bind' "$WORK/server.log" || fail "the server exited before answering /healthz"
done
[[ -n $PORT ]] || fail "found no free port for the server"
BASE="http://127.0.0.1:$PORT"

# ---- the reference: a generated puzzle and the API's answer -----------------------------------
json_str() { sed -n 's/.*"'"$1"'"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' | head -n 1; }
json_num() { sed -n 's/.*"'"$1"'"[[:space:]]*:[[:space:]]*\([-0-9.eE+]*\).*/\1/p' | head -n 1; }

GEN=$("${CURL[@]}" -X POST -H 'Content-Type: application/json' -d '{"clues": 50, "seed": 11}' "$BASE/v1/sudoku/generate") \
  || fail "POST /v1/sudoku/generate failed"
PUZZLE=$(json_str puzzle <<<"$GEN")
[[ ${#PUZZLE} -eq 81 && $PUZZLE =~ ^[0-9.]+$ ]] || fail "generate gave no 81-cell puzzle: $GEN"

SOLVE=$("${CURL[@]}" -X POST -H 'Content-Type: application/json' -d "{\"puzzle\": \"$PUZZLE\"}" "$BASE/v1/hrm/solve") \
  || fail "POST /v1/hrm/solve failed"
WANT_SOLUTION=$(json_str solution <<<"$SOLVE")
WANT_STEPS=$(json_num steps <<<"$SOLVE")
[[ ${#WANT_SOLUTION} -eq 81 ]] || fail "the API's solve reply has no 81-char solution: ${SOLVE:0:300}"
[[ -n $WANT_STEPS ]] || fail "the API's solve reply has no steps: ${SOLVE:0:300}"

# ---- the page, in headless Chromium -----------------------------------------------------------
URL="$BASE/?puzzle=$PUZZLE&solve=1"
CHROME_FLAGS=(--headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run
  --no-default-browser-check --disable-extensions --no-proxy-server --hide-scrollbars
  --user-data-dir="$WORK/profile" --virtual-time-budget=30000)

tag_attr() {   # tag_attr ATTR <<< '<tag ...>': the attribute's value (empty when absent)
  sed -n 's/.*[[:space:]]'"$1"'="\([^"]*\)".*/\1/p' | head -n 1
}
elem_text() {  # elem_text ID < dom: the text of the (single-line, childless) element with that id
  sed -n 's/.*[[:space:]]id="'"$1"'"[^>]*>\([^<]*\)<.*/\1/p' | head -n 1
}

STATE=
for try in 1 2; do
  rc=0
  timeout -k 10 180 "$CHROMIUM" "${CHROME_FLAGS[@]}" --dump-dom "$URL" >"$WORK/dom.html" 2>"$WORK/chromium.log" || rc=$?
  [[ $rc -eq 0 ]] || fail "chromium --dump-dom exited with $rc: $(grep -v -e dbus -e '^$' "$WORK/chromium.log" | tail -n 1)"
  BODY=$(grep -o '<body[^>]*>' "$WORK/dom.html" | head -n 1 || true)
  STATE=$(tag_attr data-state <<<"$BODY")
  [[ $STATE == solving || -z $STATE ]] || break  # a finished solve; else dump once more
done
if [[ $STATE != solved ]]; then
  ERR=$(elem_text error <"$WORK/dom.html")
  fail "the page's body has data-state=\"$STATE\", not \"solved\"${ERR:+ (page error: $ERR)}"
fi

GOT_SOLUTION=$(elem_text solution <"$WORK/dom.html")
[[ $GOT_SOLUTION == "$WANT_SOLUTION" ]] || fail "#solution is \"$GOT_SOLUTION\", the API said \"$WANT_SOLUTION\""

GOT_STEPS=$(elem_text steps <"$WORK/dom.html")
[[ $GOT_STEPS == "$WANT_STEPS" ]] || fail "#steps is \"$GOT_STEPS\", the API said \"$WANT_STEPS\""

declare -a SHOWN=()
n_cells=0
while IFS= read -r tag; do
  id=$(tag_attr id <<<"$tag")
  i=${id#cell-}
  [[ $i =~ ^[0-9]+$ ]] && (( i < 81 )) || continue
  SHOWN[i]=$(tag_attr value <<<"$tag")
  n_cells=$((n_cells + 1))
done < <(grep -o '<input[^>]*[[:space:]]id="cell-[0-9]*"[^>]*>' "$WORK/dom.html" || true)
(( n_cells == 81 )) || fail "the page has $n_cells elements cell-0..cell-80, not 81"
for i in $(seq 0 80); do
  want=${WANT_SOLUTION:i:1}
  [[ $want =~ [1-9] ]] || want=""
  [[ ${SHOWN[i]-} == "$want" ]] || fail "cell-$i shows \"${SHOWN[i]-}\", the API's solution has \"${WANT_SOLUTION:i:1}\""
done

if [[ -n $SHOT ]]; then
  rc=0
  timeout -k 10 180 "$CHROMIUM" "${CHROME_FLAGS[@]}" --window-size=1280,1000 --screenshot="$SHOT" "$URL" \
    >"$WORK/shot.log" 2>&1 || rc=$?
  [[ $rc -eq 0 && -s $SHOT ]] || fail "chromium could not take the screenshot $SHOT (exit $rc)"
  echo "screenshot: $SHOT"
fi

# The fixture model solves this puzzle (50 clues, inside its training range): the API says so, and
# the page must show it as solved too, not only show the same digits.
WANT_VERDICT=$(grep -o '"solved":[a-z]*' <<<"$SOLVE" | head -n 1 | cut -d: -f2)
if [[ $WANT_VERDICT == true ]]; then
  [[ $(tag_attr data-verdict <<<"$BODY") == solved ]] || fail "the API solved the puzzle but the page's verdict is \"$(tag_attr data-verdict <<<"$BODY")\""
fi

echo "PASS: the page solved the puzzle as the API did ($WANT_STEPS steps, data-state=solved, verdict=$(tag_attr data-verdict <<<"$BODY"))"
