//! Phone number normalisation to the international form the dialler dials.
//!
//! Parsing and validation are libphonenumber's (the `phonenumber` crate carries its
//! metadata): CRM exports hold numbers as people type them (`089 / 123 456-78`,
//! `+49 (0)160 ...`, `0049 40 ...`), and only the numbering plan of each country decides
//! which of them are real numbers.

use phonenumber::country;

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
    // E.164 is `+`, the country code and the national number (its `Display` writes the
    // leading zeros the parser recorded), and has no extension. The crate's formatter
    // writes the same but first matches the national number against the country's
    // formatting patterns, which E.164 does not use: a fifth of the cost of a number
    // (perf, 2026-12-05).
    let plus = match format {
        PhoneFormat::E164 => "+",
        PhoneFormat::Digits => "",
    };
    Ok(Normalised {
        number: format!("{plus}{}{}", number.code().value(), number.national()),
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

    /// The E.164 form written directly is the crate's formatter's, in countries with
    /// and without a trunk prefix. (Italian fixed-line numbers are not among them: the
    /// crate's parser drops the 0 they keep after +39, and rejects them as invalid, with
    /// its formatter as without.)
    #[test]
    fn e164_is_the_formatters() {
        use phonenumber::Mode;
        for (raw, region, e164) in [
            ("089 1234567", country::Id::DE, "+49891234567"),
            ("+39 347 123 4567", country::Id::DE, "+393471234567"),
            ("020 7946 0018", country::Id::GB, "+442079460018"),
            ("(212) 555-0123", country::Id::US, "+12125550123"),
            ("01 42 68 53 00", country::Id::FR, "+33142685300"),
            ("+43 1 5344455", country::Id::AT, "+4315344455"),
            ("0800 123 456", country::Id::CH, "+41800123456"),
        ] {
            let number = phonenumber::parse(Some(region), raw).unwrap();
            assert_eq!(number.format().mode(Mode::E164).to_string(), e164, "{raw}");
            let ours = normalise(raw, Some(region), PhoneFormat::E164);
            assert_eq!(ours.map(|n| n.number).as_deref(), Ok(e164), "{raw}");
        }
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
