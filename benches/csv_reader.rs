//! The export reader's record splitting (`src/source/csv/records.rs`) against the `csv`
//! crate's `Reader` on the same file: 1M rows as `benches/sync.rs` writes them, once
//! unquoted and once with every value quoted (as Salesforce writes its reports). Each
//! side's best of nine alternating reads, every value's bytes touched. This is the parse
//! under target 3 of issue 17 alone, without the state, the planner or the process.
//!
//!     cargo bench --bench csv_reader

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[path = "../src/source/csv/records.rs"]
#[allow(dead_code)]
mod records;

const ROWS: usize = 1_000_000;

fn write(path: &Path, quoted: bool) {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let q = if quoted { "\"" } else { "" };
    let header = "CustomerNo,LastName,FirstName,Phone,Mobile,Street,PostalCode,City,Email,Round";
    let line = |values: Vec<String>| {
        values
            .iter()
            .map(|v| format!("{q}{v}{q}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    writeln!(w, "{}", line(header.split(',').map(String::from).collect())).unwrap();
    const CITIES: [&str; 8] = [
        "München", "Köln", "Berlin", "Hamburg", "Leipzig", "Bonn", "Jena", "Kiel",
    ];
    for i in 0..ROWS {
        let values = vec![
            format!("C{i:08}"),
            format!("Müller-{i}"),
            format!("Anna {}", i % 97),
            format!("089 {:07}", 1_000_000 + i % 8_999_999),
            format!("0171 {:07}", 2_000_000 + i % 7_999_999),
            format!("Hauptstraße {}", i % 200 + 1),
            format!("{:05}", 10_000 + i % 89_999),
            CITIES[i % CITIES.len()].to_string(),
            format!("anna.{i}@example.com"),
            "1".to_string(),
        ];
        writeln!(w, "{}", line(values)).unwrap();
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
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&dir).unwrap();
    println!("| export, {ROWS} rows | csv crate | records.rs | ratio |\n|---|---|---|---|");
    for quoted in [false, true] {
        let path = dir.join(if quoted {
            "reader-quoted.csv"
        } else {
            "reader-plain.csv"
        });
        write(&path, quoted);
        let (mut crate_best, mut ours_best) = (Duration::MAX, Duration::MAX);
        for _ in 0..9 {
            let (a, n) = by_csv_crate(&path);
            let (b, m) = by_records(&path);
            assert_eq!(n, m, "both read the same values");
            crate_best = crate_best.min(a);
            ours_best = ours_best.min(b);
        }
        println!(
            "| {} | {:.3} s | {:.3} s | {:.2}x |",
            if quoted {
                "every value quoted"
            } else {
                "unquoted"
            },
            crate_best.as_secs_f64(),
            ours_best.as_secs_f64(),
            ours_best.as_secs_f64() / crate_best.as_secs_f64()
        );
    }
}
