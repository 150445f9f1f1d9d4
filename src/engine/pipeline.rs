//! Reading and planning on two threads. The reader (a thread of its own) parses the
//! export and copies each row into a batch (batches are recycled, so nothing is
//! allocated per row); the planner (the calling thread) hashes the rows, settles the
//! unchanged ones against the state digest, and maps and plans the others, in export
//! order. Each digest lookup is a cache miss, so the planner
//! hashes a whole batch first and prefetches the digest entry of a row a few rows ahead
//! of the one it looks up. With a core per side, a sync with nothing to do takes little
//! more than parsing the export.

use std::borrow::Cow;
use std::sync::mpsc;

use crate::config::SourceConfig;
use crate::engine::mapping::Mapper;
use crate::engine::plan::{Plan, Planner, SpoolError};
use crate::engine::progress::RunHandle;
use crate::key::key_hash;
use crate::source::{self, recycle, BadRow, Flow, Item, Line, Pages, Record, RowRef, SourceError};
use crate::state::{StateError, StateView};

/// Rows per batch: large enough that handing batches over costs nothing per row (each
/// hand-over may wake the other thread), small enough to stay in cache.
const BATCH_ROWS: usize = 2048;
/// Batches on their way to the planner; the reader waits when it is this far ahead.
const IN_FLIGHT: usize = 4;
/// How many rows ahead the planner prefetches a row's digest bucket (and half as many,
/// its entry).
const AHEAD: usize = 12;
/// A batch is handed over once its text reaches this, however few its rows: rows of long
/// notes keep a batch to a few MB, and its values' places within 32 bits.
const BATCH_TEXT: usize = 16 << 20;

/// Why reading and planning stopped.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("stopped while reading the export (shutdown or cancelled); nothing was changed")]
    Stopped,
}

/// A row of a batch: 40 bytes (a bad row is rare and boxed), since each is written by
/// the reader's core and read by the planner's.
enum Row {
    /// A record whose values are `spans[first..first + columns]`.
    Record {
        at: RowRef,
        first: usize,
    },
    Bad(Box<BadRow>),
}

/// A value's place in a batch's text, from and to (8 bytes: what the reader writes and
/// the planner reads per value, a million rows of ten values in a no-op sync, is half
/// the batch); [`Span::NONE`] for a value absent (a blank one may have its place: see
/// [`Batch::values`]).
#[derive(Clone, Copy)]
struct Span(u32, u32);

impl Span {
    const NONE: Span = Span(u32::MAX, u32::MAX);
}

/// Rows copied out of the reader's buffers.
#[derive(Default)]
struct Batch {
    text: String,
    /// Per record and column: the value's place in `text`.
    spans: Vec<Span>,
    rows: Vec<Row>,
}

impl Batch {
    fn push(&mut self, item: Item<'_>) {
        self.push_within(item, u32::MAX as usize);
    }

    /// [`Batch::push`], with the places of values in the text kept below `limit`: a
    /// record that would take the text past it (4 GiB in one record; batches are handed
    /// over at [`BATCH_TEXT`]) is kept as an unreadable row instead.
    fn push_within(&mut self, item: Item<'_>, limit: usize) {
        let (text, first) = (self.text.len(), self.spans.len());
        let (at, copied) = match item {
            Item::Record(r) => (r.at, self.copy_values(&r, limit)),
            Item::Line(l) => (l.at, self.copy_line(&l, limit)),
            Item::Bad(b) => return self.rows.push(Row::Bad(Box::new(b))),
        };
        if copied.is_none() {
            self.text.truncate(text);
            self.spans.truncate(first);
            self.rows.push(Row::Bad(Box::new(BadRow {
                at,
                key: None,
                reason: "is longer than 4 GiB: not read".into(),
            })));
            return;
        }
        self.rows.push(Row::Record { at, first });
    }

    /// The text of `l` copied, and its values' places noted in `spans` (blank values
    /// among them: see [`Batch::values`]); `None` if the text would end past `limit`.
    fn copy_line(&mut self, l: &Line<'_>, limit: usize) -> Option<()> {
        let base = self.text.len();
        if base + l.text.len() >= limit {
            return None;
        }
        self.text.push_str(l.text);
        // Below the limit, which is at most u32::MAX.
        let base = base as u32;
        self.spans.extend(
            l.ranges
                .iter()
                .map(|&(from, to)| Span(base + from, base + to)),
        );
        Some(())
    }

    /// The places of the values of `r`, noted in `spans` (`None`: past `limit`). A CSV
    /// record's values are slices of its text: one copy of the text, and each value's
    /// place in it; a value found elsewhere is copied on its own.
    fn copy_values(&mut self, r: &Record<'_>, limit: usize) -> Option<()> {
        let at = |n: usize| u32::try_from(n).ok().filter(|&n| (n as usize) < limit);
        let (base, whole) = match r.text {
            Some(t) => {
                let base = self.text.len();
                at(base + t.len())?;
                self.text.push_str(t);
                (base, t)
            }
            None => (0, ""),
        };
        for v in r.values {
            let Some(v) = v else {
                self.spans.push(Span::NONE);
                continue;
            };
            let offset = (v.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
            // Both ends are within an end checked against the limit: the record's text,
            // or the value copied.
            let (from, to) = if offset <= whole.len() && v.len() <= whole.len() - offset {
                (base + offset, base + offset + v.len())
            } else {
                let from = self.text.len();
                at(from + v.len())?;
                self.text.push_str(v);
                (from, self.text.len())
            };
            self.spans.push(Span(from as u32, to as u32));
        }
        Some(())
    }

    /// The values of the record whose first span is `first`, into `out` (`None` for a
    /// value absent or blank).
    fn values<'b>(&'b self, first: usize, columns: usize, out: &mut Vec<Option<&'b str>>) {
        out.clear();
        out.extend(self.iter_values(first, columns));
    }

    /// The values of [`Batch::values`], one by one: what the planner hashes of a row
    /// that its digest entry may show unchanged, without them collected first.
    fn iter_values(&self, first: usize, columns: usize) -> impl Iterator<Item = Option<&str>> {
        self.spans[first..first + columns]
            .iter()
            .map(|&s| self.value(s))
    }

    fn value(&self, Span(a, b): Span) -> Option<&str> {
        (a != Span::NONE.0)
            .then(|| &self.text[a as usize..b as usize])
            .filter(|v| !source::blank(v))
    }

    /// Whether the batch is full: handed over to the planner.
    fn full(&self) -> bool {
        self.rows.len() >= BATCH_ROWS || self.text.len() >= BATCH_TEXT
    }

    fn clear(&mut self) {
        self.text.clear();
        self.spans.clear();
        self.rows.clear();
    }
}

/// Reads the export of `source` from `input` (the `columns` the job uses) and plans every
/// row with `planner`, numbering the rows of a paged download by `pages`. A stop request
/// ends the read early ([`PlanError::Stopped`]).
pub(crate) fn read_and_plan<S: StateView + Sync + ?Sized>(
    source: &SourceConfig,
    input: impl std::io::Read + Send,
    pages: &Pages,
    columns: &[String],
    mapper: &Mapper,
    planner: Planner<'_, S>,
    handle: &RunHandle,
) -> Result<Plan, PlanError> {
    plan_rows(
        |sink| source::read_from(source, &source.path, input, columns, sink),
        pages,
        columns,
        mapper,
        planner,
        handle,
    )
}

/// Like [`read_and_plan`], from any reader of rows (`read` hands each row to the sink it
/// is given): the rows of a SQL query.
pub(crate) fn plan_rows<S: StateView + Sync + ?Sized>(
    read: impl FnOnce(&mut dyn FnMut(Item<'_>) -> Flow) -> Result<source::Summary, SourceError> + Send,
    pages: &Pages,
    columns: &[String],
    mapper: &Mapper,
    mut planner: Planner<'_, S>,
    handle: &RunHandle,
) -> Result<Plan, PlanError> {
    let (full_tx, full_rx) = mpsc::sync_channel::<Batch>(IN_FLIGHT);
    let (empty_tx, empty_rx) = mpsc::channel::<Batch>();
    let n = columns.len();
    // A SQL source reads through the caller's runtime.
    let runtime = tokio::runtime::Handle::try_current().ok();
    // The planner works on this thread (one of the planning threads, see
    // `engine::planners`: the thread that maps keeps the phone patterns' caches), the
    // reader beside it. `full_rx` is this closure's own: if planning ends early (a state
    // error, or a panic unwinding), it is dropped before the reader is joined, and the
    // reader's next hand-over fails and ends the read.
    std::thread::scope(move |scope| {
        let reading = scope.spawn(move || {
            let _runtime = runtime.as_ref().map(tokio::runtime::Handle::enter);
            let mut batch = Batch::default();
            let mut stopped = false;
            // The planner ended early (a state error): nothing more to hand over.
            let mut planner_gone = false;
            // The reader stops within a batch of a stop request or of the planner's end
            // (a state error): the rest of the export is not even parsed.
            let read = read(&mut |mut item| {
                if handle.stop_requested() {
                    stopped = true;
                    return Flow::Break(());
                }
                if pages.count() > 0 {
                    item.locate(pages);
                }
                batch.push(item);
                if batch.full() {
                    handle.rows_read(batch.rows.len() as u64);
                    let next = empty_rx.try_recv().unwrap_or_default();
                    planner_gone = full_tx.send(std::mem::replace(&mut batch, next)).is_err();
                    if planner_gone {
                        return Flow::Break(());
                    }
                }
                Flow::Continue(())
            });
            handle.rows_read(batch.rows.len() as u64);
            if !batch.rows.is_empty() && !stopped && !planner_gone {
                let _ = full_tx.send(batch);
            }
            (read, stopped)
        });

        let planned = (|| -> Result<Plan, PlanError> {
            let mut scratch = Scratch::default();
            for mut batch in &full_rx {
                plan_batch(mapper, n, &mut planner, &batch, &mut scratch)?;
                batch.clear();
                // The reader may be done and gone: then the batch is simply dropped.
                let _ = empty_tx.send(batch);
            }
            planner.finish()
        })();
        drop(full_rx);
        let (read, stopped) = reading
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let summary = read?;
        if stopped {
            return Err(PlanError::Stopped);
        }
        let mut plan = planned?;
        plan.blank = summary.skipped.blank;
        plan.notes
            .extend(summary.skipped.footer.map(|f| f.to_string()));
        Ok(plan)
    })
}

#[derive(Default)]
struct Scratch {
    /// Per row of the batch: (key hash, row hash) of a record with a UserData.
    hashes: Vec<Option<(u64, u64)>>,
    /// Per row of the batch: its UserData, if it has one.
    keys: Vec<Option<Cow<'static, str>>>,
    values: Vec<Option<&'static str>>,
    buf: Vec<u8>,
}

fn plan_batch<S: StateView + ?Sized>(
    mapper: &Mapper,
    columns: usize,
    planner: &mut Planner<'_, S>,
    batch: &Batch,
    scratch: &mut Scratch,
) -> Result<(), PlanError> {
    let mut values = recycle(std::mem::take(&mut scratch.values));
    let mut keys = recycle(std::mem::take(&mut scratch.keys));
    scratch.hashes.clear();
    // First the hashes of every row (to prefetch their digest entries ahead of the
    // lookups), and their keys.
    for row in &batch.rows {
        let (key, hashes) = match row {
            Row::Record { first, .. } => {
                let key = mapper.key_of(batch.value(batch.spans[*first]));
                let hashes = key.as_ref().map(|k| {
                    let values = batch.iter_values(*first, columns);
                    (key_hash(k), mapper.row_hash_of(values, &mut scratch.buf))
                });
                (key, hashes)
            }
            Row::Bad(_) => (None, None),
        };
        scratch.hashes.push(hashes);
        keys.push(key);
    }
    for (i, row) in batch.rows.iter().enumerate() {
        if let Some(Some((ahead, _))) = scratch.hashes.get(i + AHEAD) {
            planner.prefetch(*ahead);
        }
        if let Some(Some((near, _))) = scratch.hashes.get(i + AHEAD / 2) {
            planner.prefetch_entry(*near);
        }
        let outcome = match row {
            Row::Bad(b) => mapper.map(Item::Bad((**b).clone())),
            Row::Record { at, first } => {
                if let (Some((kh, rh)), Some(key)) = (scratch.hashes[i], &keys[i]) {
                    if planner.unchanged(key, kh, rh, *at) {
                        continue;
                    }
                }
                batch.values(*first, columns, &mut values);
                let record = Record {
                    at: *at,
                    values: &values,
                    text: None,
                };
                match scratch.hashes[i] {
                    Some((_, rh)) => {
                        let known = match &keys[i] {
                            Some(key) => planner.known(key)?,
                            None => None,
                        };
                        mapper.map_hashed(record, rh, known)
                    }
                    // No UserData: rejected, nothing to hash.
                    None => mapper.map(Item::Record(record)),
                }
            }
        };
        planner.push(outcome)?;
    }
    scratch.values = recycle(values);
    scratch.keys = recycle(keys);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, JobConfig};
    use crate::engine::plan::{self, Policy};
    use crate::state::digest::Digest;
    use crate::state::hashing::HashKey;
    use crate::state::Entry;
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::Arc;

    fn job(export: &Path) -> JobConfig {
        let text = format!(
            "[dialler]\nbase_url = \"http://127.0.0.1:1/rest/v1.0\"\nclient_id = 7\ntoken = \"t\"\n\
             [[job]]\nname = \"j\"\ncampaign_id = 1\ndefault_country = \"DE\"\n\
             [job.source]\ntype = \"csv\"\npath = \"{}\"\n\
             [job.fields]\nUserData = \"Nr\"\nName = \"Name\"\nPhoneNumber1 = \"Tel\"\n",
            export.display()
        );
        Config::from_str(&text, Path::new("t.toml"))
            .unwrap()
            .jobs
            .remove(0)
    }

    /// The plan of `job`'s export made on one thread, row by row, without a digest.
    fn plan_in_one_thread(job: &JobConfig, state: &BTreeMap<String, Entry>) -> Plan {
        let mapper = Mapper::new(job, Arc::new(HashKey::for_tests()));
        let mut outcomes = Vec::new();
        source::read(&job.source, &job.columns(), &mut |i| {
            outcomes.push(mapper.map(i));
            Flow::Continue(())
        })
        .unwrap();
        plan::plan(outcomes, state, policy(job)).unwrap()
    }

    fn open(job: &JobConfig) -> std::fs::File {
        source::open(&job.source).unwrap()
    }

    fn policy(job: &JobConfig) -> Policy {
        Policy {
            on_missing: job.on_missing,
        }
    }

    /// The plan of `job`'s export file by `planner`, with its counts checked against its
    /// operations.
    fn plan_file<S: StateView + Sync + ?Sized>(
        job: &JobConfig,
        planner: Planner<'_, S>,
        handle: &RunHandle,
    ) -> Result<Plan, PlanError> {
        let mapper = Mapper::new(job, Arc::new(HashKey::for_tests()));
        let columns = job.columns();
        let plan = read_and_plan(
            &job.source,
            open(job),
            &Pages::default(),
            &columns,
            &mapper,
            planner,
            handle,
        )?;
        plan.check_counts();
        Ok(plan)
    }

    /// Rows over many batches, with bad rows and duplicates across batch boundaries: the
    /// two threads plan exactly what one thread plans, with or without the digest.
    #[test]
    fn plans_exactly_as_one_thread_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("export.csv");
        let mut text = String::from("Nr,Name,Tel\n");
        for i in 0..3 * BATCH_ROWS + 7 {
            match i % 97 {
                5 => text.push_str("broken,row\n"), // two fields of three: unreadable
                11 => text.push_str(&format!("K{i},,0171 1234567\n")), // no name
                13 => text.push_str(&format!("K{},Again,0171 1234567\n", i.saturating_sub(600))), // duplicate
                // A later row's key first, mostly in the same batch: as that row, and changed.
                17 => text.push_str(&format!(
                    "K{0},Name {0},0171 {1:07}\n",
                    i + 300,
                    1_000_300 + i
                )),
                19 => text.push_str(&format!("K{},Early,0171 1234567\n", i + 300)),
                _ => text.push_str(&format!("K{i},Name {i},0171 {:07}\n", 1_000_000 + i)),
            }
        }
        std::fs::write(&path, &text).unwrap();
        let job = job(&path);
        let mut state = BTreeMap::new();
        // Half the contacts are known and unchanged, a few known with other values.
        let first = plan_in_one_thread(&job, &state);
        for (n, c) in first.imports.to_vec().into_iter().enumerate() {
            if n % 2 == 0 {
                let mut row = c.row;
                if n % 10 == 0 {
                    row ^= 1; // stale row hash: compared in full, still unchanged
                }
                state.insert(
                    c.key.clone(),
                    Entry {
                        id: n as i64,
                        fields: c.hashes.clone(),
                        triggers: c.triggers.clone(),
                        locked: n % 14 == 0,
                        last_op: crate::state::LastOp::Imported,
                        last_run: 0,
                        row,
                        // Every number normalised again (see the test below).
                        phones: 0,
                        keyed: true,
                    },
                );
            }
        }
        let gone = Entry {
            locked: false,
            ..state.values().next().unwrap().clone()
        };
        state.insert("gone".into(), gone);
        let expected = plan_in_one_thread(&job, &state);
        let handle = RunHandle::new();

        let without = Planner::new(&state, policy(&job));
        let got = plan_file(&job, without, &handle).unwrap();
        assert_eq!(got, expected);

        let digest = Digest::of(state.iter());
        let with = Planner::with_digest(&state, policy(&job), &digest);
        let mut got = plan_file(&job, with, &handle).unwrap();
        assert!(got.unchanged_by_hash > 500, "{}", got.unchanged_by_hash);
        got.unchanged_by_hash = 0;
        assert_eq!(got, expected);
        assert!(!expected.rejected.is_empty() && !expected.changes.is_empty());
        assert_eq!(
            expected.withheld_removals, 1,
            "unreadable rows hold the removal back"
        );
    }

    /// A first import's plan is never in memory whole: past its buffer, the spool's
    /// operations are in its file, and they all read back, in the export's order.
    #[test]
    fn a_large_plan_is_kept_on_disk_beyond_its_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("export.csv");
        let n = 100_000;
        let mut text = String::from("Nr,Name,Tel\n");
        for i in 0..n {
            text.push_str(&format!("K{i},Name {i},0171 {:07}\n", 1_000_000 + i));
        }
        std::fs::write(&path, &text).unwrap();
        let job = job(&path);
        let state = BTreeMap::new();
        let spool_dir: std::sync::Arc<Path> = std::sync::Arc::from(dir.path());
        let planner = Planner::new(&state, policy(&job)).spool_in(spool_dir);
        let plan = plan_file(&job, planner, &RunHandle::new()).unwrap();
        assert_eq!(plan.imports.len(), n);
        assert!(plan.imports.on_disk());
        assert!(plan.imports.buffered() < crate::engine::plan::spool::BUFFER);
        let mut read = 0;
        for (i, c) in plan.imports.iter().enumerate() {
            let c = c.unwrap();
            assert_eq!(c.key, format!("K{i}"));
            assert_eq!(c.at.row, i as u64 + 2, "the header is row 1");
            read += 1;
        }
        assert_eq!(read, n);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "the spool's file has no name: only the export is in the folder"
        );
    }

    #[test]
    fn a_stop_request_ends_the_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("export.csv");
        std::fs::write(&path, "Nr,Name,Tel\nK1,A,0171 1234567\n").unwrap();
        let job = job(&path);
        let state = BTreeMap::new();
        let handle = RunHandle::new();
        handle.request_stop();
        let planner = Planner::new(&state, policy(&job));
        let err = plan_file(&job, planner, &handle).unwrap_err();
        assert!(matches!(err, PlanError::Stopped), "{err}");
    }

    /// A reader that counts the bytes taken from it.
    struct Counted<R> {
        inner: R,
        taken: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl<R: std::io::Read> std::io::Read for Counted<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.taken
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            Ok(n)
        }
    }

    /// A state that cannot be read.
    struct Broken;

    impl StateView for Broken {
        fn get(&self, key: &str) -> Result<Option<Entry>, StateError> {
            Err(StateError::Corrupt { key: key.into() })
        }
        fn for_each(&self, _: &mut dyn FnMut(&str, Entry)) -> Result<(), StateError> {
            Ok(())
        }
    }

    /// Neither a stop request nor a planner that failed leaves the reader parsing the rest
    /// of the export: it stops within a few batches, the file's buffers included.
    #[test]
    fn the_reader_stops_within_a_batch_of_a_stop_or_a_failed_planner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("export.csv");
        let mut text = String::from("Nr,Name,Tel\n");
        for i in 0..200_000 {
            text.push_str(&format!("K{i},Name {i},0171 {:07}\n", 1_000_000 + i));
        }
        std::fs::write(&path, &text).unwrap();
        let job = job(&path);
        let mapper = Mapper::new(&job, Arc::new(HashKey::for_tests()));
        let bound = 4 * 64 * 1024 + (IN_FLIGHT + 2) * BATCH_ROWS * 40;
        assert!(
            bound < text.len() / 4,
            "the export is much larger than the bound"
        );

        let counted = || {
            let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let input = Counted {
                inner: std::io::Cursor::new(text.clone().into_bytes()),
                taken: Arc::clone(&taken),
            };
            (input, taken)
        };

        let plan_until_stopped = |input: Counted<std::io::Cursor<Vec<u8>>>,
                                  state: &(dyn StateView + Sync),
                                  handle: &RunHandle| {
            let planner = Planner::new(state, policy(&job));
            read_and_plan(
                &job.source,
                input,
                &Pages::default(),
                &job.columns(),
                &mapper,
                planner,
                handle,
            )
            .unwrap_err()
        };

        // Stopped on request while reading (after the first batch is handed over).
        let (input, taken) = counted();
        let state = BTreeMap::new();
        let handle = Arc::new(RunHandle::new());
        let stopper = {
            let handle = Arc::clone(&handle);
            let taken = Arc::clone(&taken);
            std::thread::spawn(move || {
                while taken.load(std::sync::atomic::Ordering::Relaxed) == 0 {
                    std::thread::yield_now();
                }
                handle.request_stop();
            })
        };
        let err = plan_until_stopped(input, &state, &handle);
        stopper.join().unwrap();
        assert!(matches!(err, PlanError::Stopped), "{err}");
        let read = taken.load(std::sync::atomic::Ordering::Relaxed);
        assert!(read <= bound, "{read} bytes read of {}", text.len());

        // The planner fails at its first row: the reader stops too.
        let (input, taken) = counted();
        let err = plan_until_stopped(input, &Broken, &RunHandle::new());
        assert!(matches!(err, PlanError::State(_)), "{err}");
        let read = taken.load(std::sync::atomic::Ordering::Relaxed);
        assert!(read <= bound, "{read} bytes read of {}", text.len());
    }

    /// A record handed over with its text keeps its values (copied once, with the text);
    /// a value that is not a slice of the text is copied on its own, not mistaken for
    /// part of it.
    #[test]
    fn a_batch_keeps_the_values_of_records_with_and_without_their_text() {
        let text = String::from("K1,Ärger , x,\u{1f600}");
        let elsewhere = String::from("from elsewhere");
        let in_text = |a: usize, b: usize| Some(&text[a..b]);
        let values = [
            in_text(0, 2),
            in_text(3, 10),
            None,
            Some(elsewhere.as_str()),
            in_text(14, 18),
        ];
        let mut batch = Batch::default();
        for text in [Some(text.as_str()), None] {
            batch.push(Item::Record(Record {
                at: RowRef::at(2),
                values: &values,
                text,
            }));
        }
        let mut out = Vec::new();
        for (row, first) in [(0, 0), (1, values.len())] {
            assert!(matches!(batch.rows[row], Row::Record { first: f, .. } if f == first));
            batch.values(first, values.len(), &mut out);
            assert_eq!(out, values, "row {row}");
        }
    }

    /// A line (a CSV record as its text and its values' places) is kept with the values
    /// the same row has as a record: blank and whitespace-only values absent, others as
    /// they are (so its row hash is the same); a line that would take the text past
    /// what a place can say is unreadable, as a record is.
    #[test]
    fn a_batch_keeps_the_values_of_a_line_as_of_the_same_record() {
        let text = "K1,,  ,\u{a0},Ärger ,\u{1f600}";
        let ranges = [(0, 2), (3, 3), (4, 6), (7, 9), (10, 17), (18, 22)];
        let record = [
            Some("K1"),
            None,
            None,
            None,
            Some("Ärger "),
            Some("\u{1f600}"),
        ];
        let mut batch = Batch::default();
        batch.push(Item::Record(Record {
            at: RowRef::at(2),
            values: &record,
            text: Some(text),
        }));
        let line = Line {
            at: RowRef::at(3),
            text,
            ranges: &ranges,
        };
        batch.push(Item::Line(line));
        let mut from_line = Vec::new();
        line.values_into(&mut from_line);
        assert_eq!(from_line, record);
        let mut out = Vec::new();
        for (row, first) in [(0, 0), (1, record.len())] {
            assert!(matches!(batch.rows[row], Row::Record { first: f, .. } if f == first));
            batch.values(first, record.len(), &mut out);
            assert_eq!(out, record, "row {row}");
        }
        let before = batch.text.len();
        batch.push_within(Item::Line(line), before + text.len());
        assert!(matches!(&batch.rows[2], Row::Bad(b) if b.reason.contains("longer than 4 GiB")));
        assert_eq!(batch.text.len(), before, "nothing of the row left");
        batch.push_within(Item::Line(line), before + text.len() + 1);
        assert!(matches!(batch.rows[3], Row::Record { .. }));
    }

    /// A batch is full at its 2,048th row, or earlier at 16 MB of text (rows of long
    /// notes): its size is bounded either way.
    #[test]
    fn a_batch_is_full_by_its_rows_or_its_text() {
        let note = "x".repeat(BATCH_TEXT / 2);
        let mut batch = Batch::default();
        for n in 1..=2 {
            batch.push(Item::Record(Record {
                at: RowRef::at(n + 1),
                values: &[Some(note.as_str())],
                text: Some(&note),
            }));
            assert_eq!(batch.full(), n == 2, "{n} rows");
        }
        let mut batch = Batch::default();
        for n in 1..=BATCH_ROWS {
            assert!(!batch.full(), "{n} rows");
            batch.push(Item::Record(Record {
                at: RowRef::at(n as u64 + 1),
                values: &[Some("K")],
                text: Some("K"),
            }));
        }
        assert!(batch.full());
    }

    /// A record that would take a batch's text past what a value's place can say (4 GiB;
    /// here 40 bytes) is kept as an unreadable row, and the batch's other records as they
    /// were, before and after it.
    #[test]
    fn a_record_past_the_places_a_batch_can_note_is_unreadable() {
        let short = String::from("K1,Anna");
        let long = format!("K2,{}", "x".repeat(40));
        let mut batch = Batch::default();
        for text in [&short, &long, &short] {
            let (k, v) = text.split_once(',').unwrap();
            let values = [Some(k), Some(v)];
            batch.push_within(
                Item::Record(Record {
                    at: RowRef::at(2),
                    values: &values,
                    text: Some(text),
                }),
                40,
            );
        }
        // Without its text: each value copied on its own, the second past the limit.
        let elsewhere = ["K3".to_string(), "y".repeat(40)];
        let values = [Some(elsewhere[0].as_str()), Some(elsewhere[1].as_str())];
        batch.push_within(
            Item::Record(Record {
                at: RowRef::at(5),
                values: &values,
                text: None,
            }),
            40,
        );
        assert!(matches!(&batch.rows[1], Row::Bad(b) if b.reason.contains("longer than 4 GiB")));
        assert!(matches!(&batch.rows[3], Row::Bad(b) if b.at == RowRef::at(5)));
        assert_eq!(batch.text, "K1,AnnaK1,Anna", "nothing of the rows left out");
        assert!(!batch.full());
        let mut out = Vec::new();
        for row in [0, 2] {
            let Row::Record { first, .. } = batch.rows[row] else {
                panic!("row {row} is a record");
            };
            batch.values(first, 2, &mut out);
            assert_eq!(out, [Some("K1"), Some("Anna")], "row {row}");
        }
    }
}
