//! UserData, the CRM's record key: how a key is read (cleaned the same wherever it
//! comes from) and hashed.

use std::borrow::Cow;

use xxhash_rust::xxh3::xxh3_64;

/// The hash of a UserData value (as [`clean_key`] leaves it): how the state digest finds
/// a row's entry.
pub(crate) fn key_hash(key: &str) -> u64 {
    xxh3_64(key.as_bytes())
}

/// The UserData of a contact record as the dialler returns it, cleaned like every other
/// key ([`clean_key`]); `None` if it has no usable one.
pub(crate) fn record_key(record: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
    match clean_key(record.get("UserData")?.as_str()?) {
        Key::Usable(k) => Some(k.into_owned()),
        Key::Blank | Key::Bad(_) => None,
    }
}

/// What a raw UserData cell holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Key<'v> {
    /// A key, cleaned.
    Usable(Cow<'v, str>),
    /// Nothing but white space (or byte order marks).
    Blank,
    /// Something no key may hold; the reason, ready to follow the column's name.
    Bad(&'static str),
}

/// A UserData value as dialsync keys it, the same wherever a key is read (the export,
/// the dialler's records, the raw text searched for removal evidence): every byte order
/// mark (U+FEFF) removed, wherever it stands (two exports pasted together leave one
/// mid-file), then surrounding white space trimmed. A key that still holds a control
/// character (NUL, a line break) is not usable: such a row could belong to any contact.
pub(crate) fn clean_key(raw: &str) -> Key<'_> {
    // Almost every key is printable ASCII without spaces: nothing to clean (one pass,
    // as this runs for every row of every export).
    if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_graphic()) {
        return Key::Usable(Cow::Borrowed(raw));
    }
    let key: Cow<'_, str> = if raw.contains('\u{feff}') {
        Cow::Owned(raw.replace('\u{feff}', ""))
    } else {
        Cow::Borrowed(raw)
    };
    let trimmed = match key {
        Cow::Borrowed(k) => Cow::Borrowed(k.trim()),
        Cow::Owned(k) => Cow::Owned(k.trim().to_string()),
    };
    if trimmed.is_empty() {
        Key::Blank
    } else if trimmed.chars().any(char::is_control) {
        Key::Bad("holds a control character (a line break, tab or NUL): fix the record in the CRM")
    } else {
        Key::Usable(trimmed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_cleaned_the_same_way_everywhere() {
        let rec = |v: serde_json::Value| {
            serde_json::json!({ "UserData": v })
                .as_object()
                .unwrap()
                .clone()
        };
        assert_eq!(record_key(&rec("\u{feff} K1 ".into())), Some("K1".into()));
        assert_eq!(record_key(&rec("K\u{0}1".into())), None);
        assert_eq!(record_key(&rec(serde_json::Value::Null)), None);
        assert_eq!(clean_key("K1"), Key::Usable(Cow::Borrowed("K1")));
        assert_eq!(clean_key("  K1\t"), Key::Usable(Cow::Borrowed("K1")));
        assert_eq!(
            clean_key("\u{feff}K1"),
            Key::Usable(Cow::Owned("K1".into()))
        );
        assert_eq!(
            clean_key("K\u{feff}1"),
            Key::Usable(Cow::Owned("K1".into()))
        );
        assert_eq!(
            clean_key("Müller-7"),
            Key::Usable(Cow::Borrowed("Müller-7"))
        );
        assert_eq!(clean_key(" \u{feff} "), Key::Blank);
        assert_eq!(clean_key(""), Key::Blank);
        assert!(matches!(clean_key("K1\0"), Key::Bad(_)));
        assert!(matches!(clean_key("K1\nK2"), Key::Bad(_)));
    }
}
