#!/usr/bin/env bash
# Side-by-side benchmark: client_credentials + private_key_jwt token issuance,
# Mandate vs node-oidc-provider, driven by the same load generator.
#
# Usage: bench/run.sh [both|mandate|node]      (default: both)
#
# Environment overrides:
#   BENCH_REQUESTS     measured requests per server          (default 100000)
#   BENCH_DURATION     time limit of the measured phase, s   (default 20)
#   BENCH_WARMUP       warm-up requests, not measured        (default 2000)
#   BENCH_CONCURRENCY  parallel keep-alive connections       (default 64)
#   BENCH_PIN=1        pin the server to CPU 0 and the load generator to CPU 1
#   BENCH_SKIP_BUILD=1 reuse existing target/release binaries
#   BENCH_KEEP=1       keep the temp dir (keys, logs, JSON results)
#   NODE               node binary for oidc-provider          (default: node)
#   LOADGEN_BIN        mandate-loadgen binary (default: next to MANDATE_BIN's default)
#   MANDATE_BIN        mandate binary (default: $CARGO_TARGET_DIR/release/mandate,
#                      or target/release/mandate)
#   BENCH_ADMIN_TOKEN  Mandate admin token, 16+ chars (default bench-admin-token-0123456789)
#   BENCH_LOADGEN_ARGS more mandate-loadgen flags, e.g. --dpop (a DPoP proof per request)
#   BENCH_SERVE_ARGS   more `mandate serve` flags (default: both rate limits off, since one client
#                      at full speed from one address is what they exist to stop; set it to the
#                      empty string for builds older than the limits)
#   BENCH_DATABASE_URL run Mandate on PostgreSQL instead of SQLite: a URL of an existing database
#                      on the server (e.g. postgres://postgres@127.0.0.1:5432/postgres); each run
#                      creates a fresh database next to it and drops it at the end (needs psql)
#   BENCH_NODES=2      with BENCH_DATABASE_URL: two `mandate serve` nodes on the one database
#                      (one issuer, one data dir), driven by one load generator whose connections
#                      alternate between them, as behind a load balancer
#   BENCH_NODE_LOADGENS=2  with BENCH_NODES=2: a load generator per node instead, each with half the
#                      connections; the result sums their tokens/s and keeps the worse latency (the
#                      two generators' windows and assertion signing overlap only roughly)
#   BENCH_RESULT=FILE  copy Mandate's result JSON to FILE
#   BENCH_WRK=1        after the load generator, drive each server with wrk as well (same
#                      duration and connections, 2 threads, bench/wrk-token.lua): the load
#                      generator signs the requests beforehand (--write-bodies), each sent once;
#                      BENCH_WRK_LINES requests are signed (default 25000 x BENCH_DURATION)
#
# All traffic goes to 127.0.0.1 only. Every background process started here is
# killed on exit.
set -euo pipefail

MODE="${1:-both}"
case "$MODE" in
  both | mandate | node) ;;
  -h | --help)
    sed -n '2,20p' "$0"
    exit 0
    ;;
  *)
    echo "usage: $0 [both|mandate|node]" >&2
    exit 2
    ;;
esac

REQUESTS="${BENCH_REQUESTS:-100000}"
DURATION="${BENCH_DURATION:-20}"
WARMUP="${BENCH_WARMUP:-2000}"
CONCURRENCY="${BENCH_CONCURRENCY:-64}"
NODE="${NODE:-node}"
RESOURCE="https://api.example.com"
SCOPE="read"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NO_LIMITS="--rate-limit-per-address 0 --rate-limit-per-client 0"
BENCH="$ROOT/bench"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
LOADGEN="${LOADGEN_BIN:-$TARGET/release/mandate-loadgen}"
MANDATE="${MANDATE_BIN:-$TARGET/release/mandate}"

log() { printf '[bench] %s\n' "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

# ---------------------------------------------------------------- cleanup
WORK="$(mktemp -d "${TMPDIR:-/tmp}/mandate-bench.XXXXXX")"
PIDS=()
DATABASES=()
cleanup() {
  local rc=$?
  set +e
  for pid in "${PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null
    fi
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  for db in "${DATABASES[@]}"; do
    psql "$BENCH_DATABASE_URL" -qAtc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1
  done
  if [[ "${BENCH_KEEP:-0}" == 1 ]]; then
    log "kept work dir $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

stop_pid() {
  local pid="$1"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# ---------------------------------------------------------------- JSON helpers
JSONTOOL="${BENCH_JSONTOOL:-}" # jq or python3; auto-detected when unset
if [[ -n $JSONTOOL ]]; then
  command -v "$JSONTOOL" >/dev/null 2>&1 || die "BENCH_JSONTOOL=$JSONTOOL not found"
elif command -v jq >/dev/null 2>&1; then
  JSONTOOL=jq
elif command -v python3 >/dev/null 2>&1; then
  JSONTOOL=python3
else
  die "need jq or python3 for JSON handling"
fi

# json_get FILE PATH  (PATH like .latency_ms.p50)
json_get() {
  if [[ $JSONTOOL == jq ]]; then
    jq -r "$2 // empty" "$1"
  else
    python3 - "$1" "$2" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
for k in [p for p in sys.argv[2].split('.') if p]:
    v = v.get(k) if isinstance(v, dict) else None
print('' if v is None else (json.dumps(v) if isinstance(v, (dict, list)) else v))
PY
  fi
}

# agent_body NAME OWNER JWKFILE -> JSON on stdout
agent_body() {
  if [[ $JSONTOOL == jq ]]; then
    jq -cn --arg name "$1" --arg owner "$2" --slurpfile jwk "$3" \
      '{name: $name, owner: $owner, jwks: {keys: [$jwk[0]]}}'
  else
    python3 - "$1" "$2" "$3" <<'PY'
import json, sys
jwk = json.load(open(sys.argv[3]))
print(json.dumps({"name": sys.argv[1], "owner": sys.argv[2], "jwks": {"keys": [jwk]}}))
PY
  fi
}

free_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
  else
    local p
    for _ in $(seq 1 200); do
      p=$((20000 + RANDOM % 40000))
      if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        echo "$p"
        return
      fi
    done
    die "no free port found"
  fi
}

# wait_http URL PID LOGFILE: until GET URL answers 200, the process dies, or 60 s pass
wait_http() {
  local url="$1" pid="$2" logf="$3"
  for _ in $(seq 1 600); do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$logf" >&2 || true
      die "server exited before becoming ready ($url)"
    fi
    if [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true)" == 200 ]]; then
      return 0
    fi
    sleep 0.1
  done
  tail -n 30 "$logf" >&2 || true
  die "timed out waiting for $url"
}

SERVER_PIN=()
LOADGEN_PIN=()
if [[ "${BENCH_PIN:-0}" == 1 ]]; then
  command -v taskset >/dev/null 2>&1 || die "BENCH_PIN=1 needs taskset"
  SERVER_PIN=(taskset -c 0)
  LOADGEN_PIN=(taskset -c 1)
fi

# run_loadgen NAME ENDPOINT CLIENT_ID AUD [CONCURRENCY] -> writes $WORK/NAME.json
# (ENDPOINT may be several URLs separated by spaces: the connections are dealt out among them)
run_loadgen() {
  local name="$1" endpoint="$2" cid="$3" aud="$4" conc="${5:-$CONCURRENCY}"
  local out="$WORK/$name.json" e endpoints=()
  for e in $endpoint; do endpoints+=(--token-endpoint "$e"); done
  log "$name: warmup $WARMUP, then $REQUESTS requests or ${DURATION}s at concurrency $conc"
  local rc=0
  "${LOADGEN_PIN[@]}" "$LOADGEN" \
    "${endpoints[@]}" \
    --client-id "$cid" \
    --key "$WORK/key.pk8" \
    --aud "$aud" \
    --resource "$RESOURCE" \
    --scope "$SCOPE" \
    --concurrency "$conc" \
    --warmup "$WARMUP" \
    --requests "$REQUESTS" \
    --duration "$DURATION" \
    ${BENCH_LOADGEN_ARGS:-} \
    --json >"$out" 2>"$WORK/$name.loadgen.err" &
  # Waiting on a background job keeps INT/TERM traps responsive.
  local lpid=$!
  PIDS+=("$lpid")
  wait "$lpid" || rc=$?
  if [[ ! -s "$out" ]]; then
    cat "$WORK/$name.loadgen.err" >&2
    die "$name: load generator produced no result (exit $rc)"
  fi
  local ok req errs
  ok="$(json_get "$out" .successes)"
  req="$(json_get "$out" .requests)"
  errs="$(json_get "$out" .errors_total)"
  log "$name: $ok/$req successful, $(json_get "$out" .throughput_rps) req/s," \
    "p50 $(json_get "$out" .latency_ms.p50) ms, p99 $(json_get "$out" .latency_ms.p99) ms," \
    "warmup $(json_get "$out" .warmup_successes) ok/$(json_get "$out" .warmup_errors) err"
  if [[ "$errs" != 0 ]]; then
    log "$name: errors by status: $(json_get "$out" .errors)"
    log "$name: sample error bodies: $(json_get "$out" .error_samples)"
  fi
  if [[ "$rc" != 0 || "$ok" == 0 ]]; then
    cat "$WORK/$name.loadgen.err" >&2
    die "$name: no successful requests"
  fi
}

# run_wrk NAME ENDPOINT CLIENT_ID AUD -> writes $WORK/NAME-wrk.json
run_wrk() {
  local name="$1" endpoint="$2" cid="$3" aud="$4"
  command -v wrk >/dev/null 2>&1 || die "BENCH_WRK=1 needs wrk (apt-get install wrk)"
  local lines="${BENCH_WRK_LINES:-$((25000 * ${DURATION%.*}))}" bodies="$WORK/$name.bodies"
  log "$name (wrk): signing $lines requests"
  "$LOADGEN" --token-endpoint "$endpoint" --client-id "$cid" --key "$WORK/key.pk8" --aud "$aud" \
    --resource "$RESOURCE" --scope "$SCOPE" --requests "$lines" ${BENCH_LOADGEN_ARGS:-} \
    --write-bodies "$bodies" --json 2>"$WORK/$name-wrk.loadgen.err" ||
    die "$name (wrk): signing failed: $(cat "$WORK/$name-wrk.loadgen.err")"
  log "$name (wrk): ${DURATION}s at $CONCURRENCY connections, 2 threads"
  "${LOADGEN_PIN[@]}" wrk -t2 -c"$CONCURRENCY" -d"${DURATION}s" --timeout 30s --latency \
    -s "$BENCH/wrk-token.lua" "$endpoint" -- "$bodies" 2 >"$WORK/$name-wrk.out" 2>&1 ||
    die "$name (wrk): wrk failed: $(tail -n 5 "$WORK/$name-wrk.out")"
  sed -n 's/^WRK_JSON //p' "$WORK/$name-wrk.out" >"$WORK/$name-wrk.json"
  [[ -s "$WORK/$name-wrk.json" ]] || die "$name (wrk): no result: $(tail -n 5 "$WORK/$name-wrk.out")"
  rm -f "$bodies"
  log "$name (wrk): $(json_get "$WORK/$name-wrk.json" .ok_rps) ok req/s," \
    "p50 $(json_get "$WORK/$name-wrk.json" .latency_ms.p50) ms, p99 $(json_get "$WORK/$name-wrk.json" .latency_ms.p99) ms," \
    "errors $(json_get "$WORK/$name-wrk.json" .errors)"
  if [[ "$(json_get "$WORK/$name-wrk.json" .errors)" != 0 ]]; then
    log "$name (wrk): errors: more requests than BENCH_WRK_LINES (replays are refused), or refusals; see $WORK/$name-wrk.out"
  fi
}

# ---------------------------------------------------------------- build
cargo_build() {
  if command -v flock >/dev/null 2>&1; then
    flock "${BENCH_CARGO_LOCK:-/tmp/cargo.lock}" cargo "$@"
  else
    cargo "$@"
  fi
}

if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  if [[ $MODE == node ]]; then
    log "building mandate-loadgen (release)"
    (cd "$ROOT" && cargo_build build --release -p mandate-loadgen)
  else
    log "building mandate and mandate-loadgen (release)"
    (cd "$ROOT" && cargo_build build --release -p mandate -p mandate-loadgen)
  fi
fi
[[ -x "$LOADGEN" ]] || die "missing $LOADGEN"

"$LOADGEN" keygen --out "$WORK/key.pk8" --jwk-out "$WORK/jwk.json" >/dev/null
log "client key: $(cat "$WORK/jwk.json")"

# ---------------------------------------------------------------- Mandate
run_mandate() {
  [[ -x "$MANDATE" ]] || die "missing $MANDATE"
  local port base data admin store_args=() nodes="${BENCH_NODES:-1}"
  port="$(free_port)"
  base="http://127.0.0.1:$port"
  data="$WORK/mandate-data"
  # Mandate requires an admin token of at least 16 characters.
  admin="${BENCH_ADMIN_TOKEN:-bench-admin-token-0123456789}"
  mkdir -p "$data"
  if [[ -n ${BENCH_DATABASE_URL:-} ]]; then
    command -v psql >/dev/null 2>&1 || die "BENCH_DATABASE_URL needs psql"
    local db="mandate_bench_$$_$RANDOM"
    psql "$BENCH_DATABASE_URL" -qAtc "CREATE DATABASE $db" >/dev/null || die "could not create database $db"
    DATABASES+=("$db")
    store_args=(--database-url "${BENCH_DATABASE_URL%/*}/$db")
    log "mandate: $nodes node(s) on PostgreSQL, fresh database $db"
  elif [[ $nodes != 1 ]]; then
    die "BENCH_NODES=$nodes needs BENCH_DATABASE_URL (nodes share a PostgreSQL database)"
  fi
  # start_node PORT LOG: one `mandate serve` under the one issuer; its pid in NODE_PID
  start_node() {
    MANDATE_ADMIN_TOKEN="$admin" RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0 "${SERVER_PIN[@]}" "$MANDATE" serve \
      --data-dir "$data" --listen "127.0.0.1:$1" --issuer "$base" "${store_args[@]}" ${BENCH_SERVE_ARGS-$NO_LIMITS} \
      >"$2" 2>&1 &
    NODE_PID=$!
  }
  log "mandate: starting on $base (data dir $data, durable storage)"
  local pid
  start_node "$port" "$WORK/mandate.log"
  pid=$NODE_PID
  PIDS+=("$pid")
  wait_http "$base/readyz" "$pid" "$WORK/mandate.log"
  local port2="" pid2=""
  if [[ $nodes == 2 ]]; then
    port2="$(free_port)"
    start_node "$port2" "$WORK/mandate2.log"
    pid2=$NODE_PID
    PIDS+=("$pid2")
    wait_http "http://127.0.0.1:$port2/readyz" "$pid2" "$WORK/mandate2.log"
    log "mandate: second node on http://127.0.0.1:$port2, same issuer and database"
  fi

  api() { # api METHOD PATH BODY -> response body; fails on non-2xx
    local method="$1" path="$2" body="$3" resp code
    resp="$(curl -sS --max-time 10 -X "$method" "$base$path" \
      -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' \
      --data-binary "$body" -w $'\n%{http_code}')"
    code="${resp##*$'\n'}"
    resp="${resp%$'\n'*}"
    if [[ "$code" != 2?? ]]; then
      tail -n 20 "$WORK/mandate.log" >&2 || true
      die "mandate admin API $method $path -> HTTP $code: $resp"
    fi
    printf '%s' "$resp"
  }

  api POST /v1/users '{"name":"Bench Owner","email":"owner@example.com"}' >"$WORK/user.json"
  local owner
  owner="$(json_get "$WORK/user.json" .id)"
  [[ -n "$owner" ]] || die "mandate: user creation returned no id: $(cat "$WORK/user.json")"
  api POST /v1/resources \
    '{"identifier":"https://api.example.com","name":"Bench API","scopes":{"read":[]}}' >/dev/null
  api PUT /v1/policies \
    '{"policies":"permit(principal, action == Action::\"read\", resource);"}' >/dev/null
  api POST /v1/agents "$(agent_body bench-agent "$owner" "$WORK/jwk.json")" >"$WORK/agent.json"
  local cid
  cid="$(json_get "$WORK/agent.json" .client_id)"
  [[ -n "$cid" ]] || die "mandate: agent creation returned no client_id: $(cat "$WORK/agent.json")"
  log "mandate: seeded owner $owner, agent client_id $cid"

  if [[ $nodes == 2 && ${BENCH_NODE_LOADGENS:-1} == 1 ]]; then
    # One load generator, its connections dealt out between the nodes as a
    # load balancer would: the same client CPU and one measuring window.
    run_loadgen mandate "$base/oauth/token http://127.0.0.1:$port2/oauth/token" "$cid" "$base"
    jq '.per_node = [.successes_per_target[] / .wall_secs]' "$WORK/mandate.json" >"$WORK/mandate.tmp"
    mv "$WORK/mandate.tmp" "$WORK/mandate.json"
    log "mandate: two nodes together $(json_get "$WORK/mandate.json" .throughput_rps) req/s" \
      "(per node $(jq -c .per_node "$WORK/mandate.json"))"
    stop_pid "$pid2"
  elif [[ $nodes == 2 ]]; then
    local half=$((CONCURRENCY / 2))
    run_loadgen mandate-a "$base/oauth/token" "$cid" "$base" "$half" &
    local la=$!
    run_loadgen mandate-b "http://127.0.0.1:$port2/oauth/token" "$cid" "$base" "$((CONCURRENCY - half))" &
    local lb=$!
    wait "$la" || die "node A's load generator failed"
    wait "$lb" || die "node B's load generator failed"
    # Both nodes together: tokens/s and counts add up; each latency figure is the worse of the two.
    jq -s '{throughput_rps: (.[0].throughput_rps + .[1].throughput_rps),
      successes: (.[0].successes + .[1].successes), requests: (.[0].requests + .[1].requests),
      errors_total: (.[0].errors_total + .[1].errors_total), errors: [.[0].errors, .[1].errors],
      error_samples: [.[0].error_samples, .[1].error_samples],
      warmup_successes: (.[0].warmup_successes + .[1].warmup_successes),
      warmup_errors: (.[0].warmup_errors + .[1].warmup_errors),
      wall_secs: ([.[0].wall_secs, .[1].wall_secs] | max),
      latency_ms: (.[0].latency_ms as $a | .[1].latency_ms as $b
        | reduce ($a | keys[]) as $k ({}; .[$k] = ([$a[$k], $b[$k]] | max))),
      per_node: [.[0].throughput_rps, .[1].throughput_rps]}' \
      "$WORK/mandate-a.json" "$WORK/mandate-b.json" >"$WORK/mandate.json"
    log "mandate: two nodes together $(json_get "$WORK/mandate.json" .throughput_rps) req/s" \
      "(per node $(jq -c .per_node "$WORK/mandate.json"))"
    stop_pid "$pid2"
  else
    run_loadgen mandate "$base/oauth/token" "$cid" "$base"
    if [[ "${BENCH_WRK:-0}" == 1 ]]; then run_wrk mandate "$base/oauth/token" "$cid" "$base"; fi
  fi
  if [[ -n ${BENCH_RESULT:-} ]]; then cp "$WORK/mandate.json" "$BENCH_RESULT"; fi
  stop_pid "$pid"
  log "mandate: stopped"
}

# ---------------------------------------------------------------- node-oidc-provider
run_node() {
  command -v "$NODE" >/dev/null 2>&1 || die "node not found (set NODE=/path/to/node)"
  local dir="$BENCH/oidc-provider"
  if [[ ! -d "$dir/node_modules/oidc-provider" ]]; then
    log "node: installing oidc-provider (npm ci)"
    (cd "$dir" && npm ci --no-audit --no-fund >&2)
  fi
  local port base cid
  port="$(free_port)"
  base="http://127.0.0.1:$port"
  cid="bench-client"
  log "node: starting oidc-provider $(json_get "$dir/node_modules/oidc-provider/package.json" .version)" \
    "on $base with $("$NODE" --version) (in-memory adapter: NOT durable)"
  (cd "$dir" && PORT="$port" CLIENT_ID="$cid" CLIENT_JWK_FILE="$WORK/jwk.json" NODE_ENV=production \
    exec "${SERVER_PIN[@]}" "$NODE" server.mjs) >"$WORK/node.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  wait_http "$base/.well-known/openid-configuration" "$pid" "$WORK/node.log"
  grep -h 'WARNING' "$WORK/node.log" | sed 's/^/[bench] node: /' >&2 || true

  run_loadgen node "$base/token" "$cid" "$base"
  if [[ "${BENCH_WRK:-0}" == 1 ]]; then run_wrk node "$base/token" "$cid" "$base"; fi
  stop_pid "$pid"
  log "node: stopped"
}

if [[ $MODE != node ]]; then run_mandate; fi
if [[ $MODE != mandate ]]; then run_node; fi

# ---------------------------------------------------------------- report
col() { # col NAME PATH -> value or "-"
  local f="$WORK/$1.json"
  if [[ -s "$f" ]]; then json_get "$f" "$2"; else echo "-"; fi
}
ratio() {
  if [[ "$1" == - || "$2" == - ]]; then
    echo "-"
  else
    awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "-"; else printf "%.2fx", a / b }'
  fi
}
fmt() { # fmt VALUE DECIMALS
  if [[ "$1" == - ]]; then echo "-"; else awk -v v="$1" -v d="$2" 'BEGIN { printf "%.*f", d, v }'; fi
}

echo
echo "client_credentials + private_key_jwt (EdDSA), concurrency $CONCURRENCY," \
  "warmup $WARMUP, up to $REQUESTS requests or ${DURATION}s, $(nproc 2>/dev/null || echo '?') cores shared"
printf '%-16s %14s %20s %14s\n' "" "Mandate" "node-oidc-provider" "Mandate/node"
for row in "req/s|.throughput_rps|1" "p50 ms|.latency_ms.p50|2" "p90 ms|.latency_ms.p90|2" \
  "p99 ms|.latency_ms.p99|2" "p99.9 ms|.latency_ms.p99_9|2" "max ms|.latency_ms.max|2" \
  "requests|.requests|0" "errors|.errors_total|0" "wall s|.wall_secs|2"; do
  IFS='|' read -r label path dec <<<"$row"
  m="$(col mandate "$path")"
  n="$(col node "$path")"
  r="-"
  if [[ $label != requests && $label != errors && $label != "wall s" ]]; then r="$(ratio "$m" "$n")"; fi
  printf '%-16s %14s %20s %14s\n' "$label" "$(fmt "$m" "$dec")" "$(fmt "$n" "$dec")" "$r"
done
if [[ "${BENCH_WRK:-0}" == 1 ]]; then
  echo "wrk (2 threads, $CONCURRENCY connections, ${DURATION}s, each request sent once):"
  for row in "req/s|.ok_rps|1" "p50 ms|.latency_ms.p50|2" "p90 ms|.latency_ms.p90|2" \
    "p99 ms|.latency_ms.p99|2" "max ms|.latency_ms.max|2" "requests|.requests|0" "errors|.errors|0"; do
    IFS='|' read -r label path dec <<<"$row"
    m="$(col mandate-wrk "$path")"
    n="$(col node-wrk "$path")"
    r="-"
    if [[ $label != requests && $label != errors ]]; then r="$(ratio "$m" "$n")"; fi
    printf '%-16s %14s %20s %14s\n' "$label" "$(fmt "$m" "$dec")" "$(fmt "$n" "$dec")" "$r"
  done
fi
echo "storage:          Mandate durable (on-disk data dir); node-oidc-provider in-memory LRU adapter (NOT durable)"
echo "req/s counts successful token responses only; latency percentiles are over successful requests."
