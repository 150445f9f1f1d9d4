//! From a CRM record to a dialler contact: column mapping, validation against the
//! dialler's rules, phone normalisation, and the per-field hashes the state keeps.
//!
//! A row either becomes a [`Contact`] or is [`Rejected`] with every reason found. A
//! rejected row that still has a readable key keeps its contact from being treated as
//! missing (see the planner); nothing from it is sent.

use std::borrow::Cow;
use std::collections::HashSet;

use chrono::NaiveDateTime;
use serde::Serialize;
use std::sync::Arc;

use xxhash_rust::xxh3::Xxh3;

use crate::config::{JobConfig, OnBadPhone, PhoneFormat};
use crate::engine::phone;
use crate::fields::{self, Field, FieldValue, Kind};
use crate::key::{clean_key, Key};
use crate::source::{Item, Record, RowRef};
use crate::state::hashing::{self, HashKey};

/// A valid CRM row, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Contact {
    pub at: RowRef,
    /// UserData.
    pub key: String,
    /// Every mapped field except UserData, in field order.
    pub fields: Vec<(&'static Field, FieldValue)>,
    /// Hash per mapped field (by field code), in field order.
    pub hashes: Vec<(u8, u64)>,
    /// Hash per reset-trigger column, in config order.
    pub triggers: Vec<(String, u64)>,
    /// The same values' unkeyed hashes ([`hashing::legacy_trigger`]), to compare with an
    /// entry stored before keyed hashing.
    pub legacy_triggers: Vec<u64>,
    /// The row's [`Mapper::row_hash`]; 0 if it has warnings.
    pub row: u64,
    /// The row's [`Mapper::phones_hash`] if its numbers are as the field hashes say (each
    /// normalised without a note, or `kept`); 0 if not.
    pub phones: u64,
    /// Phone numbers not normalised (field, the CRM's value): their values are those the
    /// contact's entry has hashes of ([`Known`]), and `hashes` has those. Not sent unless
    /// the contact is imported again ([`with_kept`]).
    pub kept: Vec<(&'static Field, String)>,
    /// What was left out or changed on the way, for the report (the row is synced).
    pub warnings: Vec<String>,
}

/// What the state has of a row's contact that spares mapping part of the row again: the
/// phone numbers' field hashes, and the [`Mapper::phones_hash`] of the values they came
/// from ([`crate::state::Entry::phones`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Known<'e> {
    pub phones: u64,
    pub fields: &'e [(u8, u64)],
}

/// Change when the same row would map to other values (normalisation, validation, value
/// hashes): every stored row hash then misses, and rows are mapped and compared again.
const MAPPING_VERSION: u32 = 1;

/// A row that is not sent, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rejected {
    pub at: RowRef,
    /// The row's UserData, when it could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub reason: String,
    /// The row could not even be read as a record (broken structure or encoding): its key,
    /// even if present, may belong to another column, so removals are withheld.
    #[serde(skip)]
    pub unreadable: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    Contact(Contact),
    Rejected(Rejected),
}

/// Maps the records of one job. Built once per run from the job config and the column
/// order the source was asked for ([`JobConfig::columns`]).
pub(crate) struct Mapper {
    key_column: String,
    fields: Vec<(&'static Field, usize, String)>,
    triggers: Vec<(String, usize)>,
    region: Option<phonenumber::country::Id>,
    format: PhoneFormat,
    on_bad_phone: OnBadPhone,
    /// The dialler's users' logins, when the job maps an agent field and they were read
    /// ([`Mapper::with_users`]): a value not among them is left out.
    users: Option<Arc<HashSet<String>>>,
    /// Everything besides the row's values that its mapping depends on.
    fingerprint: u64,
    /// The columns of the phone fields.
    phone_columns: Vec<usize>,
    /// The state's secret: every hash of a value is keyed with it.
    key: Arc<HashKey>,
}

impl Mapper {
    pub(crate) fn new(job: &JobConfig, key: Arc<HashKey>) -> Mapper {
        let columns = job.columns();
        let idx = |c: &str| {
            columns
                .iter()
                .position(|x| x == c)
                .expect("columns() lists every column")
        };
        Mapper {
            key_column: job.key_column.clone(),
            fields: job
                .fields
                .iter()
                .map(|(f, c)| (*f, idx(c), c.clone()))
                .collect(),
            triggers: job
                .reset_when_changed
                .iter()
                .map(|c| (c.clone(), idx(c)))
                .collect(),
            region: job.default_country,
            format: job.phone_format,
            on_bad_phone: job.on_bad_phone,
            users: None,
            fingerprint: fingerprint(job),
            phone_columns: job
                .fields
                .iter()
                .filter(|(f, _)| f.kind == Kind::Phone)
                .map(|(_, c)| idx(c))
                .collect(),
            key,
        }
    }

    /// Checks agent fields (`ReservedUsersUID`, `FollowUpUsersUID`) against `users`.
    pub(crate) fn with_users(mut self, users: Arc<HashSet<String>>) -> Mapper {
        self.users = Some(users);
        self
    }

    /// A hash of the raw values of a row (every column the job reads) and of the mapping
    /// itself: equal hashes mean the row maps to the same contact as before, so a row whose
    /// hash matches its stored entry's is unchanged without being mapped. Never 0 (the
    /// state's "not known").
    pub(crate) fn row_hash(&self, values: &[Option<&str>]) -> u64 {
        self.row_hash_with(values, &mut Vec::new())
    }

    /// [`Mapper::row_hash`], with `buf` as scratch space (one hash call over the whole
    /// row is several times faster than feeding a hasher value by value).
    pub(crate) fn row_hash_with(&self, values: &[Option<&str>], buf: &mut Vec<u8>) -> u64 {
        self.row_hash_of(values.iter().copied(), buf)
    }

    /// [`Mapper::row_hash_with`] of the values `values` yields, in column order.
    pub(crate) fn row_hash_of<'v>(
        &self,
        values: impl Iterator<Item = Option<&'v str>>,
        buf: &mut Vec<u8>,
    ) -> u64 {
        self.hash_values(b"", values, buf)
    }

    /// A hash of the raw values of the row's phone columns and of the mapping: equal
    /// hashes mean the numbers normalise as before (see [`Known`]). Never 0.
    fn phones_hash(&self, values: &[Option<&str>]) -> u64 {
        // The tag: not the row hash of a row of these values alone.
        let phones = self.phone_columns.iter().map(|&i| values[i]);
        self.hash_values(b"phones", phones, &mut Vec::new())
    }

    /// The keyed hash of `tag`, the mapping's fingerprint and `values` (each with its
    /// length, an absent one as none), with `buf` as scratch space.
    fn hash_values<'v>(
        &self,
        tag: &[u8],
        values: impl Iterator<Item = Option<&'v str>>,
        buf: &mut Vec<u8>,
    ) -> u64 {
        buf.clear();
        buf.extend_from_slice(tag);
        buf.extend_from_slice(&self.fingerprint.to_le_bytes());
        for v in values {
            match v {
                Some(v) => {
                    buf.extend_from_slice(&(v.len() as u64 + 1).to_le_bytes());
                    buf.extend_from_slice(v.as_bytes());
                }
                None => buf.extend_from_slice(&0u64.to_le_bytes()),
            }
        }
        self.key.row(buf)
    }

    /// The UserData of the row whose key column holds `value`, as the state keys it
    /// ([`clean_key`]); `None` if it has no usable one (blank, or holding control
    /// characters).
    pub(crate) fn key_of<'v>(&self, value: Option<&'v str>) -> Option<Cow<'v, str>> {
        match clean_key(value?) {
            Key::Usable(k) => Some(k),
            Key::Blank | Key::Bad(_) => None,
        }
    }

    pub(crate) fn map(&self, item: Item<'_>) -> Outcome {
        let record = match item {
            Item::Record(r) => r,
            Item::Line(l) => {
                let mut values = Vec::with_capacity(l.ranges.len());
                l.values_into(&mut values);
                let record = Record {
                    at: l.at,
                    values: &values,
                    text: Some(l.text),
                };
                return self.map_record(record, None, None);
            }
            Item::Bad(b) => {
                return Outcome::Rejected(Rejected {
                    at: b.at,
                    key: b.key.as_deref().and_then(|k| match clean_key(k) {
                        Key::Usable(k) => Some(k.into_owned()),
                        Key::Blank | Key::Bad(_) => None,
                    }),
                    reason: b.reason,
                    unreadable: true,
                })
            }
        };
        self.map_record(record, None, None)
    }

    /// [`Mapper::map`] for a record whose [`Mapper::row_hash`] the caller has already,
    /// with what the state has of its contact: phone numbers whose values are as they
    /// were are not normalised again (normalising is most of mapping a row).
    pub(crate) fn map_hashed(
        &self,
        record: Record<'_>,
        row_hash: u64,
        known: Option<Known<'_>>,
    ) -> Outcome {
        self.map_record(record, Some(row_hash), known)
    }

    fn map_record(
        &self,
        record: Record<'_>,
        row_hash: Option<u64>,
        known: Option<Known<'_>>,
    ) -> Outcome {
        let Record { at, values, .. } = record;
        let phones = if self.phone_columns.is_empty() {
            0
        } else {
            self.phones_hash(values)
        };
        // The numbers are those the entry has hashes of: each one's hash is taken from it.
        let stored = |code: u8| {
            known.and_then(|k| k.fields.iter().find(|(c, _)| *c == code).map(|(_, h)| *h))
        };
        let keep = known.is_some_and(|k| k.phones != 0 && k.phones == phones)
            && self
                .fields
                .iter()
                .filter(|(f, _, _)| f.kind == Kind::Phone)
                .all(|(f, _, _)| stored(f.code).is_some());
        let mut kept = Vec::new();
        // Whether every number was normalised without a note (or kept).
        let mut clean = true;
        let mut reasons = Vec::new();
        let key = match values[0].map_or(Key::Blank, clean_key) {
            Key::Usable(k) => {
                if let Some(r) = too_long(fields::user_data(), &k) {
                    reasons.push(r);
                }
                k.into_owned()
            }
            Key::Blank => {
                reasons.push(format!(
                    "no UserData: column `{}` is empty",
                    self.key_column
                ));
                String::new()
            }
            Key::Bad(why) => {
                reasons.push(format!(
                    "no usable UserData: column `{}` {why}",
                    self.key_column
                ));
                String::new()
            }
        };
        let mut out = Vec::with_capacity(self.fields.len());
        let mut warnings = Vec::new();
        // Bad numbers left out (with on_bad_phone = "skip_field"): warnings if the row
        // still has a good one, the row's rejection if not.
        let mut bad_phones = Vec::new();
        for (field, i, column) in &self.fields {
            let raw = values[*i].map(str::trim).filter(|s| !s.is_empty());
            if let (true, Kind::Phone, Some(raw)) = (keep, field.kind, raw) {
                kept.push((*field, raw.to_string()));
                continue;
            }
            match convert(field, raw, self.region, self.format) {
                Ok(Converted { value, note }) => {
                    clean &= field.kind != Kind::Phone || note.is_none();
                    if let Some(note) = note {
                        warnings.push(format!("{} (column `{column}`) {note}", field.name));
                    }
                    if field.kind == Kind::User {
                        if let (FieldValue::Text(uid), Some(users)) = (&value, &self.users) {
                            if !users.contains(uid.as_str()) {
                                warnings.push(format!(
                                    "{} (column `{column}`) names no user of the dialler: left out",
                                    field.name
                                ));
                                continue;
                            }
                        }
                    }
                    out.push((*field, value));
                }
                Err(why)
                    if field.kind == Kind::Phone && self.on_bad_phone == OnBadPhone::SkipField =>
                {
                    clean = false;
                    bad_phones.push(format!("{} (column `{column}`) {why}", field.name));
                }
                Err(why) => reasons.push(format!("{} (column `{column}`) {why}", field.name)),
            }
        }
        if !out.iter().any(|(f, v)| f.name == "Name" && !v.is_null())
            && reasons.iter().all(|r| !r.starts_with("Name "))
        {
            reasons.push("no Name: the dialler requires one".into());
        }
        let has_phone = !kept.is_empty()
            || out
                .iter()
                .any(|(f, v)| f.kind == Kind::Phone && !v.is_null());
        if has_phone {
            warnings.extend(bad_phones.into_iter().map(|w| w + ": left out"));
        } else if !bad_phones.is_empty() {
            reasons.extend(bad_phones);
        } else if reasons.iter().all(|r| !r.starts_with("PhoneNumber")) {
            reasons.push("no phone number: the dialler requires at least one".into());
        }
        if !reasons.is_empty() {
            return Outcome::Rejected(Rejected {
                at,
                key: Some(key).filter(|k| !k.is_empty()),
                reason: reasons.join("; "),
                unreadable: false,
            });
        }
        let mut hashes: Vec<_> = out
            .iter()
            .map(|(f, v)| (f.code, self.key.value(v)))
            .collect();
        if !kept.is_empty() {
            hashes.extend(
                kept.iter()
                    .filter_map(|(f, _)| Some((f.code, stored(f.code)?))),
            );
            hashes.sort_unstable_by_key(|(code, _)| *code);
        }
        let triggers = self
            .triggers
            .iter()
            .map(|(c, i)| (c.clone(), self.key.trigger(values[*i])))
            .collect();
        let legacy_triggers = self
            .triggers
            .iter()
            .map(|(_, i)| hashing::legacy_trigger(values[*i]))
            .collect();
        Outcome::Contact(Contact {
            at,
            key,
            fields: out,
            hashes,
            triggers,
            legacy_triggers,
            // A row with warnings is mapped again on every run (0 matches no row hash), so
            // every run's report shows them, and a user created on the dialler since is
            // picked up.
            row: if warnings.is_empty() {
                row_hash.unwrap_or_else(|| self.row_hash(values))
            } else {
                0
            },
            phones: if clean { phones } else { 0 },
            kept,
            warnings,
        })
    }
}

/// What a job's mapping depends on besides the row: the columns and fields, the phone
/// settings and the mapping code's version.
fn fingerprint(job: &JobConfig) -> u64 {
    let mut h = Xxh3::new();
    let mut put = |s: &str| {
        h.update(&(s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    put(&MAPPING_VERSION.to_string());
    for c in job.columns() {
        put(&c);
    }
    put(&job.key_column);
    for (f, c) in &job.fields {
        put(f.name);
        put(c);
    }
    for c in &job.reset_when_changed {
        put("trigger");
        put(c);
    }
    put(&format!("{:?}", job.default_country));
    put(&format!("{:?}", job.phone_format));
    h.digest()
}

fn too_long(field: &Field, value: &str) -> Option<String> {
    let max = field.max_len?;
    let n = value.chars().count();
    (n > max).then(|| {
        format!(
            "{} is {n} characters long, the dialler allows {max}",
            field.name
        )
    })
}

/// A CRM value as sent, and what changed on the way.
struct Converted {
    value: FieldValue,
    /// Sent, but not as written (an extension left off): for the row's warnings.
    note: Option<&'static str>,
}

/// `values` with the phone numbers a plan `kept` (not normalised: as the contact's entry
/// has them, see [`Contact::kept`]) normalised now, in field order: what an import of the
/// contact sends. A number that no longer normalises (the job's phone settings changed
/// since the plan) is left out, with a warning.
pub(crate) fn with_kept(
    job: &JobConfig,
    mut values: Vec<(&'static Field, FieldValue)>,
    kept: &[(&'static Field, String)],
) -> Vec<(&'static Field, FieldValue)> {
    if kept.is_empty() {
        return values;
    }
    for (field, raw) in kept {
        match convert(field, Some(raw), job.default_country, job.phone_format) {
            Ok(Converted { value, .. }) => values.push((*field, value)),
            Err(why) => tracing::warn!(job = %job.name, field = field.name, %why,
                "a phone number that the plan kept as it was does not normalise: left out"),
        }
    }
    values.sort_by_key(|(f, _)| f.code);
    values
}

/// Converts one CRM value; the error says what is wrong without repeating the value.
fn convert(
    field: &Field,
    raw: Option<&str>,
    region: Option<phonenumber::country::Id>,
    format: PhoneFormat,
) -> Result<Converted, String> {
    let Some(raw) = raw else {
        return Ok(Converted {
            value: FieldValue::Null,
            note: None,
        });
    };
    let mut note = None;
    let value = match field.kind {
        Kind::Text | Kind::User => FieldValue::Text(raw.to_string()),
        Kind::Phone => {
            let n = phone::normalise(raw, region, format).map_err(|e| e.to_string())?;
            if n.extension_dropped {
                note = Some("has an extension, which the dialler cannot dial: sent without it");
            }
            FieldValue::Text(n.number)
        }
        Kind::Amount => FieldValue::Number(
            parse_amount(raw).ok_or("is not an amount (e.g. 1234.50 or 1.234,50)")?,
        ),
        Kind::DateTime => FieldValue::Text(
            parse_datetime(raw)
                .ok_or("is not a date (e.g. 2026-12-31, 2026-12-31T08:00:00 or 31.12.2026)")?
                .format("%Y-%m-%dT%H:%M:%S")
                .to_string(),
        ),
    };
    if let FieldValue::Text(s) = &value {
        if let Some(max) = field.max_len {
            let n = s.chars().count();
            if n > max {
                return Err(format!("is {n} characters long, the dialler allows {max}"));
            }
        }
    }
    Ok(Converted { value, note })
}

/// `1234.50`, `1234,50`, `1.234,50`, `1,234.50`: whichever separator comes last is the
/// decimal one.
fn parse_amount(s: &str) -> Option<f64> {
    let s: String = s
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '€' && *c != '\'')
        .collect();
    let normalised = match (s.rfind(','), s.rfind('.')) {
        (Some(c), Some(d)) if c > d => s.replace('.', "").replace(',', "."),
        (Some(_), Some(_)) => s.replace(',', ""),
        (Some(_), None) if s.matches(',').count() == 1 => s.replace(',', "."),
        (Some(_), None) => return None,
        _ => s,
    };
    normalised.parse::<f64>().ok().filter(|n| n.is_finite())
}

fn parse_datetime(s: &str) -> Option<NaiveDateTime> {
    const WITH_TIME: [&str; 6] = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
        "%d.%m.%Y %H:%M:%S",
        "%d.%m.%Y %H:%M",
    ];
    for f in WITH_TIME {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Some(t);
        }
    }
    for f in ["%Y-%m-%d", "%d.%m.%Y"] {
        if let Ok(d) = chrono::NaiveDate::parse_from_str(s, f) {
            return d.and_hms_opt(0, 0, 0);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn job(extra_fields: &str) -> JobConfig {
        let text = format!(
            r#"
[dialler]
base_url = "http://127.0.0.1:1/rest/v1.0"
client_id = 7
token = "t"
[[job]]
name = "j"
campaign_id = 1
default_country = "DE"
reset_when_changed = ["Round"]
[job.source]
type = "csv"
path = "x.csv"
[job.fields]
UserData = "Nr"
Name = "Name"
PhoneNumber1 = "Tel"
{extra_fields}
"#
        );
        crate::config::Config::from_str(&text, Path::new("t.toml"))
            .unwrap()
            .jobs
            .remove(0)
    }

    fn rec<'a>(values: &'a [Option<&'a str>]) -> Item<'a> {
        Item::Record(Record {
            at: RowRef::at(2),
            values,
            text: None,
        })
    }

    /// A row whose phone values are those its entry's numbers came from keeps the
    /// numbers as they are (their stored hashes, no normalising), and maps to what
    /// mapping it in full gives; other values of the numbers, an unknown phones hash, or
    /// numbers that had a note are normalised.
    #[test]
    fn numbers_as_they_were_are_kept_not_normalised() {
        let j = job("PhoneNumber2 = \"Mobil\"\nCity = \"Ort\"");
        assert_eq!(
            j.columns(),
            vec!["Nr", "Name", "Ort", "Tel", "Mobil", "Round"]
        );
        let m = Mapper::new(&j, Arc::new(HashKey::for_tests()));
        let map = |values: &[Option<&str>], known: Option<Known<'_>>| {
            let record = Record {
                at: RowRef::at(2),
                values,
                text: None,
            };
            match m.map_hashed(record, m.row_hash(values), known) {
                Outcome::Contact(c) => c,
                Outcome::Rejected(r) => panic!("{r:?}"),
            }
        };
        let row = [
            Some("K1"),
            Some("Müller"),
            Some("Köln"),
            Some("089 1234567"),
            None,
            Some("1"),
        ];
        let before = map(&row, None);
        assert_ne!(before.phones, 0);
        assert!(before.kept.is_empty());
        let known = Known {
            phones: before.phones,
            fields: &before.hashes,
        };
        // Only the City changed: the number is kept with its stored hash.
        let moved = [row[0], row[1], Some("Bonn"), row[3], row[4], row[5]];
        let full = map(&moved, None);
        let kept = map(&moved, Some(known));
        let phone1 = fields::by_name("PhoneNumber1").unwrap();
        assert_eq!(kept.kept, vec![(phone1, "089 1234567".to_string())]);
        assert!(kept.fields.iter().all(|(f, _)| f.name != "PhoneNumber1"));
        assert_eq!(kept.hashes, full.hashes);
        assert_eq!((kept.phones, kept.row), (full.phones, full.row));
        // What an import of it sends is what the full mapping sends.
        assert_eq!(with_kept(&j, kept.fields.clone(), &kept.kept), full.fields);
        // A kept value that no longer normalises (the phone settings changed since the
        // plan) is left out, not sent as the CRM wrote it.
        let bad = [(phone1, "keine".to_string())];
        assert_eq!(with_kept(&j, kept.fields.clone(), &bad), kept.fields);

        // Another number (the second one added counts too), a phones hash not known, or
        // not the one of these values: normalised.
        let mobile = [row[0], row[1], row[2], row[3], Some("0171 2345678"), row[5]];
        let unknown = Known { phones: 0, ..known };
        let other = Known {
            phones: before.phones ^ 1,
            ..known
        };
        for (values, known) in [(&mobile, known), (&moved, unknown), (&moved, other)] {
            let c = map(values, Some(known));
            assert!(c.kept.is_empty(), "{values:?}");
            assert_eq!(c.fields, map(values, None).fields);
        }
        // An entry without a hash of the number (a field newly mapped): normalised.
        let c = map(
            &moved,
            Some(Known {
                fields: &[],
                ..known
            }),
        );
        assert!(c.kept.is_empty());

        // A number with a note (an extension left off) is not known to be as stored:
        // no phones hash, so the next change normalises it again.
        let ext = [
            row[0],
            row[1],
            row[2],
            Some("089 1234567 ext. 12"),
            None,
            row[5],
        ];
        let noted = map(&ext, None);
        assert_eq!((noted.phones, noted.warnings.len()), (0, 1));
    }

    #[test]
    fn maps_normalises_and_hashes() {
        let j = job("Amount = \"Betrag\"\ndtBeginDate = \"Start\"");
        assert_eq!(
            j.columns(),
            vec!["Nr", "Name", "Betrag", "Tel", "Start", "Round"]
        );
        let m = Mapper::new(&j, Arc::new(HashKey::for_tests()));
        let Outcome::Contact(c) = m.map(rec(&[
            Some("K1"),
            Some("Müller"),
            Some("1.234,50"),
            Some("089 1234567"),
            Some("31.12.2026"),
            Some("2"),
        ])) else {
            panic!()
        };
        assert_eq!(c.key, "K1");
        let names: Vec<_> = c.fields.iter().map(|(f, v)| (f.name, v.clone())).collect();
        assert_eq!(
            names,
            vec![
                ("Name", FieldValue::Text("Müller".into())),
                ("Amount", FieldValue::Number(1234.5)),
                ("PhoneNumber1", FieldValue::Text("+49891234567".into())),
                (
                    "dtBeginDate",
                    FieldValue::Text("2026-12-31T00:00:00".into())
                ),
            ]
        );
        assert_eq!(c.hashes.len(), 4);
        assert_eq!(
            c.triggers,
            vec![("Round".to_string(), HashKey::for_tests().trigger(Some("2")))]
        );
    }

    #[test]
    fn rejects_with_every_reason_and_keeps_the_key() {
        let m = Mapper::new(&job(""), Arc::new(HashKey::for_tests()));
        let long = "x".repeat(65);
        let Outcome::Rejected(r) = m.map(rec(&[Some("K1"), Some(&long), Some("12"), None])) else {
            panic!()
        };
        assert_eq!(r.key.as_deref(), Some("K1"));
        assert!(
            r.reason
                .contains("Name (column `Name`) is 65 characters long"),
            "{}",
            r.reason
        );
        assert!(
            r.reason
                .contains("PhoneNumber1 (column `Tel`) is not a valid phone number"),
            "{}",
            r.reason
        );
        assert!(
            !r.reason.contains("12"),
            "values must not leak into reports: {}",
            r.reason
        );
        assert!(!r.unreadable);

        let Outcome::Rejected(r) = m.map(rec(&[None, Some("A"), None, None])) else {
            panic!()
        };
        assert_eq!(r.key, None);
        assert!(
            r.reason.contains("no UserData") && r.reason.contains("no phone number"),
            "{}",
            r.reason
        );
    }

    fn contact(m: &Mapper, values: &[Option<&str>]) -> Contact {
        match m.map(rec(values)) {
            Outcome::Contact(c) => c,
            Outcome::Rejected(r) => panic!("rejected: {}", r.reason),
        }
    }

    fn names(c: &Contact) -> Vec<&'static str> {
        c.fields.iter().map(|(f, _)| f.name).collect()
    }

    #[test]
    fn an_extension_is_left_off_with_a_warning() {
        let m = Mapper::new(&job(""), Arc::new(HashKey::for_tests()));
        let c = contact(
            &m,
            &[Some("K1"), Some("A"), Some("089 1234-0 ext. 12"), None],
        );
        assert_eq!(
            c.fields[1].1,
            FieldValue::Text("+498912340".into()),
            "{:?}",
            c.fields
        );
        assert_eq!(
            c.warnings,
            vec!["PhoneNumber1 (column `Tel`) has an extension, which the dialler cannot dial: sent without it"]
        );
        assert_eq!(c.row, 0, "a row with warnings is mapped again on every run");
        let clean = contact(&m, &[Some("K1"), Some("A"), Some("089 12340"), None]);
        assert!(clean.warnings.is_empty() && clean.row != 0);
    }

    #[test]
    fn a_bad_second_number_is_left_out_unless_the_job_rejects_the_row() {
        let row = [Some("K1"), Some("A"), Some("089 12340"), Some("n/a"), None];
        let m = Mapper::new(
            &job("PhoneNumber2 = \"Mobil\""),
            Arc::new(HashKey::for_tests()),
        );
        let c = contact(&m, &row);
        assert_eq!(names(&c), ["Name", "PhoneNumber1"]);
        assert_eq!(c.hashes.len(), 2, "no hash for the field left out");
        assert_eq!(
            c.warnings,
            vec!["PhoneNumber2 (column `Mobil`) is not a phone number (text without digits): left out"]
        );

        // Every number bad: nothing to dial, the row is rejected with each reason.
        let Outcome::Rejected(r) = m.map(rec(&[
            Some("K1"),
            Some("A"),
            Some("0123"),
            Some("n/a"),
            None,
        ])) else {
            panic!()
        };
        assert!(
            r.reason
                .contains("PhoneNumber1 (column `Tel`) is not a valid phone number")
                && r.reason
                    .contains("PhoneNumber2 (column `Mobil`) is not a phone number"),
            "{}",
            r.reason
        );

        let mut j = job("PhoneNumber2 = \"Mobil\"");
        j.on_bad_phone = OnBadPhone::RejectRow;
        let m = Mapper::new(&j, Arc::new(HashKey::for_tests()));
        let Outcome::Rejected(r) = m.map(rec(&row)) else {
            panic!()
        };
        assert_eq!(
            r.reason,
            "PhoneNumber2 (column `Mobil`) is not a phone number (text without digits)"
        );
    }

    #[test]
    fn an_agent_the_dialler_does_not_know_is_left_out() {
        let j = job("ReservedUsersUID = \"Owner\"");
        let users: HashSet<String> = ["agent1".to_string()].into();
        let m = Mapper::new(&j, Arc::new(HashKey::for_tests())).with_users(Arc::new(users));
        let row = |owner| [Some("K1"), Some("A"), Some("089 12340"), Some(owner), None];
        let c = contact(&m, &row("agent1"));
        assert_eq!(names(&c), ["Name", "PhoneNumber1", "ReservedUsersUID"]);
        assert!(c.warnings.is_empty());
        let c = contact(&m, &row("jdoe"));
        assert_eq!(names(&c), ["Name", "PhoneNumber1"]);
        assert_eq!(
            c.warnings,
            vec!["ReservedUsersUID (column `Owner`) names no user of the dialler: left out"]
        );
        // Not checked (an offline dry run): taken as it is.
        let m = Mapper::new(&j, Arc::new(HashKey::for_tests()));
        assert_eq!(contact(&m, &row("jdoe")).fields.len(), 3);
    }

    #[test]
    fn amounts_and_dates() {
        assert_eq!(parse_amount("1234.5"), Some(1234.5));
        assert_eq!(parse_amount("1,234.50"), Some(1234.5));
        assert_eq!(parse_amount("12,5"), Some(12.5));
        assert_eq!(parse_amount("1,2,3"), None);
        assert_eq!(parse_amount("abc"), None);
        assert!(parse_datetime("2026-01-02T03:04:05").is_some());
        assert!(parse_datetime("02.01.2026 03:04").is_some());
        assert!(parse_datetime("yesterday").is_none());
    }
}
