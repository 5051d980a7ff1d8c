#!/usr/bin/env bash
# Handshake cost, embedded against Redis in one run: handshakes/s, server CPU per
# handshake (the pod, plus Redis in Redis mode) and the Redis commands per session, its
# opening and its close (INFO commandstats once the closes have settled; it counts the
# commands scripts run as well as the script calls themselves).
#
# Usage: bench/handshake.sh [BINARY...]
#   With no argument, builds and measures this checkout's release build. With several
#   binaries (say an older build and this one), measures each in turn in the same run,
#   so their ratios can be compared.
# Env: N (handshakes per measurement, default 10000), ROUNDS (default 3: the median of
#   the rounds is reported; rounds alternate between binaries and modes so that a change
#   in the machine's load hits them alike).
# JWT auth and the full preflight, like bench/run.sh. Servers and load on 127.0.0.1 only;
# every process started here is stopped on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

N=${N:-10000}
ROUNDS=${ROUNDS:-3}
# shellcheck source=bench/lib.sh
. bench/lib.sh
start_work handshake

command -v redis-server >/dev/null || { echo "redis-server is missing (apt-get install redis-server)" >&2; exit 1; }

build_binaries "$@"
set -- "${BINS[@]}"

# measure BINARY MODE ROUND: one server, N handshakes; prints one JSON line.
measure() {
    local bin=$1 mode=$2 round=$3 redis_url="" rd="" port=29500 rport=29579
    if [ "$mode" = redis ]; then
        redis-server --port $rport --bind 127.0.0.1 --save "" --appendonly no >"$WORK/redis.log" 2>&1 &
        rd=$!; PIDS+=("$rd"); wait_port $rport
        redis_url=redis://127.0.0.1:$rport
    fi
    env -i PATH="$PATH" WSGATE__SERVER__LISTEN=127.0.0.1:$port WSGATE__SERVER__GRPC_LISTEN=127.0.0.1:29551 \
        WSGATE__AUTH__MODE=jwt WSGATE__AUTH__JWT__SECRET="$SECRET" WSGATE__CONTROL__API_KEYS=bench-api-key-0123456789 \
        WSGATE__LIMITS__HANDSHAKES_PER_IP_PER_S=1000000 WSGATE__LIMITS__HANDSHAKE_BURST=1000000 \
        WSGATE__REDIS__URL="$redis_url" WSGATE__TELEMETRY__LOG_LEVEL=warn "$bin" serve >"$WORK/gw.log" 2>&1 &
    local gw=$!; PIDS+=("$gw"); wait_port $port
    local pids=(--pid "$gw")
    [ -n "$rd" ] && { pids+=(--pid "$rd"); redis-cli -p $rport CONFIG RESETSTAT >/dev/null; }
    "$B" connect --ws ws://127.0.0.1:$port/ws --token-secret "$SECRET" -n "$N" --sources 16 \
        --user-prefix "r$round-" "${pids[@]}" --json >"$WORK/connect.json"
    if [ -n "$rd" ]; then
        sleep 3 # the load generator closed its connections as it exited: let them settle
        redis-cli -p $rport INFO commandstats >"$WORK/stats.txt"
    else
        : >"$WORK/stats.txt"
    fi
    python3 - "$bin" "$mode" "$WORK/connect.json" "$WORK/stats.txt" "$N" <<'EOF'
import json, re, sys
bin_, mode, report, stats, n = sys.argv[1:6]
d = json.load(open(report))
c = d["connections"]
calls = {m.group(1): int(m.group(2)) for m in re.finditer(r"cmdstat_([^:]+):calls=(\d+)", open(stats).read())}
calls.pop("config|resetstat", None)
print(json.dumps({"binary": bin_, "mode": mode, "ok": c["ok"], "failed": c["failed"],
                  "per_s": c["handshakes_per_s"], "p99_ms": c["handshake_latency"]["p99_ms"],
                  "cpu_us": d.get("server_cpu_us_per_handshake"),
                  "redis_calls": calls}))
EOF
    kill "$gw"; wait "$gw" 2>/dev/null || true
    [ -n "$rd" ] && { kill "$rd"; wait "$rd" 2>/dev/null || true; }
    sleep 0.5
}

for round in $(seq "$ROUNDS"); do
    for bin in "$@"; do
        for mode in embedded redis; do
            echo "round $round: $(basename "$bin") $mode" >&2
            measure "$bin" "$mode" "$round" >>"$WORK/all.jsonl"
        done
    done
done

python3 - "$WORK/all.jsonl" "$N" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
n = int(sys.argv[2])
# Commands per session (open and close), script calls and the commands scripts ran alike.
# The pod's own upkeep (liveness, probes, revocations) is in there too, well under 0.05
# per session at these sizes, so it falls under the cut.
print(f"{n} handshakes per measurement, JWT + full preflight; median of {len(rows) // 2 // len({r['binary'] for r in rows})} rounds\n")
print("| binary | mode | handshakes/s | p99 ms | server CPU µs/handshake | Redis mode / embedded (rate) | Redis commands per session (open + close, inside scripts too) |")
print("|---|---|---|---|---|---|---|")
for b in dict.fromkeys(r["binary"] for r in rows):
    med = {}
    for mode in ("embedded", "redis"):
        rs = [r for r in rows if r["binary"] == b and r["mode"] == mode]
        med[mode] = {k: statistics.median(r[k] for r in rs) for k in ("per_s", "p99_ms", "cpu_us")}
        med[mode]["failed"] = sum(r["failed"] for r in rs)
        sent = {}
        for r in rs:
            for cmd, k in r["redis_calls"].items():
                sent[cmd] = sent.get(cmd, 0) + k
        rounds = len(rs)
        med[mode]["sent"] = ", ".join(f"{cmd} {k / rounds / n:.2f}" for cmd, k in sorted(sent.items(), key=lambda x: -x[1]) if k / rounds / n >= 0.05)
    for mode in ("embedded", "redis"):
        m = med[mode]
        ratio = f"{med['redis']['per_s'] / med['embedded']['per_s']:.2f}×" if mode == "redis" else ""
        print(f"| {b.rsplit('/', 1)[-1]} | {mode} | {m['per_s']:,.0f} | {m['p99_ms']:.0f} | {m['cpu_us']:.0f} | {ratio} | {m['sent'] or '—'} |"
              + (f" ({m['failed']} failed)" if m["failed"] else ""))
EOF
echo "raw: $WORK/all.jsonl" >&2
