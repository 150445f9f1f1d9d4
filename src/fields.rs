//! The dialler's contact fields: which ones a job may map, their kinds and length limits.
//!
//! The list is the intersection of the import and update field lists in the vendor's
//! contact documentation: a field the sync maps must be sendable both when the contact is
//! created (import) and when it changes later (update), otherwise a change could never
//! reach the dialler with one call. Two exceptions, the agent fields `ReservedUsersUID` and
//! `FollowUpUsersUID` ([`Kind::User`]): import only, so they are set when a contact is
//! created, and a later change in the CRM is reported on its row, not sent. Limits are the
//! vendor's import/export field limits.
//!
//! Each field has a stable numeric `code`: the sync state stores per-field hashes under it,
//! so codes must never be renumbered (append new fields at the end).

/// How a field's CRM value is turned into the JSON value the dialler expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Free text, sent as a JSON string.
    Text,
    /// A phone number, normalised to international form.
    Phone,
    /// A decimal amount, sent as a JSON number (`12,50` and `12.50` both accepted).
    Amount,
    /// A date and time, sent as `YYYY-MM-DDTHH:MM:SS`.
    DateTime,
    /// An agent's login (UID), checked against the dialler's users. The dialler takes it
    /// on import only.
    User,
}

/// One dialler contact field.
#[derive(Debug, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    pub code: u8,
    pub kind: Kind,
    /// Maximum length in characters, where the vendor documents one.
    pub max_len: Option<usize>,
}

const fn f(name: &'static str, code: u8, kind: Kind, max_len: Option<usize>) -> Field {
    Field {
        name,
        code,
        kind,
        max_len,
    }
}

use serde::Serialize;
use Kind::*;

/// Every field a job may map. `UserData` is the sync key.
pub(crate) static FIELDS: &[Field] = &[
    f("UserData", 0, Text, Some(64)),
    f("Client", 1, Text, None),
    f("Service", 2, Text, None),
    f("ReferenceNumber", 3, Text, None),
    f("Name", 4, Text, Some(64)),
    f("FirstName", 5, Text, Some(64)),
    f("Salutation", 6, Text, Some(16)),
    f("Title", 7, Text, Some(16)),
    f("Company", 8, Text, Some(64)),
    f("Address", 9, Text, Some(64)),
    f("PostalCode", 10, Text, Some(10)),
    f("City", 11, Text, Some(64)),
    f("Country", 12, Text, Some(64)),
    f("AccountOwner", 13, Text, None),
    f("AccountBank", 14, Text, None),
    f("AccountNationalBankCode", 15, Text, None),
    f("AccountBIC", 16, Text, Some(11)),
    f("AccountNumber", 17, Text, Some(20)),
    f("AccountIBAN", 18, Text, Some(34)),
    f("Amount", 19, Amount, None),
    f("PhoneNumber1", 20, Phone, Some(32)),
    f("PhoneNumber2", 21, Phone, Some(32)),
    f("PhoneNumber3", 22, Phone, Some(32)),
    f("PhoneNumber4", 23, Phone, Some(32)),
    f("PhoneNumber5", 24, Phone, Some(32)),
    f("PhoneNumber6", 25, Phone, Some(32)),
    f("FaxNumber", 26, Text, None),
    f("Email", 27, Text, None),
    f("Website", 28, Text, None),
    f("Comment", 29, Text, None),
    f("dtBeginDate", 30, DateTime, None),
    f("dtEndDate", 31, DateTime, None),
    f("Manufacturer", 32, Text, None),
    f("Model", 33, Text, None),
    f("Tag", 34, Text, None),
    f("ExternalSystemLink", 35, Text, None),
    f("ReservedUsersUID", 36, User, None),
    f("FollowUpUsersUID", 37, User, None),
];

/// Fields documented for only one of import and update: named in errors so the operator
/// learns why the field is refused rather than reading "unknown field".
pub(crate) static ONE_SIDED: &[(&str, &str)] = &[
    (
        "UserData2",
        "the dialler's import does not take it (update only)",
    ),
    (
        "UserData3",
        "the dialler's import does not take it (update only)",
    ),
    (
        "Region",
        "the dialler's import does not take it (update only)",
    ),
    (
        "RandomSortOrder",
        "the dialler's update does not take it (import only)",
    ),
    (
        "FollowUpDateTime",
        "the dialler's update does not take it (import only)",
    ),
    (
        "DiallerCampaignsID",
        "the campaign is set per job with campaign_id or campaign_name",
    ),
    (
        "DiallerCampaignsName",
        "the campaign is set per job with campaign_id or campaign_name",
    ),
    (
        "ID",
        "the dialler assigns contact IDs; dialsync remembers them in its state",
    ),
];

/// The field called `name` (exact, case-sensitive as the API is).
pub(crate) fn by_name(name: &str) -> Option<&'static Field> {
    FIELDS.iter().find(|f| f.name == name)
}

/// The field with state code `code`.
pub fn by_code(code: u8) -> Option<&'static Field> {
    FIELDS.iter().find(|f| f.code == code)
}

impl Field {
    /// Sent on import only: the dialler's update does not take it.
    pub fn import_only(&self) -> bool {
        self.kind == Kind::User
    }
}

/// The key field.
pub(crate) fn user_data() -> &'static Field {
    &FIELDS[0]
}

/// Why `name` cannot be mapped, with a hint (a near miss in case, or a one-sided field).
pub(crate) fn why_not(name: &str) -> String {
    if let Some((_, why)) = ONE_SIDED.iter().find(|(n, _)| *n == name) {
        return format!("`{name}` cannot be synced: {why}");
    }
    let lower = name.to_ascii_lowercase();
    if let Some(f) = FIELDS
        .iter()
        .find(|f| edit_distance(&f.name.to_ascii_lowercase(), &lower) <= 2)
    {
        return format!("unknown dialler field `{name}`: did you mean `{}`?", f.name);
    }
    format!(
        "unknown dialler field `{name}`; the fields a job can map are: {}",
        FIELDS.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
    )
}

/// Levenshtein distance, for "did you mean" hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A value as sent to the dialler.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum FieldValue {
    Text(String),
    Number(f64),
    /// Empty in the CRM: omitted from an import, sent as `null` to clear it on update.
    Null,
}

impl FieldValue {
    pub fn is_null(&self) -> bool {
        matches!(self, FieldValue::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_dense() {
        for (i, f) in FIELDS.iter().enumerate() {
            assert_eq!(f.code as usize, i, "{} has code {}", f.name, f.code);
            assert_eq!(by_code(f.code).unwrap().name, f.name);
        }
    }

    #[test]
    fn hints() {
        assert!(why_not("phonenumber1").contains("did you mean `PhoneNumber1`"));
        assert!(why_not("PhoneNumbr1").contains("did you mean `PhoneNumber1`"));
        assert!(why_not("Region").contains("update only"));
        assert!(why_not("Bogus").contains("PhoneNumber6"));
    }
}
