# Sourced by the benchmark scripts (benches/profile_import.sh, benches/removal_timeline.sh):
# a scratch folder, the built-in emulator on a free port, a config for it that reads an
# export with the benchmark's columns (`export` in benches/sync.rs), and a state kept and
# copied back. They need $bin (the dialsync binary) and $dir (from `scratch`); POSIX sh.

# Makes the scratch folder $dir, removed (and the emulator stopped) when the script ends.
scratch() {
    dir=$(mktemp -d)
    emulator=
    trap scratch_cleanup EXIT INT TERM
}

scratch_cleanup() {
    if [ -n "${emulator:-}" ]; then
        kill "$emulator" 2> /dev/null || true
    fi
    rm -rf "$dir"
}

# Keeps the state in $dir (the database and the files beside it) in $dir/kept.
keep_state() {
    mkdir "$dir/kept"
    cp -a "$dir"/state "$dir"/state.* "$dir/kept/"
}

# Puts the kept state back in place of the one in $dir.
restore_state() {
    rm -rf "$dir"/state "$dir"/state.*
    cp -a "$dir"/kept/. "$dir/"
}

# Starts an emulator on a free port, stopping the one started before (a fresh dialler):
# its first line says where. Sets $emulator (its pid) and $url.
start_emulator() {
    if [ -n "${emulator:-}" ]; then
        kill "$emulator" 2> /dev/null || true
        wait "$emulator" 2> /dev/null || true
    fi
    rm -f "$dir/ready"
    mkfifo "$dir/ready"
    "$bin" emulator --listen 127.0.0.1:0 -qq > "$dir/ready" &
    emulator=$!
    read -r line < "$dir/ready"
    url=${line##* }
}

# Writes $dir/dialsync.toml for the emulator at $url: job JOB reading the CSV file EXPORT,
# the state in $dir/state, and any further lines of the job's table given after them.
write_config() {
    job=$1
    export_file=$2
    shift 2
    {
        cat <<TOML
[dialler]
base_url = "${url%/*}"
client_id = ${url##*/}
token = "emulator-token"
max_concurrency = 32
[state]
path = "state"
[[job]]
name = "$job"
campaign_id = 538
default_country = "DE"
reset_when_changed = ["Round"]
TOML
        for extra in "$@"; do
            echo "$extra"
        done
        cat <<TOML
[job.source]
type = "csv"
path = "$export_file"
[job.fields]
UserData = "CustomerNo"
Name = "LastName"
FirstName = "FirstName"
PhoneNumber1 = "Phone"
PhoneNumber2 = "Mobile"
Address = "Street"
PostalCode = "PostalCode"
City = "City"
Email = "Email"
TOML
    } > "$dir/dialsync.toml"
}
