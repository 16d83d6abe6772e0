#!/usr/bin/env bash
# HTTP benchmarks of the delegation engine against a running `mandate serve`
# (release build, embedded SQLite), driven by mandate-loadgen:
#
#   check     POST /v1/check with a token at the end of a 3-hop chain
#             (Alice -> planner -> child -> grandchild), by the calendar's
#             mandate:check token; the same request every time, so after
#             the first its chain and decision come from the node's caches
#             (BENCHMARKS.md has the in-process figure for uncached ones).
#   exchange  one-hop token exchange: the child exchanges the planner's
#             grant token, each request with a fresh client assertion.
#
# Usage: bench/delegation.sh [check|exchange|both]        (default: both)
# Environment: BENCH_REQUESTS (default 100000), BENCH_DURATION (20),
# BENCH_WARMUP (2000), BENCH_CONCURRENCY (64), BENCH_SKIP_BUILD=1,
# BENCH_KEEP=1 (keep the work dir), MANDATE_BIN (default: the release build),
# BENCH_DATABASE_URL (PostgreSQL instead of
# SQLite: a URL of an existing database; a fresh database is created next to
# it and dropped at the end, needs psql), BENCH_RESULT_DIR (write each run's
# JSON result there as check.json and exchange.json). Needs curl and jq.
# Loopback only.
set -euo pipefail

MODE="${1:-both}"
REQUESTS="${BENCH_REQUESTS:-100000}"
DURATION="${BENCH_DURATION:-20}"
WARMUP="${BENCH_WARMUP:-2000}"
CONCURRENCY="${BENCH_CONCURRENCY:-64}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
M="${MANDATE_BIN:-$TARGET/release/mandate}"
L="$TARGET/release/mandate-loadgen"
ADMIN="bench-admin-token-0123456789"
CAL="https://calendar.example"

log() { printf '[bench] %s\n' "$*" >&2; }
WORK="$(mktemp -d "${TMPDIR:-/tmp}/mandate-deleg.XXXXXX")"
SERVER=""
DB=""
cleanup() {
  [[ -n $SERVER ]] && kill -TERM "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null
  [[ -n $DB ]] && psql "$BENCH_DATABASE_URL" -qAtc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
  if [[ "${BENCH_KEEP:-0}" == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  (cd "$ROOT" && cargo build --release -p mandate -p mandate-loadgen)
fi
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
URL="http://127.0.0.1:$PORT"
STORE_ARGS=()
if [[ -n ${BENCH_DATABASE_URL:-} ]]; then
  DB="mandate_deleg_$$_$RANDOM"
  psql "$BENCH_DATABASE_URL" -qAtc "CREATE DATABASE $DB" >/dev/null
  STORE_ARGS=(--database-url "${BENCH_DATABASE_URL%/*}/$DB")
  log "PostgreSQL, fresh database $DB"
fi
MANDATE_ADMIN_TOKEN=$ADMIN "$M" serve --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" "${STORE_ARGS[@]}" \
  ${BENCH_SERVE_ARGS---rate-limit-per-address 0 --rate-limit-per-client 0} >"$WORK/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 100); do curl -sf "$URL/readyz" >/dev/null && break; sleep 0.1; done

api() { curl -sf -X "$1" "$URL$2" -H "Authorization: Bearer ${4:-$ADMIN}" -H 'Content-Type: application/json' ${3:+-d "$3"}; }
assertion() { "$M" keys client-assertion --key "$WORK/$1.pk8" --client-id "$2" --audience "$URL"; }
form() { # agent-key client-id endpoint args...
  local key="$1" id="$2" path="$3"; shift 3
  curl -sf "$URL$path" -d client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer \
    -d "client_assertion=$(assertion "$key" "$id")" "$@"
}
for k in planner child grandchild cal; do "$M" keys client-keygen --out "$WORK/$k.pk8" >"$WORK/$k.jwks"; done

ALICE=$(api POST /v1/users '{"name":"Alice","email":"alice@example.com","groups":["staff"]}' | jq -r .id)
api POST /v1/resources "$(jq -cn --arg cal "$CAL" --slurpfile j "$WORK/cal.jwks" \
  '{identifier:$cal,name:"Calendar",scopes:{read:["list","get"],write:["create"]},jwks:$j[0]}')" >"$WORK/cal.json"
CALID=$(jq -r .id "$WORK/cal.json")
POLICIES='permit (principal in Group::"staff", action in [Action::"list", Action::"get", Action::"create"], resource);
permit (principal is Agent, action in [Action::"list", Action::"get"], resource);
permit (principal is Agent, action == Action::"mandate:spawn", resource);'
api PUT /v1/policies "$(jq -cn --arg p "$POLICIES" '{policies:$p}')" >/dev/null
PLANNER=$(api POST /v1/agents "$(jq -cn --arg o "$ALICE" --slurpfile j "$WORK/planner.jwks" '{name:"Planner",owner:$o,jwks:$j[0]}')" | jq -r .id)

# A grant, self-authorised by policy, and the planner's token under it.
REQ=$(form planner "$PLANNER" /oauth/bc-authorize -d login_hint=alice@example.com -d scope=read -d resource=$CAL | jq -r .auth_req_id)
PARENT=$(form planner "$PLANNER" /oauth/token -d grant_type=urn:openid:params:grant-type:ciba -d auth_req_id="$REQ" | jq -r .access_token)
spawn() { # parent-key parent-id child-key
  local t; t=$(form "$1" "$2" /oauth/token -d grant_type=client_credentials -d resource="$URL" -d scope=mandate:spawn | jq -r .access_token)
  api POST /v1/agents "$(jq -cn --arg o "$ALICE" --slurpfile j "$WORK/$3.jwks" '{name:"Helper",owner:$o,ttl_seconds:3600,jwks:$j[0]}')" "$t" | jq -r .client_id
}
exchange() { # key id subject
  form "$1" "$2" /oauth/token -d grant_type=urn:ietf:params:oauth:grant-type:token-exchange \
    -d subject_token="$3" -d subject_token_type=urn:ietf:params:oauth:token-type:access_token | jq -r .access_token
}
CHILD=$(spawn planner "$PLANNER" child)
HOP=$(exchange child "$CHILD" "$PARENT")
GRANDCHILD=$(spawn child "$CHILD" grandchild)
LEAF=$(exchange grandchild "$GRANDCHILD" "$HOP")
CHECKER=$(form cal "$CALID" /oauth/token -d grant_type=client_credentials -d resource="$URL" -d scope=mandate:check | jq -r .access_token)
jq -cn --arg t "$LEAF" '{token:$t,action:"get",resource:{type:"event",id:"e1"}}' >"$WORK/check.json"
curl -sf "$URL/v1/check" -H "Authorization: Bearer $CHECKER" -H 'Content-Type: application/json' -d @"$WORK/check.json" | jq -c '{decision,chain}' >&2

run() { # run NAME loadgen-args...: text to the terminal, or JSON into BENCH_RESULT_DIR/NAME.json
  local name="$1"
  shift
  if [[ -n ${BENCH_RESULT_DIR:-} ]]; then
    "$L" --concurrency "$CONCURRENCY" --warmup "$WARMUP" --requests "$REQUESTS" --duration "$DURATION" --json "$@" \
      >"$BENCH_RESULT_DIR/$name.json"
    log "$name: $(jq -c '{throughput_rps, p50: .latency_ms.p50, p99: .latency_ms.p99, errors_total}' "$BENCH_RESULT_DIR/$name.json")"
  else
    "$L" --concurrency "$CONCURRENCY" --warmup "$WARMUP" --requests "$REQUESTS" --duration "$DURATION" "$@"
  fi
}
# BENCH_PERF=FILE: profile the server during each run for BENCH_PERF_SECS
# (8), into FILE.check and FILE.exchange (perf with DWARF call graphs).
profile() {
  [[ -n ${BENCH_PERF:-} ]] || return 0
  perf record -F 499 --call-graph dwarf,16384 -p "$SERVER" -o "$BENCH_PERF.$1" -- sleep "${BENCH_PERF_SECS:-8}" >/dev/null 2>&1 &
}
if [[ $MODE == check || $MODE == both ]]; then
  log "POST /v1/check, 3-hop chain, $CONCURRENCY connections"
  profile check
  run check --token-endpoint "$URL/v1/check" --json-body "$WORK/check.json" --bearer "$CHECKER" --expect '"decision":"allow"'
fi
if [[ $MODE == exchange || $MODE == both ]]; then
  log "one-hop token exchange, $CONCURRENCY connections"
  profile exchange
  run exchange --token-endpoint "$URL/oauth/token" --client-id "$CHILD" --key "$WORK/child.pk8" --aud "$URL" \
    --grant-type urn:ietf:params:oauth:grant-type:token-exchange \
    --form "subject_token=$PARENT" --form subject_token_type=urn:ietf:params:oauth:token-type:access_token
fi
