#!/usr/bin/env bash
# What floods cost, and whether slow reads stall the token endpoint
# (SECURITY rows 39 and 45). Runs one Mandate binary at a time on a fresh
# data dir; compare builds by running it with each (MANDATE_BIN).
#
# Usage: bench/edge.sh junk    # disk growth per 100,000 junk token requests
#        bench/edge.sh export  # token p50/p99 with and without an audit export
#
# Environment:
#   MANDATE_BIN        the mandate binary (default $CARGO_TARGET_DIR/release/mandate)
#   LOADGEN_BIN        mandate-loadgen (default $CARGO_TARGET_DIR/release/mandate-loadgen)
#   SERVE_ARGS         more `mandate serve` flags (e.g. rate limits)
#   JUNK_REQUESTS      junk requests sent (default 100000)
#   EXPORT_REQUESTS    token requests per export run (default 60000)
#   CONCURRENCY        load generator connections (default 64)
#   EXPORT_KIND        pages: walk GET /v1/audit 1,000 events a page (default);
#                      verify: GET /v1/audit/verify, the whole trail in 10,000-event reads
#   EXPORT_PAUSE       seconds between two export requests (default 0: back to back)
#
# Junk: a registered client whose assertions name the wrong audience, so
# every request is an unauthenticated refusal (client.auth_failed). The
# growth is mandate.db plus its WAL, after a checkpoint.
# Export: 100,000 tokens fill the trail; then the token endpoint is
# measured twice, alone and while a client reads the whole trail over and
# over (EXPORT_KIND).
set -euo pipefail

MODE="${1:-junk}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
MANDATE="${MANDATE_BIN:-$TARGET/release/mandate}"
LOADGEN="${LOADGEN_BIN:-$TARGET/release/mandate-loadgen}"
CONCURRENCY="${CONCURRENCY:-64}"
ADMIN="bench-admin-token-0123456789"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/mandate-edge.XXXXXX")"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  sleep 0.5
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
log() { printf '[edge] %s\n' "$*" >&2; }

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
base="http://127.0.0.1:$port"
MANDATE_ADMIN_TOKEN="$ADMIN" "$MANDATE" serve --data-dir "$WORK/data" --listen "127.0.0.1:$port" \
  --issuer "$base" ${SERVE_ARGS:-} >"$WORK/server.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 300); do
  [[ "$(curl -s -o /dev/null -w '%{http_code}' "$base/readyz" || true)" == 200 ]] && break
  sleep 0.1
done
api() { curl -sS -X "$1" "$base$2" -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' --data-binary "$3"; }
"$LOADGEN" keygen --out "$WORK/key.pk8" --jwk-out "$WORK/jwk.json" >/dev/null
owner="$(api POST /v1/users '{"name":"Owner","email":"owner@example.com"}' | jq -r .id)"
api POST /v1/resources '{"identifier":"https://api.example.com","name":"API","scopes":{"read":[]}}' >/dev/null
api PUT /v1/policies '{"policies":"permit(principal, action == Action::\"read\", resource);"}' >/dev/null
cid="$(api POST /v1/agents "$(jq -cn --arg o "$owner" --slurpfile j "$WORK/jwk.json" '{name:"bench",owner:$o,jwks:{keys:[$j[0]]}}')" | jq -r .client_id)"

# The database's size once its WAL is copied back (a TRUNCATE checkpoint from
# a connection of our own; the server's WAL would otherwise keep its peak size).
size() {
  sqlite3 "$WORK/data/mandate.db" 'PRAGMA busy_timeout=5000; PRAGMA wal_checkpoint(TRUNCATE);' >/dev/null
  du -cb "$WORK/data/mandate.db" "$WORK/data/mandate.db-wal" 2>/dev/null | tail -n 1 | cut -f1
}
events() { sqlite3 "file:$WORK/data/mandate.db?mode=ro" 'SELECT count(*) FROM audit_events'; }
load() { # load REQUESTS AUD [extra loadgen flags] -> JSON
  "$LOADGEN" --token-endpoint "$base/oauth/token" --client-id "$cid" --key "$WORK/key.pk8" --aud "$2" \
    --resource https://api.example.com --scope read --concurrency "$CONCURRENCY" --requests "$1" \
    --max-requests "$1" --json "${@:3}" 2>/dev/null || true # no successes is an exit code of 1
}

case "$MODE" in
junk)
  n="${JUNK_REQUESTS:-100000}"
  sleep 1
  before_size="$(size)"
  before_events="$(events)"
  out="$(load "$n" "http://wrong.example/")"
  sleep 62 # the refusal counts are written when their 60 s window closes
  after_size="$(size)"
  after_events="$(events)"
  echo "{\"binary\":\"$MANDATE\",\"serve_args\":\"${SERVE_ARGS:-}\",\"requests\":$(jq .requests <<<"$out"),\"by_status\":$(jq -c .errors <<<"$out"),\"requests_per_s\":$(jq '.requests / .wall_secs | floor' <<<"$out"),\"events_added\":$((after_events - before_events)),\"bytes_added\":$((after_size - before_size))}"
  ;;
export)
  n="${EXPORT_REQUESTS:-60000}"
  EXPORT_KIND="${EXPORT_KIND:-pages}"
  EXPORT_PAUSE="${EXPORT_PAUSE:-0}"
  load 100000 "$base" >/dev/null # fill the trail
  alone="$(load "$n" "$base")"
  (
    while true; do
      if [[ "$EXPORT_KIND" == verify ]]; then
        curl -sS -o /dev/null "$base/v1/audit/verify" -H "Authorization: Bearer $ADMIN"
        sleep "$EXPORT_PAUSE"
        continue
      fi
      after=0
      while :; do
        page="$(curl -sS "$base/v1/audit?after=$after&limit=1000" -H "Authorization: Bearer $ADMIN")"
        next="$(jq -r '.next // empty' <<<"$page")"
        [[ -z "$next" ]] && break
        after="$next"
        sleep "$EXPORT_PAUSE"
      done
    done
  ) &
  PIDS+=($!)
  sleep 1
  during="$(load "$n" "$base")"
  row() { jq -c "{rps: .throughput_rps, p50: .latency_ms.p50, p99: .latency_ms.p99, errors: .errors_total}" <<<"$1"; }
  echo "{\"binary\":\"$MANDATE\",\"export\":\"$EXPORT_KIND\",\"pause\":$EXPORT_PAUSE,\"events\":$(events),\"alone\":$(row "$alone"),\"during_export\":$(row "$during")}"
  ;;
*)
  echo "usage: $0 junk|export" >&2
  exit 2
  ;;
esac
