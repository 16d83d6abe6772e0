#!/usr/bin/env bash
# What a token costs when the agent authenticates with a workload identity
# JWT (issue 15: at most 1.3x a private_key_jwt token), measured side by
# side against one `mandate serve` in the same run:
#
#   pkjwt        client_credentials + private_key_jwt: a fresh EdDSA client
#                assertion per request, its jti burned (as bench/run.sh)
#   wl-rs256     client_credentials, client_assertion = a workload JWT
#                (RS256, 2048-bit) from a trusted issuer, keys cached;
#                one JWT per connection, reused (Kubernetes, CI)
#   wl-es256     the same with ES256
#   wl-es256-fresh  ES256, a fresh JWT (new jti) per request
#   wl-rs256-fresh  RS256, a fresh JWT per request (not in the default set:
#                signing 2048-bit RSA in the load generator is slow)
#   grant-rs256  the jwt-bearer grant, the reused RS256 JWT as `assertion`,
#                no client authentication (not in the default set)
#
# The trusted issuer is `mandate-loadgen issuer` (discovery + JWKS with
# `Cache-Control: max-age=300`; Mandate fetches it once, then from cache).
# Every round runs every variant at every concurrency; the order of the
# variants alternates from one round to the next.
#
# Usage: bench/workload.sh
# Environment: BENCH_DURATION (10 s per run), BENCH_WARMUP (2000),
#   BENCH_CONCURRENCY ("64 16"), BENCH_ROUNDS (3),
#   BENCH_VARIANTS ("pkjwt wl-rs256 wl-es256 wl-es256-fresh"),
#   BENCH_MAX_REQUESTS (200000 pre-signed requests per run at most),
#   BENCH_SKIP_BUILD=1, BENCH_KEEP=1, MANDATE_BIN (default: the release build),
#   BENCH_LOCK=FILE: hold this flock while measuring, so that builds sharing
#     it wait (default /tmp/mandate-build.lock; empty: none),
#   BENCH_PERF=FILE: after the rounds, profile the server for
#     BENCH_PERF_SECS (8) during one more run of each of BENCH_PERF_VARIANTS
#     ("pkjwt wl-rs256 wl-es256") at the first concurrency, into FILE.VARIANT.
# Needs curl, jq. All traffic is on 127.0.0.1.
set -euo pipefail

DURATION="${BENCH_DURATION:-10}"
WARMUP="${BENCH_WARMUP:-2000}"
CONCURRENCIES="${BENCH_CONCURRENCY:-64 16}"
ROUNDS="${BENCH_ROUNDS:-3}"
VARIANTS="${BENCH_VARIANTS:-pkjwt wl-rs256 wl-es256 wl-es256-fresh}"
MAX_REQUESTS="${BENCH_MAX_REQUESTS:-200000}"
LOCK="${BENCH_LOCK-/tmp/mandate-build.lock}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
M="${MANDATE_BIN:-$TARGET/release/mandate}"
L="$TARGET/release/mandate-loadgen"
ADMIN="bench-admin-token-0123456789"
RESOURCE="https://api.example.com"

log() { printf '[bench] %s\n' "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}
WORK="$(mktemp -d "${TMPDIR:-/tmp}/mandate-wl.XXXXXX")"
PIDS=()
cleanup() {
  local rc=$?
  set +e
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  if [[ "${BENCH_KEEP:-0}" == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  if [[ -n $LOCK ]]; then
    (cd "$ROOT" && flock "$LOCK" cargo build --release -p mandate -p mandate-loadgen)
  else
    (cd "$ROOT" && cargo build --release -p mandate -p mandate-loadgen)
  fi
fi
[[ -x $M && -x $L ]] || die "missing $M or $L"
if [[ -n $LOCK ]]; then
  exec 9>"$LOCK"
  log "waiting for $LOCK (builds sharing it wait while this measures)"
  flock 9
fi

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The trusted issuer: its first stdout line is {issuer, jwks_uri, kids}.
"$L" issuer --keys-dir "$WORK/issuer" >"$WORK/issuer.out" 2>"$WORK/issuer.log" &
PIDS+=($!)
for _ in $(seq 1 100); do [[ -s $WORK/issuer.out ]] && break; sleep 0.1; done
ISS=$(head -n1 "$WORK/issuer.out" | jq -r .issuer)
[[ $ISS == http://127.0.0.1:* ]] || die "the issuer did not start: $(cat "$WORK/issuer.log")"

PORT="$(port)"
URL="http://127.0.0.1:$PORT"
MANDATE_ADMIN_TOKEN=$ADMIN "$M" serve --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" --issuer "$URL" \
  --rate-limit-per-address 0 --rate-limit-per-client 0 \
  --dev-loopback-fetch --trusted-issuer "{issuer = \"$ISS\", use = [\"workload\"]}" \
  >"$WORK/server.log" 2>&1 &
SERVER=$!
PIDS+=("$SERVER")
for _ in $(seq 1 100); do curl -sf "$URL/readyz" >/dev/null && break; sleep 0.1; done
curl -sf "$URL/readyz" >/dev/null || die "mandate did not start: $(tail -n 20 "$WORK/server.log")"
log "mandate $URL trusts $ISS for workload identity"

api() {
  curl -sf -X "$1" "$URL$2" -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' -d "$3" ||
    die "admin API $1 $2 failed"
}
OWNER=$(api POST /v1/users '{"name":"Bench Owner","email":"owner@example.com"}' | jq -r .id)
api POST /v1/resources "$(jq -cn --arg id "$RESOURCE" '{identifier:$id,name:"Bench API",scopes:{read:[]}}')" >/dev/null
api PUT /v1/policies '{"policies":"permit(principal, action == Action::\"read\", resource);"}' >/dev/null
"$L" keygen --out "$WORK/pk.pk8" --jwk-out "$WORK/pk.jwk" >/dev/null
PK=$(api POST /v1/agents "$(jq -cn --arg o "$OWNER" --slurpfile j "$WORK/pk.jwk" \
  '{name:"pkjwt",owner:$o,jwks:{keys:[$j[0]]}}')" | jq -r .client_id)
wl_agent() { # name subject -> client_id
  api POST /v1/agents "$(jq -cn --arg o "$OWNER" --arg n "$1" --arg iss "$ISS" --arg sub "$2" \
    '{name:$n,owner:$o,federated_credentials:[{issuer:$iss,subject:$sub}]}')" | jq -r .client_id
}
RS=$(wl_agent workload-rs256 system:serviceaccount:bench:rs256)
ES=$(wl_agent workload-es256 system:serviceaccount:bench:es256)
log "agents: pkjwt $PK, workload RS256 $RS, workload ES256 $ES"

# args VARIANT CONCURRENCY -> the load generator's flags for that variant
args() {
  local c="$2"
  case "$1" in
    pkjwt) echo --client-id "$PK" --key "$WORK/pk.pk8" ;;
    wl-rs256) echo --client-id "$RS" --workload-key "$WORK/issuer/rs256.pk8" --workload-alg RS256 \
      --workload-iss "$ISS" --workload-sub system:serviceaccount:bench:rs256 --workload-reuse "$c" ;;
    wl-es256) echo --client-id "$ES" --workload-key "$WORK/issuer/es256.pk8" --workload-alg ES256 \
      --workload-iss "$ISS" --workload-sub system:serviceaccount:bench:es256 --workload-reuse "$c" ;;
    wl-es256-fresh) echo --client-id "$ES" --workload-key "$WORK/issuer/es256.pk8" --workload-alg ES256 \
      --workload-iss "$ISS" --workload-sub system:serviceaccount:bench:es256 ;;
    wl-rs256-fresh) echo --client-id "$RS" --workload-key "$WORK/issuer/rs256.pk8" --workload-alg RS256 \
      --workload-iss "$ISS" --workload-sub system:serviceaccount:bench:rs256 ;;
    grant-rs256) echo --workload-grant --workload-key "$WORK/issuer/rs256.pk8" --workload-alg RS256 \
      --workload-iss "$ISS" --workload-sub system:serviceaccount:bench:rs256 --workload-reuse "$c" ;;
    *) die "unknown variant $1" ;;
  esac
}
# run VARIANT CONCURRENCY WARMUP OUT [more flags]
run() {
  local v="$1" c="$2" w="$3" out="$4"
  shift 4
  # shellcheck disable=SC2046 # args prints words, none with spaces
  "$L" --token-endpoint "$URL/oauth/token" --aud "$URL" --resource "$RESOURCE" --scope read \
    --concurrency "$c" --warmup "$w" --duration "$DURATION" --max-requests "$MAX_REQUESTS" \
    $(args "$v" "$c") "$@" --json >"$out" 2>"$out.err" || die "$v: $(cat "$out.err")"
  local errs
  errs=$(jq -r '.errors_total + .warmup_errors' "$out")
  [[ $errs == 0 ]] || die "$v at $c: $errs errors: $(jq -c '{errors, error_samples}' "$out")"
  if jq -e .assertions_exhausted "$out" >/dev/null; then log "note: $v ran out of pre-signed requests"; fi
}

# Each variant once, by hand: one token each, so a misconfiguration stops here.
for v in $VARIANTS; do
  run "$v" 1 0 "$WORK/check-$v.json" --requests 1 --show-response
done
log "every variant gets a token; the issuer's keys were fetched $(curl -s "$ISS/stats" | jq -c .)"

order=($VARIANTS)
for r in $(seq 1 "$ROUNDS"); do
  for c in $CONCURRENCIES; do
    for v in "${order[@]}"; do
      run "$v" "$c" "$WARMUP" "$WORK/r$r-c$c-$v.json"
      log "round $r, $c connections, $v: $(jq -r '"\(.throughput_rps | floor)/s, p50 \(.latency_ms.p50) ms, p99 \(.latency_ms.p99) ms"' \
        "$WORK/r$r-c$c-$v.json")"
    done
  done
  # Reverse the order for the next round, so that drift over the run
  # does not favour one variant.
  rev=()
  for ((i = ${#order[@]} - 1; i >= 0; i--)); do rev+=("${order[i]}"); done
  order=("${rev[@]}")
done
STATS=$(curl -s "$ISS/stats" | jq -c .)

if [[ -n ${BENCH_PERF:-} ]]; then
  c="${CONCURRENCIES%% *}"
  for v in ${BENCH_PERF_VARIANTS:-pkjwt wl-rs256 wl-es256}; do
    log "profiling $v at $c connections into $BENCH_PERF.$v"
    perf record -F 499 --call-graph dwarf,16384 -p "$SERVER" -o "$BENCH_PERF.$v" -- sleep "${BENCH_PERF_SECS:-8}" \
      >/dev/null 2>&1 &
    run "$v" "$c" 0 "$WORK/perf-$v.json"
    wait $! || true
  done
fi

# ------------------------------------------------------------------ report
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo
echo "Tokens/s (successful), p50 / p99 ms, and cost relative to pkjwt (pkjwt tokens/s ÷ variant tokens/s;"
echo "target ≤ 1.30) — $ROUNDS rounds of ${DURATION}s, warm-up $WARMUP, $(nproc) cores shared with the load generator."
for c in $CONCURRENCIES; do
  echo
  printf '%-16s' "$c connections"
  for r in $(seq 1 "$ROUNDS"); do printf ' | %-27s' "round $r"; done
  printf ' | %-10s | %-14s | %s\n' "median/s" "median p50/p99" "cost ×pkjwt per round (median)"
  for v in $VARIANTS; do
    printf '%-16s' "$v"
    ratios=()
    for r in $(seq 1 "$ROUNDS"); do
      f="$WORK/r$r-c$c-$v.json"
      printf ' | %-27s' "$(jq -r '"\(.throughput_rps | floor)/s \(.latency_ms.p50 * 100 | round / 100)/\(.latency_ms.p99 * 100 | round / 100) ms"' "$f")"
      ratios+=("$(jq -rn --slurpfile a "$WORK/r$r-c$c-pkjwt.json" --slurpfile b "$f" \
        '$a[0].throughput_rps / $b[0].throughput_rps * 100 | round / 100')")
    done
    med=$(for r in $(seq 1 "$ROUNDS"); do jq .throughput_rps "$WORK/r$r-c$c-$v.json"; done | median)
    p50=$(for r in $(seq 1 "$ROUNDS"); do jq .latency_ms.p50 "$WORK/r$r-c$c-$v.json"; done | median)
    p99=$(for r in $(seq 1 "$ROUNDS"); do jq .latency_ms.p99 "$WORK/r$r-c$c-$v.json"; done | median)
    rmed=$(printf '%s\n' "${ratios[@]}" | median)
    printf ' | %-10.0f | %-14s | %s (%s)\n' "$med" "$(printf '%.2f/%.2f' "$p50" "$p99")" "${ratios[*]}" "$rmed"
  done
done
echo
echo "trusted issuer fetched (discovery, JWKS): $STATS"
log "audit chain: $(curl -sf "$URL/v1/audit/verify" -H "Authorization: Bearer $ADMIN" | jq -c . || echo '?')"
