//! Snapshots of each job's state, for a database that cannot be opened any more (a full
//! disk while sled wrote its own recovery files, a damaged file system).
//!
//! After a run that changed a job's state, when its snapshot is older than
//! `[state] snapshot_every` (or there is none), the job's trees (entries, pending
//! imports, in-flight marks, failure counts) and its records (rows of the last good run,
//! the last run) are written to `<state.path>.snapshots/<job>.snap`: a temporary file,
//! fsync, rename, fsync of the folder, so a snapshot is always whole (and a checksum at
//! its end proves it). Before the first change after a snapshot, a marker
//! `<job>.dirty` says that the snapshot no longer is the state.
//!
//! When sled cannot open the database, [`crate::state::Store::open`] moves it aside and
//! restores every job from its snapshot. The next run of a restored job reads the
//! campaign back (verification, which re-learns IDs, forgets contacts the dialler lacks
//! and resends values it holds differently). If the snapshot was older than the state
//! (a marker), what the dialler holds may be newer than the snapshot in ways no read
//! shows: every contact's lock state is marked unknown (the next run unlocks those in
//! the export and locks those that left) and, without `overwrite_duplicates`, each
//! import first looks the contact up, since an import of the lost part may have
//! reached the dialler.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::Xxh3;

const MAGIC: &[u8; 8] = b"DSSNAP1\n";
/// Ends a tree's items.
const END: u32 = u32::MAX;

/// The folder of the snapshots of the state at `state`.
pub(crate) fn dir(state: &Path) -> PathBuf {
    let mut p = state.as_os_str().to_owned();
    p.push(".snapshots");
    PathBuf::from(p)
}

pub(crate) fn file(state: &Path, job: &str) -> PathBuf {
    dir(state).join(format!("{job}.snap"))
}

pub(crate) fn dirty_marker(state: &Path, job: &str) -> PathBuf {
    dir(state).join(format!("{job}.dirty"))
}

/// The jobs that have a snapshot.
pub(crate) fn jobs(state: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir(state)) else {
        return Vec::new();
    };
    let mut jobs: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".snap")
                .map(str::to_string)
        })
        .collect();
    jobs.sort();
    jobs
}

/// The (key, value) pairs of one section, as they are read from the database.
pub(crate) type Items<'a> = Box<dyn Iterator<Item = std::io::Result<Item>> + 'a>;

/// One (key, value) pair of a section.
pub(crate) type Item = (Vec<u8>, Vec<u8>);

/// A job's state as written: named sections of (key, value) pairs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Sections(pub Vec<(String, Vec<Item>)>);

/// Writes `sections` to `path` atomically (temporary file, fsync, rename, fsync of the
/// folder).
pub(crate) fn write<'a>(
    path: &Path,
    sections: impl IntoIterator<Item = (String, Items<'a>)>,
) -> std::io::Result<()> {
    super::private_dir(path.parent().expect("a snapshot has a folder"))?;
    let tmp = path.with_extension("snap.tmp");
    let file = super::private_file(&tmp)?;
    let mut out = Hashing {
        inner: BufWriter::with_capacity(256 * 1024, file),
        hash: Xxh3::new(),
    };
    out.write_all(MAGIC)?;
    for (name, items) in sections {
        put(&mut out, name.as_bytes())?;
        for item in items {
            let (k, v) = item?;
            put(&mut out, &k)?;
            put(&mut out, &v)?;
        }
        out.write_all(&END.to_le_bytes())?;
    }
    out.write_all(&END.to_le_bytes())?;
    let sum = out.hash.digest();
    let mut inner = out.inner;
    inner.write_all(&sum.to_le_bytes())?;
    let file = inner.into_inner().map_err(|e| e.into_error())?;
    super::replace_durably(file, &tmp, path)
}

/// Reads a snapshot written by [`write()`]; an error if it is not whole.
pub(crate) fn read(path: &Path) -> std::io::Result<Sections> {
    let bad = |why: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the snapshot {} is damaged ({why})", path.display()),
        )
    };
    let mut input = BufReader::new(std::fs::File::open(path)?);
    let mut bytes = Vec::new();
    input.read_to_end(&mut bytes)?;
    if bytes.len() < MAGIC.len() + 12 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(bad("not a dialsync snapshot"));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 8);
    if xxhash_rust::xxh3::xxh3_64(body).to_le_bytes() != sum {
        return Err(bad("checksum"));
    }
    let mut at = MAGIC.len();
    let next = |at: &mut usize| -> Option<Option<Vec<u8>>> {
        let len = u32::from_le_bytes(body.get(*at..*at + 4)?.try_into().ok()?);
        *at += 4;
        if len == END {
            return Some(None);
        }
        let v = body.get(*at..*at + len as usize)?.to_vec();
        *at += len as usize;
        Some(Some(v))
    };
    let mut sections = Vec::new();
    while let Some(name) = next(&mut at).ok_or_else(|| bad("cut short"))? {
        let name = String::from_utf8(name).map_err(|_| bad("a section name"))?;
        let mut items = Vec::new();
        while let Some(k) = next(&mut at).ok_or_else(|| bad("cut short"))? {
            let v = next(&mut at)
                .flatten()
                .ok_or_else(|| bad("a value is missing"))?;
            items.push((k, v));
        }
        sections.push((name, items));
    }
    Ok(Sections(sections))
}

fn put(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|&n| n != END)
        .ok_or_else(|| std::io::Error::other("a value too large for a snapshot"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(bytes)
}

/// A writer that hashes what it writes.
struct Hashing<W> {
    inner: W,
    hash: Xxh3,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_reads_back_whole_and_a_damaged_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s/j.snap");
        let items = vec![(b"K1".to_vec(), vec![1, 2, 3]), (b"K2".to_vec(), vec![])];
        let sections = vec![
            ("job".to_string(), items.clone()),
            ("pending".to_string(), Vec::new()),
        ];
        write(
            &path,
            sections.iter().map(|(n, i)| {
                let it: Items<'_> = Box::new(i.clone().into_iter().map(Ok));
                (n.clone(), it)
            }),
        )
        .unwrap();
        assert_eq!(read(&path).unwrap(), Sections(sections));
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes.truncate(n - 3);
        std::fs::write(&path, &bytes).unwrap();
        assert!(read(&path).unwrap_err().to_string().contains("damaged"));
    }
}
