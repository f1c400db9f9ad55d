//! Reading a parsed TOML document field by field, collecting every problem instead of stopping at
//! the first: the generic half of the checker (tables, types, unknown keys, positions). The
//! module schema itself is in `parse.rs`.

use std::ops::{Range, RangeInclusive};
use std::path::Path;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::problem::{LineIndex, Positions, Problem};

/// A value with the byte range it was written at.
#[derive(Clone, Debug)]
pub(crate) struct At<T> {
    pub value: T,
    pub span: Range<usize>,
}

/// One table of the document, with its field path (`""` for the top, `mirror[1]`, `scripts`).
pub(crate) struct Table<'t, 'i> {
    entries: &'t DeTable<'i>,
    span: Range<usize>,
    path: String,
}

/// Collects problems and positions while the schema code reads the document.
pub(crate) struct Walker<'s> {
    file: &'s Path,
    lines: LineIndex<'s>,
    pub problems: Vec<Problem>,
    pub positions: Positions,
}

impl<'s> Walker<'s> {
    pub fn new(src: &'s str, file: &'s Path) -> Self {
        Walker {
            file,
            lines: LineIndex::new(src),
            problems: Vec::new(),
            positions: Positions::new(file.to_path_buf()),
        }
    }

    /// Report a problem about `field`, placed at `span`.
    pub fn report(&mut self, span: &Range<usize>, field: &str, message: impl Into<String>) {
        let p = self.lines.position(span.start);
        self.problems.push(Problem {
            file: self.file.to_path_buf(),
            line: p.line,
            column: p.column,
            field: field.to_owned(),
            message: message.into(),
        });
    }

    fn record(&mut self, field: &str, span: &Range<usize>) {
        let p = self.lines.position(span.start);
        self.positions.record(field, p);
    }

    /// The top-level table.
    pub fn root<'t, 'i>(&mut self, doc: &'t Spanned<DeTable<'i>>) -> Table<'t, 'i> {
        Table {
            entries: doc.get_ref(),
            span: 0..0,
            path: String::new(),
        }
    }

    /// Report every key of `t` not in `known`, with the closest known name when the key looks
    /// like a typo of it.
    pub fn unknown_keys(&mut self, t: &Table<'_, '_>, known: &[&str], what: &str) {
        for (k, _) in t.entries.iter() {
            let key: &str = k.get_ref();
            if known.contains(&key) {
                continue;
            }
            let field = t.field(key);
            let message = match suggest(key, known) {
                Some(s) => format!("unknown field {key:?} in {what}: did you mean {s:?}?"),
                None => format!(
                    "unknown field {key:?} in {what}; the fields are: {}",
                    known.join(", ")
                ),
            };
            self.report(&k.span(), &field, message);
        }
    }

    /// The value of `key`, recording its position; reports nothing.
    pub fn value<'t, 'i>(
        &mut self,
        t: &Table<'t, 'i>,
        key: &str,
    ) -> Option<&'t Spanned<DeValue<'i>>> {
        let v = t.get(key)?;
        self.record(&t.field(key), &v.span());
        Some(v)
    }

    /// Report that required `key` is missing from `t`.
    pub fn missing(&mut self, t: &Table<'_, '_>, key: &str, what: &str, example: &str) {
        let field = t.field(key);
        self.report(
            &t.span(),
            &field,
            format!("{what} has no {key:?}: it is required (for example: {example})"),
        );
    }

    pub fn wrong_type(&mut self, v: &Spanned<DeValue<'_>>, field: &str, expected: &str) {
        let found = v.get_ref().type_str();
        self.report(
            &v.span(),
            field,
            format!("expected {expected}, found {}", article(found)),
        );
    }

    pub fn string(&mut self, t: &Table<'_, '_>, key: &str) -> Option<At<String>> {
        let v = self.value(t, key)?;
        self.as_string(v, &t.field(key))
    }

    pub fn as_string(&mut self, v: &Spanned<DeValue<'_>>, field: &str) -> Option<At<String>> {
        match v.get_ref() {
            DeValue::String(s) => Some(At {
                value: s.to_string(),
                span: v.span(),
            }),
            _ => {
                self.wrong_type(v, field, "a string");
                None
            }
        }
    }

    pub fn required_string(
        &mut self,
        t: &Table<'_, '_>,
        key: &str,
        what: &str,
        example: &str,
    ) -> Option<At<String>> {
        if t.get(key).is_none() {
            self.missing(t, key, what, example);
            return None;
        }
        self.string(t, key)
    }

    pub fn boolean(&mut self, t: &Table<'_, '_>, key: &str) -> Option<bool> {
        let v = self.value(t, key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            DeValue::String(s) if s == "true" || s == "false" => {
                self.report(
                    &v.span(),
                    &t.field(key),
                    format!(
                        "expected a boolean, found the string \"{s}\": write {s} without quotes"
                    ),
                );
                None
            }
            _ => {
                self.wrong_type(v, &t.field(key), "a boolean (true or false)");
                None
            }
        }
    }

    /// A whole number in `range`; `unit` names it in messages ("milliseconds").
    pub fn integer(
        &mut self,
        t: &Table<'_, '_>,
        key: &str,
        range: RangeInclusive<u64>,
        unit: &str,
    ) -> Option<At<u64>> {
        let v = self.value(t, key)?;
        let field = t.field(key);
        let expected = format!(
            "a whole number of {unit} from {} to {}",
            range.start(),
            range.end()
        );
        let n = match v.get_ref() {
            DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix()).ok(),
            DeValue::String(s) if s.trim().parse::<u64>().is_ok() => {
                self.report(
                    &v.span(),
                    &field,
                    format!("expected {expected}, found the string \"{s}\": write the number without quotes"),
                );
                return None;
            }
            _ => {
                self.wrong_type(v, &field, &expected);
                return None;
            }
        };
        match n.and_then(|n| u64::try_from(n).ok()) {
            Some(n) if range.contains(&n) => Some(At {
                value: n,
                span: v.span(),
            }),
            _ => {
                let shown = match v.get_ref() {
                    DeValue::Integer(i) => i.to_string(),
                    _ => String::new(),
                };
                self.report(
                    &v.span(),
                    &field,
                    format!("{shown} is out of range: expected {expected}"),
                );
                None
            }
        }
    }

    /// An array of strings, each with its span; element problems name `key[i]`.
    pub fn strings(&mut self, t: &Table<'_, '_>, key: &str) -> Option<Vec<At<String>>> {
        let v = self.value(t, key)?;
        let field = t.field(key);
        let DeValue::Array(items) = v.get_ref() else {
            if let DeValue::String(s) = v.get_ref() {
                self.report(
                    &v.span(),
                    &field,
                    format!("expected an array of strings, found a string: write [\"{s}\"]"),
                );
            } else {
                self.wrong_type(v, &field, "an array of strings");
            }
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let f = format!("{field}[{i}]");
            self.record(&f, &item.span());
            match self.as_string(item, &f) {
                Some(s) => out.push(s),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A table (`[key]` or `key = { ... }`), or `None` (reported when of another type).
    pub fn table<'t, 'i>(
        &mut self,
        t: &Table<'t, 'i>,
        key: &str,
        path: String,
    ) -> Option<Table<'t, 'i>> {
        let v = self.value(t, key)?;
        self.as_table(v, path)
    }

    pub fn as_table<'t, 'i>(
        &mut self,
        v: &'t Spanned<DeValue<'i>>,
        path: String,
    ) -> Option<Table<'t, 'i>> {
        match v.get_ref() {
            DeValue::Table(entries) => Some(Table {
                entries,
                span: v.span(),
                path,
            }),
            DeValue::Array(_) => {
                self.report(
                    &v.span(),
                    &path,
                    format!(
                        "expected a table, found an array: write [{path}] once, not [[{path}]]"
                    ),
                );
                None
            }
            _ => {
                self.wrong_type(v, &path, "a table");
                None
            }
        }
    }

    /// The table elements of an array of tables (`[[key]]` sections, or `key = [{...}, {...}]`),
    /// with their index in the array; at most `max` are read, more is reported.
    pub fn table_array<'t, 'i>(
        &mut self,
        t: &Table<'t, 'i>,
        key: &str,
        max: usize,
    ) -> Vec<(usize, &'t Spanned<DeValue<'i>>)> {
        let Some(v) = self.value(t, key) else {
            return Vec::new();
        };
        let field = t.field(key);
        match v.get_ref() {
            DeValue::Array(items) => {
                if items.len() > max {
                    let extra = &items.get(max).map(|x| x.span()).unwrap_or(v.span());
                    self.report(
                        extra,
                        &format!("{field}[{max}]"),
                        format!(
                            "{} {key} entries: a module may declare at most {max}",
                            items.len()
                        ),
                    );
                }
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate().take(max) {
                    let f = format!("{field}[{i}]");
                    self.record(&f, &item.span());
                    if item.get_ref().is_table() {
                        out.push((i, item));
                    } else {
                        self.wrong_type(item, &f, &format!("a table (a [[{key}]] section)"));
                    }
                }
                out
            }
            DeValue::Table(_) => {
                self.report(
                    &v.span(),
                    &field,
                    format!("expected an array of tables: write [[{key}]] (double brackets), one per entry"),
                );
                Vec::new()
            }
            _ => {
                self.wrong_type(
                    v,
                    &field,
                    &format!("an array of tables ([[{key}]] sections)"),
                );
                Vec::new()
            }
        }
    }
}

impl<'t, 'i> Table<'t, 'i> {
    /// The field path of `key` in this table.
    pub fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub fn get(&self, key: &str) -> Option<&'t Spanned<DeValue<'i>>> {
        self.entries
            .iter()
            .find(|(k, _)| k.get_ref() == key)
            .map(|(_, v)| v)
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Where the table was written: its header, or its inline braces.
    pub fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    /// The entries, in key order.
    pub fn entries(
        &self,
    ) -> impl Iterator<Item = (&'t str, Range<usize>, &'t Spanned<DeValue<'i>>)> {
        self.entries
            .iter()
            .map(|(k, v)| (k.get_ref().as_ref(), k.span(), v))
    }
}

fn article(type_name: &str) -> String {
    match type_name.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => format!("an {type_name}"),
        _ => format!("a {type_name}"),
    }
}

/// The known field an unknown key was most likely meant to be: the same name in another case or
/// with '-' for '_', the name with its unit suffix forgotten (`timeout` for `timeout_ms`), or a
/// name within a small edit distance.
pub(crate) fn suggest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    let norm = key.to_ascii_lowercase().replace('-', "_");
    if let Some(k) = known.iter().find(|k| **k == norm) {
        return Some(k);
    }
    if let Some(k) = known.iter().find(|k| {
        k.strip_prefix(norm.as_str())
            .is_some_and(|rest| rest.starts_with('_'))
    }) {
        return Some(k);
    }
    // An abbreviation: "proc" for "process".
    if norm.len() >= 3 {
        if let Some(k) = known.iter().find(|k| k.starts_with(norm.as_str())) {
            return Some(k);
        }
    }
    let limit = match norm.chars().count() {
        0..=3 => 1,
        4..=7 => 2,
        _ => 3,
    };
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(&norm, k), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::suggest;

    #[test]
    fn suggestions() {
        let known = [
            "include",
            "exclude",
            "dir",
            "timeout_ms",
            "interval_ms",
            "default_primary",
        ];
        assert_eq!(suggest("exlude", &known), Some("exclude"));
        assert_eq!(suggest("inculde", &known), Some("include"));
        assert_eq!(suggest("Dir", &known), Some("dir"));
        assert_eq!(suggest("default-primary", &known), Some("default_primary"));
        assert_eq!(suggest("timeout", &known), Some("timeout_ms"));
        assert_eq!(suggest("intervall_ms", &known), Some("interval_ms"));
        assert_eq!(suggest("colour", &known), None);
        assert_eq!(suggest("x", &known), None);
        assert_eq!(
            suggest("proc", &["process", "tcp", "script"]),
            Some("process")
        );
    }
}
