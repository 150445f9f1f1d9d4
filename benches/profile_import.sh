#!/bin/sh
# Where an import's CPU time goes (issue 17, target 2): a first import of ROWS contacts
# (default 100000) against the built-in emulator under `perf record`, its samples split
# into the parts of the work per contact by benches/perf_budget.py. For comparison, the
# same import's wall and CPU time without perf. With `updates`, the run measured is the
# one after the import, with every contact's City changed (ROWS updates). Needs perf
# (Debian: linux-perf) and python3; builds a release binary with symbols into
# target/profile (or $PROFILE_TARGET_DIR). With PERF_DATA=FILE the samples are kept there
# (for `perf report -i FILE`).
#
#   benches/profile_import.sh [ROWS] [import|updates]
set -eu
rows=${1:-100000}
what=${2:-import}
case $what in
import | updates) ;;
*)
    echo "usage: $0 [ROWS] [import|updates]" >&2
    exit 2
    ;;
esac
freq=499
cd "$(dirname "$0")/.."
CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
    cargo build --release --target-dir "${PROFILE_TARGET_DIR:=$PWD/target/profile}"
bin=$PROFILE_TARGET_DIR/release/dialsync
. benches/emulator.sh
scratch

# The rows of the benchmark's exports (`export` in benches/sync.rs): two phone numbers each.
awk -v n="$rows" 'BEGIN {
    split("München Köln Berlin Hamburg Leipzig Bonn Jena Kiel", city, " ")
    print "CustomerNo,LastName,FirstName,Phone,Mobile,Street,PostalCode,City,Email,Round"
    for (i = 0; i < n; i++)
        printf "C%08d,Müller-%d,Anna %d,089 %07d,0171 %07d,Hauptstraße %d,%05d,%s,anna.%d@example.com,1\n",
            i, i, i % 97, 1000000 + i % 8999999, 2000000 + i % 7999999, i % 200 + 1,
            10000 + i % 89999, city[i % 8 + 1], i
}' > "$dir/export.csv"
# The same rows, each in another city: one update per contact.
sed '2,$ s/,[^,]*,\([^,]*\),[^,]*$/,Neustadt,\1,1/' "$dir/export.csv" > "$dir/changed.csv"

# A fresh emulator and state for each import; for updates, the state after the import,
# kept once and copied back before each run (the emulator keeps its contacts: an update
# sent twice is answered as the first was).
fresh() {
    if [ "$what" = import ]; then
        rm -rf "$dir/state" "$dir/state".*
        start_emulator
        write_config profile export.csv
    elif [ -d "$dir/kept" ]; then
        restore_state
    else
        start_emulator
        write_config profile export.csv
        "$bin" sync --config dialsync.toml -q > /dev/null
        keep_state
        write_config profile changed.csv
    fi
}

cd "$dir"
if [ -x /usr/bin/time ]; then
    fresh
    /usr/bin/time -f "$what of $rows without perf: %e s wall, %U s user, %S s system, %M KB peak RSS" \
        "$bin" sync --config dialsync.toml > /dev/null
fi
fresh
perf record -q -F "$freq" --call-graph dwarf,16384 -o perf.data \
    "$bin" sync --config dialsync.toml > /dev/null
perf script -i perf.data -F comm,tid,ip,sym 2> /dev/null \
    | python3 "$OLDPWD/benches/perf_budget.py" "$freq" "$rows"
if [ -n "${PERF_DATA:-}" ]; then
    cp perf.data "$PERF_DATA"
fi
