//! Text from outside (UserData, CRM values, the dialler's messages, a redirect's
//! `Location`) made safe for one line of a log or a report: control characters are
//! written as escapes, so a value can never start a line of its own and forge a log entry.

use std::borrow::Cow;
use std::fmt::Write as _;

/// `s` with every control character (newline, carriage return, tab, NUL, ESC, DEL, the
/// C1 range, and the line and paragraph separators) escaped as `\n`, `\r`, `\t` or
/// `\u{..}`; a backslash is left as it is. Borrowed when there is nothing to escape.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// [`printable`], cut to at most `max` characters (an ellipsis marks the cut).
pub(crate) fn printable_max(s: &str, max: usize) -> String {
    let p = printable(s);
    match p.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &p[..i]),
        None => p.into_owned(),
    }
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_plain_text_is_borrowed() {
        assert!(matches!(printable("K-1007 Müller"), Cow::Borrowed(_)));
        assert_eq!(
            printable("K1\nERROR forged\r\t\0\u{1b}[31m\u{2028}"),
            "K1\\nERROR forged\\r\\t\\u{0}\\u{1b}[31m\\u{2028}"
        );
        assert_eq!(printable_max("abcdef", 3), "abc…");
        assert_eq!(printable_max("a\nb", 10), "a\\nb");
    }
}
