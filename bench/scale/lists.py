#!/usr/bin/env python3
"""Times pages of the inventory lists and the review queries (issue 18).

One keep-alive HTTP/1.1 connection, sequential requests: for each case,
`--warmup` untimed requests, then `--samples` timed ones (request sent to
body read, the body not parsed). Prints one JSON object: per case the
p50/p95/max in ms (nearest rank), the items on the page and the status.

The filter values (an owner, an agent, a parent, a user) are read from the
store through the API first, so that the same cases run on any store.
"""

import argparse
import datetime as dt
import http.client
import json
import sys
import time
import urllib.parse


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--deep", type=int, default=100, help="pages of 1,000 walked for the deep cursor")
    args = ap.parse_args()
    u = urllib.parse.urlparse(args.base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    headers = {"Authorization": "Bearer " + args.token}

    def get(path):
        t = time.perf_counter()
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        body = r.read()
        return r.status, body, (time.perf_counter() - t) * 1000.0

    def items(path):
        status, body, _ = get(path)
        if status != 200:
            sys.exit(f"GET {path} -> {status}: {body[:300]!r}")
        return json.loads(body)

    now = dt.datetime.now(dt.timezone.utc)
    iso = lambda d: (now + d).strftime("%Y-%m-%dT%H:%M:%SZ")
    month_ago, week_ahead, now_s = iso(dt.timedelta(days=-30)), iso(dt.timedelta(days=7)), iso(dt.timedelta())

    # Filter values from the store itself.
    agent = (items("/v1/agents?kind=persistent&status=active&limit=1")["items"] or [None])[0]
    eph = (items("/v1/agents?kind=ephemeral&limit=1")["items"] or [None])[0]
    owner = agent["owner"] if agent else None
    parent = (eph or {}).get("parent") or (agent or {}).get("id")
    graned = (items("/v1/grants?status=active&limit=1")["items"] or [None])[0]

    # A deep cursor: walk the unfiltered lists a thousand at a time.
    deep = {}
    walk = {}
    for lst in ("agents", "grants"):
        cursor, pages, spent = None, 0, 0.0
        for _ in range(args.deep):
            path = f"/v1/{lst}?limit=1000" + (f"&cursor={urllib.parse.quote(cursor)}" if cursor else "")
            status, body, ms = get(path)
            if status != 200:
                sys.exit(f"GET {path} -> {status}")
            spent += ms
            pages += 1
            nxt = json.loads(body).get("next_cursor")
            if not nxt:
                break
            cursor = nxt
        deep[lst] = cursor
        walk[lst] = {"pages": pages, "mean_ms": round(spent / max(pages, 1), 2)}

    q = urllib.parse.quote
    cases = [
        ("users", "/v1/users?"),
        ("users status=disabled", "/v1/users?status=disabled&"),
        ("users group=eng", "/v1/users?group=eng&"),
        ("agents", "/v1/agents?"),
        ("agents owner", f"/v1/agents?owner={owner}&" if owner else None),
        ("agents status=active", "/v1/agents?status=active&"),
        ("agents status=suspended", "/v1/agents?status=suspended&"),
        ("agents kind=persistent", "/v1/agents?kind=persistent&"),
        ("agents kind=ephemeral", "/v1/agents?kind=ephemeral&"),
        ("agents parent", f"/v1/agents?parent={parent}&" if parent else None),
        ("agents used_before 30d", f"/v1/agents?used_before={q(month_ago)}&"),
        ("agents used_after 30d", f"/v1/agents?used_after={q(month_ago)}&"),
        ("agents expires_before now", f"/v1/agents?expires_before={q(now_s)}&"),
        ("agents status=active used_before 30d", f"/v1/agents?status=active&used_before={q(month_ago)}&"),
        ("agents deep cursor", f"/v1/agents?cursor={q(deep['agents'])}&" if deep.get("agents") else None),
        ("resources", "/v1/resources?"),
        ("grants", "/v1/grants?"),
        ("grants user", f"/v1/grants?user={owner}&" if owner else None),
        ("grants agent", f"/v1/grants?agent={agent['id']}&" if agent else None),
        ("grants resource", f"/v1/grants?resource={q(graned['resource'])}&" if graned else None),
        ("grants status=active", "/v1/grants?status=active&"),
        ("grants status=expired", "/v1/grants?status=expired&"),
        ("grants status=revoked", "/v1/grants?status=revoked&"),
        ("grants expires_before +7d", f"/v1/grants?expires_before={q(week_ahead)}&"),
        ("grants used_before 30d", f"/v1/grants?used_before={q(month_ago)}&"),
        ("grants status=active used_before 30d", f"/v1/grants?status=active&used_before={q(month_ago)}&"),
        ("grants deep cursor", f"/v1/grants?cursor={q(deep['grants'])}&" if deep.get("grants") else None),
    ]
    out = {"walk_1000": walk, "cases": []}
    for name, prefix in cases:
        if prefix is None:
            continue
        for limit in (100, 1000):
            path = f"{prefix}limit={limit}"
            slowest = 0.0
            for _ in range(args.warmup):
                slowest = max(slowest, get(path)[2])
            # A page slower than a second gets 5 samples, not 20: its p95
            # is then its maximum, and the run stays short.
            samples = args.samples if slowest < 1000 else min(args.samples, 5)
            times, status, n = [], None, None
            for _ in range(samples):
                status, body, ms = get(path)
                times.append(ms)
            if status == 200:
                n = len(json.loads(body).get("items", []))
            times.sort()
            rank = lambda p: times[max(0, min(len(times) - 1, -(-len(times) * p // 100) - 1))]
            out["cases"].append(
                {"case": name, "limit": limit, "status": status, "items": n, "samples": samples,
                 "p50": round(rank(50), 2), "p95": round(rank(95), 2), "max": round(times[-1], 2)}
            )
            print(f"{name:40} {limit:5} {status} n={n} p50={rank(50):8.2f} p95={rank(95):8.2f} ms", file=sys.stderr)
    if agent:
        path = f"/v1/agents/{agent['id']}/inventory"
        times = []
        for i in range(args.warmup + args.samples):
            status, body, ms = get(path)
            if i >= args.warmup:
                times.append(ms)
        times.sort()
        out["cases"].append({"case": "agent inventory", "limit": None, "status": status, "items": None,
                             "p50": round(times[len(times) // 2], 2), "p95": round(times[-(-len(times) * 95 // 100) - 1], 2),
                             "max": round(times[-1], 2)})
        print(f"{'agent inventory':40}       {status} p50={times[len(times)//2]:8.2f} ms", file=sys.stderr)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
