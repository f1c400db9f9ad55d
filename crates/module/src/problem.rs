//! A problem found in a module folder, located by file, line, column and field, and the map from
//! field paths to positions that lets checks made after parsing (files on disk, other modules)
//! point at the right line too.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// One thing wrong with a module, said so that an operator can fix it without reading code.
///
/// Rendered as `FILE:LINE:COLUMN: FIELD: MESSAGE`; `line` and `column` count from 1, and are 0
/// when the problem has no place in the file (the file is missing, unreadable); `field` is empty
/// when the problem concerns no field (a TOML syntax error, the folder itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: u32,
    pub column: u32,
    /// Path of the field in the file: `name`, `mirror[1].include[0]`, `scripts.start_prim.path`,
    /// `env.APP_PORT`. Array indices count from 0, in the order the entries appear.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        f.write_str(": ")?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for Problem {}

/// A place in a file: line and column, from 1 (column in characters, not bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    pub line: u32,
    pub column: u32,
}

/// Byte offsets to positions, for one source text.
pub(crate) struct LineIndex<'s> {
    src: &'s str,
    /// Byte offset of the start of each line.
    starts: Vec<usize>,
}

impl<'s> LineIndex<'s> {
    pub(crate) fn new(src: &'s str) -> Self {
        let starts = std::iter::once(0)
            .chain(src.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { src, starts }
    }

    pub(crate) fn position(&self, offset: usize) -> Position {
        let offset = offset.min(self.src.len());
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let start = self.starts[line - 1];
        let column = match self.src.get(start..offset) {
            Some(prefix) => prefix.chars().count(),
            // Not on a character boundary (cannot come from the parser): count bytes.
            None => offset - start,
        };
        Position {
            line: u32::try_from(line).unwrap_or(u32::MAX),
            column: u32::try_from(column + 1).unwrap_or(u32::MAX),
        }
    }
}

/// Where each field of a module file was written, by field path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Positions {
    file: PathBuf,
    by_field: BTreeMap<String, Position>,
}

impl Positions {
    pub(crate) fn new(file: PathBuf) -> Self {
        Positions {
            file,
            by_field: BTreeMap::new(),
        }
    }

    pub(crate) fn record(&mut self, field: &str, position: Position) {
        self.by_field.entry(field.to_owned()).or_insert(position);
    }

    /// Whether `field` itself (not a parent) was written.
    pub fn has(&self, field: &str) -> bool {
        self.by_field.contains_key(field)
    }

    /// The file these positions are in.
    pub fn file(&self) -> &std::path::Path {
        &self.file
    }

    /// The position of `field`, or of its nearest recorded parent (`mirror[0].dir` falls back to
    /// `mirror[0]`), or none.
    pub fn get(&self, field: &str) -> Option<Position> {
        let mut f = field;
        loop {
            if let Some(p) = self.by_field.get(f) {
                return Some(*p);
            }
            f = parent_field(f)?;
        }
    }

    /// A problem about `field` of this file, placed where the field was written.
    pub fn problem(&self, field: &str, message: impl Into<String>) -> Problem {
        let p = self.get(field).unwrap_or_default();
        Problem {
            file: self.file.clone(),
            line: p.line,
            column: p.column,
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// `a.b[2].c` → `a.b[2]` → `a.b` → `a`; `None` for a top-level field.
fn parent_field(field: &str) -> Option<&str> {
    let cut = field.rfind(['.', '['])?;
    Some(&field[..cut])
}

/// Problems in reading order: by file, line, column.
pub(crate) fn sort(problems: &mut [Problem]) {
    problems.sort_by(|a, b| {
        (&a.file, a.line, a.column, &a.field).cmp(&(&b.file, b.line, b.column, &b.field))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_lines_and_characters_from_one() {
        let src = "a = 1\nbé = \"x\"\n\nlast";
        let idx = LineIndex::new(src);
        assert_eq!(idx.position(0), Position { line: 1, column: 1 });
        assert_eq!(idx.position(4), Position { line: 1, column: 5 });
        assert_eq!(idx.position(6), Position { line: 2, column: 1 });
        // 'é' is two bytes but one column.
        let x = src.find('x').unwrap_or(0);
        assert_eq!(idx.position(x), Position { line: 2, column: 7 });
        assert_eq!(idx.position(src.len()), Position { line: 4, column: 5 });
        assert_eq!(
            idx.position(src.len() + 10),
            Position { line: 4, column: 5 }
        );
    }

    #[test]
    fn display_omits_what_is_unknown() {
        let mut p = Problem {
            file: "/m/module.toml".into(),
            line: 3,
            column: 7,
            field: "mirror[0].dir".into(),
            message: "bad".into(),
        };
        assert_eq!(p.to_string(), "/m/module.toml:3:7: mirror[0].dir: bad");
        p.line = 0;
        p.field.clear();
        assert_eq!(p.to_string(), "/m/module.toml: bad");
    }

    #[test]
    fn positions_fall_back_to_the_parent_field() {
        let mut pos = Positions::new("/m/module.toml".into());
        pos.record("mirror[1]", Position { line: 5, column: 1 });
        assert_eq!(
            pos.get("mirror[1].include[0]"),
            Some(Position { line: 5, column: 1 })
        );
        assert_eq!(pos.get("vip[0]"), None);
        let p = pos.problem("mirror[1].dir", "x");
        assert_eq!((p.line, p.column), (5, 1));
    }
}
