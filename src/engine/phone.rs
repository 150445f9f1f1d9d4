//! Phone number normalisation to the international form the dialler dials.
//!
//! Parsing and validation are libphonenumber's (the `phonenumber` crate carries its
//! metadata): CRM exports hold numbers as people type them (`089 / 123 456-78`,
//! `+49 (0)160 ...`, `0049 40 ...`), and only the numbering plan of each country decides
//! which of them are real numbers.

use phonenumber::country;
use phonenumber::Mode;

use crate::config::PhoneFormat;

/// Why a CRM value is not a dialable number. Says nothing of the number itself: it ends
/// up in reports and logs, which must not carry personal data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PhoneError {
    #[error("cannot be read as a phone number")]
    Unreadable,
    #[error("is not a phone number (text without digits)")]
    NotANumber,
    #[error("is a national number, but the job has no default_country to place it")]
    NoRegion,
    #[error("is not a valid phone number{}", .0.map(|r| format!(" for {r:?}")).unwrap_or_default())]
    Invalid(Option<country::Id>),
}

/// A number as the dialler dials it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Normalised {
    pub number: String,
    /// The CRM's value had an extension (`ext. 12`, `x12`), which the dialler cannot
    /// dial: it was left off.
    pub extension_dropped: bool,
}

/// Normalises `raw` to international form, placing national numbers in `region`.
pub(crate) fn normalise(
    raw: &str,
    region: Option<country::Id>,
    format: PhoneFormat,
) -> Result<Normalised, PhoneError> {
    let mut s = raw.trim().to_string();
    // "+49 (0)89 ..." — the "(0)" is the national trunk prefix written for domestic callers;
    // dialled internationally it must go.
    if s.starts_with('+') || s.starts_with("00") {
        s = s.replace("(0)", "");
    }
    if let Some(rest) = s.strip_prefix("00") {
        s = format!("+{rest}");
    }
    // Text where a number belongs ("n/a", "not-a-number", "keine"): say so, not that the
    // number lacks a country.
    if !s.bytes().any(|b| b.is_ascii_digit()) {
        return Err(PhoneError::NotANumber);
    }
    if !s.starts_with('+') && region.is_none() {
        return Err(PhoneError::NoRegion);
    }
    let number = phonenumber::parse(region, &s).map_err(|_| PhoneError::Unreadable)?;
    if !phonenumber::is_valid(&number) {
        return Err(PhoneError::Invalid(number.country().id().or(region)));
    }
    // E.164 has no extension: formatting leaves it off.
    let e164 = number.format().mode(Mode::E164).to_string();
    Ok(Normalised {
        number: match format {
            PhoneFormat::E164 => e164,
            PhoneFormat::Digits => e164.trim_start_matches('+').to_string(),
        },
        extension_dropped: number.extension().is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn de(s: &str) -> Result<String, PhoneError> {
        normalise(s, Some(country::Id::DE), PhoneFormat::E164).map(|n| {
            assert!(!n.extension_dropped, "{s}");
            n.number
        })
    }

    #[test]
    fn extensions_are_left_off() {
        for s in ["089 1234-0 ext. 12", "089 12340 x12", "+49 89 12340 ext 12"] {
            let n = normalise(s, Some(country::Id::DE), PhoneFormat::E164).unwrap();
            assert_eq!(n.number, "+498912340", "{s}");
            assert!(n.extension_dropped, "{s}");
        }
    }

    #[test]
    fn german_numbers_as_people_write_them() {
        assert_eq!(de("089 / 123 456-78").unwrap(), "+498912345678");
        assert_eq!(de("0171 2345678").unwrap(), "+491712345678");
        assert_eq!(de("+49 (0)160 1234567").unwrap(), "+491601234567");
        assert_eq!(de("0049 40 12345678").unwrap(), "+494012345678");
        assert_eq!(de("+43 1 5344455").unwrap(), "+4315344455");
        assert_eq!(
            normalise("089 12345678", Some(country::Id::DE), PhoneFormat::Digits)
                .unwrap()
                .number,
            "498912345678"
        );
    }

    #[test]
    fn rejects_what_cannot_be_dialled() {
        assert_eq!(de("n/a"), Err(PhoneError::NotANumber));
        assert_eq!(de("0x"), Err(PhoneError::Unreadable));
        // Text is text, with or without a default country.
        for region in [None, Some(country::Id::DE)] {
            assert_eq!(
                normalise("not-a-number", region, PhoneFormat::E164),
                Err(PhoneError::NotANumber)
            );
        }
        assert!(matches!(de("0123"), Err(PhoneError::Invalid(_))));
        assert_eq!(
            normalise("089 12345678", None, PhoneFormat::E164),
            Err(PhoneError::NoRegion)
        );
        assert_eq!(
            normalise("+49 89 12345678", None, PhoneFormat::E164)
                .unwrap()
                .number,
            "+498912345678"
        );
    }
}
