#!/usr/bin/env bash
# permessage-deflate, compressed against plain in one run, on one embedded gateway with
# `session.compression = true`:
# - fan-out of a ~1 KiB JSON push (realistic records, `--pad 1000 --pad-json`) to M
#   subscribers that negotiated compression, then to M that did not: payload bytes on the
#   wire per delivery (`wsgate_sent_bytes_total - wsgate_deflate_saved_bytes_total`) and
#   server CPU per delivery, and the deflate runs per publish (1: deflated once);
# - idle RSS per connection, N connections that negotiated compression and N that did not,
#   each on a fresh gateway.
#
# Usage: bench/compression.sh        Env: M (subscribers, default 2000), PUBLISHES
#   (default 200), N (idle connections, default 5000), ROUNDS (default 3, alternating
#   the two modes; medians are reported).
# Servers and load on 127.0.0.1 only; every process started here is stopped on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

M=${M:-2000}
PUBLISHES=${PUBLISHES:-200}
N=${N:-5000}
ROUNDS=${ROUNDS:-3}
# shellcheck source=bench/lib.sh
. bench/lib.sh
start_work compression

[ -n "${NO_BUILD:-}" ] || cargo build --release --locked -p wsgate -p wsgate-bench -q
B=target/release/wsgate-bench
PORT=29600
GRPC=29651


start_gateway() {
    env -i PATH="$PATH" WSGATE__SERVER__LISTEN=127.0.0.1:$PORT WSGATE__SERVER__GRPC_LISTEN=127.0.0.1:$GRPC \
        WSGATE__SESSION__COMPRESSION=true WSGATE__LIMITS__HANDSHAKES_PER_IP_PER_S=0 \
        WSGATE__LIMITS__MAX_SESSIONS_PER_USER=1000000 WSGATE__TELEMETRY__LOG_LEVEL=warn \
        target/release/wsgate serve >"$WORK/gw.log" 2>&1 &
    GW=$!; PIDS+=("$GW"); wait_port $PORT
}

stop_gateway() { kill "$GW"; wait "$GW" 2>/dev/null || true; }

# metric NAME: its value on the gateway now.
metric() {
    curl -s "http://127.0.0.1:$PORT/metrics" | awk -v m="$1" '$1 == m { print $2 }'
}

# fanout MODE ROUND: prints one JSON line.
fanout() {
    local mode=$1 flags=()
    [ "$mode" = deflate ] && flags=(--compression)
    start_gateway
    local sent0 saved0 runs0
    sent0=$(metric wsgate_sent_bytes_total); saved0=$(metric wsgate_deflate_saved_bytes_total)
    runs0=$(metric wsgate_deflate_runs_total)
    "$B" fanout --ws "ws://127.0.0.1:$PORT/ws" --grpc "http://127.0.0.1:$GRPC" -m "$M" \
        --publishes "$PUBLISHES" --rate 200 --pad 1000 --pad-json --sources 8 \
        --pid "$GW" --json "${flags[@]}" >"$WORK/fanout.json"
    local sent1 saved1 runs1
    sent1=$(metric wsgate_sent_bytes_total); saved1=$(metric wsgate_deflate_saved_bytes_total)
    runs1=$(metric wsgate_deflate_runs_total)
    stop_gateway
    python3 - "$mode" "$WORK/fanout.json" "$sent0" "$sent1" "$saved0" "$saved1" "$runs0" "$runs1" "$PUBLISHES" <<'PY'
import json, sys
mode, path = sys.argv[1], sys.argv[2]
sent0, sent1, saved0, saved1, runs0, runs1, publishes = map(float, sys.argv[3:])
r = json.load(open(path))
d = r["deliveries"]
n = d["delivered"]
print(json.dumps({
    "mode": mode, "delivered": n, "complete": d["complete"],
    "payload_bytes_per_delivery": (sent1 - sent0) / n,
    "wire_payload_bytes_per_delivery": ((sent1 - sent0) - (saved1 - saved0)) / n,
    "server_cpu_us_per_delivery": d["server_cpu_us_per_delivery"],
    "deflate_runs_per_publish": (runs1 - runs0) / publishes,
    "p99_ms": d["latency"].get("p99_ms"),
}))
PY
}

# idle MODE: prints one JSON line.
idle() {
    local mode=$1 flags=()
    [ "$mode" = deflate ] && flags=(--compression)
    start_gateway
    "$B" idle --ws "ws://127.0.0.1:$PORT/ws" -n "$N" --sources 16 --duration 5s \
        --pid "$GW" --json "${flags[@]}" >"$WORK/idle.json"
    local negotiated
    negotiated=$(metric wsgate_compression_negotiated_total)
    stop_gateway
    python3 - "$mode" "$WORK/idle.json" "$negotiated" <<'PY'
import json, sys
r = json.load(open(sys.argv[2]))
print(json.dumps({"mode": sys.argv[1], "held": r["held"],
                  "negotiated": float(sys.argv[3]),
                  "kib_per_connection": r["server_rss_kib_per_connection"]}))
PY
}

: >"$WORK/results.jsonl"
for round in $(seq "$ROUNDS"); do
    for mode in plain deflate; do
        [ $((round % 2)) -eq 0 ] && mode=$([ "$mode" = plain ] && echo deflate || echo plain)
        fanout "$mode" | tee -a "$WORK/results.jsonl"
        idle "$mode" | tee -a "$WORK/results.jsonl"
    done
done

python3 - "$WORK/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(mode, key):
    v = [r[key] for r in rows if r["mode"] == mode and key in r and r[key] is not None]
    return statistics.median(v) if v else float("nan")
print()
print("| measure | compressed | plain | ratio |")
print("|---|---|---|---|")
for key, label in [
    ("wire_payload_bytes_per_delivery", "payload bytes on the wire per delivery (~1 KiB JSON push)"),
    ("server_cpu_us_per_delivery", "server CPU per delivery (µs)"),
    ("deflate_runs_per_publish", "deflate runs per publish"),
    ("kib_per_connection", "idle RSS per connection (KiB)"),
]:
    c, p = med("deflate", key), med("plain", key)
    ratio = f"{c / p:.2f}×" if p else "—"
    print(f"| {label} | {c:,.2f} | {p:,.2f} | {ratio} |")
PY
echo "raw rows: $WORK/results.jsonl"
