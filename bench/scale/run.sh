#!/usr/bin/env bash
# The scale benchmark (issue 18, "the seeds' 80-to-1") on SQLite.
#
#   bench/scale/run.sh seed      # seeds $SCALE_DIR/seeded (mandate-scale), once
#   bench/scale/run.sh lists     # inventory lists and review: seeded vs empty
#   bench/scale/run.sh review    # the review only (GET /v1/review, mandate review)
#   bench/scale/run.sh load      # client_credentials and /v1/check: seeded vs empty
#   bench/scale/run.sh all       # seed (if needed), lists, load
#
# Each of lists and load starts two servers side by side: one on a fresh
# copy of the seeded store, one on an empty store, with the same bench
# entities created through the admin API on both (a user, two resources,
# four agents, a grant by CIBA; the seeded one also gets the 10,000
# policies). Figures are written as JSON into $SCALE_OUT and summarised on
# stderr. Hold the build lock while measuring:
#   flock /tmp/mandate-build.lock bench/scale/run.sh lists
#
# Variables: SCALE (1.0), SCALE_DIR (/var/tmp/mandate-scale), SCALE_OUT
# ($SCALE_DIR/results), MANDATE_BIN, SCALE_BIN (the seeder),
# BENCH_DURATION (15), BENCH_ROUNDS (3), BENCH_CONCURRENCY (64),
# SCALE_SAMPLES (20), SCALE_DEEP (100 pages of 1,000 for the deep cursor),
# SCALE_REVIEW_RUNS (2), SCALE_REVIEW_LIMITS ("100 500": agents per page of
# GET /v1/review, each walked to the end by review.py), SCALE_REVIEW_TIMEOUT
# (900 s: a review that takes longer is recorded with `findings: null`),
# SCALE_CLI_REVIEW (1: also time `mandate review`).
set -euo pipefail

MODE="${1:-all}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
M="${MANDATE_BIN:-$TARGET/release/mandate}"
L="${LOADGEN_BIN:-$TARGET/release/mandate-loadgen}"
S="${SCALE_BIN:-$TARGET/release/mandate-scale}"
SCALE="${SCALE:-1.0}"
DIR="${SCALE_DIR:-/var/tmp/mandate-scale}"
OUT="${SCALE_OUT:-$DIR/results}"
DURATION="${BENCH_DURATION:-15}"
ROUNDS="${BENCH_ROUNDS:-3}"
CONCURRENCY="${BENCH_CONCURRENCY:-64}"
WARMUP="${BENCH_WARMUP:-2000}"
ADMIN="bench-admin-token-0123456789"
CAL="https://bench-calendar.example"
NO_LIMITS=(--rate-limit-per-address 0 --rate-limit-per-client 0)

log() { printf '[scale] %s\n' "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}
now() { date +%s.%N; }
since() { python3 -c "import sys; print(round((float(sys.argv[2]) - float(sys.argv[1])) * 1000))" "$1" "$(now)"; }
rss() { # rss PID -> "VmRSS VmHWM" in MiB
  awk '/^VmRSS/ {r=$2} /^VmHWM/ {h=$2} END {printf "%.0f %.0f", r/1024, h/1024}' "/proc/$1/status"
}

mkdir -p "$DIR" "$OUT"
WORK="$(mktemp -d "$DIR/run.XXXXXX")"
PIDS=()
cleanup() {
  set +e
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  if [[ "${BENCH_KEEP:-0}" == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

seed() {
  if [[ -f "$DIR/seeded/mandate.db" && "${SCALE_RESEED:-0}" != 1 ]]; then
    log "seeded store exists ($DIR/seeded); SCALE_RESEED=1 to redo"
    return
  fi
  [[ -x "$S" ]] || die "missing $S (cargo build --release -p mandate-scale)"
  rm -rf "$DIR/seeded"
  mkdir -p "$DIR/seeded"
  log "seeding at scale $SCALE into $DIR/seeded"
  local t0
  t0="$(now)"
  "$S" --db "$DIR/seeded/mandate.db" --policies-out "$DIR/policies.cedar" --scale "$SCALE" >"$OUT/seed.json"
  # Fold the WAL into the database file, so that copies of it start alike.
  sqlite3 "$DIR/seeded/mandate.db" "PRAGMA wal_checkpoint(TRUNCATE);" >/dev/null
  log "seeded in $(since "$t0") ms: $(cat "$OUT/seed.json")"
  du -sh "$DIR/seeded" >&2
}

# start NAME DATADIR: starts `mandate serve`, waits for /readyz; sets
# URL_<NAME>, PID_<NAME>, and records the start time and idle memory.
start() {
  local name="$1" data="$2" port t0 pid
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  t0="$(now)"
  MANDATE_ADMIN_TOKEN=$ADMIN "$M" serve --data-dir "$data" --listen "127.0.0.1:$port" \
    --issuer "http://127.0.0.1:$port" "${NO_LIMITS[@]}" >"$WORK/$name.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  for _ in $(seq 1 6000); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
    kill -0 "$pid" 2>/dev/null || { tail -20 "$WORK/$name.log" >&2; die "$name: server exited"; }
    sleep 0.05
  done
  local ms
  ms="$(since "$t0")"
  sleep 2
  log "$name: ready in $ms ms; idle RSS/HWM MiB: $(rss "$pid")"
  printf -v "URL_$name" '%s' "http://127.0.0.1:$port"
  printf -v "PID_$name" '%s' "$pid"
  echo "{\"store\":\"$name\",\"start_ms\":$ms,\"idle_rss_hwm_mib\":\"$(rss "$pid")\"}" >>"$OUT/start.jsonl"
}

# setup NAME: the bench entities (as bench/run.sh and bench/delegation.sh make them).
setup() {
  local name="$1" url pol
  url="URL_$name"
  url="${!url}"
  local w="$WORK/$name"
  mkdir -p "$w"
  api() { curl -sf -X "$1" "$url$2" -H "Authorization: Bearer ${4:-$ADMIN}" -H 'Content-Type: application/json' ${3:+-d "$3"}; }
  assertion() { "$M" keys client-assertion --key "$w/$1.pk8" --client-id "$2" --audience "$url"; }
  form() {
    local key="$1" id="$2" path="$3"
    shift 3
    curl -sf "$url$path" -d client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer \
      -d "client_assertion=$(assertion "$key" "$id")" "$@"
  }
  "$L" keygen --out "$w/cc.pk8" --jwk-out "$w/cc.jwk" >/dev/null
  for k in planner child grandchild cal; do "$M" keys client-keygen --out "$w/$k.pk8" >"$w/$k.jwks"; done
  local alice
  alice=$(api POST /v1/users '{"name":"Alice","email":"alice@bench.example","groups":["staff"]}' | jq -r .id)
  api POST /v1/resources '{"identifier":"https://api.example.com","name":"Bench API","scopes":{"read":[]}}' >/dev/null
  api POST /v1/resources "$(jq -cn --arg cal "$CAL" --slurpfile j "$w/cal.jwks" \
    '{identifier:$cal,name:"Calendar",scopes:{read:["list","get"],write:["create"]},jwks:$j[0]}')" >"$w/cal.json"
  pol='permit(principal, action == Action::"read", resource in Api::"https://api.example.com");
permit (principal in Group::"staff", action in [Action::"list", Action::"get", Action::"create"], resource);
permit (principal is Agent, action in [Action::"list", Action::"get"], resource in Api::"https://bench-calendar.example");
permit (principal is Agent, action == Action::"mandate:spawn", resource);
'
  printf '%s' "$pol" >"$w/policies.cedar"
  if [[ $name == seeded ]]; then cat "$DIR/policies.cedar" >>"$w/policies.cedar"; fi
  jq -cn --rawfile p "$w/policies.cedar" '{policies:$p}' >"$w/policies.json"
  curl -sf -X PUT "$url/v1/policies" -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
    --data-binary @"$w/policies.json" >/dev/null || die "$name: PUT /v1/policies failed ($(wc -c <"$w/policies.json") bytes)"
  local cid
  cid=$(api POST /v1/agents "$(jq -cn --arg o "$alice" --slurpfile j "$w/cc.jwk" '{name:"bench-agent",owner:$o,jwks:{keys:[$j[0]]}}')" | jq -r .client_id)
  echo "$cid" >"$w/cc.id"
  local planner child grandchild req parent hop leaf checker
  planner=$(api POST /v1/agents "$(jq -cn --arg o "$alice" --slurpfile j "$w/planner.jwks" '{name:"Planner",owner:$o,jwks:$j[0]}')" | jq -r .id)
  req=$(form planner "$planner" /oauth/bc-authorize -d login_hint=alice@bench.example -d scope=read -d resource=$CAL | jq -r .auth_req_id)
  parent=$(form planner "$planner" /oauth/token -d grant_type=urn:openid:params:grant-type:ciba -d auth_req_id="$req" | jq -r .access_token)
  spawn() {
    local t
    t=$(form "$1" "$2" /oauth/token -d grant_type=client_credentials -d resource="$url" -d scope=mandate:spawn | jq -r .access_token)
    api POST /v1/agents "$(jq -cn --arg o "$alice" --slurpfile j "$w/$3.jwks" '{name:"Helper",owner:$o,ttl_seconds:3600,jwks:$j[0]}')" "$t" | jq -r .client_id
  }
  exchange() {
    form "$1" "$2" /oauth/token -d grant_type=urn:ietf:params:oauth:grant-type:token-exchange \
      -d subject_token="$3" -d subject_token_type=urn:ietf:params:oauth:token-type:access_token | jq -r .access_token
  }
  child=$(spawn planner "$planner" child)
  hop=$(exchange child "$child" "$parent")
  grandchild=$(spawn child "$child" grandchild)
  leaf=$(exchange grandchild "$grandchild" "$hop")
  checker=$(form cal "$(jq -r .id "$w/cal.json")" /oauth/token -d grant_type=client_credentials -d resource="$url" -d scope=mandate:check | jq -r .access_token)
  echo "$checker" >"$w/checker"
  jq -cn --arg t "$leaf" '{token:$t,action:"get",resource:{type:"event",id:"e1"}}' >"$w/check.json"
  local d
  d=$(curl -sf "$url/v1/check" -H "Authorization: Bearer $checker" -H 'Content-Type: application/json' -d @"$w/check.json")
  [[ $(jq -r .decision <<<"$d") == allow ]] || die "$name: the bench check is not allowed: $d"
  log "$name: bench entities ready"
}

# Copies the pristine seeded store, so that every run starts from it.
fresh_seeded() {
  [[ -f "$DIR/seeded/mandate.db" ]] || die "no seeded store: run $0 seed first"
  rm -rf "$WORK/seeded-data"
  cp -r "$DIR/seeded" "$WORK/seeded-data"
}

lists() {
  fresh_seeded
  mkdir -p "$WORK/empty-data"
  start seeded "$WORK/seeded-data"
  start empty "$WORK/empty-data"
  setup seeded
  setup empty
  for name in empty seeded; do
    local url pid
    url="URL_$name"
    url="${!url}"
    pid="PID_$name"
    pid="${!pid}"
    if [[ $MODE != review ]]; then
      log "$name: lists"
      python3 "$ROOT/bench/scale/lists.py" --base "$url" --token "$ADMIN" --samples "${SCALE_SAMPLES:-20}" \
        --deep "${SCALE_DEEP:-100}" >"$OUT/lists.$name.json"
      log "$name: RSS/HWM after the lists: $(rss "$pid")"
    fi
    local t0 ms n
    # The whole review, a page of agents at a time (ADR 0038), at each
    # page size in SCALE_REVIEW_LIMITS, SCALE_REVIEW_RUNS times.
    for limit in ${SCALE_REVIEW_LIMITS:-100 500}; do
      for i in $(seq 1 "${SCALE_REVIEW_RUNS:-2}"); do
        if timeout "${SCALE_REVIEW_TIMEOUT:-900}" python3 "$ROOT/bench/scale/review.py" --base "$url" --token "$ADMIN" \
          --limit "$limit" >"$WORK/review.$name.json"; then
          :
        else
          echo '{"ms": null, "findings": null}' >"$WORK/review.$name.json"
        fi
        log "$name: GET /v1/review (limit $limit) #$i: $(cat "$WORK/review.$name.json"); RSS/HWM $(rss "$pid")"
        jq -c --arg store "$name" --argjson run "$i" --arg rss "$(rss "$pid")" \
          '{store: $store, what: "GET /v1/review", run: $run, limit, ms, pages, agents, findings, page_ms, bytes, kinds, rss_hwm_mib: $rss}' \
          "$WORK/review.$name.json" >>"$OUT/review.jsonl"
      done
    done
    [[ "${SCALE_CLI_REVIEW:-1}" == 1 ]] || continue
    t0="$(now)"
    local rc=0
    MANDATE_URL="$url" MANDATE_ADMIN_TOKEN=$ADMIN timeout "${SCALE_REVIEW_TIMEOUT:-900}" "$M" review >"$WORK/cli-review.$name.txt" 2>&1 || rc=$?
    ms="$(since "$t0")"
    log "$name: mandate review: $ms ms (exit $rc, $(wc -l <"$WORK/cli-review.$name.txt") lines); RSS/HWM $(rss "$pid")"
    echo "{\"store\":\"$name\",\"what\":\"mandate review\",\"ms\":$ms,\"exit\":$rc,\"rss_hwm_mib\":\"$(rss "$pid")\"}" >>"$OUT/review.jsonl"
  done
}

load() {
  fresh_seeded
  mkdir -p "$WORK/empty-data"
  start seeded "$WORK/seeded-data"
  start empty "$WORK/empty-data"
  setup seeded
  setup empty
  for r in $(seq 1 "$ROUNDS"); do
    for what in cc check; do
      for name in empty seeded; do
        local url pid w args
        url="URL_$name"
        url="${!url}"
        pid="PID_$name"
        pid="${!pid}"
        w="$WORK/$name"
        if [[ $what == cc ]]; then
          args=(--token-endpoint "$url/oauth/token" --client-id "$(cat "$w/cc.id")" --key "$w/cc.pk8" --aud "$url"
            --resource https://api.example.com --scope read)
        else
          args=(--token-endpoint "$url/v1/check" --json-body "$w/check.json" --bearer "$(cat "$w/checker")"
            --expect '"decision":"allow"')
        fi
        "$L" --concurrency "$CONCURRENCY" --warmup "$WARMUP" --requests 1000000 --duration "$DURATION" \
          --json "${args[@]}" >"$OUT/load.$what.$name.$r.json"
        log "round $r $what $name: $(jq -c '{throughput_rps, p50: .latency_ms.p50, p99: .latency_ms.p99, errors_total}' \
          "$OUT/load.$what.$name.$r.json"); RSS/HWM $(rss "$pid")"
        echo "{\"store\":\"$name\",\"what\":\"$what\",\"round\":$r,\"rss_hwm_mib\":\"$(rss "$pid")\"}" >>"$OUT/load.rss.jsonl"
      done
    done
  done
}

case "$MODE" in
  seed) seed ;;
  lists | review) lists ;;
  load) load ;;
  all)
    seed
    lists
    load
    ;;
  *) die "usage: $0 [seed|lists|load|all]" ;;
esac
