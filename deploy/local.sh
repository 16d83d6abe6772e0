#!/usr/bin/env bash
# What deploy/compose.yaml runs, as local processes: three `mandate serve`
# nodes on one fresh PostgreSQL database, behind nginx with deploy/nginx.conf
# (its upstream names rewritten to loopback ports). docs/deployment.md.
#
#   deploy/local.sh           # runs until Ctrl-C; prints the URL and the admin token
#   deploy/local.sh --check   # starts it all, checks it through the balancer, stops
#
# Needs: a built `mandate` (MANDATE_BIN, default $CARGO_TARGET_DIR/debug/mandate),
# nginx, psql, and PostgreSQL at MANDATE_TEST_POSTGRES_URL (default the local
# server, trust auth). LB_PORT (default 8080) is where nginx listens, and the
# nodes listen on NODE_PORT_BASE+1 to +3 (default 7070: 7071 to 7073).
set -euo pipefail
cd "$(dirname "$0")/.."

admin=${MANDATE_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
bin=${MANDATE_BIN:-${CARGO_TARGET_DIR:-target}/debug/mandate}
lb_port=${LB_PORT:-8080}
base=${NODE_PORT_BASE:-7070}
ports=("$((base + 1))" "$((base + 2))" "$((base + 3))")
issuer="http://127.0.0.1:$lb_port"
db="mandate_local_$$"
work="$(mktemp -d)"
export MANDATE_MASTER_KEY="${MANDATE_MASTER_KEY:-$(openssl rand -base64 32)}"
export MANDATE_ADMIN_TOKEN="${MANDATE_ADMIN_TOKEN:-$(openssl rand -hex 24)}"

pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  psql "$admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

psql "$admin" -qc "CREATE DATABASE $db" >/dev/null
url="${admin%/*}/$db"

# The nodes start together: migrations run once, under an advisory lock.
for n in 1 2 3; do
  "$bin" serve --database-url "$url" --issuer "$issuer" --listen "127.0.0.1:${ports[n - 1]}" \
    --data-dir "$work/node$n" --trusted-proxies 127.0.0.1 >"$work/node$n.log" 2>&1 &
  pids+=($!)
done

mkdir -p "$work/nginx"
sed -e "s/mandate-1:7070/127.0.0.1:${ports[0]}/" -e "s/mandate-2:7070/127.0.0.1:${ports[1]}/" \
  -e "s/mandate-3:7070/127.0.0.1:${ports[2]}/" -e "s/listen 8080;/listen 127.0.0.1:$lb_port;/" \
  deploy/nginx.conf >"$work/nginx/nginx.conf"
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" \
  -g "daemon off; pid $work/nginx/nginx.pid; error_log $work/nginx/error.log;" &
pids+=($!)

ready() { curl -sf "http://127.0.0.1:$1/readyz" >/dev/null; }
for _ in $(seq 1 100); do
  ready "${ports[0]}" && ready "${ports[1]}" && ready "${ports[2]}" && ready "$lb_port" && break
  sleep 0.2
done
ready "$lb_port" || { tail -n 20 "$work"/node*.log "$work/nginx/error.log" >&2; exit 1; }

if [ "${1:-}" != "--check" ]; then
  echo "three nodes behind nginx at $issuer (admin token: $MANDATE_ADMIN_TOKEN); Ctrl-C stops them"
  wait
  exit 0
fi

# --check: what one node is told, through the balancer, every node knows.
api() { curl -sf -H "authorization: Bearer $MANDATE_ADMIN_TOKEN" -H 'content-type: application/json' "$@"; }
fail() { echo "check failed: $*" >&2; exit 1; }
issuers="$(for _ in 1 2 3 4 5 6; do curl -sf "$issuer/.well-known/oauth-authorization-server"; echo; done | sort -u)"
[ "$(printf '%s\n' "$issuers" | wc -l)" = 1 ] || fail "the nodes publish different metadata"
printf '%s' "$issuers" | grep -q "\"issuer\":\"$issuer\"" || fail "the metadata names another issuer"
keys="$(for p in "${ports[@]}"; do curl -sf "http://127.0.0.1:$p/jwks.json"; echo; done | sort -u | wc -l)"
[ "$keys" = 1 ] || fail "the nodes publish different keys"
user="$(api -X POST "$issuer/v1/users" -d '{"name":"Local","email":"local@example.com"}')"
id="$(printf '%s' "$user" | sed -n 's/.*"id":"\(usr_[^"]*\)".*/\1/p')"
[ -n "$id" ] || fail "no user created: $user"
for p in "${ports[@]}"; do
  api "http://127.0.0.1:$p/v1/users/$id" | grep -q "$id" || fail "node $p does not know $id"
done
policy='permit(principal is Agent, action, resource);'
version="$(api -X PUT "http://127.0.0.1:${ports[0]}/v1/policies" -d "{\"policies\":\"$policy\"}" | sed -n 's/.*"version":"\([^"]*\)".*/\1/p')"
[ -n "$version" ] || fail "no policy version"
for p in "${ports[1]}" "${ports[2]}"; do
  api "http://127.0.0.1:$p/v1/policies" | grep -q "$version" || fail "node $p serves another policy version"
done
echo "ok: three nodes behind nginx at $issuer agree on metadata, keys, users and policy"
