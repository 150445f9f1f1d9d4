#!/usr/bin/env python3
"""Splits the samples of `perf script -F comm,tid,ip,sym` (a `perf record --call-graph
dwarf` of `dialsync sync`) into the parts of an import's (or an update's) work, and says
what each costs per contact. Used by benches/profile_import.sh; see BENCHMARKS.md
(issue 17).

usage: perf script -F comm,tid,ip,sym | perf_budget.py FREQUENCY CONTACTS
"""
import collections
import re
import sys

# (part, pattern): a sample counts for the first part whose pattern matches a frame of
# its stack or its thread ("THREAD:" and the thread's name).
PARTS = [
    # A manual sync compacts the state after its runs instead (`Store::compact`, on a
    # blocking thread that tokio names like its runtime threads).
    ("repack or compaction of the rewritten entries at the run's end", r"repack_worn|finish_repack|compact_after_runs|state::compact::"),
    ("phone numbers (phonenumber crate)", r"phonenumber|phone::normalise"),
    ("plan: parse, hash, spool", r"THREAD:dialsync-plan"),
    ("state write per confirmed call (sled insert, encode)", r"JobState::put|Entry::encode"),
    ("sled's flusher threads", r"THREAD:sled-io"),
    ("journal windows", r"put_window|close_window|JobState::flush|Run::journal"),
    ("request body (JSON)", r"ImportBody|serde_json::ser"),
    ("answer (JSON)", r"serde_json::de"),
    ("HTTP client (reqwest, hyper, tokio, sockets)", r"reqwest::|hyper|answer_once|respond_once|THREAD:tokio-rt-worker"),
    ("plan spool read back", r"spool::"),
    ("executor and the rest of the main thread", r"THREAD:dialsync"),
]


def samples(lines):
    thread, stack = None, []
    for line in lines:
        if not line.strip():
            if thread is not None:
                yield thread, stack
            thread, stack = None, []
        elif not line[0].isspace():
            thread, stack = line.split()[0], []
        else:
            parts = line.strip().split(None, 1)
            stack.append(parts[-1])
    if thread is not None:
        yield thread, stack


def main():
    freq, contacts = float(sys.argv[1]), int(sys.argv[2])
    parts = [(name, re.compile(p)) for name, p in PARTS]
    counts = collections.Counter()
    total = 0
    for thread, stack in samples(sys.stdin):
        total += 1
        text = " | ".join(stack) + " | THREAD:" + thread
        name = next((n for n, r in parts if r.search(text)), "other")
        counts[name] += 1
    if not total:
        sys.exit("no samples")
    print(f"{total} samples at {freq:.0f} Hz: {total / freq:.2f} s of CPU, "
          f"{total / freq / contacts * 1e6:.1f} us per contact")
    print("| part | share | us per contact |")
    print("|---|---|---|")
    for name, n in counts.most_common():
        print(f"| {name} | {n / total * 100:.1f}% | {n / freq / contacts * 1e6:.1f} |")


if __name__ == "__main__":
    main()
