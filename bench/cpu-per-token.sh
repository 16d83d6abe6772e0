#!/usr/bin/env bash
# Server CPU per token: for each mandate binary given, `bench/run.sh mandate`
# (load generator only) through a wrapper that reads the server's
# utime+stime from /proc/PID/stat when it is stopped, divided by the tokens
# it issued (measured + warm-up). Less sensitive to other load on the
# machine than tokens/s; alternate the builds (A B A B) to see the spread.
#
#   flock /tmp/mandate-build.lock bench/cpu-per-token.sh OLD NEW OLD NEW
#   BENCH_LOADGEN_ARGS=--dpop bench/cpu-per-token.sh OLD NEW
#
# Variables: BENCH_REQUESTS (40000), BENCH_WARMUP (2000), LOADGEN_BIN, and
# the rest of bench/run.sh's.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ $# -ge 1 ]] || { echo "usage: $0 MANDATE_BIN [MANDATE_BIN ...]" >&2; exit 2; }
WORK="$(mktemp -d "${TMPDIR:-/tmp}/mandate-cpu.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
cat >"$WORK/wrap.sh" <<'X'
#!/bin/bash
"$CPU_REAL_MANDATE" "$@" &
pid=$!
finish() {
  read -r -a st <"/proc/$pid/stat"
  echo "$((st[13] + st[14]))" >"$CPU_OUT"
  kill -TERM "$pid"
  wait "$pid"
  exit 0
}
trap finish TERM INT
wait "$pid"
X
chmod +x "$WORK/wrap.sh"
export BENCH_SKIP_BUILD=1 BENCH_REQUESTS="${BENCH_REQUESTS:-40000}" BENCH_DURATION="${BENCH_DURATION:-120}"
WARMUP="${BENCH_WARMUP:-2000}"
export BENCH_WARMUP="$WARMUP"
TICK="$(getconf CLK_TCK)"
printf '%-40s %10s %14s\n' binary tokens/s "CPU µs/token"
for bin in "$@"; do
  CPU_REAL_MANDATE="$(realpath "$bin")" CPU_OUT="$WORK/cpu" MANDATE_BIN="$WORK/wrap.sh" \
    "$ROOT/bench/run.sh" mandate >"$WORK/run.log" 2>&1 || { tail -n 20 "$WORK/run.log" >&2; exit 1; }
  ok="$(grep -oP '\] mandate: \K[0-9]+' "$WORK/run.log" | head -1)"
  rps="$(grep -oP 'successful, \K[0-9.]+' "$WORK/run.log" | head -1)"
  ticks="$(cat "$WORK/cpu")"
  printf '%-40s %10.0f %14d\n' "$bin" "$rps" "$((ticks * 1000000 / TICK / (ok + WARMUP)))"
done
