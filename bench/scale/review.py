#!/usr/bin/env python3
"""Walks the whole access review page by page (ADR 0038) and times it.

One keep-alive HTTP/1.1 connection: `GET /v1/review?limit=N`, then each
`next_cursor` until it is null. Prints one JSON object: the total time,
the pages, per-page p50/p95/max in ms (nearest rank), the findings, their
kinds, and the bytes read.
"""

import argparse
import http.client
import json
import sys
import time
import urllib.parse


def rank(xs, q):
    xs = sorted(xs)
    return round(xs[max(0, min(len(xs) - 1, int(-(-q * len(xs) // 1)) - 1))], 2) if xs else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--limit", type=int, default=100)
    args = ap.parse_args()
    u = urllib.parse.urlparse(args.base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    headers = {"Authorization": "Bearer " + args.token}
    cursor, times, kinds, findings, agents, size = None, [], {}, 0, 0, 0
    start = time.perf_counter()
    while True:
        path = f"/v1/review?limit={args.limit}" + (f"&cursor={urllib.parse.quote(cursor)}" if cursor else "")
        t = time.perf_counter()
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        body = r.read()
        times.append((time.perf_counter() - t) * 1000.0)
        if r.status != 200:
            sys.exit(f"GET {path} -> {r.status}: {body[:300]!r}")
        size += len(body)
        page = json.loads(body)
        agents += page["agents_reviewed"]
        for f in page["findings"]:
            findings += 1
            kinds[f["kind"]] = kinds.get(f["kind"], 0) + 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    total = (time.perf_counter() - start) * 1000.0
    print(json.dumps({
        "limit": args.limit, "ms": round(total), "pages": len(times), "agents": agents, "findings": findings,
        "kinds": kinds, "bytes": size,
        "page_ms": {"p50": rank(times, 0.5), "p95": rank(times, 0.95), "max": round(max(times), 2)},
    }))


if __name__ == "__main__":
    main()
