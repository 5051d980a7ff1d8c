#!/usr/bin/env bash
# Recovery after a mass reconnect (issue 16's target: 1,000 clients reconnecting with
# `since` at once, all recovered within 2 s, p99 join < 200 ms). `wsgate-bench recover`:
# N clients join over JWT and keep their user stream's position from the welcome, all
# leave (a clean close), each user is sent MISSED messages with SendToUser while away,
# then all N reconnect at once with `?since=` — each to the other pod than the one it
# left, as after a pod restart. Both joins (the first, without `since`, for comparison, and
# the reconnect) are all at once: N handshakes in flight. Prints a markdown table and the
# raw JSON report's path.
#
# Usage: bench/recovery.sh [BINARY]
#   With no argument, builds and measures this checkout's release build.
# Env: N (clients, default 1000), MISSED (messages per user while away, default 5),
#   MODE (redis: two pods on one Redis, the default; embedded: one pod, no Redis),
#   TIMEOUT (how long the reconnect may take before incomplete clients count as failed,
#   default 10s), ABRUPT=1 (leave by dropping TCP instead of a close handshake).
# User-stream history on (history.user.size = 100), JWT auth. Servers and load on
# 127.0.0.1 only; every process started here is stopped on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

N=${N:-1000}
MISSED=${MISSED:-5}
MODE=${MODE:-redis}
TIMEOUT=${TIMEOUT:-10s}
ABRUPT=${ABRUPT:-0}
API_KEY=bench-api-key-0123456789
# shellcheck source=bench/lib.sh
. bench/lib.sh
start_work recovery

case $MODE in
    redis | embedded) ;;
    *) echo "MODE is redis or embedded, not $MODE" >&2; exit 2 ;;
esac
[ "$MODE" = embedded ] || command -v redis-server >/dev/null ||
    { echo "redis-server is missing (apt-get install redis-server)" >&2; exit 1; }

build_binaries "$@"
BIN=${BINS[0]}

# free_port: a TCP port nothing listens on at the moment, on 127.0.0.1.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

redis_url=""
watch=()
if [ "$MODE" = redis ]; then
    rport=$(free_port)
    redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no >"$WORK/redis.log" 2>&1 &
    PIDS+=("$!"); watch+=(--pid "$!"); wait_port "$rport"
    redis_url=redis://127.0.0.1:$rport
    pods=2
else
    pods=1
fi

targets=()
for i in $(seq "$pods"); do
    http=$(free_port); grpc=$(free_port)
    env -i PATH="$PATH" POD_NAME="recovery-$i" \
        WSGATE__SERVER__LISTEN="127.0.0.1:$http" WSGATE__SERVER__GRPC_LISTEN="127.0.0.1:$grpc" \
        WSGATE__AUTH__MODE=jwt WSGATE__AUTH__JWT__SECRET="$SECRET" WSGATE__CONTROL__API_KEYS="$API_KEY" \
        WSGATE__LIMITS__HANDSHAKES_PER_IP_PER_S=0 WSGATE__LIMITS__MAX_SESSIONS_PER_USER=0 \
        WSGATE__HISTORY__USER__SIZE=100 WSGATE__REDIS__URL="$redis_url" \
        WSGATE__TELEMETRY__LOG_LEVEL=warn "$BIN" serve >"$WORK/pod-$i.log" 2>&1 &
    PIDS+=("$!"); watch+=(--pid "$!")
    wait_port "$http"; wait_port "$grpc"
    targets+=(--ws "ws://127.0.0.1:$http/ws" --grpc "http://127.0.0.1:$grpc")
done

abrupt=()
[ "$ABRUPT" = 1 ] && abrupt=(--abrupt)
echo "recover: $N clients, $MISSED missed messages each, $MODE ($pods pod(s)); load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$B" recover "${targets[@]}" -n "$N" --missed "$MISSED" --timeout "$TIMEOUT" "${abrupt[@]}" \
    --concurrency "$N" --sources 16 --token-secret "$SECRET" --api-key "$API_KEY" "${watch[@]}" --json >"$WORK/recover.json"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

python3 - "$WORK/recover.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
r = d["recovery"]
j = r["join_latency"]
def ms(v):
    return "—" if v is None else f"{v:,.0f} ms"
t = r["time_to_all_recovered_ms"]
ok_all = r["all_recovered"] and t is not None and t <= 2000
ok_join = j.get("p99_ms") is not None and j["p99_ms"] < 200
print(f"{d['clients']} clients, {d['missed_per_user']} missed messages each, leave by {d['leave']}, "
      f"reconnect to {d['reconnect_to'].replace('_', ' ')}; {len(d['ws'])} pod(s)\n")
print("| measure | value | target (issue 16) |")
print("|---|---|---|")
print(f"| recovered (welcome `recovered: true`) / reconnected / clients | {r['recovered']:,} / {r['reconnected']:,} / {d['clients']:,} | |")
print(f"| complete: every missed message once, in order | {r['complete']:,} / {d['clients']:,} | all: {'**met**' if r['all_recovered'] else '**not met**'} |")
print(f"| time until all recovered (from the reconnect start) | {ms(t)} (last complete {ms(r['time_to_last_complete_ms'])}) | ≤ 2,000 ms: {'**met**' if ok_all else '**not met**'} |")
print(f"| join p50 / p99 / max (connect start → welcome) | {ms(j.get('p50_ms'))} / {ms(j.get('p99_ms'))} / {ms(j.get('max_ms'))} | p99 < 200 ms: {'**met**' if ok_join else '**not met**'} |")
f = d["first_join"]["join_latency"]
print(f"| for comparison: the first join, all at once too, without `since` (p50 / p99 / max) | {ms(f.get('p50_ms'))} / {ms(f.get('p99_ms'))} / {ms(f.get('max_ms'))} | |")
print(f"| missed messages delivered / expected | {r['delivered_messages']:,} / {r['expected_messages']:,} | |")
print(f"| missing / duplicate / out of order / wrong payload | {r['missing_messages']} / {r['duplicate_messages']} / {r['out_of_order_messages']} / {r['wrong_payload_messages']} | 0 |")
cpu = d.get("server_cpu_s")
ccpu = d.get("client_cpu_s")
per = d.get("server_cpu_us_per_rejoin")
print(f"| CPU during the reconnect: server (pods + Redis) / load generator | {'—' if cpu is None else f'{cpu:.2f} s'} / {'—' if ccpu is None else f'{ccpu:.2f} s'} | |")
print(f"| server CPU per reconnect (handshake, history read, replay) | {'—' if per is None else f'{per:,.0f} µs'} | |")
fails = {**d["first_join"]["failures"], **{f"send {k}": v for k, v in d["sends"]["failures"].items()},
         **{f"reconnect {k}": v for k, v in r["failures"].items()}}
if fails:
    print(f"\nfailures: {fails}")
EOF
echo "raw: $WORK/recover.json" >&2
