#!/usr/bin/env bash
# Memory and cold start (issue 19): a release `mandate serve` on SQLite is
# measured idle, after MEM_AGENTS agents are registered through the admin
# API, after MEM_TOKENS client_credentials tokens are issued to them through
# the token endpoint (private_key_jwt, spread over every agent, all live:
# --access-token-ttl 3600), and after a /v1/check load; then it is stopped
# and started again on the same data dir, and the time until /readyz
# answers 200 is taken (cold start). Resident memory is read from
# /proc/PID/status (VmRSS now, VmHWM the peak).
#
#   flock /tmp/mandate-build.lock bench/memory.sh        # after a release build
#
# Variables: MANDATE_BIN, LOADGEN_BIN (default $CARGO_TARGET_DIR/release/…),
# MEM_AGENTS (100000), MEM_TOKENS (1000000), MEM_CHUNK (250000 tokens per
# load generator run), BENCH_CONCURRENCY (64), MEM_KEEP=1 keeps the work dir.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
M="${MANDATE_BIN:-$TARGET/release/mandate}"
L="${LOADGEN_BIN:-$TARGET/release/mandate-loadgen}"
AGENTS="${MEM_AGENTS:-100000}"
TOKENS="${MEM_TOKENS:-1000000}"
CHUNK="${MEM_CHUNK:-250000}"
CONC="${BENCH_CONCURRENCY:-64}"
ADMIN="bench-admin-token-0123456789"
RESOURCE="https://api.example.com"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/mandate-memory.XXXXXX")"
PID=""
log() { printf '[memory] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
cleanup() {
  [[ -n $PID ]] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  [[ "${MEM_KEEP:-0}" == 1 ]] && log "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT
[[ -x $M && -x $L ]] || die "build first: cargo build --release -p mandate -p mandate-loadgen"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT="$(free_port)"
METRICS_PORT="$(free_port)"
BASE="http://127.0.0.1:$PORT"
start() { # start LOG: sets PID; writes the seconds until /readyz answers 200 to $WORK/ready_s
  local t0
  t0=$(date +%s.%N)
  MANDATE_ADMIN_TOKEN="$ADMIN" "$M" serve --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" --issuer "$BASE" \
    --rate-limit-per-address 0 --rate-limit-per-client 0 --access-token-ttl 3600 \
    --metrics-listen "127.0.0.1:$METRICS_PORT" >>"$1" 2>&1 &
  PID=$!
  for _ in $(seq 1 3000); do
    kill -0 "$PID" 2>/dev/null || die "mandate exited: $(tail -n 20 "$1")"
    if [[ "$(curl -s -o /dev/null -w '%{http_code}' "$BASE/readyz" || true)" == 200 ]]; then
      python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$t0" "$(date +%s.%N)" \
        >"$WORK/ready_s"
      return
    fi
    sleep 0.01
  done
  die "not ready after 30 s"
}
rss() { # rss LABEL: VmRSS and VmHWM in MiB, appended to the results
  local now peak threads anon
  now=$(awk '/^VmRSS/ {print int($2/1024)}' "/proc/$PID/status")
  peak=$(awk '/^VmHWM/ {print int($2/1024)}' "/proc/$PID/status")
  threads=$(awk '/^Threads/ {print $2}' "/proc/$PID/status")
  anon=$(awk '/^Anonymous/ {print int($2/1024)}' "/proc/$PID/smaps_rollup" 2>/dev/null || echo "?")
  log "$1: RSS ${now} MiB (peak ${peak} MiB; anonymous ${anon} MiB; ${threads} threads)"
  printf '%s\t%s\t%s\n' "$1" "$now" "$peak" >>"$WORK/rss.tsv"
  # How full each per-node cache is against its byte budget (set every
  # 10 s by the server; absent from builds before the gauges).
  curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | grep -E '^mandate_cache_(entries|bytes)' | sed 's/^/[memory]   /' >&2 || true
}
api() {
  curl -sS --fail-with-body -X "$1" "$BASE$2" -H "Authorization: Bearer $ADMIN" \
    -H 'Content-Type: application/json' --data-binary "$3"
}

mkdir -p "$WORK/data"
start "$WORK/mandate.log"  # not in $(…): PID must be set in this shell
first_start=$(cat "$WORK/ready_s")
log "started in ${first_start} s on an empty store"
sleep 5
rss "idle, empty store"

"$L" keygen --out "$WORK/key.pk8" --jwk-out "$WORK/jwk.json" >/dev/null
owner=$(api POST /v1/users '{"name":"Memory Owner","email":"owner@example.com"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
api POST /v1/resources "{\"identifier\":\"$RESOURCE\",\"name\":\"API\",\"scopes\":{\"read\":[]}}" >/dev/null
api PUT /v1/policies '{"policies":"permit(principal, action == Action::\"read\", resource);"}' >/dev/null

log "registering $AGENTS agents"
t0=$(date +%s)
python3 - "$BASE" "$ADMIN" "$owner" "$WORK/jwk.json" "$AGENTS" "$WORK/clients.txt" <<'PY'
import http.client, json, sys, threading, urllib.parse
base, admin, owner, jwk_file, n, out = sys.argv[1:7]
n = int(n); jwk = json.load(open(jwk_file)); u = urllib.parse.urlsplit(base)
ids = [None] * n; errors = []
def work(k, step):
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    for i in range(k, n, step):
        body = json.dumps({"name": f"mem-agent-{i}", "owner": owner, "jwks": {"keys": [jwk]}})
        c.request("POST", "/v1/agents", body, {"Authorization": f"Bearer {admin}", "Content-Type": "application/json"})
        r = c.getresponse(); data = r.read()
        if r.status != 201 and r.status != 200:
            errors.append((r.status, data[:200])); return
        ids[i] = json.loads(data)["client_id"]
threads = [threading.Thread(target=work, args=(k, 8)) for k in range(8)]
[t.start() for t in threads]; [t.join() for t in threads]
if errors: sys.exit(f"agent registration failed: {errors[0]}")
open(out, "w").write("\n".join(ids) + "\n")
PY
log "registered in $(($(date +%s) - t0)) s"
sleep 2
rss "after $AGENTS agents"

issued=0
while ((issued < TOKENS)); do
  n=$((TOKENS - issued < CHUNK ? TOKENS - issued : CHUNK))
  "$L" --token-endpoint "$BASE/oauth/token" --client-ids "$WORK/clients.txt" --key "$WORK/key.pk8" --aud "$BASE" \
    --resource "$RESOURCE" --scope read --concurrency "$CONC" --requests "$n" --json >"$WORK/tokens.json" \
    2>"$WORK/loadgen.err" || die "load generator failed: $(cat "$WORK/loadgen.err")"
  ok=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["successes"], d["errors_total"], round(d["throughput_rps"]))' "$WORK/tokens.json")
  read -r s e r <<<"$ok"
  [[ $e == 0 ]] || die "token requests failed: $(cat "$WORK/tokens.json")"
  issued=$((issued + s))
  log "issued $issued tokens ($r/s in this run)"
  rss "after $issued live tokens"
done
sleep 5
rss "idle with $AGENTS agents and $issued live tokens"

live=$(sqlite3 "$WORK/data/mandate.db" "SELECT count(*) FROM tokens WHERE revoked_at IS NULL AND expires_at > CAST(strftime('%s','now') AS INTEGER) * 1000000000" 2>/dev/null || echo "?")
log "live tokens in the store: $live"

kill -TERM "$PID"; wait "$PID" 2>/dev/null || true; PID=""
start "$WORK/mandate2.log"
cold=$(cat "$WORK/ready_s")
log "cold start on the filled store: ${cold} s"
sleep 5
rss "idle after restart on the filled store"

printf '{"agents":%s,"tokens":%s,"first_start_s":%s,"cold_start_s":%s,"rss_mib":[' "$AGENTS" "$issued" "$first_start" "$cold"
awk -F'\t' 'NR>1 {printf ","} {printf "{\"at\":\"%s\",\"rss\":%s,\"peak\":%s}", $1, $2, $3}' "$WORK/rss.tsv"
printf ']}\n'
