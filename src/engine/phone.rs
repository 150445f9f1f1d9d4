//! Phone number normalisation to the international form the dialler dials.
//!
//! Parsing and validation are libphonenumber's (the `phonenumber` crate carries its
//! metadata): CRM exports hold numbers as people type them (`089 / 123 456-78`,
//! `+49 (0)160 ...`, `0049 40 ...`), and only the numbering plan of each country decides
//! which of them are real numbers. A number written plainly (digits and the usual
//! separators) is read and checked here, by the crate's steps with its metadata, the
//! patterns compiled once per thread ([`plain`], [`valid`]); any other form, and every
//! number found wanting, is left to the crate, which then says why.

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
    let plus = match format {
        PhoneFormat::E164 => "+",
        PhoneFormat::Digits => "",
    };
    // A number written plainly, and valid: read without the crate's parser (what the
    // crate would read, see `plain`). Anything else, and every error, is the crate's.
    if let Some((code, national)) = region.and_then(|r| plain(&s, r)) {
        if checked_parts(code, &national) == Some(true) {
            return Ok(Normalised {
                number: format!("{plus}{code}{national}"),
                extension_dropped: false,
            });
        }
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

/// What `phonenumber::parse(Some(region), s)` reads from `s` (trimmed, with `(0)` and
/// a leading `00` already dealt with by [`normalise`]) when `s` is written plainly: digits
/// and the separators people use (space, `-`, `/`, `.`, brackets), a `+` at most at the
/// start. Its country code and national number (as the crate writes it), by the same
/// steps with the same metadata (the patterns compiled once per thread, see [`starts`]):
/// the international prefix taken off (`helper::international_prefix`), the country code
/// (`helper::country_code`), the national prefix for parsing and its transform rule
/// (`helper::national_number`), the national prefix, the length checks. `None` for any
/// other form (an extension, letters, `+49-89-...` read as RFC 3966, no default region),
/// or if the crate would not read a number: then the crate decides. The crate's parser
/// tries a grammar or two and looks up each pattern by its text behind one lock: about
/// 18,000 instructions per number (callgrind, 2026-12-08).
fn plain(s: &str, region: country::Id) -> Option<(u16, String)> {
    let db = &*phonenumber::metadata::DATABASE;
    let (plus, rest) = match s.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let mut digits = String::with_capacity(rest.len());
    let (mut space, mut separator) = (false, false);
    for b in rest.bytes() {
        match b {
            b'0'..=b'9' => digits.push(char::from(b)),
            b' ' => space = true,
            b'-' | b'.' | b'(' | b')' => separator = true,
            b'/' => {}
            _ => return None,
        }
    }
    // Without a space, `+` and a separator are read as RFC 3966: the country code is
    // what comes before the first separator.
    if plus && separator && !space {
        return None;
    }
    // Fewer digits may not be viable (`is_viable`).
    if digits.len() < 3 {
        return None;
    }
    let meta = db.by_id(region.as_ref())?;
    let general = meta.descriptors().general();
    // An international prefix at the start, not followed by a 0, goes.
    let mut national = digits.as_str();
    let mut default = !plus;
    if let Some(idd) = meta.international_prefix() {
        let at_start = compiled(idd.as_str(), |re| {
            re.find(national)
                .filter(|m| m.start() == 0)
                .map(|m| m.end())
        })?;
        if let Some(end) = at_start {
            if !national[end..].starts_with('0') {
                national = &national[end..];
                default = false;
            }
        }
    }
    // The country code: the region's, or the first one the number starts with.
    let (code, mut national) = if default {
        let code = meta.country_code();
        let written = code.to_string();
        let mut national = national.to_string();
        if national.starts_with(&written)
            && (!matches(general, &national)? || length(meta, national.len()) != Length::Possible)
        {
            national.drain(..written.len());
        }
        (code, national)
    } else {
        if national.len() <= 2 || national.starts_with('0') {
            return None;
        }
        (1..=3).find_map(|len| {
            let code = national[..len].parse::<u16>().ok()?;
            db.by_code(&code)
                .map(|_| (code, national[len..].to_string()))
        })?
    };
    // The national prefix for parsing (and the carrier code it may capture).
    let mut potential = national.clone();
    match meta.national_prefix_for_parsing() {
        None => {
            if let Some(prefix) = meta.national_prefix() {
                if potential.starts_with(prefix) {
                    potential.drain(..prefix.len());
                }
            }
        }
        Some(parsing) => {
            let transform = meta.national_prefix_transform_rule();
            let found = compiled(parsing.as_str(), |re| {
                let m = re.find(&potential)?;
                let c = re.captures(&potential)?;
                let (first, last) = (c.get(1).is_some(), c.get(c.len() - 1).is_some());
                let transformed = transform.map(|t| re.replace(&potential, t).into_owned());
                Some((m.start(), m.end(), first, last, transformed))
            })?;
            if let Some((0, end, first, last, transformed)) = found {
                let viable = matches(general, &potential)?;
                match transformed {
                    Some(transformed) if last => {
                        if !viable || matches(general, &transformed)? {
                            // The crate takes the first group for the carrier code.
                            if !first {
                                return None;
                            }
                            potential = transformed;
                        }
                    }
                    _ => {
                        potential.drain(..end);
                    }
                }
            }
        }
    }
    if let Some(prefix) = meta.national_prefix() {
        if potential.starts_with(prefix) {
            potential.drain(..prefix.len());
        }
    }
    if length(meta, potential.len()) != Length::TooShort {
        national = potential;
    }
    // `NationalNumber`: leading zeros, then a number below 2^56.
    if !(2..=17).contains(&national.len()) || !national.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = national.trim_start_matches('0').parse().ok()?;
    (value < 1 << 56).then_some((code, national))
}

/// What `validator::length(meta, number, Type::Unknown)` says of a national number of
/// `len` digits, as far as parsing asks. (The crate's metadata gives no region's general
/// description any lengths, so this is `Other` for every number: the parser then always
/// takes the national prefix off, and takes a number that starts with the region's
/// country code for one written with it. Kept as the crate has it.)
#[derive(PartialEq)]
enum Length {
    Possible,
    TooShort,
    Other,
}

fn length(meta: &Metadata, len: usize) -> Length {
    let general = meta.descriptors().general();
    let possible = general.possible_length();
    let Some((&min, &max)) = possible.first().zip(possible.last()) else {
        return Length::Other;
    };
    let len = len as u16;
    if general.possible_local_length().contains(&len) || len == min {
        Length::Possible
    } else if len < min {
        Length::TooShort
    } else if len <= max && possible.contains(&len) {
        Length::Possible
    } else {
        Length::Other
    }
}

/// [`valid`]; `None` if a pattern of the metadata does not compile here (the crate
/// checked each when it loaded them: then the crate decides).
fn checked(number: &PhoneNumber) -> Option<bool> {
    checked_parts(number.code().value(), &number.national().to_string())
}

/// [`checked`] of the number with country code `code` and national number `national`.
fn checked_parts(code: u16, national: &str) -> Option<bool> {
    let db = &*phonenumber::metadata::DATABASE;
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
                Some(pattern) => starts(pattern.as_str(), national)?,
                None => known_type(meta, national)?,
            };
            if decides {
                found = of_region(region);
                break;
            }
        }
        found
    };
    match meta {
        Some(meta) => known_type(meta, national),
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
    compiled(source, |re| re.find(text).is_some_and(|m| m.start() == 0))
}

/// `f` of the pattern `source`, compiled as [`starts`] says; `None` if it does not
/// compile.
fn compiled<R>(source: &str, f: impl FnOnce(&Regex) -> R) -> Option<R> {
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
        re.as_ref().ok().map(f)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed sequence of pseudo-random numbers (an LCG): the same numbers every run.
    struct Lcg(std::cell::Cell<u64>);

    impl Lcg {
        fn new(seed: u64) -> Lcg {
            Lcg(std::cell::Cell::new(seed))
        }

        /// The next number below `n`.
        fn below(&self, n: u64) -> u64 {
            let next = self
                .0
                .get()
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            self.0.set(next);
            (next >> 33) % n
        }

        fn digit(&self) -> char {
            char::from(b'0' + self.below(10) as u8)
        }
    }

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

    /// A number written plainly is read as the crate's parser reads it: every region's
    /// example numbers (and numbers made from them) written as people write them,
    /// nationally and internationally, placed in their own region and in others. Where
    /// [`plain`] reads a number the crate reads the same one; where the crate reads a
    /// number written with spaces, so does [`plain`].
    #[test]
    fn plain_numbers_are_read_as_the_crate_reads_them() {
        let db = &*phonenumber::metadata::DATABASE;
        let lcg = Lcg::new(0x9e37_79b9_7f4a_7c15);
        let next = |n| lcg.below(n);
        // Digits in groups of two to four, joined by `sep`.
        let grouped = |digits: &str, sep: &str| {
            let mut out = String::new();
            let mut rest = digits;
            while !rest.is_empty() {
                let take = (2 + next(3) as usize).min(rest.len());
                if !out.is_empty() {
                    out.push_str(sep);
                }
                out.push_str(&rest[..take]);
                rest = &rest[take..];
            }
            out
        };
        let (mut compared, mut read, mut read_spaced) = (0, 0, 0);
        let others = [
            country::Id::DE,
            country::Id::US,
            country::Id::IT,
            country::Id::GB,
        ];
        for meta in db.iter() {
            let Ok(own) = meta.id().parse::<country::Id>() else {
                continue;
            };
            let code = meta.country_code();
            let prefix = meta.national_prefix().unwrap_or("");
            let d = meta.descriptors();
            let examples: Vec<String> = [
                Some(d.general()),
                d.fixed_line(),
                d.mobile(),
                d.toll_free(),
                d.voip(),
            ]
            .into_iter()
            .flatten()
            .filter_map(|desc| desc.example().map(str::to_string))
            .collect();
            for example in examples {
                let mut changed = example.clone().into_bytes();
                let at = next(changed.len() as u64) as usize;
                changed[at] = lcg.digit() as u8;
                let changed = String::from_utf8(changed).unwrap();
                let mut nationals =
                    vec![example.clone(), changed, format!("{example}{}", next(10))];
                // Where the national prefix is rewritten (Argentina's `15` after the
                // area code, Brazil's carrier codes): the example with such digits in
                // it, a number the rewrite makes invalid among them (`11 15 45-6789`).
                if meta.national_prefix_transform_rule().is_some() {
                    for at in 1..=4.min(example.len() - 2) {
                        for digits in ["15", "0", "9", "12"] {
                            let end = (at + digits.len()).min(example.len());
                            let overlaid = format!("{}{digits}{}", &example[..at], &example[end..]);
                            nationals.push(format!("0{overlaid}"));
                            nationals.push(overlaid);
                        }
                    }
                }
                for national in nationals {
                    let spaced = grouped(&national, " ");
                    let forms = [
                        (format!("{prefix}{national}"), false),
                        (format!("{prefix}{spaced}"), true),
                        (
                            format!("({prefix}{}) {}", &national[..2], &national[2..]),
                            true,
                        ),
                        (format!("{prefix}{}", grouped(&national, "-")), false),
                        (
                            format!(
                                "{prefix}{} / {}",
                                &national[..3],
                                grouped(&national[3..], "-")
                            ),
                            true,
                        ),
                        (national.clone(), false),
                        (format!("{code}{national}"), false),
                        (format!("+{code}{national}"), false),
                        (format!("+{code} {spaced}"), true),
                        (format!("+{code} {}", grouped(&national, "-")), true),
                        (format!("+{code}-{national}"), false),
                        // RFC 3966: the country code is what comes before the `-`.
                        (
                            format!("+{code}{}-{}", &national[..2], &national[2..]),
                            false,
                        ),
                        // Too short once the national prefix is off.
                        (format!("{prefix}{}", &national[..2]), false),
                        (format!("{prefix}{}", &national[..3]), false),
                        (format!("00{code} {spaced}"), true),
                    ];
                    for (s, with_spaces) in forms {
                        for region in std::iter::once(own).chain(others) {
                            let ours = plain(&s, region);
                            let theirs = phonenumber::parse(Some(region), &s)
                                .ok()
                                .map(|n| (n.code().value(), n.national().to_string()));
                            if let Some(ours) = &ours {
                                assert_eq!(Some(ours), theirs.as_ref(), "{s:?} in {region:?}");
                                read += 1;
                            } else if with_spaces {
                                assert_eq!(theirs, None, "{s:?} in {region:?}: the crate reads it");
                            }
                            if with_spaces && ours.is_some() {
                                read_spaced += 1;
                            }
                            compared += 1;
                        }
                    }
                }
            }
        }
        assert!(
            compared > 50_000 && read > 25_000 && read_spaced > 10_000,
            "{compared} compared, {read} read ({read_spaced} written with spaces)"
        );
    }

    /// Our check of a number's validity says what the crate's says, for numbers of every
    /// region in its metadata (those that share a country code too, and the
    /// non-geographic ones): each type's example number, and numbers made from it with a
    /// digit changed, one more, one less, and random digits of the lengths around it.
    #[test]
    fn validity_is_the_crates() {
        let db = &*phonenumber::metadata::DATABASE;
        let lcg = Lcg::new(0x2545_f491_4f6c_dd1d);
        let digit = || lcg.digit();
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
