#!/usr/bin/env bash
# What history costs: the same fan-out and push scenarios against two wsgate pods on one
# Redis, with streams keeping history and without, in one run; and the Redis memory of a
# stream of 100 messages. Prints a table (and the raw JSON reports' directory).
#
#   bench/history.sh            (about 2 minutes after the release build)
#
# Needs redis-server; builds the release binaries. Everything listens on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

FAN_M=${FAN_M:-2000}
FAN_P=${FAN_P:-100}
PUSH_USERS=${PUSH_USERS:-500}
PUSH_RATE=${PUSH_RATE:-2000}
SOURCES=8
WORK=$(mktemp -d /tmp/wsgate-history-bench.XXXXXX)
STARTED=()
cleanup() {
    for p in "${STARTED[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${STARTED[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
start() { local name=$1; shift; "$@" >"$WORK/$name.log" 2>&1 & LAST=$!; STARTED+=("$LAST"); }
stop() { kill "$1" 2>/dev/null || true; for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done; kill -9 "$1" 2>/dev/null || true; }
# shellcheck source=bench/lib.sh
. bench/lib.sh

cargo build --release --locked -p wsgate -p wsgate-bench >&2
BIN=$WORK/bin
mkdir -p "$BIN"
cp target/release/wsgate target/release/wsgate-bench "$BIN/"
B=$BIN/wsgate-bench

# run LABEL HISTORY_TOPICS USER_SIZE: a Redis and two pods, fan-out then push.
run() {
    local label=$1 topics=$2 user_size=$3 port=$4
    start "redis-$label" redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no
    local rd=$LAST
    wait_port "$port"
    local pods=()
    local pids=()
    for i in 1 2; do
        local http=$((port + 10 * i)) grpc=$((port + 10 * i + 1))
        start "pod-$label-$i" env -i PATH="$PATH" POD_NAME="pod-$label-$i" \
            WSGATE__SERVER__LISTEN="127.0.0.1:$http" WSGATE__SERVER__GRPC_LISTEN="127.0.0.1:$grpc" \
            WSGATE__LIMITS__HANDSHAKES_PER_IP_PER_S=0 WSGATE__LIMITS__MAX_SESSIONS_PER_USER=0 \
            WSGATE__REDIS__URL="redis://127.0.0.1:$port" WSGATE__TELEMETRY__LOG_LEVEL=warn \
            WSGATE__HISTORY__TOPICS="$topics" WSGATE__HISTORY__USER__SIZE="$user_size" \
            "$BIN/wsgate" serve
        pids+=(--pid "$LAST")
        wait_port "$http"; wait_port "$grpc"
        pods+=(--ws "ws://127.0.0.1:$http/ws" --grpc "http://127.0.0.1:$grpc")
    done
    "$B" fanout "${pods[@]}" -m "$FAN_M" --publishes "$FAN_P" --rate "$FAN_P" --topic bench.fanout \
        --sources $SOURCES "${pids[@]}" --pid "$rd" --json >"$WORK/fanout_$label.json"
    "$B" push "${pods[@]}" --users "$PUSH_USERS" --rate "$PUSH_RATE" --duration 5s \
        --sources $SOURCES "${pids[@]}" --pid "$rd" --json >"$WORK/push_$label.json"
    if [ "$label" = on ]; then
        # One topic stream of exactly 100 messages (the fan-out's payload shape).
        redis-cli -p "$port" --raw eval "return redis.call('MEMORY','USAGE',KEYS[1]) + redis.call('MEMORY','USAGE',KEYS[2])" \
            2 'wsgate:hmt:{bench.fanout}' 'wsgate:hlt:{bench.fanout}' >"$WORK/stream_memory.txt"
        redis-cli -p "$port" --raw llen 'wsgate:hlt:{bench.fanout}' >"$WORK/stream_len.txt"
    fi
    for p in "${pids[@]}"; do [ "$p" = --pid ] || stop "$p"; done
    stop "$rd"
}

run off "" 0 29500
run on "bench.*=100/10m" 1000 29600

python3 - "$WORK" <<'PY'
import json, sys, os
w = sys.argv[1]
def load(name):
    with open(os.path.join(w, name)) as f:
        return json.load(f)
rows = []
for scenario in ("fanout", "push"):
    off, on = load(f"{scenario}_off.json"), load(f"{scenario}_on.json")
    def pick(r, *path):
        for p in path:
            r = r.get(p) if isinstance(r, dict) else None
        return r
    for label, path in [
        ("server CPU per delivery (µs, pods + Redis)", ("server_cpu_us_per_delivery",)),
        ("publish call p50 (ms)", ("call_latency", "p50_ms")),
        ("publish call p99 (ms)", ("call_latency", "p99_ms")),
        ("delivery latency p99 (ms)", ("latency", "p99_ms")),
        ("delivered / expected", ("delivered",)),
    ]:
        a, b = pick(off, *path) or pick(off, "deliveries", *path), pick(on, *path) or pick(on, "deliveries", *path)
        ratio = f"{b / a:.2f}×" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a else "—"
        rows.append((scenario, label, a, b, ratio))
print("| scenario | figure | history off | history on | on / off |")
print("|---|---|---|---|---|")
for s, l, a, b, r in rows:
    fmt = lambda v: f"{v:,.2f}" if isinstance(v, float) else str(v)
    print(f"| {s} | {l} | {fmt(a)} | {fmt(b)} | {r} |")
mem = open(os.path.join(w, "stream_memory.txt")).read().strip()
n = open(os.path.join(w, "stream_len.txt")).read().strip()
print(f"\nRedis memory of one topic stream of {n} messages (meta hash + list, MEMORY USAGE): {mem} bytes")
print(f"\nraw reports: {w}")
PY
