#!/usr/bin/env bash
# Statements per client_credentials token on PostgreSQL: one node on a fresh
# database with log_statement = 'all', BENCH_DURATION (4) seconds of load at
# 64 connections through bench/run.sh, then every statement line the server
# logged for that database, divided by the tokens issued, and the statements
# by kind. Logging every statement slows the run: the rate is not a result.
#
# Usage: bench/pg-statements.sh [MANDATE_BINARY]     (default: the release build)
# Environment: BENCH_DATABASE_URL (postgres://postgres@127.0.0.1:5432/postgres),
#   PG_LOG (/var/log/postgresql/postgresql-15-main.log; log_line_prefix must
#   show the database as user@db, as Debian's default does). Needs psql, jq,
#   superuser rights on the server (ALTER DATABASE … SET log_statement).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="${1:-$TARGET/release/mandate}"
LOG="${PG_LOG:-/var/log/postgresql/postgresql-15-main.log}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/mandate-pgstmt.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
# A wrapper for `mandate serve` that turns statement logging on for the
# database of its --database-url, and says which database that was.
cat >"$WORK/wrap.sh" <<WRAP
#!/usr/bin/env bash
url=""; prev=""
for a in "\$@"; do [[ \$prev == --database-url ]] && url=\$a; prev=\$a; done
if [[ -n \$url && \$1 == serve ]]; then
  psql "\$url" -qAtc "ALTER DATABASE \${url##*/} SET log_statement = 'all'" >/dev/null
  echo "\${url##*/}" >>"$WORK/dbs"
fi
exec "$BIN" "\$@"
WRAP
chmod +x "$WORK/wrap.sh"
start=$(wc -l <"$LOG")
MANDATE_BIN="$WORK/wrap.sh" BENCH_DATABASE_URL="${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}" \
  BENCH_DURATION="${BENCH_DURATION:-4}" BENCH_WARMUP=200 BENCH_REQUESTS=1000000 BENCH_SKIP_BUILD=1 \
  BENCH_RESULT="$WORK/result.json" "$ROOT/bench/run.sh" mandate >/dev/null 2>"$WORK/run.err" \
  || { cat "$WORK/run.err" >&2; exit 1; }
db=$(head -1 "$WORK/dbs")
tail -n +$((start + 1)) "$LOG" | grep "@$db " | grep -E "LOG:  (execute|statement)" >"$WORK/statements" || true
tokens=$(jq '.successes + .warmup_successes' "$WORK/result.json")
n=$(wc -l <"$WORK/statements")
awk -v n="$n" -v t="$tokens" 'BEGIN { printf "%d statements for %d tokens: %.2f per token\n", n, t, n / t }'
sed -E 's/.*LOG:  (execute [^:]*|statement): //' "$WORK/statements" | cut -c1-70 | sort | uniq -c | sort -rn | head -20
