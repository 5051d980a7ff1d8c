#!/usr/bin/env python3
"""Collects the JSON reports of one bench/run.sh run into bench/results/<date>.json and
rewrites the results table of bench/README.md (between the results markers), with the
ratios against the baselines and each target of issue 6 and of issue 16 marked met or not
met (or "not measured here" when this run has no figure for it)."""
import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from charts import write_charts

BEGIN = "<!-- results:begin -->"
END = "<!-- results:end -->"


def load(results, name):
    p = Path(results) / f"{name}.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def get(d, *path):
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def machine():
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": mem,
        "kernel": platform.release(),
        "open_files_limit": subprocess.run(
            ["sh", "-c", "ulimit -n"], capture_output=True, text=True
        ).stdout.strip(),
    }


def recovery_target(run):
    """Issue 16's recovery target from `recovery_wsgate.json` (`wsgate-bench recover`):
    every client back with every missed message, how long until the last one was, and the
    p99 of the reconnecting joins."""
    if run is None:
        return None, None
    rec = run.get("recovery") or {}
    clients, complete = run.get("clients"), rec.get("complete")
    within_ms, p99 = rec.get("time_to_last_complete_ms"), get(rec, "join_latency", "p99_ms")
    if None in (clients, complete, within_ms, p99):
        return None, None
    value = (f"{complete:,}/{clients:,} recovered with every missed message, the last after "
             f"{within_ms / 1000:.2f} s; p99 join {p99:.0f} ms")
    ok = bool(rec.get("all_recovered")) and within_ms <= 2000 and p99 < 200
    return value, ok


def fmt(v, digits=1, unit=""):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.{digits}f}{unit}"
    return f"{v:,}{unit}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--readme")
    ap.add_argument("--load-before", default="?")
    ap.add_argument("--load-after", default="?")
    ap.add_argument("--command", default="bench/run.sh")
    a = ap.parse_args()

    names = [
        "connect_go", "connect_wsgate_embedded", "connect_wsgate_redis", "connect_go_c64",
        "connect_wsgate_embedded_c64", "connect_wsgate_redis_c64", "idle_go",
        "idle_wsgate", "fanout_wsgate", "push_wsgate", "broadcast_wsgate",
        "fanout_socketio", "fanout_probe", "fanout_spread_wsgate", "fanout_spread_socketio",
        "fanout_spread_probe", "push_fast_wsgate", "recovery_wsgate",
    ]
    runs = {n: load(a.results, n) for n in names}

    hs = {k: get(runs[f"connect_{k}"], "connections", "handshakes_per_s")
          for k in ("go", "wsgate_embedded", "wsgate_redis")}
    hs_fail = {k: get(runs[f"connect_{k}"], "connections", "failed")
               for k in ("go", "wsgate_embedded", "wsgate_redis")}
    hs64 = {k: get(runs[f"connect_{k}_c64"], "connections", "handshakes_per_s")
            for k in ("go", "wsgate_embedded", "wsgate_redis")}
    cpu_hs = {k: get(runs[f"connect_{k}"], "server_cpu_us_per_handshake")
              for k in ("go", "wsgate_embedded", "wsgate_redis")}
    client_hs = {k: get(runs[f"connect_{k}_c64"], "client_cpu_us_per_handshake")
                 for k in ("go", "wsgate_embedded", "wsgate_redis")}
    p99_hs = {k: get(runs[f"connect_{k}"], "connections", "handshake_latency", "p99_ms")
              for k in ("go", "wsgate_embedded", "wsgate_redis")}
    idle = {k: get(runs[f"idle_{k}"], "server_rss_kib_per_connection") for k in ("go", "wsgate")}
    def fanout(name):
        d = get(runs[name], "deliveries") or {}
        return {
            "cpu_us": d.get("server_cpu_us_per_delivery"),
            "per_s": d.get("deliveries_per_s"),
            "p50": get(d, "latency", "p50_ms"),
            "p99": get(d, "latency", "p99_ms"),
            "delivered": d.get("delivered"),
            "expected": d.get("expected_deliveries"),
            "publish_s": d.get("publish_elapsed_s"),
        }

    fan = {k: fanout(f"fanout_{k}") for k in ("wsgate", "socketio", "probe")}
    spread = {k: fanout(f"fanout_spread_{k}") for k in ("wsgate", "socketio", "probe")}
    push = get(runs["push_wsgate"], "deliveries") or {}
    push_fast = get(runs["push_fast_wsgate"], "deliveries") or {}
    bc = get(runs["broadcast_wsgate"], "deliveries") or {}

    def target(name, value, limit, ok):
        return {"target": name, "value": value, "limit": limit,
                "met": None if ok is None else bool(ok)}

    # Whether a measured value meets its limit; None when it was not measured.
    def at_most(v, limit):
        return None if v is None else v <= limit

    def at_least(v, limit):
        return None if v is None else v >= limit

    r_idle = ratio(idle["wsgate"], idle["go"])
    r_hs_emb = ratio(hs["wsgate_embedded"], hs["go"])
    r_hs_red = ratio(hs["wsgate_redis"], hs["go"])
    r_cpu_sio = ratio(fan["wsgate"]["cpu_us"], fan["socketio"]["cpu_us"])
    r_p99_sio = ratio(fan["wsgate"]["p99"], fan["socketio"]["p99"])
    push_p99 = get(push, "latency", "p99_ms")
    push_rate = push.get("publishes_per_s")
    targets = [
        target("idle KiB/connection at 15k, JWT", idle["wsgate"], "≤ 8 KiB",
               at_most(idle["wsgate"], 8)),
        target("idle memory vs seed (Go)", r_idle, "≤ 0.35×", at_most(r_idle, 0.35)),
        target("handshake rate, embedded + JWT, vs seed", r_hs_emb, "≥ 1.5×",
               at_least(r_hs_emb, 1.5)),
        target("handshake rate, Redis + JWT, vs seed", r_hs_red, "≥ 1.0×",
               at_least(r_hs_red, 1.0)),
        target("fan-out CPU/delivery vs Socket.IO", r_cpu_sio, "≤ 0.2×",
               at_most(r_cpu_sio, 0.2)),
        target("fan-out CPU/delivery vs limit probe", ratio(fan["wsgate"]["cpu_us"], fan["probe"]["cpu_us"]),
               "< 1.0×", None if fan["wsgate"]["cpu_us"] is None or fan["probe"]["cpu_us"] is None
               else fan["wsgate"]["cpu_us"] < fan["probe"]["cpu_us"]),
        target("fan-out p99 vs Socket.IO", r_p99_sio, "≤ 0.2×", at_most(r_p99_sio, 0.2)),
        target("push p99 at 5,000 SendToUser/s, two pods", push_p99, "< 5 ms",
               None if push_p99 is None else (push_p99 < 5 and (push_rate or 0) >= 4750)),
    ]

    # Issue 16: every ratio within this run.
    r_cpu_hs = ratio(cpu_hs["wsgate_embedded"], cpu_hs["go"])
    r_hs_red_emb = ratio(hs["wsgate_redis"], hs["wsgate_embedded"])
    r_spread_probe = ratio(spread["wsgate"]["cpu_us"], spread["probe"]["cpu_us"])
    r_spread_sio = ratio(spread["wsgate"]["cpu_us"], spread["socketio"]["cpu_us"])
    fast_p99 = get(push_fast, "latency", "p99_ms")
    fast_rate = push_fast.get("publishes_per_s")
    fast_target = get(runs["push_fast_wsgate"], "target_rate")
    recovery_value, recovery_ok = recovery_target(runs["recovery_wsgate"])
    targets16 = [
        target("idle RSS per connection, 15k held, JWT, history + events on", idle["wsgate"], "≤ 8 KiB",
               at_most(idle["wsgate"], 8)),
        target("idle memory vs seed (Go echo)", r_idle, "≤ 0.35×", at_most(r_idle, 0.35)),
        target("server CPU per handshake, embedded, JWT + full preflight, vs seed (no auth)", r_cpu_hs, "≤ 0.8×",
               at_most(r_cpu_hs, 0.8)),
        target("handshake rate, Redis mode, vs embedded", r_hs_red_emb, "≥ 0.9×",
               at_least(r_hs_red_emb, 0.9)),
        target("server CPU per handshake, Redis mode, vs Sockudo", "not measured here (by hand, see below)",
               "≤ 0.8×", None),
        target(f"fan-out CPU/delivery, publishes spread over ~1 s, {fmt(spread['wsgate']['expected'])} deliveries, "
               "2 pods, vs limit probe", r_spread_probe, "≤ 0.7×", at_most(r_spread_probe, 0.7)),
        target("fan-out CPU/delivery, spread, vs Socket.IO", r_spread_sio, "≤ 0.2×", at_most(r_spread_sio, 0.2)),
        target(f"push p99, SendToUser across two pods at {fmt(fast_target, 0)}/s asked "
               f"({fmt(fast_rate, 0)}/s reached)", fast_p99, "< 5 ms at 20k/s",
               None if fast_p99 is None else (fast_p99 < 5 and (fast_rate or 0) >= 19000)),
        target("recovery: 1,000 clients reconnecting with `since` at once",
               recovery_value or "not measured (no recovery_wsgate.json)",
               "all within 2 s, p99 join < 200 ms", recovery_ok),
    ]

    now = datetime.now(timezone.utc)
    out = {
        "date": now.isoformat(timespec="seconds"),
        "command": a.command,
        "machine": machine(),
        "load_average_before": a.load_before,
        "load_average_after": a.load_after,
        "git_revision": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                       text=True).stdout.strip(),
        "summary": {"handshakes_per_s": hs, "handshakes_per_s_concurrency_64": hs64,
                    "server_cpu_us_per_handshake": cpu_hs,
                    "client_cpu_us_per_handshake_concurrency_64": client_hs, "handshake_p99_ms": p99_hs, "handshake_failures": hs_fail,
                    "idle_kib_per_connection": idle, "fanout": fan, "fanout_spread": spread,
                    "push": {"rate": push_rate, "p50_ms": get(push, "latency", "p50_ms"),
                             "p99_ms": push_p99, "p999_ms": get(push, "latency", "p999_ms"),
                             "cpu_us_per_delivery": push.get("server_cpu_us_per_delivery"),
                             "delivered": push.get("delivered"), "expected": push.get("expected_deliveries")},
                    "push_fast": {"target_rate": fast_target, "rate": fast_rate,
                                  "p50_ms": get(push_fast, "latency", "p50_ms"), "p99_ms": fast_p99,
                                  "p999_ms": get(push_fast, "latency", "p999_ms"),
                                  "cpu_us_per_delivery": push_fast.get("server_cpu_us_per_delivery"),
                                  "client_cpu_us_per_delivery": push_fast.get("client_cpu_us_per_delivery"),
                                  "delivered": push_fast.get("delivered"),
                                  "expected": push_fast.get("expected_deliveries")},
                    "broadcast": {"per_s": bc.get("deliveries_per_s"), "p99_ms": get(bc, "latency", "p99_ms"),
                                  "cpu_us_per_delivery": bc.get("server_cpu_us_per_delivery"),
                                  "delivered": bc.get("delivered"), "expected": bc.get("expected_deliveries")}},
        "targets": targets,
        "targets_issue_16": targets16,
        "runs": runs,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")

    m = out["machine"]
    def mark(t):
        if t["met"] is None:
            return "not measured here" if t["value"] is None or isinstance(t["value"], str) else "n/a"
        return "**met**" if t["met"] else "**not met**"

    def value(v):
        return fmt(v, 2) if isinstance(v, float) else (v if isinstance(v, str) else fmt(v))
    lines = [
        BEGIN,
        f"Run of {out['date']} (`{a.command}`, revision `{out['git_revision']}`), "
        f"results in `{a.out}`.",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, Linux {m['kernel']}, "
        f"`ulimit -n` {m['open_files_limit']}; load average before {a.load_before}, after {a.load_after} "
        "(other engineers' builds and tests share these cores).",
        "",
        "| scenario | wsgate | baseline | ratio |",
        "|---|---|---|---|",
        f"| handshakes/s, embedded, JWT + full preflight ({fmt(get(runs['connect_wsgate_embedded'], 'connections', 'requested'))} conns) "
        f"| {fmt(hs['wsgate_embedded'], 0)} | Go gin+gorilla, no auth: {fmt(hs['go'], 0)} | {fmt(r_hs_emb, 2, '×')} |",
        f"| handshakes/s, Redis, JWT + full preflight | {fmt(hs['wsgate_redis'], 0)} | Go: {fmt(hs['go'], 0)} | {fmt(r_hs_red, 2, '×')} |",
        f"| handshake p99, server CPU per handshake (embedded / Redis) | {fmt(p99_hs['wsgate_embedded'], 0)} / {fmt(p99_hs['wsgate_redis'], 0)} ms, "
        f"{fmt(cpu_hs['wsgate_embedded'], 0)} / {fmt(cpu_hs['wsgate_redis'], 0)} µs | Go: {fmt(p99_hs['go'], 0)} ms, {fmt(cpu_hs['go'], 0)} µs | CPU {fmt(ratio(cpu_hs['wsgate_embedded'], cpu_hs['go']), 2, '×')} |",
        f"| handshakes/s with 64 in flight (below wsgate's 128 listen backlog), embedded / Redis | {fmt(hs64['wsgate_embedded'], 0)} / {fmt(hs64['wsgate_redis'], 0)} "
        f"| Go: {fmt(hs64['go'], 0)} | {fmt(ratio(hs64['wsgate_embedded'], hs64['go']), 2, '×')} / {fmt(ratio(hs64['wsgate_redis'], hs64['go']), 2, '×')} |",
        f"| load generator's own CPU per handshake (same client for all; 64 in flight) | {fmt(client_hs['wsgate_embedded'], 0)} / {fmt(client_hs['wsgate_redis'], 0)} µs "
        f"| Go run: {fmt(client_hs['go'], 0)} µs | — |",
        f"| idle RSS per connection ({fmt(get(runs['idle_wsgate'], 'held'))} held, JWT) | {fmt(idle['wsgate'], 2, ' KiB')} "
        f"| Go ({fmt(get(runs['idle_go'], 'held'))} held): {fmt(idle['go'], 2, ' KiB')} | {fmt(r_idle, 2, '×')} |",
        f"| fan-out server CPU per delivery (2 pods + Redis; {fmt(fan['wsgate']['delivered'])}/{fmt(fan['wsgate']['expected'])} delivered) "
        f"| {fmt(fan['wsgate']['cpu_us'], 2, ' µs')} | Socket.IO 2 nodes + Redis: {fmt(fan['socketio']['cpu_us'], 2, ' µs')}; "
        f"limit probe: {fmt(fan['probe']['cpu_us'], 2, ' µs')} | {fmt(r_cpu_sio, 2, '×')} / "
        f"{fmt(ratio(fan['wsgate']['cpu_us'], fan['probe']['cpu_us']), 2, '×')} |",
        f"| fan-out deliveries/s | {fmt(fan['wsgate']['per_s'], 0)} | Socket.IO: {fmt(fan['socketio']['per_s'], 0)}; "
        f"probe: {fmt(fan['probe']['per_s'], 0)} | {fmt(ratio(fan['wsgate']['per_s'], fan['socketio']['per_s']), 2, '×')} |",
        f"| fan-out latency p50 / p99 | {fmt(fan['wsgate']['p50'], 1)} / {fmt(fan['wsgate']['p99'], 1)} ms "
        f"| Socket.IO: {fmt(fan['socketio']['p50'], 1)} / {fmt(fan['socketio']['p99'], 1)} ms; "
        f"probe: {fmt(fan['probe']['p50'], 1)} / {fmt(fan['probe']['p99'], 1)} ms | p99 {fmt(r_p99_sio, 2, '×')} |",
        f"| fan-out, {fmt(get(runs['fanout_spread_wsgate'], 'publishes_requested'))} publishes spread at "
        f"{fmt(get(runs['fanout_spread_wsgate'], 'target_rate'), 0)}/s: server CPU per delivery "
        f"({fmt(spread['wsgate']['delivered'])}/{fmt(spread['wsgate']['expected'])} delivered) "
        f"| {fmt(spread['wsgate']['cpu_us'], 2, ' µs')} | Socket.IO: {fmt(spread['socketio']['cpu_us'], 2, ' µs')}; "
        f"limit probe: {fmt(spread['probe']['cpu_us'], 2, ' µs')} | {fmt(r_spread_sio, 2, '×')} / {fmt(r_spread_probe, 2, '×')} |",
        f"| fan-out spread: latency p50 / p99 | {fmt(spread['wsgate']['p50'], 1)} / {fmt(spread['wsgate']['p99'], 1)} ms "
        f"| Socket.IO: {fmt(spread['socketio']['p50'], 1)} / {fmt(spread['socketio']['p99'], 1)} ms; "
        f"probe: {fmt(spread['probe']['p50'], 1)} / {fmt(spread['probe']['p99'], 1)} ms "
        f"| p99 {fmt(ratio(spread['wsgate']['p99'], spread['socketio']['p99']), 2, '×')} |",
        f"| push: SendToUser rate achieved, p50 / p99 / p99.9 | {fmt(push_rate, 0)}/s, "
        f"{fmt(get(push, 'latency', 'p50_ms'), 2)} / {fmt(push_p99, 2)} / {fmt(get(push, 'latency', 'p999_ms'), 2)} ms "
        f"| — | — |",
        f"| push at {fmt(fast_target, 0)}/s asked (one load generator): rate reached, p50 / p99 / p99.9, "
        f"server / load-generator CPU per push | {fmt(fast_rate, 0)}/s, "
        f"{fmt(get(push_fast, 'latency', 'p50_ms'), 2)} / {fmt(fast_p99, 2)} / {fmt(get(push_fast, 'latency', 'p999_ms'), 2)} ms, "
        f"{fmt(push_fast.get('server_cpu_us_per_delivery'), 0)} / {fmt(push_fast.get('client_cpu_us_per_delivery'), 0)} µs "
        f"| — | — |",
        f"| broadcast deliveries/s, p99, CPU/delivery | {fmt(bc.get('deliveries_per_s'), 0)}/s, "
        f"{fmt(get(bc, 'latency', 'p99_ms'), 1)} ms, {fmt(bc.get('server_cpu_us_per_delivery'), 2, ' µs')} | — | — |",
        "",
        "| target (issue 6) | value | limit | status |",
        "|---|---|---|---|",
    ]
    for t in targets:
        lines.append(f"| {t['target']} | {value(t['value'])} | {t['limit']} | {mark(t)} |")
    lines += ["", "| target (issue 16) | value | limit | status |", "|---|---|---|---|"]
    for t in targets16:
        lines.append(f"| {t['target']} | {value(t['value'])} | {t['limit']} | {mark(t)} |")
    if a.readme:
        charts = {
            "handshakes": ("Handshakes per second", "/s", [
                ("Go gin+gorilla, no auth", hs["go"], False),
                ("wsgate embedded, JWT", hs["wsgate_embedded"], True),
                ("wsgate Redis, JWT", hs["wsgate_redis"], True)], False),
            "handshake-cpu": ("Server CPU per handshake", "µs", [
                ("Go gin+gorilla, no auth", cpu_hs["go"], False),
                ("wsgate embedded, JWT", cpu_hs["wsgate_embedded"], True),
                ("wsgate Redis, JWT", cpu_hs["wsgate_redis"], True)], True),
            "idle-memory": ("Idle memory per connection", "KiB", [
                ("Go gin+gorilla", idle["go"], False),
                ("wsgate, JWT", idle["wsgate"], True)], True),
            "fanout-cpu": ("Fan-out CPU per delivery", "µs", [
                ("Socket.IO + Redis adapter", fan["socketio"]["cpu_us"], False),
                ("limit probe (one write each)", fan["probe"]["cpu_us"], False),
                ("wsgate, 2 pods + Redis", fan["wsgate"]["cpu_us"], True)], True),
            "fanout-p99": ("Fan-out delivery latency p99", "ms", [
                ("Socket.IO + Redis adapter", fan["socketio"]["p99"], False),
                ("limit probe", fan["probe"]["p99"], False),
                ("wsgate, 2 pods + Redis", fan["wsgate"]["p99"], True)], True),
            "fanout-spread-cpu": ("Fan-out CPU per delivery, publishes spread over ~1 s", "µs", [
                ("Socket.IO + Redis adapter", spread["socketio"]["cpu_us"], False),
                ("limit probe (one write each)", spread["probe"]["cpu_us"], False),
                ("wsgate, 2 pods + Redis", spread["wsgate"]["cpu_us"], True)], True),
        }
        links = write_charts(Path(a.readme).parent / "charts", charts)
        if links:
            lines += ["", " ".join(links)]
    lines.append(END)
    table = "\n".join(lines)
    print(table)
    if a.readme:
        p = Path(a.readme)
        text = p.read_text() if p.exists() else f"{BEGIN}\n{END}\n"
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            _, tail = rest.split(END, 1)
            text = head + table + tail
        else:
            text += "\n" + table + "\n"
        p.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
