#!/usr/bin/env bash
# The gateway's cost on an allowed tools/call (issue 14): the same JSON-RPC
# request, by the same load generator in the same run, sent
#
#   direct    to a minimal MCP upstream (`mandate-loadgen mcp-echo`, which
#             answers every call at once), and
#   gateway   through `mandate gateway` in front of it: the client's token
#             verified (cached keys and status list), the call decided by
#             Mandate's check API over a kept-alive connection, and the
#             token exchanged for the upstream (cached per client token).
#
# Rounds alternate direct and gateway (BENCH_ROUNDS, default 3).
# Usage: bench/gateway.sh
# Environment: BENCH_DURATION (10), BENCH_WARMUP (2000), BENCH_CONCURRENCY
# (64), BENCH_ROUNDS (3), BENCH_SKIP_BUILD=1, BENCH_KEEP=1. Needs curl, jq.
set -euo pipefail

DURATION="${BENCH_DURATION:-10}"
WARMUP="${BENCH_WARMUP:-2000}"
CONCURRENCY="${BENCH_CONCURRENCY:-64}"
ROUNDS="${BENCH_ROUNDS:-3}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
M="$TARGET/release/mandate"
L="$TARGET/release/mandate-loadgen"
ADMIN="bench-admin-token-0123456789"

log() { printf '[bench] %s\n' "$*" >&2; }
WORK="$(mktemp -d "${TMPDIR:-/tmp}/mandate-gw.XXXXXX")"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  if [[ "${BENCH_KEEP:-0}" == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  (cd "$ROOT" && cargo build --release -p mandate -p mandate-loadgen)
fi
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT="$(port)"; GWPORT="$(port)"; UPPORT="$(port)"
URL="http://127.0.0.1:$PORT"
GW="http://127.0.0.1:$GWPORT"
UP="http://127.0.0.1:$UPPORT"
MANDATE_ADMIN_TOKEN=$ADMIN "$M" serve --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" --access-token-ttl 3600 \
  --rate-limit-per-address 0 --rate-limit-per-client 0 >"$WORK/server.log" 2>&1 &
PIDS+=($!)
"$L" mcp-echo --listen "127.0.0.1:$UPPORT" >"$WORK/upstream.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do curl -sf "$URL/readyz" >/dev/null && break; sleep 0.1; done

api() { curl -sf -X "$1" "$URL$2" -H "Authorization: Bearer ${4:-$ADMIN}" -H 'Content-Type: application/json' ${3:+-d "$3"}; }
assertion() { "$M" keys client-assertion --key "$WORK/$1.pk8" --client-id "$2" --audience "$URL"; }
form() { # key client-id endpoint args...
  local key="$1" id="$2" path="$3"; shift 3
  curl -sf "$URL$path" -d client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer \
    -d "client_assertion=$(assertion "$key" "$id")" "$@"
}
for k in planner gateway; do "$M" keys client-keygen --out "$WORK/$k.pk8" >"$WORK/$k.jwks"; done
ALICE=$(api POST /v1/users '{"name":"Alice","email":"alice@example.com","groups":["staff"]}' | jq -r .id)
PLANNER=$(api POST /v1/agents "$(jq -cn --arg o "$ALICE" --slurpfile j "$WORK/planner.jwks" '{name:"Planner",owner:$o,jwks:$j[0]}')" | jq -r .client_id)
GWID=$(api POST /v1/agents "$(jq -cn --arg o "$ALICE" --slurpfile j "$WORK/gateway.jwks" '{name:"Gateway",owner:$o,jwks:$j[0]}')" | jq -r .client_id)
api POST /v1/resources "$(jq -cn --arg id "$UP" '{identifier:$id,name:"Echo",scopes:{tools:["echo"]}}')" >/dev/null
api POST /v1/resources "$(jq -cn --arg id "$GW/mcp/echo" --arg gw "$GWID" --arg up "$UP" \
  '{identifier:$id,name:"Echo via the gateway",scopes:{tools:["echo"]},gateway:$gw,exchange_to:[$up]}')" >/dev/null
POLICIES='permit (principal in Group::"staff", action == Action::"echo", resource);
permit (principal is Agent, action == Action::"echo", resource);'
api PUT /v1/policies "$(jq -cn --arg p "$POLICIES" '{policies:$p}')" >/dev/null
REQ=$(form planner "$PLANNER" /oauth/bc-authorize -d login_hint=alice@example.com -d scope=tools -d resource="$GW/mcp/echo" | jq -r .auth_req_id)
TOKEN=$(form planner "$PLANNER" /oauth/token -d grant_type=urn:openid:params:grant-type:ciba -d auth_req_id="$REQ" | jq -r .access_token)

cat >"$WORK/gateway.toml" <<EOF
issuer = "$URL"
listen = "127.0.0.1:$GWPORT"
client_id = "$GWID"
key_file = "gateway.pk8"
[[route]]
prefix = "/mcp/echo"
upstream = "$UP/mcp"
kind = "mcp"
resource = "$GW/mcp/echo"
upstream_token = "exchange"
upstream_resource = "$UP"
EOF
"$M" gateway --config "$WORK/gateway.toml" >"$WORK/gateway.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do curl -s -o /dev/null "$GW/.well-known/oauth-protected-resource/mcp/echo" && break; sleep 0.1; done
echo '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"}}}' >"$WORK/call.json"
log "through the gateway, once: $(curl -s "$GW/mcp/echo" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -H 'Accept: application/json, text/event-stream' -d @"$WORK/call.json")"

run() { "$L" --concurrency "$CONCURRENCY" --warmup "$WARMUP" --duration "$DURATION" --max-requests 400000 \
  --json-body "$WORK/call.json" --expect '"result"' "$@"; }
for r in $(seq 1 "$ROUNDS"); do
  log "round $r: direct to the upstream, $CONCURRENCY connections"
  run --token-endpoint "$UP/mcp" --bearer unused
  log "round $r: through mandate gateway, $CONCURRENCY connections"
  run --token-endpoint "$GW/mcp/echo" --bearer "$TOKEN"
done
log "audit events written: $(api GET '/v1/audit/verify' | jq -c .)"
