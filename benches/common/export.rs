//! The benchmarks' export files: realistic rows (a name, two phone numbers, an address,
//! an e-mail, a reset column), deterministic, under `target/bench-data`. Included by
//! `sync.rs` and `csv_reader.rs`.

use std::io::Write;
use std::path::{Path, PathBuf};

pub(crate) fn data_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `n` rows; every `change_every`-th row (if any) gets another city.
pub(crate) fn export(path: &Path, n: usize, change_every: Option<usize>) {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(
        w,
        "CustomerNo,LastName,FirstName,Phone,Mobile,Street,PostalCode,City,Email,Round"
    )
    .unwrap();
    const CITIES: [&str; 8] = [
        "München", "Köln", "Berlin", "Hamburg", "Leipzig", "Bonn", "Jena", "Kiel",
    ];
    for i in 0..n {
        let city = match change_every {
            Some(k) if i % k == 0 => "Neustadt",
            _ => CITIES[i % CITIES.len()],
        };
        writeln!(
            w,
            "C{i:08},Müller-{i},Anna {},089 {:07},0171 {:07},Hauptstraße {},{:05},{city},anna.{i}@example.com,1",
            i % 97,
            1_000_000 + i % 8_999_999,
            2_000_000 + i % 7_999_999,
            i % 200 + 1,
            10_000 + i % 89_999,
        )
        .unwrap();
    }
}
