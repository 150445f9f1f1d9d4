//! Config problems located by file, line and key: collecting them while deserializing,
//! finding a key's line in the TOML, and showing them all at once.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::de::IntoDeserializer;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

/// A config that could not be loaded: every problem found, with file, line and key.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl std::error::Error for ConfigError {}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{} has {n} problem{}:",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {}", self.file.display())?;
            if let Some(line) = p.line {
                write!(f, ":{line}")?;
            }
            if p.key.is_empty() {
                write!(f, ": {}", p.message)?;
            } else {
                write!(f, ": {}: {}", p.key, p.message)?;
            }
        }
        Ok(())
    }
}

/// The text being compiled and the problems found so far.
pub(super) struct Ctx<'a> {
    pub(super) text: &'a str,
    pub(super) problems: Vec<Problem>,
    /// Keys taken out of a section because their value was invalid (already reported).
    pub(super) removed: Vec<String>,
}

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

impl Ctx<'_> {
    pub(super) fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|&b| b == b'\n')
            .count()
            + 1
    }

    pub(super) fn push(
        &mut self,
        line: Option<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) {
        let (key, message) = (key.into(), message.into());
        // A key removed for a bad value is then missing; that is the same problem again.
        if !self.removed.contains(&key) {
            self.problems.push(Problem { line, key, message });
        }
    }

    /// A required `key` missing from the section at `section` (reported at its header).
    pub(super) fn missing(
        &mut self,
        root: &Spanned<DeTable<'_>>,
        section: &[Seg],
        key: &str,
        message: &str,
    ) {
        let line = locate(root, section).map(|off| self.line_of(off));
        let mut path = section.to_vec();
        path.push(Seg::Key(key.to_string()));
        self.push(line, display_path(&path), message);
    }

    /// A problem with the value (or key) at `path` inside `root`.
    pub(super) fn at(
        &mut self,
        root: &Spanned<DeTable<'_>>,
        path: &[Seg],
        message: impl Into<String>,
    ) {
        let line = locate(root, path).map(|off| self.line_of(off));
        self.push(line, display_path(path), message);
    }

    /// An integer key that must lie in `range`: `None` when absent, or out of range
    /// (reported at `path`, with `otherwise` after the range).
    pub(super) fn ranged(
        &mut self,
        root: &Spanned<DeTable<'_>>,
        path: &[Seg],
        value: Option<i64>,
        range: std::ops::RangeInclusive<i64>,
        otherwise: &str,
    ) -> Option<i64> {
        let n = value?;
        if range.contains(&n) {
            return Some(n);
        }
        let (lo, hi) = range.into_inner();
        self.at(
            root,
            path,
            format!("{n} is out of range: use {lo} to {hi}{otherwise}"),
        );
        None
    }

    /// Deserializes one section, recording unknown keys and every type error: after an
    /// error the offending key is taken out and the section deserialized again, so one bad
    /// value does not hide the next. Returns the section without its bad keys.
    pub(super) fn section<T: DeserializeOwned>(
        &mut self,
        root: &Spanned<DeTable<'_>>,
        prefix: &[Seg],
        value: &Spanned<DeValue<'_>>,
    ) -> Option<T> {
        let mut value = value.clone();
        let mut reported_unknown = HashSet::new();
        // Each round removes one key, so this ends; the bound is a guard against a bug.
        for _ in 0..64 {
            let mut unknown: Vec<Vec<Seg>> = Vec::new();
            let result = {
                let mut on_unknown = |p: serde_ignored::Path<'_>| unknown.push(ignored_path(&p));
                let de = value.clone().into_deserializer();
                let de = serde_ignored::Deserializer::new(de, &mut on_unknown);
                serde_path_to_error::deserialize::<_, T>(de)
            };
            for rel in unknown {
                let path: Vec<Seg> = prefix.iter().cloned().chain(rel.iter().cloned()).collect();
                if reported_unknown.insert(display_path(&path)) {
                    self.at(
                        root,
                        &path,
                        "unknown key (check its spelling and the README's config reference)",
                    );
                }
            }
            let e = match result {
                Ok(v) => return Some(v),
                Err(e) => e,
            };
            let mut rel: Vec<Seg> = Vec::new();
            for seg in e.path().iter() {
                match seg {
                    serde_path_to_error::Segment::Seq { index } => rel.push(Seg::Index(*index)),
                    serde_path_to_error::Segment::Map { key } => rel.push(Seg::Key(key.clone())),
                    _ => {}
                }
            }
            // Remove the innermost key on the path (an array goes as a whole).
            while matches!(rel.last(), Some(Seg::Index(_))) {
                rel.pop();
            }
            let path: Vec<Seg> = prefix.iter().cloned().chain(rel.iter().cloned()).collect();
            let inner = e.into_inner();
            let line = inner
                .span()
                .map(|s| self.line_of(s.start))
                .or_else(|| locate(root, &path).map(|o| self.line_of(o)));
            self.push(line, display_path(&path), inner.message().to_string());
            if rel.is_empty() || !remove_key(&mut value, &rel) {
                return None;
            }
            self.removed.push(display_path(&path));
        }
        None
    }
}

/// Removes the key at `path` (keys only) from a table value; false if it is not there.
pub(super) fn remove_key(value: &mut Spanned<DeValue<'_>>, path: &[Seg]) -> bool {
    let Some((Seg::Key(last), parents)) = path.split_last() else {
        return false;
    };
    let mut table = match value.get_mut() {
        DeValue::Table(t) => t,
        _ => return false,
    };
    for seg in parents {
        let Seg::Key(k) = seg else { return false };
        table = match table.get_mut(k.as_str()).map(|v| v.get_mut()) {
            Some(DeValue::Table(t)) => t,
            _ => return false,
        };
    }
    table.remove(last.as_str()).is_some()
}

pub(super) fn ignored_path(p: &serde_ignored::Path<'_>) -> Vec<Seg> {
    use serde_ignored::Path as P;
    let mut out = match p {
        P::Root => return Vec::new(),
        P::Seq { parent, .. }
        | P::Map { parent, .. }
        | P::Some { parent }
        | P::NewtypeStruct { parent }
        | P::NewtypeVariant { parent } => ignored_path(parent),
    };
    match p {
        P::Seq { index, .. } => out.push(Seg::Index(*index)),
        P::Map { key, .. } => out.push(Seg::Key(key.clone())),
        _ => {}
    }
    out
}

pub(super) fn display_path(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{}]", i + 1)),
        }
    }
    s
}

/// Byte offset of the key (or, for an index, the element) at `path`.
pub(super) fn locate(root: &Spanned<DeTable<'_>>, path: &[Seg]) -> Option<usize> {
    let mut best = None;
    let mut table: Option<&DeTable<'_>> = Some(root.get_ref());
    let mut array: Option<&[Spanned<DeValue<'_>>]> = None;
    for seg in path {
        let value = match seg {
            Seg::Key(k) => {
                let (key, value) = table?
                    .iter()
                    .find(|(key, _)| key.get_ref().as_ref() == k.as_str())?;
                best = Some(key.span().start);
                value
            }
            Seg::Index(i) => {
                let value = array?.get(*i)?;
                best = Some(value.span().start);
                value
            }
        };
        table = None;
        array = None;
        match value.get_ref() {
            DeValue::Table(t) => table = Some(t),
            DeValue::Array(a) => array = Some(a),
            _ => {}
        }
    }
    best
}

pub(super) fn key(k: &str) -> Seg {
    Seg::Key(k.to_string())
}
