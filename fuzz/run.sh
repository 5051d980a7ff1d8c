#!/usr/bin/env bash
# Runs every wsgate fuzz target for a while, one after the other, one job each.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 30 s, all targets)
#
# cargo-fuzz needs nightly-only `-Z` flags; on a stable toolchain RUSTC_BOOTSTRAP=1 lets
# them through. New corpus entries go to fuzz/corpus/<target> (not committed); the seeds
# in fuzz/seeds/<target> are read too. A crash is saved under fuzz/artifacts/<target>/
# and makes this script exit non-zero. See docs/fuzzing.md.
set -euo pipefail

cd "$(dirname "$0")"
secs="${1:-30}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(preflight handshake_http client_protocol envelope inflate)
fi

export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    printf '\n==> fuzz %s for %ss\n' "$t" "$secs"
    log="$(mktemp)"
    set +e
    cargo fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1
    # cargo fuzz exits non-zero on a finding, and on a target that does not build.
    rc=$?
    set -e
    grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|stat::|^Done|panicked|ERROR|SUMMARY|Test unit written' "$log" || true
    if [ "$rc" -ne 0 ]; then
        # A build error prints none of the lines above: show the end of the output.
        grep -q 'Test unit written' "$log" || tail -n 40 "$log" >&2
        rm -f "$log"
        echo "fuzz target $t failed (exit $rc): see fuzz/artifacts/$t" >&2
        exit "$rc"
    fi
    rm -f "$log"
done
