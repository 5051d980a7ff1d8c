#!/usr/bin/env bash
# Idle memory per connection, several builds side by side: N JWT connections held on an
# embedded pod with history and session events on (the product as shipped plus the user
# stream's history), RSS per connection from /proc once they are all open.
#
# Usage: bench/idle.sh [BINARY...]
#   With no argument, builds and measures this checkout's release build. With several
#   binaries (say an older build and this one), measures each in turn, ROUNDS times,
#   alternating, so a change in the machine's load hits them alike.
# Env: N (connections, default 10000), ROUNDS (default 2).
# Servers and load on 127.0.0.1 only; every process started here is stopped on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

N=${N:-10000}
ROUNDS=${ROUNDS:-2}
# shellcheck source=bench/lib.sh
. bench/lib.sh
start_work idle

build_binaries "$@"
set -- "${BINS[@]}"

for round in $(seq "$ROUNDS"); do
    for bin in "$@"; do
        port=29600
        env -i PATH="$PATH" WSGATE__SERVER__LISTEN=127.0.0.1:$port WSGATE__SERVER__GRPC_LISTEN=127.0.0.1:29651 \
            WSGATE__AUTH__MODE=jwt WSGATE__AUTH__JWT__SECRET="$SECRET" WSGATE__CONTROL__API_KEYS=bench-api-key-0123456789 \
            WSGATE__LIMITS__HANDSHAKES_PER_IP_PER_S=1000000 WSGATE__LIMITS__HANDSHAKE_BURST=1000000 \
            WSGATE__HISTORY__USER__SIZE=50 WSGATE__EVENTS__ENABLED=true \
            WSGATE__TELEMETRY__LOG_LEVEL=warn "$bin" serve >"$WORK/gw.log" 2>&1 &
        gw=$!; PIDS+=("$gw"); wait_port $port
        "$B" idle --ws ws://127.0.0.1:$port/ws --token-secret "$SECRET" -n "$N" --sources 16 \
            --duration 3s --pid "$gw" --json >"$WORK/idle.json"
        kill "$gw"; wait "$gw" 2>/dev/null || true
        python3 - "$bin" "$round" "$WORK/idle.json" <<'PY'
import json, sys
bin_, round_, report = sys.argv[1:4]
d = json.load(open(report))
print(json.dumps({"binary": bin_, "round": int(round_), "held": d.get("held"),
                  "kib_per_connection": d.get("server_rss_kib_per_connection")}))
PY
    done
done
