#!/usr/bin/env bash
# SQLite and PostgreSQL side by side in one run (issue 17 §2): per round,
#
#   cc sqlite     client_credentials + private_key_jwt, one node, embedded SQLite
#   cc pg         the same, one node on PostgreSQL (a fresh database)
#   cc pg x2      the same, two nodes on one fresh PostgreSQL database, each
#                 driven by its own load generator with half the connections
#   exchange / check on SQLite and on PostgreSQL (bench/delegation.sh)
#
# Usage: bench/stores.sh
# Environment: BENCH_ROUNDS (1), BENCH_DURATION (15 s per run),
#   BENCH_CONCURRENCY (64), BENCH_WARMUP (2000),
#   BENCH_DATABASE_URL (postgres://postgres@127.0.0.1:5432/postgres: an
#   existing database on the server the fresh ones are created next to),
#   BENCH_SKIP_BUILD=1 (reuse the release build), BENCH_PARTS ("cc deleg"),
#   MANDATE_BIN (another `mandate` binary, e.g. the build before a change).
# Hold the shared build lock while it runs, so that no build skews it:
#   flock /tmp/mandate-build.lock bench/stores.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROUNDS="${BENCH_ROUNDS:-1}"
PG="${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
PARTS="${BENCH_PARTS:-cc deleg}"
export BENCH_DURATION="${BENCH_DURATION:-15}"
export BENCH_REQUESTS="${BENCH_REQUESTS:-1000000}"
OUT="$(mktemp -d "${TMPDIR:-/tmp}/mandate-stores.XXXXXX")"
log() { printf '[stores] %s\n' "$*" >&2; }

if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  (cd "$ROOT" && cargo build --release -p mandate -p mandate-loadgen)
fi
export BENCH_SKIP_BUILD=1

for r in $(seq 1 "$ROUNDS"); do
  if [[ " $PARTS " == *" cc "* ]]; then
    log "round $r: client_credentials on SQLite"
    env -u BENCH_DATABASE_URL BENCH_RESULT="$OUT/cc-sqlite.$r.json" "$ROOT/bench/run.sh" mandate >/dev/null
    log "round $r: client_credentials on PostgreSQL, one node"
    BENCH_DATABASE_URL="$PG" BENCH_RESULT="$OUT/cc-pg.$r.json" "$ROOT/bench/run.sh" mandate >/dev/null
    log "round $r: client_credentials on PostgreSQL, two nodes"
    BENCH_DATABASE_URL="$PG" BENCH_NODES=2 BENCH_RESULT="$OUT/cc-pg2.$r.json" "$ROOT/bench/run.sh" mandate >/dev/null
  fi
  if [[ " $PARTS " == *" deleg "* ]]; then
    for store in sqlite pg; do
      mkdir -p "$OUT/$store.$r"
      log "round $r: token exchange and /v1/check on $store"
      if [[ $store == pg ]]; then
        BENCH_DATABASE_URL="$PG" BENCH_RESULT_DIR="$OUT/$store.$r" "$ROOT/bench/delegation.sh" >/dev/null
      else
        env -u BENCH_DATABASE_URL BENCH_RESULT_DIR="$OUT/$store.$r" "$ROOT/bench/delegation.sh" >/dev/null
      fi
      for mode in exchange check; do cp "$OUT/$store.$r/$mode.json" "$OUT/$mode-$store.$r.json"; done
    done
  fi
done

echo
echo "$(nproc) cores shared by the servers, PostgreSQL and the load generators; ${BENCH_DURATION}s per run," \
  "concurrency ${BENCH_CONCURRENCY:-64}"
printf '%-28s %6s %12s %10s %10s %8s\n' "" round "req/s" "p50 ms" "p99 ms" errors
for name in cc-sqlite cc-pg cc-pg2 exchange-sqlite exchange-pg check-sqlite check-pg; do
  for r in $(seq 1 "$ROUNDS"); do
    f="$OUT/$name.$r.json"
    [[ -s $f ]] || continue
    printf '%-28s %6s %12.0f %10.2f %10.2f %8s\n' "$name" "$r" "$(jq .throughput_rps "$f")" \
      "$(jq .latency_ms.p50 "$f")" "$(jq .latency_ms.p99 "$f")" "$(jq .errors_total "$f")"
  done
done
echo "results: $OUT"
