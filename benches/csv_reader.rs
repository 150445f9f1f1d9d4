//! The export reader's record splitting (`src/source/csv/records.rs`) against the `csv`
//! crate's `Reader` on the same file: 1M rows as `benches/sync.rs` reads them, once
//! unquoted and once with every value quoted (as Salesforce writes its reports). Each
//! side's best of nine alternating reads, every value's bytes touched. This is the parse
//! under target 3 of issue 17 alone, without the state, the planner or the process.
//!
//!     cargo bench --bench csv_reader

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

#[path = "../src/source/csv/records.rs"]
#[allow(dead_code)]
mod records;

#[path = "common/export.rs"]
mod export;

const ROWS: usize = 1_000_000;

/// The file `export` wrote with every value quoted (none of its values holds a comma).
fn quote_every_value(plain: &Path, quoted: &Path) {
    let text = std::fs::read_to_string(plain).unwrap();
    let mut w = std::io::BufWriter::new(std::fs::File::create(quoted).unwrap());
    for line in text.lines() {
        let values: Vec<String> = line.split(',').map(|v| format!("\"{v}\"")).collect();
        writeln!(w, "{}", values.join(",")).unwrap();
    }
}

fn by_csv_crate(path: &Path) -> (Duration, usize) {
    let started = Instant::now();
    let mut r = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .unwrap();
    let mut rec = csv::ByteRecord::new();
    let mut bytes = 0;
    while r.read_byte_record(&mut rec).unwrap() {
        bytes += rec.iter().map(<[u8]>::len).sum::<usize>();
    }
    (started.elapsed(), bytes)
}

fn by_records(path: &Path) -> (Duration, usize) {
    let started = Instant::now();
    let mut r = records::Records::new(std::fs::File::open(path).unwrap(), b',', None, 1);
    let mut rec = records::Record::default();
    let mut bytes = 0;
    // The header too, as the crate's reader reads it (and leaves it out of its records).
    let mut first = true;
    while r.read(&mut rec).unwrap() {
        if !std::mem::take(&mut first) {
            bytes += rec.iter().map(<[u8]>::len).sum::<usize>();
        }
    }
    (started.elapsed(), bytes)
}

fn main() {
    let dir = export::data_dir();
    let plain = dir.join("reader-plain.csv");
    export::export(&plain, ROWS, None);
    let quoted = dir.join("reader-quoted.csv");
    quote_every_value(&plain, &quoted);
    println!("| export, {ROWS} rows | csv crate | records.rs | ratio |\n|---|---|---|---|");
    for (path, what) in [(&plain, "unquoted"), (&quoted, "every value quoted")] {
        let (mut crate_best, mut ours_best) = (Duration::MAX, Duration::MAX);
        for _ in 0..9 {
            let (a, n) = by_csv_crate(path);
            let (b, m) = by_records(path);
            assert_eq!(n, m, "both read the same values");
            crate_best = crate_best.min(a);
            ours_best = ours_best.min(b);
        }
        println!(
            "| {what} | {:.3} s | {:.3} s | {:.2}x |",
            crate_best.as_secs_f64(),
            ours_best.as_secs_f64(),
            ours_best.as_secs_f64() / crate_best.as_secs_f64()
        );
    }
}
