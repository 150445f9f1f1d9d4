//! Phone number normalisation to the international form the dialler dials.
//!
//! Parsing and validation are libphonenumber's (the `phonenumber` crate carries its
//! metadata): CRM exports hold numbers as people type them (`089 / 123 456-78`,
//! `+49 (0)160 ...`, `0049 40 ...`), and only the numbering plan of each country decides
//! which of them are real numbers.

use std::cell::RefCell;
use std::collections::HashMap;

use phonenumber::metadata::{Descriptor, Metadata};
use phonenumber::{country, PhoneNumber};
use regex::{Regex, RegexBuilder};

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
    if !valid(&number) {
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

/// Whether `number` is valid: what `phonenumber::is_valid` says (the same metadata, the
/// same steps), with the metadata's patterns compiled once per thread. The crate looks
/// each pattern up by its text in one cache behind a lock for every match it tries:
/// hashing patterns of up to a few hundred characters, about ten per number, was most of
/// the cost of checking a number (callgrind, 2026-12-08).
fn valid(number: &PhoneNumber) -> bool {
    checked(number).unwrap_or_else(|| phonenumber::is_valid(number))
}

/// [`valid`]; `None` if a pattern of the metadata does not compile here (the crate
/// checked each when it loaded them: then the crate decides).
fn checked(number: &PhoneNumber) -> Option<bool> {
    let db = &*phonenumber::metadata::DATABASE;
    let code = number.code().value();
    let national = number.national().to_string();
    let Some(regions) = db.region(&code) else {
        return Some(false);
    };
    // A region's metadata, looked up by its country's ID, as the crate does.
    let of_region = |region: &str| {
        region
            .parse::<country::Id>()
            .ok()
            .and_then(|id| db.by_id(id.as_ref()))
    };
    // `phonenumber::validator::source_for`: the region whose metadata decides.
    let meta = if let [region] = regions[..] {
        if region == "001" {
            db.by_code(&code).and_then(|m| m.into_iter().next())
        } else {
            of_region(region)
        }
    } else {
        let mut found = None;
        for region in regions {
            let meta = db.by_id(region)?;
            let decides = match meta.leading_digits() {
                Some(pattern) => starts(pattern.as_str(), &national)?,
                None => known_type(meta, &national)?,
            };
            if decides {
                found = of_region(region);
                break;
            }
        }
        found
    };
    match meta {
        Some(meta) => known_type(meta, &national),
        None => Some(false),
    }
}

/// `phonenumber::validator::number_type(meta, national) != Type::Unknown`: the general
/// pattern matches, and so does the pattern of one of the types it tells apart.
fn known_type(meta: &Metadata, national: &str) -> Option<bool> {
    let d = meta.descriptors();
    if !matches(d.general(), national)? {
        return Some(false);
    }
    for desc in [
        d.premium_rate(),
        d.toll_free(),
        d.shared_cost(),
        d.voip(),
        d.personal_number(),
        d.pager(),
        d.uan(),
        d.voicemail(),
        d.fixed_line(),
        d.mobile(),
    ]
    .into_iter()
    .flatten()
    {
        if matches(desc, national)? {
            return Some(true);
        }
    }
    Some(false)
}

/// `Descriptor::is_match`: a possible length, and its pattern matches from the start.
fn matches(desc: &Descriptor, national: &str) -> Option<bool> {
    let lengths = desc.possible_length();
    if !lengths.is_empty() && !lengths.contains(&(national.len() as u16)) {
        return Some(false);
    }
    starts(desc.national_number().as_str(), national)
}

/// Whether the pattern `source` finds a match in `text` that begins at its start (the
/// crate's `find(..).start() == 0`); `None` if it does not compile. Compiled as the crate
/// compiles the metadata's patterns (white space ignored), once per thread, found by
/// where its text lives (in the crate's database, which lives as long as the process)
/// and compared with it (a cheap `memcmp`, where hashing it is not).
fn starts(source: &str, text: &str) -> Option<bool> {
    type Compiled = HashMap<(usize, usize), Result<Regex, String>>;
    thread_local! {
        static COMPILED: RefCell<Compiled> = RefCell::new(HashMap::new());
    }
    COMPILED.with_borrow_mut(|compiled| {
        let compile = || {
            RegexBuilder::new(source)
                .ignore_whitespace(true)
                .build()
                .map_err(|_| source.to_string())
        };
        let re = compiled
            .entry((source.as_ptr() as usize, source.len()))
            .or_insert_with(compile);
        let same = match re {
            Ok(r) => r.as_str() == source,
            Err(s) => s == source,
        };
        if !same {
            *re = compile();
        }
        re.as_ref()
            .ok()
            .map(|re| re.find(text).is_some_and(|m| m.start() == 0))
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

    /// Our check of a number's validity says what the crate's says, for numbers of every
    /// region in its metadata (those that share a country code too, and the
    /// non-geographic ones): each type's example number, and numbers made from it with a
    /// digit changed, one more, one less, and random digits of the lengths around it.
    #[test]
    fn validity_is_the_crates() {
        let db = &*phonenumber::metadata::DATABASE;
        // A fixed sequence of pseudo-random digits (an LCG): the same numbers every run.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut digit = move || {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            char::from(b'0' + ((seed >> 33) % 10) as u8)
        };
        let (mut tried, mut valid_seen, mut invalid_seen) = (0, 0, 0);
        for meta in db.iter() {
            let code = meta.country_code();
            let d = meta.descriptors();
            let examples = [
                Some(d.general()),
                d.fixed_line(),
                d.mobile(),
                d.toll_free(),
                d.premium_rate(),
                d.shared_cost(),
                d.personal_number(),
                d.voip(),
                d.pager(),
                d.uan(),
                d.voicemail(),
            ]
            .into_iter()
            .flatten()
            .filter_map(|desc| desc.example().map(str::to_string));
            for example in examples {
                let mut tries = vec![example.clone()];
                let mut changed = example.clone().into_bytes();
                let at = (digit() as usize) % changed.len();
                changed[at] = digit() as u8;
                tries.push(String::from_utf8(changed).unwrap());
                tries.push(format!("{example}{}", digit()));
                tries.push(example[..example.len() - 1].to_string());
                for len in example.len().saturating_sub(2)..=example.len() + 2 {
                    tries.push((0..len).map(|_| digit()).collect());
                }
                for national in tries {
                    let Ok(number) = phonenumber::parse(None, format!("+{code}{national}")) else {
                        continue;
                    };
                    let theirs = phonenumber::is_valid(&number);
                    assert_eq!(valid(&number), theirs, "+{code} {national}");
                    assert_eq!(checked(&number), Some(theirs), "+{code} {national}");
                    tried += 1;
                    if theirs {
                        valid_seen += 1;
                    } else {
                        invalid_seen += 1;
                    }
                }
            }
        }
        // Every region's examples, and as many numbers again that are not valid.
        assert!(db.iter().count() > 200, "{}", db.iter().count());
        assert!(
            tried > 5_000 && valid_seen > 1_500 && invalid_seen > 1_500,
            "{tried} numbers: {valid_seen} valid, {invalid_seen} not"
        );
    }
}
