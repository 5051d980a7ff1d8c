# Shared by the bench scripts (sourced, not run).

# The HS256 secret the scripts' gateways verify and the load generator signs with.
SECRET=bench-secret-bench-secret-bench-secret-0123

# start_work NAME: a scratch directory in WORK (/tmp/wsgate-NAME.*), and PIDS, whose
# processes are stopped when the script exits.
start_work() {
    WORK=$(mktemp -d "/tmp/wsgate-$1.XXXXXX")
    PIDS=()
    trap 'for p in "${PIDS[@]:-}"; do [ -n "$p" ] && { kill "$p" 2>/dev/null || true; }; done' EXIT
}

# wait_port PORT: until something listens on 127.0.0.1:PORT (15 s at most); else says so,
# shows the tail of the logs in $WORK (when set) and exits.
wait_port() {
    for _ in $(seq 150); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$1${WORK:+; logs in $WORK}" >&2
    [ -n "${WORK:-}" ] && { tail -n 20 "$WORK"/*.log >&2 || true; }
    exit 1
}

# build_binaries [BINARY...]: builds the load generator into $WORK and sets B to it; sets
# BINS to the wsgate builds to measure: the ones given, or this checkout's release build.
build_binaries() {
    cargo build --release --locked -p wsgate-bench -q
    cp target/release/wsgate-bench "$WORK/"
    B=$WORK/wsgate-bench
    if [ $# -eq 0 ]; then
        cargo build --release --locked -p wsgate -q
        cp target/release/wsgate "$WORK/wsgate-this"
        BINS=("$WORK/wsgate-this")
    else
        BINS=("$@")
    fi
}
