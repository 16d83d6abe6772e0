#!/usr/bin/env python3
"""Prints the results of bench/scale/run.sh (a results directory) as
Markdown tables: the lists side by side, the review, the load, memory."""

import glob
import json
import os
import statistics
import sys


def jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "/var/tmp/mandate-scale/results"
    seed = os.path.join(d, "seed.json")
    if os.path.exists(seed):
        print("seed:", open(seed).read().strip(), "\n")
    for s in jsonl(os.path.join(d, "start.jsonl")):
        print(f"- start {s['store']}: {s['start_ms']} ms, idle RSS/HWM {s['idle_rss_hwm_mib']} MiB")
    lists = {}
    for store in ("empty", "seeded"):
        p = os.path.join(d, f"lists.{store}.json")
        if os.path.exists(p):
            lists[store] = json.load(open(p))
    if "seeded" in lists:
        print("\n| list (page) | limit | empty p50 / p95 ms | seeded p50 / p95 ms | seeded items | ≤ 200 ms p95 |")
        print("|---|---|---|---|---|---|")
        empty = {(c["case"], c["limit"]): c for c in lists.get("empty", {}).get("cases", [])}
        for c in lists["seeded"]["cases"]:
            e = empty.get((c["case"], c["limit"]))
            es = f"{e['p50']} / {e['p95']}" if e else "—"
            ok = "met" if c["p95"] <= 200 else f"**missed** ({c['p95'] / 200:.1f}×)"
            print(f"| {c['case']} | {c['limit'] or '—'} | {es} | {c['p50']} / {c['p95']} | {c['items']} | {ok} |")
        print("\nwalk (pages of 1,000):", json.dumps(lists["seeded"].get("walk_1000")))
    rev = jsonl(os.path.join(d, "review.jsonl"))
    if rev:
        print()
        for r in rev:
            paged = ""
            if r.get("limit"):
                paged = (f" (limit {r['limit']}: {r.get('pages')} pages of {r.get('agents')} agents, page p50/p95/max "
                         f"{(r.get('page_ms') or {}).get('p50')} / {(r.get('page_ms') or {}).get('p95')} / "
                         f"{(r.get('page_ms') or {}).get('max')} ms, {r.get('bytes')} bytes)")
            print(f"- review {r['store']} {r['what']}{paged}: {r['ms']} ms, findings {r.get('findings')}, "
                  f"exit {r.get('exit', '—')}, RSS/HWM {r['rss_hwm_mib']} MiB")
    runs = {}
    for p in sorted(glob.glob(os.path.join(d, "load.*.*.*.json"))):
        _, what, store, rnd, _ = os.path.basename(p).split(".")
        r = json.load(open(p))
        runs.setdefault((what, store), []).append(r)
    if runs:
        print("\n| load | store | rounds req/s | median | p50 / p99 ms (median round) | errors |")
        print("|---|---|---|---|---|---|")
        med = {}
        for (what, store), rs in sorted(runs.items()):
            rates = [round(r["throughput_rps"]) for r in rs]
            med[(what, store)] = statistics.median(rates)
            mid = sorted(rs, key=lambda r: r["throughput_rps"])[len(rs) // 2]
            errs = sum(r.get("errors_total", 0) for r in rs)
            print(f"| {what} | {store} | {' · '.join(map(str, rates))} | {med[(what, store)]:.0f} | "
                  f"{mid['latency_ms']['p50']} / {mid['latency_ms']['p99']} | {errs} |")
        for what in ("cc", "check"):
            if (what, "empty") in med and (what, "seeded") in med:
                loss = 1 - med[(what, "seeded")] / med[(what, "empty")]
                print(f"\n{what}: seeded/empty median {med[(what, 'seeded')] / med[(what, 'empty')]:.3f} "
                      f"(loss {loss * 100:.1f}%)")
    for r in jsonl(os.path.join(d, "load.rss.jsonl")):
        if r["store"] == "seeded":
            print(f"- load RSS/HWM seeded {r['what']} round {r['round']}: {r['rss_hwm_mib']} MiB")


if __name__ == "__main__":
    main()
