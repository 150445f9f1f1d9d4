//! The hashes the state keeps instead of the CRM's values. A state holds, per contact, a
//! hash of each mapped field; unkeyed, a copy of the database would give every phone
//! number back to anyone who hashes the numbering plan. So each state has a secret of its
//! own, kept beside the database (never in it), and every hash of a value is keyed with
//! it: field and reset-trigger values with SipHash-2-4 (a keyed hash made for this), the
//! whole-row hash of the no-op fast path with XXH3 and a secret derived from the key
//! (fast enough for a million rows a second; without the secret there is nothing to
//! compare a guess with).
//!
//! [`legacy_value`] and [`legacy_trigger`] are the unkeyed hashes that versions before
//! keyed hashing stored: a run compares an old entry with them once, and stores the
//! keyed hashes, without a call (see the planner's migration).

use std::hash::Hasher as _;
use std::io::Read as _;

use siphasher::sip::SipHasher24;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_secret};

use crate::fields::FieldValue;

/// Bytes of a state's secret.
pub(crate) const KEY_BYTES: usize = 32;

/// A state's secret, ready to hash with.
#[derive(Clone)]
pub struct HashKey {
    bytes: [u8; KEY_BYTES],
    sip: [u8; 16],
    row: Box<[u8; 192]>,
}

impl std::fmt::Debug for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashKey(..)")
    }
}

impl HashKey {
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> HashKey {
        let mut sip = [0u8; 16];
        sip.copy_from_slice(&bytes[..16]);
        let mut expand = [0u8; 16];
        expand.copy_from_slice(&bytes[16..]);
        // XXH3's secret: 192 bytes drawn from the key's second half.
        let mut row = Box::new([0u8; 192]);
        for (i, chunk) in row.chunks_mut(8).enumerate() {
            let mut h = SipHasher24::new_with_key(&expand);
            h.write(b"dialsync row secret");
            h.write_u64(i as u64);
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
        HashKey { bytes, sip, row }
    }

    /// A new random key (from the operating system's CSPRNG).
    pub fn generate() -> std::io::Result<HashKey> {
        let mut bytes = [0u8; KEY_BYTES];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        Ok(HashKey::from_bytes(bytes))
    }

    /// A fixed key, for tests.
    pub fn for_tests() -> HashKey {
        HashKey::from_bytes([7; KEY_BYTES])
    }

    pub fn bytes(&self) -> &[u8; KEY_BYTES] {
        &self.bytes
    }

    fn sip(&self, tag: u8, data: &[u8]) -> u64 {
        let mut h = SipHasher24::new_with_key(&self.sip);
        h.write_u8(tag);
        h.write(data);
        h.finish()
    }

    /// The hash of a value as sent to the dialler.
    pub fn value(&self, v: &FieldValue) -> u64 {
        match v {
            FieldValue::Text(s) => self.sip(b'T', s.as_bytes()),
            FieldValue::Number(n) => self.sip(b'N', &n.to_bits().to_le_bytes()),
            FieldValue::Null => self.sip(b'0', b""),
        }
    }

    /// The hash of a reset-trigger column's raw value (trimmed; `None`: empty).
    pub fn trigger(&self, raw: Option<&str>) -> u64 {
        match raw.map(str::trim) {
            Some(v) => self.sip(b'T', v.as_bytes()),
            None => self.sip(b'0', b""),
        }
    }

    /// The hash of a whole row's bytes; never 0 (the state's "not known").
    pub fn row(&self, buf: &[u8]) -> u64 {
        xxh3_64_with_secret(buf, &self.row[..]).max(1)
    }

    /// A hasher of an export file's bytes (128 bits, with the row hash's secret): how a
    /// run tells an export file unchanged since the last clean run read it.
    pub(crate) fn export(&self) -> xxhash_rust::xxh3::Xxh3 {
        xxhash_rust::xxh3::Xxh3::with_secret(*self.row)
    }

    /// A fingerprint of the key itself, stored in the state to notice a key file that is
    /// not the one the state was made with. Reveals nothing of the key.
    pub fn check(&self) -> u64 {
        self.sip(b'K', b"dialsync key check")
    }
}

/// The unkeyed hash of a value that versions before keyed hashing stored.
pub fn legacy_value(v: &FieldValue) -> u64 {
    match v {
        FieldValue::Text(s) => {
            let mut buf = Vec::with_capacity(s.len() + 1);
            buf.push(b'T');
            buf.extend_from_slice(s.as_bytes());
            xxh3_64(&buf)
        }
        FieldValue::Number(n) => {
            let mut buf = [0u8; 9];
            buf[0] = b'N';
            buf[1..].copy_from_slice(&n.to_bits().to_le_bytes());
            xxh3_64(&buf)
        }
        FieldValue::Null => xxh3_64(b"0"),
    }
}

/// The unkeyed hash of a trigger value that versions before keyed hashing stored.
pub fn legacy_trigger(raw: Option<&str>) -> u64 {
    match raw {
        Some(v) => legacy_value(&FieldValue::Text(v.trim().to_string())),
        None => legacy_value(&FieldValue::Null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Promise: a copy of the database alone reveals no value. The same value hashes
    /// differently under two keys, and never to its unkeyed hash.
    #[test]
    fn keyed_hashes_depend_on_the_key() {
        let a = HashKey::from_bytes([1; KEY_BYTES]);
        let b = HashKey::from_bytes([2; KEY_BYTES]);
        let phone = FieldValue::Text("+4917112345678".into());
        assert_ne!(a.value(&phone), b.value(&phone));
        assert_ne!(a.value(&phone), legacy_value(&phone));
        assert_ne!(a.trigger(Some("3")), b.trigger(Some("3")));
        assert_ne!(a.row(b"row"), b.row(b"row"));
        assert_ne!(a.check(), b.check());
        // Stable for one key; a trigger is trimmed like before.
        assert_eq!(
            a.value(&phone),
            HashKey::from_bytes([1; KEY_BYTES]).value(&phone)
        );
        assert_eq!(a.trigger(Some(" 3 ")), a.trigger(Some("3")));
        assert_eq!(
            legacy_trigger(Some(" 3")),
            legacy_value(&FieldValue::Text("3".into()))
        );
    }
}
