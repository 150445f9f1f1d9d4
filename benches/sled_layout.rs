//! `cargo bench --bench sled_layout`: what the state's layout costs in sled, measured
//! apart from dialsync. A million entries of 75 bytes, keyed as the state keys them (one
//! sled key per contact, "flat"), or grouped 15 to a sled key by a hash of the contact's
//! key ("buckets", 65,536 of them). sled splits a leaf at 16 keys, so the flat layout has
//! about ten times the pages, and sled loads a descriptor of every page when it opens a
//! database. For each layout: create (random order, a flush every 128 writes as a run's
//! journal flushes), open, rewrite every entry (read-modify-write of its bucket), open,
//! read everything. Each step runs in a child process of its own, so its peak RSS
//! (VmHWM) is its own. Takes about three minutes.

use std::path::Path;
use std::time::Instant;

const N: u64 = 1_000_000;
const BUCKETS: u64 = 65_536;
/// sled's page cache: `[state] cache_mb`'s default when this was first measured (8 since).
const CACHE_MB: u64 = 16;

fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let get = |k: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
            / 1024
    };
    (get("VmRSS:"), get("VmHWM:"))
}

fn mix(i: u64) -> u64 {
    let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x ^ (x >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9)
}

fn key(i: u64) -> String {
    format!("C{i:08}")
}

fn value(i: u64, generation: u8) -> Vec<u8> {
    let mut v = vec![generation; 75];
    v[..8].copy_from_slice(&i.to_le_bytes());
    v
}

fn bucket(i: u64) -> [u8; 4] {
    (((mix(i) >> 40) % BUCKETS) as u32).to_be_bytes()
}

/// A bucket's value: `[key length][key][value length][value]` per entry; `k` set to `v`.
fn put(bucket: &[u8], k: &[u8], v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bucket.len() + k.len() + v.len() + 2);
    let mut i = 0;
    let mut done = false;
    let push = |out: &mut Vec<u8>, k: &[u8], v: &[u8]| {
        out.push(k.len() as u8);
        out.extend_from_slice(k);
        out.push(v.len() as u8);
        out.extend_from_slice(v);
    };
    while i < bucket.len() {
        let kl = bucket[i] as usize;
        let vl = bucket[i + 1 + kl] as usize;
        let end = i + 2 + kl + vl;
        if &bucket[i + 1..i + 1 + kl] == k {
            push(&mut out, k, v);
            done = true;
        } else {
            out.extend_from_slice(&bucket[i..end]);
        }
        i = end;
    }
    if !done {
        push(&mut out, k, v);
    }
    out
}

/// One step in this process: prints a line of the table.
fn step(layout: &str, step: &str, path: &Path) {
    let started = Instant::now();
    let db = sled::Config::new()
        .path(path)
        .cache_capacity(CACHE_MB << 20)
        .open()
        .unwrap();
    let tree = db.open_tree("job/bench").unwrap();
    let open_ms = started.elapsed().as_secs_f64() * 1e3;
    let (open_rss, _) = rss();
    let started = Instant::now();
    let mut order: Vec<u64> = (0..N).collect();
    order.sort_by_key(|&i| mix(i ^ 0x55));
    let mut detail = String::new();
    match step {
        "create" | "rewrite" => {
            let generation = if step == "create" { 1 } else { 2 };
            for (n, &i) in order.iter().enumerate() {
                let k = key(i);
                if layout == "flat" {
                    tree.insert(k.as_bytes(), value(i, generation)).unwrap();
                } else {
                    let b = bucket(i);
                    let old = tree.get(b).unwrap().map(|v| v.to_vec()).unwrap_or_default();
                    tree.insert(b, put(&old, k.as_bytes(), &value(i, generation)))
                        .unwrap();
                }
                if n % 128 == 127 {
                    db.flush().unwrap();
                }
            }
        }
        "read" => {
            let (mut keys, mut bytes) = (0u64, 0usize);
            for kv in tree.iter() {
                let (_, v) = kv.unwrap();
                keys += 1;
                bytes += v.len();
            }
            detail = format!("{keys} sled keys, {} MB of values", bytes >> 20);
        }
        _ => {}
    }
    db.flush().unwrap();
    let (_, peak) = rss();
    println!(
        "| {layout} | {step} | {open_ms:.0} ms | {open_rss} MB | {:.1} s | {peak} MB | {detail} |",
        started.elapsed().as_secs_f64()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, layout, which, path] = args.as_slice() {
        if flag == "--step" {
            step(layout, which, Path::new(path));
            return;
        }
    }
    // `cargo test --benches` passes no --bench: nothing to measure then.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let data = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sled-layout");
    println!("| layout | step | open | RSS after open | step's time | peak RSS | |");
    println!("|---|---|---|---|---|---|---|");
    for layout in ["flat", "buckets"] {
        let path = data.join(layout);
        let _ = std::fs::remove_dir_all(&path);
        for which in ["create", "open", "rewrite", "open", "read"] {
            let status = std::process::Command::new(&args[0])
                .args(["--step", layout, which])
                .arg(&path)
                .status()
                .unwrap();
            assert!(status.success(), "{layout} {which}: {status}");
        }
        let _ = std::fs::remove_dir_all(&path);
    }
}
