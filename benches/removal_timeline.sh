#!/bin/bash
# Where a removal run's memory peaks (issue 17, target 1): the benchmark's history of a
# campaign replayed on the CLI emulator (first import, 1% changed, all changed, `state
# rebuild`, the first sync after it), the state kept, then RUNS syncs of the empty export
# (`--force`: every contact locked), each on a fresh copy of the kept state. Each run's
# VmRSS is sampled every 50 ms with marks: D once the run has rewritten the state digest
# file (its end), R while the repack's copy exists, C while a compaction's files or copy
# do (a manual sync compacts instead of repacking in place). Prints, per run, the peak and
# the climb after the digest; the samples go to $OUT/run-N.txt ("ms KB marks").
#
# Needs the benchmark's exports (`DIALSYNC_BENCH=1m cargo bench --bench sync` writes them
# to target/bench-data) and a release build. SIZE is 1M (about 8 minutes of history, then
# 1.5 minutes a run) or 100k.
#
#   benches/removal_timeline.sh [SIZE] [RUNS]
set -eu
size=${1:-1M}
runs=${2:-3}
cd "$(dirname "$0")/.."
data=$PWD/target/bench-data
for f in "export-$size.csv" "export-$size-1pct.csv" "export-$size-all.csv" export-empty.csv; do
    if [ ! -f "$data/$f" ]; then
        echo "$data/$f is missing: run \`cargo bench --bench sync\` first (DIALSYNC_BENCH=1m for the 1M files)" >&2
        exit 1
    fi
done
cargo build --release --bin dialsync
bin=$PWD/target/release/dialsync
out=${OUT:-$PWD/target/removal-timeline}
mkdir -p "$out"
. benches/emulator.sh
scratch
start_emulator
config() { write_config bench "$1" "max_removals_percent = 100" "max_resets_percent = 100"; }

# One step of the history, with its wall time (and its peak RSS where GNU time is).
step() {
    if [ -x /usr/bin/time ]; then
        (cd "$dir" && /usr/bin/time -f "  $*: %e s, peak %M KB" "$bin" "$@" --config dialsync.toml -q > /dev/null)
    else
        local started=$SECONDS
        (cd "$dir" && "$bin" "$@" --config dialsync.toml -q > /dev/null)
        echo "  $*: $((SECONDS - started)) s"
    fi
}

echo "history ($size):"
config "$data/export-$size.csv"
step sync
config "$data/export-$size-1pct.csv"
step sync
config "$data/export-$size-all.csv"
step sync
step state rebuild
step sync
keep_state
config "$data/export-empty.csv"

for n in $(seq "$runs"); do
    restore_state
    touch "$dir/started"
    samples=$out/run-$n.txt
    : > "$samples"
    (cd "$dir" && exec "$bin" sync --force -q --config dialsync.toml > /dev/null) &
    pid=$!
    t0=$(date +%s%N)
    while kill -0 "$pid" 2> /dev/null; do
        marks=
        [ "$dir/state.digests/bench.digest" -nt "$dir/started" ] && marks=D
        [ -e "$dir/state.downloads/repack-entries-bench" ] && marks=${marks}R
        [ -e "$dir/state.compact-dump" ] || [ -e "$dir/state.compact" ] && marks=${marks}C
        kb=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2> /dev/null || true)
        [ -n "$kb" ] && echo "$((($(date +%s%N) - t0) / 1000000)) $kb $marks" >> "$samples"
        sleep 0.05
    done
    wait "$pid"
    awk -v n="$n" '
        { if ($2 > peak) { peak = $2; at = $1 } }
        $3 ~ /D/ && !d { d = $2; dat = $1 }
        $3 ~ /D/ { if ($2 > after) after = $2 }
        END {
            printf "run %d: peak %d MB at %.1f s; %d MB when the digest was stored (%.1f s), ", n, peak / 1024, at / 1000, d / 1024, dat / 1000
            printf "%d MB at most after it\n", after / 1024
        }' "$samples"
done
echo "samples in $out"
