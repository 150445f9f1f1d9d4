//! How a contact's entry and a pending import are stored: their encodings and versions
//! (older ones are still read), what the last run did, and the marks of calls in flight.

use serde::{Deserialize, Serialize};

/// Encoding version of [`Entry`] and [`Pending`]; bump when their layout changes (and
/// keep decoding the older ones). Version 4 adds the hash of the phone numbers as the CRM
/// wrote them (`phones`) to the layout of 3; 3 has the layout of 2 with keyed hashes
/// ([`crate::state::hashing`]); 2 and 1 hold unkeyed ones (`keyed: false`), and an entry
/// read as such is written back as such (as version 2) until a run compares it and stores
/// keyed hashes.
const ENTRY_VERSION: u8 = 4;
/// Keyed hashes, without `phones` (read as 0).
const NO_PHONES_VERSION: u8 = 3;
/// The version of entries with unkeyed hashes (and no `phones`).
const UNKEYED_VERSION: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The dialler's contact ID.
    pub id: i64,
    /// Hash per mapped field (field code, hash), in field-code order.
    pub fields: Vec<(u8, u64)>,
    /// Hash per reset-trigger column.
    pub triggers: Vec<(String, u64)>,
    /// Whether dialsync locked the contact (the API does not expose a lock flag).
    pub locked: bool,
    /// What the last run that touched this contact did.
    pub last_op: LastOp,
    /// When that was (Unix seconds).
    pub last_run: i64,
    /// The hash of the CRM row (`Mapper::row_hash`) the dialler's contact reflects in
    /// full, or 0 when not known (after a partial change, a recovery or a rebuild). A row
    /// with this hash is unchanged without being mapped.
    pub row: u64,
    /// The hash of the raw values of the job's phone columns (`Mapper::phones_hash`) whose
    /// numbers the field hashes hold, or 0 when not known: a changed row with the same
    /// phone values is not normalised again (its numbers' hashes are these).
    pub phones: u64,
    /// Whether the hashes are keyed with the state's secret (false: written by a version
    /// before keyed hashing; the planner migrates it when a row names it).
    #[serde(skip)]
    pub keyed: bool,
}

/// An [`Entry`] as version 1 wrote it (no row hash).
#[derive(Deserialize)]
struct EntryV1 {
    id: i64,
    fields: Vec<(u8, u64)>,
    triggers: Vec<(String, u64)>,
    locked: bool,
    last_op: LastOp,
    last_run: i64,
}

/// An import that was (or was about to be) sent but whose contact ID is not stored yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The field hashes the import sends.
    pub fields: Vec<(u8, u64)>,
    /// The trigger hashes to store with it.
    pub triggers: Vec<(String, u64)>,
    /// The row hash to store with it.
    pub row: u64,
    /// The phones hash to store with it ([`Entry::phones`]).
    pub phones: u64,
    /// Whether the hashes are keyed (see [`Entry::keyed`]).
    #[serde(skip)]
    pub keyed: bool,
}

/// An [`Entry`] as versions 2 and 3 write it (no phones hash).
#[derive(Serialize, Deserialize)]
struct EntryV3 {
    id: i64,
    fields: Vec<(u8, u64)>,
    triggers: Vec<(String, u64)>,
    locked: bool,
    last_op: LastOp,
    last_run: i64,
    row: u64,
}

/// A [`Pending`] as versions 2 and 3 write it.
#[derive(Serialize, Deserialize)]
struct PendingV3 {
    fields: Vec<(u8, u64)>,
    triggers: Vec<(String, u64)>,
    row: u64,
}

/// A [`Pending`] as version 1 wrote it.
#[derive(Deserialize)]
struct PendingV1 {
    fields: Vec<(u8, u64)>,
    triggers: Vec<(String, u64)>,
}

impl Pending {
    pub(super) fn encode(&self) -> Vec<u8> {
        if !self.keyed {
            let mut out = vec![UNKEYED_VERSION];
            let old = PendingV3 {
                fields: self.fields.clone(),
                triggers: self.triggers.clone(),
                row: self.row,
            };
            out.extend(postcard::to_stdvec(&old).expect("a Pending always serializes"));
            return out;
        }
        let mut out = vec![ENTRY_VERSION];
        out.extend(postcard::to_stdvec(self).expect("a Pending always serializes"));
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Option<Pending> {
        match bytes.split_first() {
            Some((&ENTRY_VERSION, rest)) => postcard::from_bytes(rest)
                .ok()
                .map(|p| Pending { keyed: true, ..p }),
            Some((&v @ (NO_PHONES_VERSION | UNKEYED_VERSION), rest)) => {
                postcard::from_bytes::<PendingV3>(rest)
                    .ok()
                    .map(|p| Pending {
                        fields: p.fields,
                        triggers: p.triggers,
                        row: p.row,
                        phones: 0,
                        keyed: v == NO_PHONES_VERSION,
                    })
            }
            Some((1, rest)) => postcard::from_bytes::<PendingV1>(rest)
                .ok()
                .map(|p| Pending {
                    fields: p.fields,
                    triggers: p.triggers,
                    row: 0,
                    phones: 0,
                    keyed: false,
                }),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LastOp {
    Imported,
    Updated,
    Reset,
    Locked,
    Unlocked,
    /// Hashes recorded without a call (a field or trigger newly added to the config).
    Baseline,
    /// Written by `state rebuild`, or by a verification that re-learned the contact's ID:
    /// the dialler does not say whether the contact is locked, so the next run unlocks it
    /// if the export has it and locks it if not (as after a lock or unlock in flight),
    /// then writes the entry anew. Kept in the entry, not as an in-flight mark per
    /// contact: a million marks read through sled's page cache kept 150 MB resident in the
    /// run after a rebuild.
    Rebuilt,
}

impl Entry {
    /// What of the contact on the dialler the entry itself leaves in doubt ([`in_doubt`]
    /// bits, as an in-flight mark would): its lock state after a `state rebuild`.
    pub(crate) fn doubt(&self) -> u8 {
        if self.last_op == LastOp::Rebuilt {
            in_doubt::LOCK
        } else {
            0
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        if !self.keyed {
            let mut out = vec![UNKEYED_VERSION];
            let old = EntryV3 {
                id: self.id,
                fields: self.fields.clone(),
                triggers: self.triggers.clone(),
                locked: self.locked,
                last_op: self.last_op,
                last_run: self.last_run,
                row: self.row,
            };
            out.extend(postcard::to_stdvec(&old).expect("an Entry always serializes"));
            return out;
        }
        let mut out = vec![ENTRY_VERSION];
        out.extend(postcard::to_stdvec(self).expect("an Entry always serializes"));
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        match bytes.split_first() {
            Some((&ENTRY_VERSION, rest)) => postcard::from_bytes(rest)
                .ok()
                .map(|e| Entry { keyed: true, ..e }),
            Some((&v @ (NO_PHONES_VERSION | UNKEYED_VERSION), rest)) => {
                postcard::from_bytes::<EntryV3>(rest).ok().map(|e| Entry {
                    id: e.id,
                    fields: e.fields,
                    triggers: e.triggers,
                    locked: e.locked,
                    last_op: e.last_op,
                    last_run: e.last_run,
                    row: e.row,
                    phones: 0,
                    keyed: v == NO_PHONES_VERSION,
                })
            }
            Some((1, rest)) => postcard::from_bytes::<EntryV1>(rest).ok().map(|e| Entry {
                id: e.id,
                fields: e.fields,
                triggers: e.triggers,
                locked: e.locked,
                last_op: e.last_op,
                last_run: e.last_run,
                row: 0,
                phones: 0,
                keyed: false,
            }),
            _ => None,
        }
    }
}

/// What may have changed on the dialler while an operation was in flight (bits of a
/// mark, see [`super::JobState::put_in_flight`]).
pub(crate) mod in_doubt {
    /// An update or reset was sent: the contact's fields and counters are unknown.
    pub(crate) const FIELDS: u8 = 1;
    /// A lock or unlock was sent: whether the contact is locked is unknown.
    pub(crate) const LOCK: u8 = 2;
    /// A delete was sent: whether the contact still exists is unknown.
    pub(crate) const GONE: u8 = 4;

    /// Whether `bits` leave what the dialler holds in the contact's fields unknown (an
    /// update or reset in flight, or the contact itself after a delete): the stored
    /// hashes say nothing of it, and every field is sent.
    pub(crate) fn fields_unknown(bits: u8) -> bool {
        bits & (FIELDS | GONE) != 0
    }
}
