//! Delivering outcomes: as rows (CSV or NDJSON, the documented columns), in a file
//! written atomically, and as signed webhook batches.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::{Column, OutcomeFormat, OutcomesConfig};
use crate::state::Outcome;

/// One outcome as the documented columns, in the configured order: a JSON object (NDJSON
/// lines, webhook batches, `--output json`) that keeps that order.
pub(crate) fn object(o: &Outcome, cfg: &OutcomesConfig) -> Row {
    Row(cfg
        .columns
        .iter()
        .map(|c| (c.name(), cell(o, *c, cfg)))
        .collect())
}

/// An outcome's columns and values, in order; serialized as a JSON object.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(pub Vec<(&'static str, Value)>);

impl serde::Serialize for Row {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

fn cell(o: &Outcome, c: Column, cfg: &OutcomesConfig) -> Value {
    let text = |s: &Option<String>| s.clone().map_or(Value::Null, Value::String);
    match c {
        Column::UserData => Value::from(o.user_data.clone()),
        Column::ContactID => Value::from(o.contact_id),
        Column::ResultCode => text(&o.export_key),
        Column::Result => text(&o.content),
        Column::Status => text(&o.export_key.as_ref().and_then(|k| cfg.map.get(k)).cloned()),
        Column::Done => Value::from(o.done),
        Column::Aborted => Value::from(o.aborted),
        Column::Delay => Value::from(o.delay),
        Column::Appointment => Value::from(o.appointment),
        Column::Tries => Value::from(o.tries),
        Column::NextTry => text(&o.next_try),
        Column::LastCallEnd => text(&o.last_call_end),
        Column::ConnectedCalls => o.connected_calls.map_or(Value::Null, Value::from),
        Column::AgentID => o.agent_id.map_or(Value::Null, Value::from),
        Column::ChangedAt => Value::from(o.changed_at.clone()),
    }
}

/// A cell of a CSV row: flags as 1 and 0, nothing as an empty field.
fn csv_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(b) => u8::from(*b).to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Writes rows of outcomes in the configured format.
pub(crate) struct RowWriter<W: Write> {
    inner: RowInner<W>,
}

enum RowInner<W: Write> {
    Csv(Box<csv::Writer<W>>),
    Ndjson(W),
}

impl<W: Write> RowWriter<W> {
    /// A writer onto `out`; a CSV one writes its header (after a BOM, with `bom`) now.
    pub(crate) fn new(mut out: W, cfg: &OutcomesConfig, bom: bool) -> std::io::Result<Self> {
        let inner = match cfg.format {
            OutcomeFormat::Csv => {
                if bom && cfg.bom {
                    out.write_all("\u{feff}".as_bytes())?;
                }
                let mut w = csv::WriterBuilder::new()
                    .delimiter(cfg.delimiter)
                    .terminator(csv::Terminator::CRLF)
                    .from_writer(out);
                w.write_record(cfg.columns.iter().map(|c| c.name()))?;
                RowInner::Csv(Box::new(w))
            }
            OutcomeFormat::Ndjson => RowInner::Ndjson(out),
        };
        Ok(RowWriter { inner })
    }

    pub(crate) fn row(&mut self, o: &Outcome, cfg: &OutcomesConfig) -> std::io::Result<()> {
        let obj = object(o, cfg);
        match &mut self.inner {
            RowInner::Csv(w) => Ok(w.write_record(obj.0.iter().map(|(_, v)| csv_text(v)))?),
            RowInner::Ndjson(w) => {
                serde_json::to_writer(&mut *w, &obj)?;
                w.write_all(b"\n")
            }
        }
    }

    /// Flushes and hands back the output.
    pub(crate) fn finish(self) -> std::io::Result<W> {
        match self.inner {
            RowInner::Csv(w) => w.into_inner().map_err(|e| e.into_error()),
            RowInner::Ndjson(mut w) => {
                w.flush()?;
                Ok(w)
            }
        }
    }
}

/// `path` with `{run}` and `{time}` filled in.
pub(crate) fn file_path(
    path: &Path,
    run: &str,
    started: &chrono::DateTime<chrono::Utc>,
) -> PathBuf {
    let text = path.to_string_lossy();
    if !text.contains('{') {
        return path.to_path_buf();
    }
    PathBuf::from(
        text.replace("{run}", run)
            .replace("{time}", &started.format("%Y%m%dT%H%M%SZ").to_string()),
    )
}

/// The outcome file being written: a temporary file beside its final path, renamed over
/// it once complete and on disk, so a CRM that picks the file up never sees half of it.
/// Dropped before [`OutcomeFile::commit`], it removes its temporary file.
///
/// Mode 0640 whatever the umask (the service's is 077): the CRM's import may read it as
/// a member of the file's group.
pub(crate) struct OutcomeFile {
    pub path: PathBuf,
    temp: PathBuf,
    /// `None` once committed.
    rows: Option<RowWriter<std::io::BufWriter<std::fs::File>>>,
}

impl OutcomeFile {
    pub(crate) fn create(path: PathBuf, cfg: &OutcomesConfig) -> std::io::Result<OutcomeFile> {
        use std::os::unix::fs::PermissionsExt;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)?;
        // From here on a failure removes the temporary file (`Drop`).
        let mut out = OutcomeFile {
            path,
            temp,
            rows: None,
        };
        file.set_permissions(std::fs::Permissions::from_mode(0o640))?;
        out.rows = Some(RowWriter::new(std::io::BufWriter::new(file), cfg, true)?);
        Ok(out)
    }

    pub(crate) fn row(&mut self, o: &Outcome, cfg: &OutcomesConfig) -> std::io::Result<()> {
        self.rows.as_mut().expect("not committed").row(o, cfg)
    }

    /// Makes the file durable and puts it in place (replacing an earlier one).
    pub(crate) fn commit(mut self) -> std::io::Result<()> {
        let rows = self.rows.take().expect("committed once");
        let file = rows.finish()?.into_inner().map_err(|e| e.into_error());
        let put = file.and_then(|f| crate::state::replace_durably(f, &self.temp, &self.path));
        if put.is_ok() {
            // In place: nothing left to remove.
            self.temp = PathBuf::new();
        }
        put
    }
}

impl Drop for OutcomeFile {
    fn drop(&mut self) {
        if !self.temp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// The `X-Dialsync-Signature` header of `body`: `sha256=` and the hex HMAC-SHA256 of
/// the body with the webhook secret.
pub(crate) fn signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, body);
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256=");
    for b in tag.as_ref() {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn placeholders_are_filled_in() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-11-23T08:15:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(
            file_path(Path::new("/out/o-{run}-{time}.csv"), "R1", &t),
            PathBuf::from("/out/o-R1-20261123T081500Z.csv")
        );
        assert_eq!(
            file_path(Path::new("/out/o.csv"), "R1", &t),
            PathBuf::from("/out/o.csv")
        );
    }
}
