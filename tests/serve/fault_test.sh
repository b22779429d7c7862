#!/usr/bin/env bash
# Fault test of hrmclara_serve: every documented error status, hostile connections and shutdown,
# while valid solve requests keep running and must all succeed.
#
#   fault_test.sh SERVE_BIN CHECKPOINT_DIR
#
# Starts SERVE_BIN --hrm CHECKPOINT_DIR with small limits (--max-body 65536 --read-timeout-s 2
# --queue 4 --timeout-ms 5000) and an API key on a free loopback port, solves one generated puzzle
# (the reference), then starts two background loops that send that puzzle again and again; every
# one of their replies must be a 200 with the reference's tokens, steps and solution. Meanwhile:
# malformed JSON, wrong types, wrong lengths and unknown fields (400 naming the field), a body over
# --max-body (413), a GET on a POST endpoint (404/405), an unknown path (404), no key or a wrong
# key (401, the right key 200), slowloris connections (partial headers, then silence; and a slow
# trickle), abrupt disconnects (full and partial requests, the socket closed right after sending).
# A second server (--hrm-max-batch 1 --queue 1) is flooded for 503. Finally SIGTERM during
# requests: the in-flight ones finish, and the server exits 0.
#
# One line per check: "ok  <check>" or "FAIL <check>: <reason>". Exit status: 0 pass, 1 a failure,
# 2 usage, 77 skip (no curl). Needs bash (its /dev/tcp), curl, grep, sed, awk; no python.
set -uo pipefail

usage() { echo "usage: $0 SERVE_BIN CHECKPOINT_DIR" >&2; exit 2; }
[[ $# -eq 2 ]] || usage
SERVE_BIN=$1
CKPT=$2
if ! command -v curl >/dev/null 2>&1; then echo "SKIP: curl is not installed"; exit 77; fi
[[ -x $SERVE_BIN ]] || { echo "FAIL setup: $SERVE_BIN is not an executable"; exit 1; }
[[ -e $CKPT ]] || { echo "FAIL setup: checkpoint $CKPT does not exist"; exit 1; }

READ_TIMEOUT_S=2
MAX_BODY=65536
KEY="fault-test-key-$RANDOM$RANDOM"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/hrmclara_fault.XXXXXX")
printf '%s\n' "$KEY" >"$WORK/key"
SERVER_PID=
SERVER2_PID=
BG_PIDS=()
FAILS=0

stop_server() {  # PID: SIGTERM, then SIGKILL after 10 s
  local pid=$1
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
}
# shellcheck disable=SC2317  # called by the trap
cleanup() {
  local rc=$?
  touch "$WORK/stop"
  for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  stop_server "$SERVER_PID"
  stop_server "$SERVER2_PID"
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ok() { echo "ok  $1"; }
fail() {
  echo "FAIL $1: $2"
  FAILS=$((FAILS + 1))
}
die() {
  echo "FAIL $1: $2"
  for log in "$WORK"/server*.log; do
    [[ -s $log ]] && { echo "--- $(basename "$log") (last 15 lines) ---"; tail -n 15 "$log"; }
  done
  exit 1
}
now_ms() { local t; t=$(date +%s%N); echo $((t / 1000000)); }

CURL=(curl -sS --noproxy '*' --max-time 30)
AUTH="Authorization: Bearer $KEY"
JSON="Content-Type: application/json"

# ---- servers -----------------------------------------------------------------------------------
# start_server LOGNAME ARGS...: starts it on --port 0, sets STARTED_PID and STARTED_PORT.
start_server() {
  local name=$1
  shift
  "$SERVE_BIN" --hrm "$CKPT" --host 127.0.0.1 --port 0 "$@" >"$WORK/$name.out" 2>"$WORK/$name.log" &
  STARTED_PID=$!
  STARTED_PORT=
  for _ in $(seq 1200); do  # 120 s
    STARTED_PORT=$(sed -n 's|^hrmclara_serve: listening on http://127\.0\.0\.1:\([0-9]*\)/$|\1|p' "$WORK/$name.out" | head -n 1)
    [[ -n $STARTED_PORT ]] && return 0
    kill -0 "$STARTED_PID" 2>/dev/null || die "start $name" "the server exited before listening"
    sleep 0.1
  done
  die "start $name" "no 'listening on' line within 120 s"
}

# --queue 64: the bursts below (16 requests at once, on top of the background loops) must not fill
# the queue, or the background loops' requests would get 503s; the 503 check has its own server.
start_server server --api-key-file "$WORK/key" --max-body "$MAX_BODY" --read-timeout-s "$READ_TIMEOUT_S" --request-timeout-s $((READ_TIMEOUT_S * 3)) --queue 64 --timeout-ms 5000
SERVER_PID=$STARTED_PID
PORT=$STARTED_PORT
BASE="http://127.0.0.1:$PORT"
ok "server started on port $PORT"

# req METHOD PATH [curl args...]: sets STATUS and BODY (STATUS 000 when no reply came).
req() {
  local method=$1 path=$2
  shift 2
  STATUS=$("${CURL[@]}" -X "$method" -o "$WORK/body" -w '%{http_code}' "$@" "$BASE$path" 2>"$WORK/curl.err")
  [[ -n $STATUS ]] || STATUS=000
  BODY=$(cat "$WORK/body" 2>/dev/null)
  rm -f "$WORK/body"
}
# json_str KEY: the first "KEY":"value" of BODY; json_num KEY: the first "KEY":number.
json_str() { sed -n "s/.*\"$1\":\"\\([^\"]*\\)\".*/\\1/p" <<<"$BODY" | head -n 1; }
json_num() { grep -o "\"$1\":-\\?[0-9.eE+-]*" <<<"$BODY" | head -n 1 | cut -d: -f2; }
# expect_error CHECK STATUS FIELD METHOD PATH [curl args]: the reply must be STATUS with a JSON
# error body of that status (and "field":"FIELD" unless FIELD is -).
expect_error() {
  local check=$1 want=$2 field=$3 method=$4 path=$5
  shift 5
  req "$method" "$path" "$@"
  if [[ $STATUS != "$want" ]]; then fail "$check" "HTTP $STATUS (expected $want): ${BODY:0:200}"; return; fi
  if ! grep -q '"error":{' <<<"$BODY" || [[ $(json_num status) != "$want" ]]; then
    fail "$check" "the body is not a JSON error of status $want: ${BODY:0:200}"
    return
  fi
  if [[ $field != - && $(json_str field) != "$field" ]]; then fail "$check" "field '$(json_str field)' (expected '$field'): ${BODY:0:200}"; return; fi
  ok "$check -> $STATUS${field:+ field $field}"
}

# ---- the reference -----------------------------------------------------------------------------
req POST /v1/sudoku/generate -H "$AUTH" -H "$JSON" --data-binary '{"clues": 50, "seed": 7}'
[[ $STATUS == 200 ]] || die "reference puzzle" "generate: HTTP $STATUS ${BODY:0:200}"
PUZZLE=$(json_str puzzle)
[[ ${#PUZZLE} -eq 81 ]] || die "reference puzzle" "generate gave '$PUZZLE'"
SOLVE_BODY="{\"puzzle\": \"$PUZZLE\"}"
req POST /v1/hrm/solve -H "$AUTH" -H "$JSON" --data-binary "$SOLVE_BODY"
[[ $STATUS == 200 ]] || die "reference solve" "HTTP $STATUS ${BODY:0:200}"
REF_SOLUTION=$(json_str solution)
REF_STEPS=$(json_num steps)
REF_TOKENS=$(grep -o '"tokens":\[[0-9,]*\]' <<<"$BODY" | head -n 1)
[[ ${#REF_SOLUTION} -eq 81 && -n $REF_STEPS && -n $REF_TOKENS ]] || die "reference solve" "no solution, steps or tokens: ${BODY:0:300}"
grep -q '"solved":true' <<<"$BODY" && solved="solved" || solved="NOT solved (the model's answer; still the reference)"
ok "reference solve: $solved in $REF_STEPS steps"

# good_reply FILE: the file holds the reference's answer.
good_reply() {
  grep -qF "\"solution\":\"$REF_SOLUTION\"" "$1" && grep -qF "\"steps\":$REF_STEPS," "$1" && grep -qF "$REF_TOKENS" "$1"
}

# ---- background loops of valid requests --------------------------------------------------------
# Each line of bg.N.log: "<end ms> <latency ms> ok" or "<end ms> <latency ms> FAIL <why>".
bg_loop() {
  local n=$1 out code rc t0 t1
  while [[ ! -e $WORK/stop ]]; do
    t0=$(now_ms)
    out=$("${CURL[@]}" -o "$WORK/bg.$n.body" -w '%{http_code}' -H "$AUTH" -H "$JSON" --data-binary "$SOLVE_BODY" "$BASE/v1/hrm/solve" 2>"$WORK/bg.$n.err")
    rc=$?
    t1=$(now_ms)
    code=${out:-000}
    if [[ $rc -eq 0 && $code == 200 ]] && good_reply "$WORK/bg.$n.body"; then
      echo "$t1 $((t1 - t0)) ok"
    elif [[ $rc -ne 0 ]]; then
      echo "$t1 $((t1 - t0)) FAIL curl exit $rc ($(head -c 200 "$WORK/bg.$n.err"))"
    else
      echo "$t1 $((t1 - t0)) FAIL HTTP $code $(head -c 300 "$WORK/bg.$n.body")"
    fi
  done >"$WORK/bg.$n.log"
}
for n in 1 2; do
  bg_loop "$n" &
  BG_PIDS+=($!)
done
sleep 0.5

# ---- 400: bad JSON, wrong types, unknown fields ------------------------------------------------
expect_error "malformed JSON" 400 - POST /v1/hrm/solve -H "$AUTH" -H "$JSON" --data-binary '{"puzzle": "53..7'
expect_error "empty body" 400 - POST /v1/hrm/solve -H "$AUTH" -H "$JSON" --data-binary ''
expect_error "not an object" 400 - POST /v1/hrm/solve -H "$AUTH" -H "$JSON" --data-binary '[1, 2, 3]'
expect_error "puzzle of the wrong type" 400 puzzle POST /v1/hrm/solve -H "$AUTH" -H "$JSON" --data-binary '{"puzzle": 5}'
expect_error "inputs of the wrong type" 400 inputs POST /v1/hrm/solve -H "$AUTH" -H "$JSON" --data-binary '{"inputs": "x"}'
expect_error "inputs of the wrong length" 400 inputs POST /v1/hrm/solve -H "$AUTH" -H "$JSON" --data-binary '{"inputs": [1, 2]}'
expect_error "inputs holding a string" 400 inputs POST /v1/hrm/solve -H "$AUTH" -H "$JSON" \
  --data-binary "{\"inputs\": [$(printf '1,%.0s' $(seq 80))\"x\"]}"
expect_error "inputs out of the vocabulary" 400 inputs POST /v1/hrm/solve -H "$AUTH" -H "$JSON" \
  --data-binary "{\"inputs\": [$(printf '1,%.0s' $(seq 80))40]}"
expect_error "unknown field" 400 bogus POST /v1/hrm/solve -H "$AUTH" -H "$JSON" --data-binary "{\"puzzle\": \"$PUZZLE\", \"bogus\": 1}"
expect_error "both puzzle and inputs" 400 puzzle POST /v1/hrm/solve -H "$AUTH" -H "$JSON" \
  --data-binary "{\"puzzle\": \"$PUZZLE\", \"inputs\": [1]}"
expect_error "puzzle too short" 400 puzzle POST /v1/hrm/solve -H "$AUTH" -H "$JSON" --data-binary '{"puzzle": "123"}'
expect_error "puzzle_identifier out of range" 400 puzzle_identifier POST /v1/hrm/solve -H "$AUTH" -H "$JSON" \
  --data-binary "{\"puzzle\": \"$PUZZLE\", \"puzzle_identifier\": 7}"

# ---- 413 ---------------------------------------------------------------------------------------
{
  printf '{"puzzle": "'
  head -c $((MAX_BODY + 4096)) /dev/zero | tr '\0' '.'
  printf '"}'
} >"$WORK/big.json"
expect_error "body over --max-body ($MAX_BODY)" 413 - POST /v1/hrm/solve -H "$AUTH" -H "$JSON" --data-binary "@$WORK/big.json"
# A body of exactly the limit is read (and refused only for its content: 400, not 413).
{
  printf '{"puzzle": "'
  head -c $((MAX_BODY - 15)) /dev/zero | tr '\0' '.'
  printf '"}'
} >"$WORK/limit.json"
[[ $(wc -c <"$WORK/limit.json") -le $MAX_BODY ]] || fail "body at the limit" "test bug: $(wc -c <"$WORK/limit.json") bytes"
expect_error "body at --max-body (a puzzle too long)" 400 puzzle POST /v1/hrm/solve -H "$AUTH" -H "$JSON" --data-binary "@$WORK/limit.json"

# ---- 404 / 405 ---------------------------------------------------------------------------------
req GET /v1/hrm/solve -H "$AUTH"
if [[ $STATUS != 404 && $STATUS != 405 ]]; then
  fail "GET on a POST endpoint" "HTTP $STATUS (expected 404 or 405): ${BODY:0:200}"
elif [[ $(json_num status) != "$STATUS" ]]; then
  fail "GET on a POST endpoint" "HTTP $STATUS without a JSON error body: ${BODY:0:200}"
else
  ok "GET on a POST endpoint -> $STATUS ($(json_str message))"
fi
expect_error "unknown path" 404 - POST /v1/nope -H "$AUTH" -H "$JSON" --data-binary '{}'
expect_error "unknown path (GET)" 404 - GET /v1/hrm -H "$AUTH"
expect_error "CLaRa endpoint on an HRM-only server" 404 - POST /v1/clara/search -H "$AUTH" -H "$JSON" --data-binary '{"question": "x"}'

# ---- 401 ---------------------------------------------------------------------------------------
expect_error "no API key" 401 - POST /v1/hrm/solve -H "$JSON" --data-binary "$SOLVE_BODY"
expect_error "wrong API key" 401 - POST /v1/hrm/solve -H "Authorization: Bearer wrong-$KEY" -H "$JSON" --data-binary "$SOLVE_BODY"
expect_error "key without Bearer" 401 - POST /v1/hrm/solve -H "Authorization: $KEY" -H "$JSON" --data-binary "$SOLVE_BODY"
expect_error "no API key on /metrics" 401 - GET /metrics
req POST /v1/hrm/solve -H "$AUTH" -H "$JSON" --data-binary "$SOLVE_BODY"
if [[ $STATUS == 200 && $(json_str solution) == "$REF_SOLUTION" ]]; then ok "right API key -> 200"; else fail "right API key" "HTTP $STATUS ${BODY:0:200}"; fi
req GET /healthz
if [[ $STATUS == 200 ]]; then ok "/healthz needs no key -> 200"; else fail "/healthz without a key" "HTTP $STATUS ${BODY:0:200}"; fi
# A 401 on a keep-alive connection: the next request on that connection must still be answered.
out=$("${CURL[@]}" -o /dev/null -w '%{http_code} ' -H "$JSON" --data-binary "$SOLVE_BODY" "$BASE/v1/hrm/solve" \
  --next -o "$WORK/body" -w '%{http_code} %{num_connects}' -H "$AUTH" -H "$JSON" --data-binary "$SOLVE_BODY" "$BASE/v1/hrm/solve" 2>&1)
BODY=$(cat "$WORK/body" 2>/dev/null)
if [[ $out == "401 200 "* && $(json_str solution) == "$REF_SOLUTION" ]]; then
  ok "401, then a good request on the same connection -> 200 (connects: ${out##* })"
else
  fail "401 then a good request on the same connection" "statuses and connects '$out': ${BODY:0:200}"
fi

# ---- slowloris ---------------------------------------------------------------------------------
# slow_conn ID MODE: one connection. MODE idle: a partial request (headers, no blank line), then
# silence. MODE trickle: one byte every READ_TIMEOUT_S/2 s, for up to 6 read timeouts. Prints
# "ID closed <ms>" when the server closed it, "ID open <ms>" when it was still open at the end.
slow_conn() {
  local id=$1 mode=$2 fd t0 rc
  trap '' PIPE
  t0=$(now_ms)
  exec {fd}<>"/dev/tcp/127.0.0.1/$PORT" || { echo "$id connect-failed 0"; return; }
  if [[ $mode == idle ]]; then
    printf 'POST /v1/hrm/solve HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\nContent-Type: application/json\r\n' "$AUTH" >&"$fd"
    local first='' line
    while :; do
      IFS= read -r -t $((READ_TIMEOUT_S * 6)) -u "$fd" line
      rc=$?
      [[ -z $first && -n $line ]] && first=${line%$'\r'}
      ((rc == 0)) || break
    done
    if ((rc > 128)); then echo "$id open $(($(now_ms) - t0)) ${first:-(no reply)}"; else echo "$id closed $(($(now_ms) - t0)) ${first:-(no reply)}"; fi
  else
    local text="POST /v1/hrm/solve HTTP/1.1" i=0 deadline=$((t0 + READ_TIMEOUT_S * 6000))
    text+=$'\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'
    while (($(now_ms) < deadline)); do
      # The server closed it: the read sees EOF (or the write fails).
      IFS= read -r -t 0.01 -u "$fd" _
      rc=$?
      if ((rc == 1)); then echo "$id closed $(($(now_ms) - t0))"; exec {fd}>&-; return; fi
      printf '%s' "${text:i:1}" 1>&"$fd" 2>/dev/null || { echo "$id closed $(($(now_ms) - t0))"; exec {fd}>&-; return; }
      i=$(((i + 1) % ${#text}))
      sleep "$(awk -v s="$READ_TIMEOUT_S" 'BEGIN { print s / 2 }')"
    done
    echo "$id open $(($(now_ms) - t0))"
  fi
  exec {fd}>&-
}
window_start=$(now_ms)
slow_pids=()
for i in 1 2 3 4 5 6; do
  slow_conn "idle$i" idle >"$WORK/slow.idle$i" &
  slow_pids+=($!)
done
slow_conn trickle trickle >"$WORK/slow.trickle" &
slow_pids+=($!)
wait "${slow_pids[@]}"
window_end=$(now_ms)
# httplib answers a request whose headers time out (400), then waits for the next request on the
# connection for the keep-alive timeout, which the server sets to the read timeout too: the
# connection closes after two read timeouts.
limit=$((READ_TIMEOUT_S * 2000 + 1500))
idle_bad=0
idle_times=()
for i in 1 2 3 4 5 6; do
  read -r _ state ms reply <"$WORK/slow.idle$i"
  idle_times+=("$ms")
  if [[ $state != closed || $ms -gt $limit ]]; then idle_bad=1; fi
done
if ((idle_bad)); then
  fail "slowloris: 6 partial requests closed within 2 x --read-timeout-s + 1.5 s" "$(cat "$WORK"/slow.idle* | tr '\n' ';')"
else
  ok "slowloris: 6 partial requests (then silence) closed by the server after ${idle_times[*]} ms (read timeout ${READ_TIMEOUT_S} s; reply: ${reply})"
fi
read -r _ state ms <"$WORK/slow.trickle"
if [[ $state == closed ]]; then
  ok "slowloris: a 1-byte-per-$((READ_TIMEOUT_S * 500)) ms trickle closed after $ms ms"
else
  fail "slowloris: a 1-byte-per-$((READ_TIMEOUT_S * 500)) ms trickle of headers" \
    "still open after $ms ms ($((ms / 1000 / READ_TIMEOUT_S)) read timeouts): the read timeout is per read, with no deadline for the whole request"
fi
# The valid requests during the slow connections: all answered, and quickly.
slow_max=$(cat "$WORK"/bg.*.log | awk -v a="$window_start" -v b="$window_end" '$1 >= a && $1 - $2 <= b { n++; if ($2 > m) m = $2 } END { print n + 0, m + 0 }')
read -r slow_n slow_ms <<<"$slow_max"
if ((slow_n == 0)); then
  fail "valid requests during slowloris" "none completed in the $((window_end - window_start)) ms window"
elif ((slow_ms > READ_TIMEOUT_S * 1000 / 2)); then
  fail "valid requests during slowloris" "the slowest of $slow_n took $slow_ms ms (over half the read timeout)"
else
  ok "valid requests during slowloris: $slow_n answered, the slowest in $slow_ms ms"
fi

# ---- abrupt disconnects ------------------------------------------------------------------------
send_and_close() {  # MODE: full (a whole request) | body (half the body) | head (half the headers)
  local fd len=${#SOLVE_BODY}
  trap '' PIPE
  exec {fd}<>"/dev/tcp/127.0.0.1/$PORT" || return 1
  case $1 in
    full) printf 'POST /v1/hrm/solve HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n%s\r\nContent-Length: %d\r\n\r\n%s' "$AUTH" "$JSON" "$len" "$SOLVE_BODY" >&"$fd" ;;
    body) printf 'POST /v1/hrm/solve HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n%s\r\nContent-Length: %d\r\n\r\n%s' "$AUTH" "$JSON" "$len" "${SOLVE_BODY:0:len/2}" >&"$fd" ;;
    head) printf 'POST /v1/hrm/solve HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthor' >&"$fd" ;;
  esac
  exec {fd}>&-
}
connect_fail=0
for i in $(seq 40); do
  for mode in full body head; do send_and_close "$mode" 2>/dev/null || connect_fail=$((connect_fail + 1)); done
  # A burst of full requests closed at once, some of them batched together.
  if ((i % 10 == 0)); then
    burst=()
    for _ in $(seq 16); do
      send_and_close full 2>/dev/null &
      burst+=($!)
    done
    for p in "${burst[@]}"; do wait "$p" || connect_fail=$((connect_fail + 1)); done
  fi
done
if ((connect_fail)); then fail "abrupt disconnects" "$connect_fail connection(s) refused"; fi
sleep 1
req POST /v1/hrm/solve -H "$AUTH" -H "$JSON" --data-binary "$SOLVE_BODY"
printf '%s' "$BODY" >"$WORK/after.body"
if kill -0 "$SERVER_PID" 2>/dev/null && [[ $STATUS == 200 ]] && good_reply "$WORK/after.body"; then
  ok "abrupt disconnects: 184 requests closed right after sending (whole, half body, half headers); the server answers correctly"
else
  fail "abrupt disconnects" "after them: HTTP $STATUS ${BODY:0:200}"
fi
# The whole requests whose clients hung up were dropped, not solved: counted as 499.
req GET /metrics -H "$AUTH"
gone=$(grep '^hrmclara_requests_total{endpoint="hrm_solve",status="499"}' <<<"$BODY" | awk '{ print $2 }')
if [[ -n $gone ]] && ((gone > 0)); then
  ok "abandoned requests dropped: $gone of the 104 whole requests counted as 499 (client gone)"
else
  fail "abandoned requests" "no hrm_solve request counted with status 499 (metrics: '${gone}')"
fi
# Nothing is left counted in flight once the abandoned solves have finished.
in_flight=
for _ in $(seq 50); do
  req GET /metrics -H "$AUTH"
  in_flight=$(grep '^hrmclara_in_flight{model="hrm"}' <<<"$BODY" | awk '{ print $2 }')
  queue=$(grep '^hrmclara_queue_depth{model="hrm"}' <<<"$BODY" | awk '{ print $2 }')
  # The background loops are in flight too: at most 2.
  [[ -n $in_flight ]] && awk -v x="$in_flight" 'BEGIN { exit !(x <= 2) }' && break
  sleep 0.1
done
if [[ -n $in_flight ]] && awk -v x="$in_flight" 'BEGIN { exit !(x <= 2) }'; then
  ok "metrics after the disconnects: hrm in_flight $in_flight (<= the 2 background loops), queue_depth ${queue:-?}"
else
  fail "metrics after the disconnects" "hrm in_flight '${in_flight}' (expected <= 2)"
fi

# ---- the background loops: every reply a correct 200 -------------------------------------------
touch "$WORK/stop"
for p in "${BG_PIDS[@]}"; do wait "$p"; done
BG_PIDS=()
bg_total=$(cat "$WORK"/bg.*.log | wc -l)
bg_bad=$(cat "$WORK"/bg.*.log | grep -c ' FAIL ')
bg_max=$(cat "$WORK"/bg.*.log | awk '{ if ($2 > m) m = $2 } END { print m + 0 }')
if ((bg_total < 10)); then
  fail "background valid requests" "only $bg_total were sent"
elif ((bg_bad > 0)); then
  fail "background valid requests" "$bg_bad of $bg_total failed; first: $(grep -h ' FAIL ' "$WORK"/bg.*.log | head -n 1 | cut -d' ' -f3-)"
else
  ok "background valid requests: all $bg_total were 200 with the reference answer (slowest $bg_max ms)"
fi

# ---- 503: a full queue (a second server: one puzzle at a time, a queue of one) ------------------
start_server server2 --hrm-max-batch 1 --queue 1 --hrm-max-wait-ms 0
SERVER2_PID=$STARTED_PID
PORT2=$STARTED_PORT
flood() {
  for i in $(seq 24); do
    "${CURL[@]}" -o "$WORK/flood.$i.body" -w '%{http_code}\n' -H "$JSON" --data-binary "$SOLVE_BODY" \
      "http://127.0.0.1:$PORT2/v1/hrm/solve" >"$WORK/flood.$i.code" 2>/dev/null &
  done
  wait
}
for _ in 1 2 3; do
  rm -f "$WORK"/flood.*
  (flood)
  n200=0 n503=0 nother=0 nwrong=0
  for i in $(seq 24); do
    case $(cat "$WORK/flood.$i.code") in
      200) n200=$((n200 + 1)); good_reply "$WORK/flood.$i.body" || nwrong=$((nwrong + 1)) ;;
      503) n503=$((n503 + 1)); grep -q '"status":503' "$WORK/flood.$i.body" && grep -q 'queue is full' "$WORK/flood.$i.body" || nother=$((nother + 1)) ;;
      *) nother=$((nother + 1)) ;;
    esac
  done
  if ((n503 > 0 || nother > 0 || nwrong > 0)); then break; fi
done
if ((nother > 0 || nwrong > 0)); then
  fail "queue full -> 503" "24 concurrent requests: $n200 x 200 ($nwrong wrong), $n503 x 503, $nother other"
elif ((n503 > 0)); then
  ok "queue full -> 503 (--hrm-max-batch 1 --queue 1, 24 concurrent requests: $n200 x 200 correct, $n503 x 503 'queue is full')"
else
  fail "queue full -> 503" "3 floods of 24 concurrent requests all got 200: could not fill the queue"
fi
stop_server "$SERVER2_PID"
SERVER2_PID=

# ---- SIGTERM: requests in flight finish, then exit 0 --------------------------------------------
for i in $(seq 8); do
  "${CURL[@]}" -o "$WORK/drain.$i.body" -w '%{http_code}\n' -H "$AUTH" -H "$JSON" --data-binary "$SOLVE_BODY" \
    "$BASE/v1/hrm/solve" >"$WORK/drain.$i.code" 2>"$WORK/drain.$i.err" &
  BG_PIDS+=($!)
done
sleep 0.05
kill -TERM "$SERVER_PID"
for p in "${BG_PIDS[@]}"; do wait "$p"; done
BG_PIDS=()
drain_ok=0 drain_503=0 drain_refused=0 drain_bad=()
for i in $(seq 8); do
  code=$(cat "$WORK/drain.$i.code")
  if [[ $code == 200 ]] && good_reply "$WORK/drain.$i.body"; then drain_ok=$((drain_ok + 1))
  elif [[ $code == 503 ]] && grep -q draining "$WORK/drain.$i.body"; then drain_503=$((drain_503 + 1))
  elif [[ $code == 000 ]] && grep -q "Couldn't connect\|Connection refused" "$WORK/drain.$i.err"; then drain_refused=$((drain_refused + 1))
  else drain_bad+=("#$i: HTTP $code $(head -c 100 "$WORK/drain.$i.body") $(head -c 100 "$WORK/drain.$i.err")")
  fi
done
rc=
for _ in $(seq 300); do  # 30 s
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then rc=0; wait "$SERVER_PID" || rc=$?; break; fi
  sleep 0.1
done
if ((${#drain_bad[@]})); then
  fail "SIGTERM with 8 requests in flight" "${drain_bad[*]}"
else
  ok "SIGTERM with 8 requests in flight: $drain_ok answered correctly, $drain_503 x 503 draining, $drain_refused refused after the listener closed"
fi
if [[ -z $rc ]]; then
  fail "exit after SIGTERM" "the server still runs 30 s after SIGTERM"
elif ((rc != 0)); then
  fail "exit after SIGTERM" "exit status $rc (expected 0)"
else
  ok "the server exited 0 after SIGTERM"
  SERVER_PID=
fi

if ((FAILS)); then
  echo "fault_test: $FAILS check(s) failed"
  for log in "$WORK"/server*.log; do
    [[ -s $log ]] && { echo "--- $(basename "$log") (last 15 lines) ---"; tail -n 15 "$log"; }
  done
  exit 1
fi
echo "fault_test: all checks passed"
exit 0
